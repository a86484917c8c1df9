//! HTTP/1.1 and h2c proxying: balancing, forwarding headers, failover, WebSocket, gRPC-style
//! trailers over h2c, and the status codes of failure.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::client::{get, raw_exchange, H1, H2};
use crate::support::origin::{
    read_ws_frame, websocket_accept, ws_frame, HttpOrigin, OriginProtocol,
};
use crate::support::scenario::{Port, Scenario};
use crate::support::{addr, eventually, metric, Refusing};

/// A Gantry with one `http` port, `api/grpc`, whose backend (`backend`) speaks h2c.
async fn h2c_port(backend: std::net::SocketAddr) -> gantry::Gantry {
    Scenario::new()
        .port(
            "api",
            Port::http("grpc")
                .set("backend_protocol", "h2c")
                .backends(&[backend]),
        )
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_rotate_across_backends_on_new_and_kept_alive_connections() {
    let origins = [
        HttpOrigin::start("a", OriginProtocol::Http1).await,
        HttpOrigin::start("b", OriginProtocol::Http1).await,
        HttpOrigin::start("c", OriginProtocol::Http1).await,
    ];
    let backends = [origins[0].addr, origins[1].addr, origins[2].addr];
    let gantry = Scenario::new()
        .port("web", Port::http("http").backends(&backends))
        .start()
        .await;
    let proxy = addr(&gantry, "web", "http");

    let mut served = Vec::new();
    for _ in 0..6 {
        let answer = get(proxy, "/").await;
        assert_eq!(answer.status, StatusCode::OK);
        served.push(answer.header("x-origin").to_owned());
    }
    let mut kept = H1::connect(proxy).await.expect("connect");
    for _ in 0..6 {
        let answer = kept.get("/").await.expect("kept-alive request");
        served.push(answer.header("x-origin").to_owned());
    }
    assert_eq!(served[..3], ["a", "b", "c"]);
    for origin in &origins {
        assert_eq!(origin.requests(), 4, "origin {} got its share", origin.name);
    }
    let text = gantry.metrics().render();
    let series = format!(
        "gantry_requests_total{{backend=\"{}\",class=\"2xx\",port=\"http\",service=\"web\"}}",
        origins[0].addr
    );
    assert_eq!(metric(&text, &series), 4.0);
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_replaced_for_clients_and_appended_for_trusted_proxies() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = Scenario::new()
        .port("web", Port::http("public").backends(&[origin.addr]))
        .port(
            "web",
            Port::http("behind-lb")
                .backends(&[origin.addr])
                .set("trusted_proxies", "[127.0.0.0/8]"),
        )
        .start()
        .await;
    let spoofed = |port: &str| {
        Request::get("/")
            .header("host", port)
            .header("x-forwarded-for", "203.0.113.66")
            .header("x-forwarded-proto", "https")
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let mut public = H1::connect(addr(&gantry, "web", "public"))
        .await
        .expect("connect");
    let answer = public.send(spoofed("public")).await.expect("response");
    assert_eq!(answer.header("x-seen-xff"), "127.0.0.1");
    assert_eq!(answer.header("x-seen-xfp"), "http");

    let mut trusted = H1::connect(addr(&gantry, "web", "behind-lb"))
        .await
        .expect("connect");
    let answer = trusted.send(spoofed("behind-lb")).await.expect("response");
    assert_eq!(answer.header("x-seen-xff"), "203.0.113.66, 127.0.0.1");
    assert_eq!(answer.header("x-seen-xfp"), "https");
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_backend_is_retried_elsewhere_then_skipped_while_it_backs_off() {
    let origin = HttpOrigin::start("live", OriginProtocol::Http1).await;
    let refusing = Refusing::new();
    let dead = refusing.addr;
    let gantry = Scenario::new()
        .port(
            "web",
            Port::http("http")
                .backends(&[dead, origin.addr])
                .set("backoff", "{ initial: 1h, max: 1h }"),
        )
        .start()
        .await;
    let proxy = addr(&gantry, "web", "http");
    for _ in 0..6 {
        let answer = get(proxy, "/").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("x-origin"), "live");
    }
    let text = gantry.metrics().render();
    let labels = format!("{{backend=\"{dead}\",port=\"http\",service=\"web\"}}");
    assert_eq!(
        metric(
            &text,
            &format!("gantry_upstream_connect_errors_total{labels}")
        ),
        1.0
    );
    assert_eq!(metric(&text, &format!("gantry_backend_up{labels}")), 0.0);
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_is_503_and_unreachable_backends_are_502() {
    let (refusing_a, refusing_b) = (Refusing::new(), Refusing::new());
    let (dead_a, dead_b) = (refusing_a.addr, refusing_b.addr);
    let gantry = Scenario::new()
        .port("web", Port::http("empty"))
        .port("web", Port::http("down").backends(&[dead_a, dead_b]))
        .start()
        .await;
    assert_eq!(
        get(addr(&gantry, "web", "empty"), "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get(addr(&gantry, "web", "down"), "/").await.status,
        StatusCode::BAD_GATEWAY
    );
    let text = gantry.metrics().render();
    let none = "{backend=\"none\",class=\"5xx\",port=\"empty\",service=\"web\"}";
    assert_eq!(metric(&text, &format!("gantry_requests_total{none}")), 1.0);
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_is_tunnelled_both_ways() {
    let origin = HttpOrigin::start("ws", OriginProtocol::Http1).await;
    let gantry = Scenario::new()
        .port("web", Port::http("http").backends(&[origin.addr]))
        .start()
        .await;
    let mut stream = TcpStream::connect(addr(&gantry, "web", "http"))
        .await
        .expect("connect");
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    stream
        .write_all(
            format!(
                "GET /ws HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains(&format!(
            "sec-websocket-accept: {}",
            websocket_accept(key).to_lowercase()
        )),
        "{head}"
    );
    for message in ["hello", "through the proxy"] {
        let frame = ws_frame(0x1, message.as_bytes(), Some([1, 2, 3, 4]));
        stream.write_all(&frame).await.expect("send frame");
        let (opcode, payload) = read_ws_frame(&mut stream).await.expect("echo frame");
        assert_eq!((opcode, payload.as_slice()), (0x1, message.as_bytes()));
    }
    drop(stream);
    let series = format!(
        "gantry_requests_total{{backend=\"{}\",class=\"1xx\",port=\"http\",service=\"web\"}}",
        origin.addr
    );
    eventually("the closed tunnel to be counted as a 101", || {
        let text = gantry.metrics().render();
        let series = series.clone();
        async move { metric(&text, &series) == 1.0 }
    })
    .await;
    gantry.shutdown(Duration::from_secs(1)).await;
}

/// HTTP/1.1 clients of a port whose backends speak h2c: requests on one kept-alive
/// connection, a chunked body with trailers up, the backend's HTTP/2 trailers down as chunked
/// trailers, the forwarding headers set, and a body framed by its length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_clients_reach_h2c_backends_over_one_kept_connection() {
    let origin = HttpOrigin::start("grpc", OriginProtocol::H2c).await;
    let gantry = h2c_port(origin.addr).await;
    let proxy = addr(&gantry, "api", "grpc");
    let requests = concat!(
        "GET /plain HTTP/1.1\r\nHost: api.example\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n",
        "POST /grpc HTTP/1.1\r\nHost: api.example\r\ncontent-type: application/grpc\r\n",
        "transfer-encoding: chunked\r\n\r\n5\r\n\0\0\0\0\0\r\n0\r\nx-sum: 1\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: api.example\r\ncontent-length: 11\r\nconnection: close\r\n\r\nhello world",
    );
    let answer = raw_exchange(proxy, requests.as_bytes()).await;
    let heads: Vec<&str> = answer.matches("HTTP/1.1 200 OK\r\n").collect();
    assert_eq!(heads.len(), 3, "three answers on one connection: {answer}");
    assert!(
        answer.contains("x-seen-xff: 127.0.0.1\r\n"),
        "forwarding headers by policy (an untrusted client's own dropped): {answer}"
    );
    assert!(
        answer.contains("transfer-encoding: chunked\r\n"),
        "a body without a length is chunked: {answer}"
    );
    assert!(
        answer.contains("\r\n0\r\ngrpc-status: 0\r\n\r\n"),
        "the backend's trailers end the chunked body: {answer}"
    );
    assert_eq!(
        answer.matches("\r\n0\r\n").count(),
        3,
        "each body ends once: {answer}"
    );
    assert!(
        answer.ends_with("connection: close\r\n\r\n7\r\ngrpc 11\r\n0\r\n\r\n"),
        "the length-framed body reached the backend whole, and the connection closed: {answer}"
    );
    assert_eq!(origin.requests(), 3);
    gantry.shutdown(Duration::from_secs(1)).await;
}

/// An h2c backend that sends a body with a `204` (which has none; the `h2` crate refuses one
/// on an answer to `HEAD` by itself): its bytes never reach the HTTP/1 client, where they
/// would be read as the next response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_on_a_204_from_an_h2c_backend_never_reaches_the_client() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let backend = listener.local_addr().expect("addr");
    let serving = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((_, mut respond))) = connection.accept().await {
                    let response = http::Response::builder()
                        .status(204)
                        .header("x-origin", "liar")
                        .body(())
                        .expect("response");
                    if let Ok(mut send) = respond.send_response(response, false) {
                        let _ =
                            send.send_data(Bytes::from_static(b"HTTP/1.1 200 junk\r\n\r\n"), true);
                    }
                }
            });
        }
    });
    let gantry = h2c_port(backend).await;
    let proxy = addr(&gantry, "api", "grpc");
    let requests = concat!(
        "GET /a HTTP/1.1\r\nHost: api.example\r\n\r\n",
        "GET /b HTTP/1.1\r\nHost: api.example\r\nconnection: close\r\n\r\n",
    );
    let answer = raw_exchange(proxy, requests.as_bytes()).await;
    assert!(!answer.contains("junk"), "{answer}");
    assert_eq!(
        answer.matches("HTTP/1.1 204 No Content\r\n").count(),
        2,
        "two answers, each a head alone: {answer}"
    );
    gantry.shutdown(Duration::from_secs(1)).await;
    serving.abort();
}

