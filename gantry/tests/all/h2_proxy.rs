//! HTTP/2 clients in front of HTTP/1 backends, as the `h2` crate's client speaks to Gantry
//! (h2c by prior knowledge): what crosses the change of version. The backend is a raw socket
//! that records the HTTP/1 bytes Gantry sends and answers by hand.

use std::future::poll_fn;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::addr;
use crate::support::client::h2_client;
use crate::support::scenario::{Port, Scenario};

/// Reads from `stream` until what was read ends with `end`, within 10 s.
async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, end: &[u8]) {
    let mut chunk = [0u8; 4096];
    while !seen.ends_with(end) {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("the backend's bytes within 10s")
            .expect("read");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(seen));
        seen.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_reach_an_http1_backend_in_a_chunked_body() {
    let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gantry = Scenario::new()
        .port(
            "shop",
            Port::http("web").backends(&[backend.local_addr().expect("addr")]),
        )
        .start()
        .await;
    let mut client = h2_client(addr(&gantry, "shop", "web")).await;
    let request = http::Request::post("http://shop.example/upload")
        .body(())
        .expect("request");
    let (response, mut body) = client.send_request(request, false).expect("send");
    body.send_data(Bytes::from_static(b"hello"), false)
        .expect("data");
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
    body.send_trailers(trailers).expect("trailers");

    let (mut upstream, _) = backend.accept().await.expect("forwarded");
    let mut seen = Vec::new();
    read_until(&mut upstream, &mut seen, b"x-checksum: abc\r\n\r\n").await;
    let seen = String::from_utf8_lossy(&seen).into_owned();
    assert!(
        seen.starts_with("POST /upload HTTP/1.1\r\nhost: shop.example\r\n"),
        "{seen}"
    );
    assert!(seen.contains("transfer-encoding: chunked\r\n"), "{seen}");
    assert!(
        seen.ends_with("\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n"),
        "{seen}"
    );
    upstream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .await
        .expect("answer");
    let response = response.await.expect("response");
    assert_eq!(response.status(), 200);
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_expecting_100_continue_gets_the_backends_100_before_sending() {
    let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gantry = Scenario::new()
        .port(
            "shop",
            Port::http("web").backends(&[backend.local_addr().expect("addr")]),
        )
        .start()
        .await;
    let mut client = h2_client(addr(&gantry, "shop", "web")).await;
    let request = http::Request::put("http://shop.example/big")
        .header("expect", "100-continue")
        .header("content-length", "4")
        .body(())
        .expect("request");
    let (mut response, mut body) = client.send_request(request, false).expect("send");

    // The backend sees the head (with the expectation) and nothing else yet.
    let (mut upstream, _) = backend.accept().await.expect("forwarded");
    let mut seen = Vec::new();
    read_until(&mut upstream, &mut seen, b"\r\n\r\n").await;
    let head = String::from_utf8_lossy(&seen).into_owned();
    assert!(head.contains("expect: 100-continue\r\n"), "{head}");
    assert!(head.contains("content-length: 4\r\n"), "{head}");
    upstream
        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        .await
        .expect("100");

    // The client hears the 100 before it sends a byte of its body.
    let informational = tokio::time::timeout(
        Duration::from_secs(10),
        poll_fn(|cx| response.poll_informational(cx)),
    )
    .await
    .expect("the 100 within 10s, not the client's own expect timeout")
    .expect("an informational response")
    .expect("no error");
    assert_eq!(informational.status(), 100);
    body.send_data(Bytes::from_static(b"data"), true)
        .expect("body");
    let mut rest = Vec::new();
    read_until(&mut upstream, &mut rest, b"data").await;
    upstream
        .write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
        .await
        .expect("answer");
    let response = response.await.expect("response");
    assert_eq!(response.status(), 201);
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_backend_that_dies_mid_stream_ends_the_call_unavailable_not_cancelled() {
    let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gantry = Scenario::new()
        .port(
            "api",
            Port::http("grpc")
                .set("backend_protocol", "h2c")
                .backends(&[backend.local_addr().expect("addr")]),
        )
        .start()
        .await;
    // An h2c backend that answers the call's head and first message, then dies once the
    // client has the message.
    let (delivered, die) = tokio::sync::oneshot::channel::<()>();
    let dying = tokio::spawn(async move {
        let (stream, _) = backend.accept().await.expect("forwarded");
        let mut connection = h2::server::handshake(stream).await.expect("handshake");
        let (_request, mut respond) = connection
            .accept()
            .await
            .expect("a stream")
            .expect("no error");
        let response = http::Response::builder()
            .header("content-type", "application/grpc")
            .body(())
            .expect("response");
        let mut body = respond.send_response(response, false).expect("head");
        body.send_data(Bytes::from_static(b"\0\0\0\0\x01x"), false)
            .expect("message");
        // The connection writes what was sent while it is polled; then it is dropped without
        // ending the stream.
        tokio::select! {
            _ = connection.accept() => panic!("no second stream is sent"),
            _ = die => {}
        }
    });
    let mut client = h2_client(addr(&gantry, "api", "grpc")).await;
    let request = http::Request::post("http://api.example/pkg.Service/Call")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut body) = client.send_request(request, false).expect("send");
    body.send_data(Bytes::from_static(b"\0\0\0\0\0"), true)
        .expect("message");
    let response = response.await.expect("the head the backend sent");
    assert_eq!(response.status(), 200);
    let mut stream = response.into_body();
    let first = stream.data().await.expect("a message").expect("data");
    let mut received = first.len();
    let _ = delivered.send(());
    while let Some(data) = stream.data().await {
        received += data.expect("the body ends cleanly, not with a reset").len();
    }
    assert_eq!(
        received, 6,
        "the message sent before the backend died arrives"
    );
    let trailers = stream
        .trailers()
        .await
        .expect("trailers, not RST_STREAM(CANCEL)")
        .expect("trailers");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"14"[..]),
        "UNAVAILABLE, which a gRPC client may retry"
    );
    dying.await.expect("backend task");
    gantry.shutdown(Duration::from_secs(1)).await;
}
