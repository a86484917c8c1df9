//! A port's source ranges: a client outside them is refused at accept, before a byte reaches
//! a backend, and counted; widening or clearing the ranges by a reload lets it in.

use std::time::Duration;

use http::StatusCode;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::client::{get, read_until_closed};
use crate::support::origin::{HttpOrigin, OriginProtocol};
use crate::support::scenario::{Port, Scenario};
use crate::support::{addr, metric};

/// What a client gets from a port: the answer to one request, or nothing when it is reset
/// (the reset may come at connect, at write or at read: the kernel accepted the connection
/// before Gantry refused it).
async fn answer(proxy: std::net::SocketAddr) -> String {
    let Ok(mut stream) = TcpStream::connect(proxy).await else {
        return String::new();
    };
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return String::new();
    }
    read_until_closed(&mut stream).await
}

fn refused(gantry: &gantry::Gantry) -> f64 {
    metric(
        &gantry.metrics().render(),
        "gantry_connections_refused_total{port=\"http\",reason=\"source_range\",service=\"web\"}",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_the_source_ranges_are_refused_before_any_byte_reaches_a_backend() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let config = |ranges: Option<&str>| {
        let port = Port::http("http").backends(&[origin.addr]);
        let port = match ranges {
            Some(ranges) => port.set("source_ranges", ranges),
            None => port,
        };
        Scenario::new().port("web", port)
    };
    // The test's clients come from 127.0.0.1: outside TEST-NET-1.
    let gantry = config(Some("[192.0.2.0/24]")).start().await;
    let proxy = addr(&gantry, "web", "http");
    assert_eq!(answer(proxy).await, "", "no answer, not even an error page");
    assert_eq!(origin.requests(), 0, "nothing reached the backend");
    assert_eq!(refused(&gantry), 1.0);

    // Widened to the clients' network: served.
    gantry
        .apply(config(Some("[192.0.2.0/24, 127.0.0.0/8]")).model())
        .await
        .expect("widened");
    assert!(answer(proxy).await.starts_with("HTTP/1.1 200 "));
    // Narrowed again, then cleared: everyone is let in.
    gantry
        .apply(config(Some("[198.51.100.7]")).model())
        .await
        .expect("narrowed");
    assert_eq!(answer(proxy).await, "");
    assert_eq!(refused(&gantry), 2.0);
    gantry.apply(config(None).model()).await.expect("cleared");
    assert_eq!(get(proxy, "/").await.status, StatusCode::OK);
    assert_eq!(origin.requests(), 2);
    gantry.shutdown(Duration::from_secs(1)).await;
}
