//! Gantry's HTTP/1.1 relay, through real sockets: pipelined requests answered in order (which
//! pingora's path did not do: it proves the relay served them), requests HTTP/1.1 forbids
//! forwarding refused before any byte reaches a backend, `Expect: 100-continue`, HTTP/1.0
//! clients, and backends that close kept-alive connections behind Gantry's back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::client::{raw_exchange, read_until_closed, H1};
use crate::support::origin::{HttpOrigin, OriginProtocol};
use crate::support::scenario::{Port, Scenario};
use crate::support::{addr, eventually, rejected};

async fn proxied(origin: &HttpOrigin) -> gantry::Gantry {
    Scenario::web(origin.addr).start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = proxied(&origin).await;
    let proxy = addr(&gantry, "web", "http");
    // Three requests in one write; the origin answers with the length of each body.
    let pipelined = "POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx\
                     POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nxx\
                     POST /3 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nxxx";
    let answer = raw_exchange(proxy, pipelined.as_bytes()).await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 3, "{answer}");
    let (first, second, third) = (
        answer.find("o 1").expect("first answer"),
        answer.find("o 2").expect("second answer"),
        answer.find("o 3").expect("third answer"),
    );
    assert!(first < second && second < third, "in order: {answer}");
    assert_eq!(origin.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_http11_forbids_forwarding_are_refused_and_never_reach_the_backend() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = proxied(&origin).await;
    let proxy = addr(&gantry, "web", "http");
    let malformed = [
        "GET / HTTP/1.1\r\n\r\n".to_owned(),                    // no Host
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(), // two Hosts
        "GET / HTTP/1.1\r\nHost: a b\r\n\r\n".into(),          // not a uri-host
        "GET / HTTP/1.1\r\nHost: a:8o\r\n\r\n".into(),         // not a port
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n".into(),
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n".into(),
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
        // A bare LF in chunked framing, and an endless chunk extension.
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"
            .into(),
        format!(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;{}\r\nhello\r\n0\r\n\r\n",
            "e".repeat(4000)
        ),
    ];
    for request in &malformed {
        let answer = raw_exchange(proxy, request.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "{request:?} got {answer}"
        );
    }
    let answer = raw_exchange(proxy, b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
    assert_eq!(origin.requests(), 0, "nothing reached the backend");
    assert_eq!(
        rejected(&gantry, "web", "http", "malformed"),
        malformed.len() as f64
    );
    assert_eq!(rejected(&gantry, "web", "http", "method_not_allowed"), 1.0);
    // The same requests made well are served.
    let answer = raw_exchange(
        proxy,
        b"POST / HTTP/1.1\r\nHost: a:80\r\nContent-Length: 3, 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        answer.contains("\r\no 3\r\n"),
        "a length list of one value is one length: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_expects_100_continue_gets_it_then_its_body_goes_through() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = proxied(&origin).await;
    let proxy = addr(&gantry, "web", "http");
    let mut client = TcpStream::connect(proxy).await.expect("connect");
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\nConnection: close\r\n\r\n")
        .await
        .expect("head");
    // The body is held back until the backend's 100 comes through.
    let mut interim = Vec::new();
    while !interim.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), client.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(1))), "the interim answer came whole");
        interim.push(byte[0]);
    }
    assert!(
        interim.starts_with(b"HTTP/1.1 100 "),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    client.write_all(b"body").await.expect("body");
    let answer = read_until_closed(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("\r\no 4\r\n"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_client_is_answered_and_its_connection_closed() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = proxied(&origin).await;
    let proxy = addr(&gantry, "web", "http");
    // `read_until_closed` fails the test if Gantry keeps the connection open.
    let answer = raw_exchange(proxy, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // The origin's chunked answer, decoded for HTTP/1.0.
    assert!(answer.ends_with("\r\n\r\no 0"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("transfer-encoding"),
        "{answer}"
    );
}

/// A backend that answers one request per connection and then closes it without saying so,
/// as servers with a short keep-alive timeout do; counts its connections.
async fn one_answer_per_connection() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if !matches!(stream.read(&mut byte).await, Ok(1)) {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    (address, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_closing_kept_connections_behind_gantrys_back_fails_no_request() {
    let (backend, connections) = one_answer_per_connection().await;
    let gantry = Scenario::new()
        .port("web", Port::http("http").backends(&[backend]))
        .start()
        .await;
    let proxy = addr(&gantry, "web", "http");
    let mut client = H1::connect(proxy).await.expect("connect");
    for i in 0..10 {
        let answer = client.get("/").await.expect("answer");
        assert_eq!(answer.status, 200, "request {i}");
    }
    // Each request needed a connection of its own: every stale one was noticed (when taken,
    // or by the retry on a fresh one), none was answered for.
    assert_eq!(connections.load(Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_when_draining_starts_is_answered_then_its_connection_closed() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = proxied(&origin).await;
    let proxy = addr(&gantry, "web", "http");
    let mut client = TcpStream::connect(proxy).await.expect("connect");
    // A keep-alive request, held at the origin.
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("request");
    eventually("the request to reach the origin", || async {
        origin.parked() == 1
    })
    .await;
    let shutdown = tokio::spawn({
        let gantry = gantry.clone();
        async move { gantry.shutdown(Duration::from_secs(10)).await }
    });
    eventually("the listener to stop accepting", || async {
        TcpStream::connect(proxy).await.is_err()
    })
    .await;
    origin.release(1);
    // `read_until_closed` fails the test if Gantry keeps the connection open.
    let answer = read_until_closed(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    shutdown.await.expect("shutdown");
}

/// A backend that reads each request head and closes without answering (as one that crashed
/// mid-request); the number of requests it took.
async fn dies_before_answering() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let taken = Arc::new(AtomicUsize::new(0));
    let counted = taken.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = [0u8; 4096];
            if matches!(stream.read(&mut head).await, Ok(n) if n > 0) {
                counted.fetch_add(1, Ordering::SeqCst);
            }
            drop(stream);
        }
    });
    (address, taken)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_whose_backend_dies_before_answering_goes_to_another() {
    let (dying, taken) = dies_before_answering().await;
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = Scenario::new()
        .port("web", Port::http("http").backends(&[dying, origin.addr]))
        .start()
        .await;
    let proxy = addr(&gantry, "web", "http");
    for i in 0..6 {
        let answer = raw_exchange(
            proxy,
            format!("GET /{i} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "GET {i}: {answer}");
    }
    assert!(
        taken.load(Ordering::SeqCst) >= 1,
        "the dying backend was tried"
    );
    assert_eq!(origin.requests(), 6, "every GET was answered by the origin");

    // A POST may have had effects: it is not sent again, and the client is told. A fresh
    // port whose round-robin starts with the dying backend.
    let (dying, taken) = dies_before_answering().await;
    let other = HttpOrigin::start("p", OriginProtocol::Http1).await;
    let gantry = Scenario::new()
        .port("post", Port::http("http").backends(&[dying, other.addr]))
        .start()
        .await;
    let answer = raw_exchange(
        addr(&gantry, "post", "http"),
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    assert_eq!(taken.load(Ordering::SeqCst), 1);
    assert_eq!(other.requests(), 0, "not sent to another backend");
}