/// A malformed chunked body from an HTTP/1 client of an h2c port is refused with 400 (the
/// stream to the backend is reset), and the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_to_an_h2c_backend_is_400() {
    let origin = HttpOrigin::start("grpc", OriginProtocol::H2c).await;
    let gantry = h2c_port(origin.addr).await;
    let proxy = addr(&gantry, "api", "grpc");
    // A chunk size that is not hexadecimal.
    let request = "POST /echo HTTP/1.1\r\nHost: api.example\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    let answer = raw_exchange(proxy, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    let text = gantry.metrics().render();
    assert_eq!(
        metric(
            &text,
            "gantry_requests_rejected_total{port=\"grpc\",reason=\"malformed\",service=\"api\"}"
        ),
        1.0
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_and_h2c_backends_carry_grpc_trailers() {
    let origin = HttpOrigin::start("grpc", OriginProtocol::H2c).await;
    let gantry = h2c_port(origin.addr).await;
    let proxy = addr(&gantry, "api", "grpc");
    let stream = TcpStream::connect(proxy).await.expect("connect");
    let mut h2 = H2::over(stream).await;
    let request = Request::post(format!("http://{proxy}/grpc"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("request");
    let (status, trailers) = h2.trailers(request).await;
    assert_eq!(status, StatusCode::OK);
    let trailers = trailers.expect("trailers reach the client");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    let answer = h2.get(&format!("http://{proxy}/plain")).await;
    assert_eq!(
        (answer.status, answer.version),
        (StatusCode::OK, Version::HTTP_2)
    );
    assert_eq!(origin.requests(), 2);
    gantry.shutdown(Duration::from_secs(1)).await;
}
