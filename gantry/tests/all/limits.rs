//! The protective limits: request head size and header count (431), the request-head deadline
//! against slow clients (408), ambiguous framing refused and never forwarded (400), and the
//! per-port connection cap.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::certs::TestCa;
use crate::support::client::{raw_exchange, read_until_closed, tls_connect, H1, H2};
use crate::support::origin::{HttpOrigin, OriginProtocol};
use crate::support::scenario::{Port, Scenario};
use crate::support::{addr, eventually, metric, rejected};

async fn limited(origin: &HttpOrigin) -> gantry::Gantry {
    Scenario::new()
        .port(
            "web",
            Port::http("http")
                .backends(&[origin.addr])
                .set("limits", "{ max_header_bytes: 1024, max_headers: 8 }")
                .set("timeouts", "{ header_read: 300ms }"),
        )
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_too_many_headers_get_431_and_never_reach_the_backend() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = limited(&origin).await;
    let proxy = addr(&gantry, "web", "http");

    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(2000)
    );
    let answer = raw_exchange(proxy, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    let many: String = (0..12).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw_exchange(
        proxy,
        format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    let fine = raw_exchange(
        proxy,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(fine.starts_with("HTTP/1.1 200 "), "{fine}");
    assert_eq!(
        origin.requests(),
        1,
        "only the acceptable request was forwarded"
    );
    assert_eq!(rejected(&gantry, "web", "http", "header_too_large"), 1.0);
    assert_eq!(rejected(&gantry, "web", "http", "too_many_headers"), 1.0);
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_request_head_is_answered_408_and_closed() {
    // The head deadline (300 ms here) counts from the head's first byte: a client sending one
    // byte every 50 ms, for ever, is answered 408 at the deadline. A deadline restarted by
    // every read would never fire while the bytes keep coming.
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = limited(&origin).await;
    let stream = TcpStream::connect(addr(&gantry, "web", "http"))
        .await
        .expect("connect");
    let (mut from_proxy, mut to_proxy) = stream.into_split();
    let trickled = Arc::new(AtomicUsize::new(0));
    let trickle_for = Duration::from_secs(3);
    let started = Instant::now();
    let writer = {
        let trickled = trickled.clone();
        tokio::spawn(async move {
            if to_proxy
                .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
                .await
                .is_err()
            {
                return;
            }
            while started.elapsed() < trickle_for {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if to_proxy.write_all(b"a").await.is_err() {
                    return; // Gantry closed the connection
                }
                trickled.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let answer = read_until_closed(&mut from_proxy).await;
    let answered_after = started.elapsed();
    let bytes_by_then = trickled.load(Ordering::SeqCst);
    writer.abort();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        answered_after >= Duration::from_millis(300),
        "answered before the deadline, after {answered_after:?}"
    );
    assert!(
        answered_after < trickle_for && bytes_by_then >= 2,
        "the 408 must come while the client is still trickling (after {answered_after:?}, \
         {bytes_by_then} bytes trickled)"
    );
    assert_eq!(origin.requests(), 0);
    assert_eq!(rejected(&gantry, "web", "http", "header_timeout"), 1.0);
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_message_framing_is_refused_and_never_forwarded() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = limited(&origin).await;
    let proxy = addr(&gantry, "web", "http");
    let smuggling = [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
    ];
    for request in smuggling {
        // `raw_exchange` reads until the server closes: a kept-open connection would hang here.
        let answer = raw_exchange(proxy, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(
            !answer.contains("HTTP/1.1 200"),
            "nothing after the refusal is answered"
        );
    }
    assert_eq!(origin.requests(), 0);
    assert_eq!(rejected(&gantry, "web", "http", "ambiguous_length"), 2.0);
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_with_too_many_headers_get_431() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let leaf = ca.issue(dir.path(), "web", &["web.test"]);
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let tls = format!(
        "{{ certificates: [{{ cert: \"{}\", key: \"{}\" }}] }}",
        leaf.cert_path.display(),
        leaf.key_path.display()
    );
    let gantry = Scenario::new()
        .port(
            "web",
            Port::new("https", "https")
                .backends(&[origin.addr])
                .set("limits", "{ max_headers: 8 }")
                .set("tls", &tls),
        )
        .start()
        .await;
    let tls = tls_connect(
        addr(&gantry, "web", "https"),
        ca.client_config(&[b"h2"]),
        "web.test",
    )
    .await
    .expect("tls");
    let mut h2 = H2::over(tls).await;
    let mut request = Request::get("https://web.test/");
    for i in 0..12 {
        request = request.header(format!("x-h{i}"), "v");
    }
    let answer = h2
        .send(request.body(Full::new(Bytes::new())).expect("request"))
        .await;
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let answer = h2.get("https://web.test/").await;
    assert_eq!(answer.status, StatusCode::OK, "the connection stays usable");
    assert_eq!(origin.requests(), 1);
    gantry.shutdown(Duration::from_secs(1)).await;
}

fn capped(origin: &HttpOrigin, max: u32) -> Scenario {
    Scenario::new().port(
        "web",
        Port::http("http")
            .backends(&[origin.addr])
            .set("limits", &format!("{{ max_connections: {max} }}")),
    )
}

/// At the cap, a connection busy with a request is not cut: a new client waits for a place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_a_busy_one_closes() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = capped(&origin, 1).start().await;
    let proxy = addr(&gantry, "web", "http");
    let mut first = H1::connect(proxy).await.expect("first");
    let busy = tokio::spawn(async move { first.get("/slow").await.map(|a| a.status) });
    eventually("the first request to reach the origin", || async {
        origin.parked() == 1
    })
    .await;

    // The second connection is held, not refused; its request waits.
    let mut second = H1::connect(proxy).await.expect("second connects");
    let mut waiting = tokio::spawn(async move { second.get("/").await.map(|a| a.status) });
    // A negative check needs some time; it can only pass wrongly, never fail wrongly.
    let early = tokio::time::timeout(Duration::from_millis(300), &mut waiting).await;
    assert!(
        early.is_err(),
        "the second request must not be served while the first is busy"
    );

    origin.release(1);
    assert_eq!(busy.await.expect("join").expect("first"), StatusCode::OK);
    let status = waiting.await.expect("join").expect("second answer");
    assert_eq!(status, StatusCode::OK);
    let text = gantry.metrics().render();
    assert_eq!(
        metric(
            &text,
            "gantry_connections_total{port=\"http\",service=\"web\"}"
        ),
        2.0
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}

/// At the cap, connections that only wait for a request make room for new clients, the one
/// idle longest first: clients holding connections open cannot keep others out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_the_connection_idle_longest_makes_room_for_a_new_client() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = capped(&origin, 3).start().await;
    let proxy = addr(&gantry, "web", "http");
    // A keep-alive client idle after one request, then two connections that never send.
    let mut kept = H1::connect(proxy).await.expect("keep-alive");
    assert_eq!(kept.get("/").await.expect("answer").status, StatusCode::OK);
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(proxy).await.expect("silent"));
    }
    eventually("three open connections", || async {
        metric(
            &gantry.metrics().render(),
            "gantry_connections_active{port=\"http\",service=\"web\"}",
        ) == 3.0
    })
    .await;

    // Each new client (staying connected) is served at once, each taking the place of the
    // connection idle longest: the keep-alive client first, then the silent ones.
    let mut newcomers = Vec::new();
    for _ in 0..3 {
        let mut client = H1::connect(proxy).await.expect("connect");
        let answer = tokio::time::timeout(Duration::from_secs(10), client.get("/"))
            .await
            .expect("served without waiting for an idle timeout")
            .expect("answer");
        assert_eq!(answer.status, StatusCode::OK);
        newcomers.push(client);
    }
    assert!(
        kept.get("/").await.is_err(),
        "the oldest idle connection was closed"
    );
    for mut stream in silent {
        let closed = read_until_closed(&mut stream).await;
        assert_eq!(closed, "", "closed quietly, with no answer");
    }
    gantry.shutdown(Duration::from_secs(1)).await;
}
