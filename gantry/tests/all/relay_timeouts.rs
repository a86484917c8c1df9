//! The relay's deadlines, through real sockets and the wall clock (each test checks that the
//! answer came no earlier than its deadline, which shows which timer ended the wait): a
//! backend that does not answer gets the client a 504, one that stalls in its body has the
//! connection closed, a client that stays idle between requests is let go, and so is one that
//! stops taking its answer (with the backend connection it held).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::addr;
use crate::support::client::read_until_closed;
use crate::support::origin::{HttpOrigin, OriginProtocol};
use crate::support::scenario::{Port, Scenario};

const DEADLINE: Duration = Duration::from_millis(300);

/// A backend that reads each request and answers with `answer` (possibly nothing), then
/// holds the connection open until the test ends.
async fn stalling_backend(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                let _ = stream.write_all(answer).await;
                // Held, not closed: the proxy's own deadline must end the exchange.
                let _ = stream.read(&mut head).await;
            });
        }
    });
    address
}

async fn proxied(backend: SocketAddr, timeouts: &str) -> gantry::Gantry {
    Scenario::new()
        .port(
            "web",
            Port::http("http")
                .backends(&[backend])
                .set("timeouts", timeouts),
        )
        .start()
        .await
}

/// A GET sent on a new connection to the port, and when it was sent.
async fn ask(gantry: &gantry::Gantry) -> (TcpStream, Instant) {
    let mut client = TcpStream::connect(addr(gantry, "web", "http"))
        .await
        .expect("connect");
    let asked = Instant::now();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("request");
    (client, asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_does_not_answer_in_time_gets_the_client_a_504() {
    let backend = stalling_backend(b"").await;
    let gantry = proxied(backend, "{ upstream_read: 300ms }").await;
    let (mut client, asked) = ask(&gantry).await;
    let answer = read_until_closed(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 504 "), "{answer}");
    assert!(
        asked.elapsed() >= DEADLINE,
        "not before the backend's time ran out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stalls_in_its_body_has_the_connection_closed() {
    let backend = stalling_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").await;
    let gantry = proxied(backend, "{ upstream_read: 300ms }").await;
    let (mut client, asked) = ask(&gantry).await;
    let answer = read_until_closed(&mut client).await;
    // The head and what came of the body were relayed; the rest never will be, so the client
    // learns by the close (a complete-looking answer would be a lie).
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with("\r\n\r\nabc"), "{answer}");
    assert!(asked.elapsed() >= DEADLINE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_is_let_go_after_client_idle_even_after_a_request() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = proxied(origin.addr, "{ client_idle: 300ms }").await;
    let proxy = addr(&gantry, "web", "http");

    // Idle from the start.
    // (Timed from before the connect: Gantry's wait starts after it.)
    let connecting = Instant::now();
    let mut silent = TcpStream::connect(proxy).await.expect("connect");
    assert_eq!(read_until_closed(&mut silent).await, "");
    assert!(connecting.elapsed() >= DEADLINE);

    // Idle after a kept-alive request: the deadline runs again from its answer. The client
    // waits two thirds of the deadline before asking, so a deadline still counted from the
    // connect would close the connection before one deadline has passed since the request.
    // (Measured from the request, which Gantry answers after it: the test's own reading of
    // the answer may come late on a busy machine.)
    let mut client = TcpStream::connect(proxy).await.expect("connect");
    tokio::time::sleep(DEADLINE * 2 / 3).await;
    let asked = Instant::now();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("request");
    let mut answer = vec![0u8; 4096];
    let n = client.read(&mut answer).await.expect("answer");
    assert!(answer[..n].starts_with(b"HTTP/1.1 200 "));
    assert_eq!(read_until_closed(&mut client).await, "");
    assert!(asked.elapsed() >= DEADLINE);
}

/// A backend that answers every request with a body larger than every buffer on the way,
/// writing until its connection is closed, and reports when that happens.
async fn endless_backend() -> (SocketAddr, tokio::sync::oneshot::Receiver<Instant>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (released, release) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut head = [0u8; 4096];
        let _ = stream.read(&mut head).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
            .await;
        let chunk = vec![b'x'; 64 * 1024];
        while stream.write_all(&chunk).await.is_ok() {}
        let _ = released.send(Instant::now());
    });
    (address, release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_taking_its_answer_is_let_go_with_its_backend_after_client_idle() {
    let (backend, released) = endless_backend().await;
    let gantry = proxied(backend, "{ client_idle: 300ms }").await;
    let (mut client, asked) = ask(&gantry).await;
    // The client reads nothing: its window closes, and Gantry's writes to it stop moving.
    let released_at = tokio::time::timeout(Duration::from_secs(30), released)
        .await
        .expect("the backend connection is closed once the client stalls past client_idle")
        .expect("released");
    assert!(released_at - asked >= DEADLINE, "not before client_idle");
    // What reached the client is a cut answer: the connection ends before its length.
    let answer = read_until_closed(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 200 "));
    assert!(answer.len() < 1 << 30);
}
