//! Shared test support: certificates, origins, clients, and starting Gantry from YAML.

pub mod access_log;
pub mod binary;
pub mod certs;
pub mod client;
pub mod cluster;
pub mod fabric;
pub mod failover;
pub mod fake_bird;
pub mod keep_alive;
pub mod load;
pub mod netns;
pub mod origin;
pub mod promtool;
pub mod scenario;
pub mod steady;
pub mod udp;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use gantry::Gantry;
use lb_config::Model;

/// An address that refuses connections for as long as this value lives: a socket bound to it
/// but not listening, so the kernel resets every connection. (A port merely freed could be
/// taken meanwhile by another test's listener, which would then answer.)
pub struct Refusing {
    _socket: tokio::net::TcpSocket,
    pub addr: std::net::SocketAddr,
}

impl Refusing {
    pub fn new() -> Refusing {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        let addr = socket.local_addr().expect("address");
        Refusing {
            _socket: socket,
            addr,
        }
    }
}

/// Parses test YAML (absolute paths only).
pub fn model(yaml: &str) -> Model {
    lb_config::parse_str(yaml, Path::new("/"))
        .unwrap_or_else(|err| panic!("test config: {err}\n{yaml}"))
}

/// The bound address of `service`/`port`.
pub fn addr(gantry: &Gantry, service: &str, port: &str) -> std::net::SocketAddr {
    gantry
        .listener_addr(service, port)
        .unwrap_or_else(|| panic!("no listener {service}/{port}"))
}

/// Requests refused before a backend on `port` of `service`, for `reason` (a series that
/// does not exist fails the test, as with [`metric`]).
#[track_caller]
pub fn rejected(gantry: &Gantry, service: &str, port: &str, reason: &str) -> f64 {
    metric(
        &gantry.metrics().render(),
        &format!(
            "gantry_requests_rejected_total{{port=\"{port}\",reason=\"{reason}\",service=\"{service}\"}}"
        ),
    )
}

/// The value of one series in `/metrics` text, e.g.
/// `gantry_upstream_connect_errors_total{backend="127.0.0.1:1",port="p",service="s"}`. A
/// series that does not exist fails the test: a missing or renamed series must never read as
/// a zero.
#[track_caller]
pub fn metric(text: &str, series: &str) -> f64 {
    series_value(text, series)
        .unwrap_or_else(|| panic!("no series `{series}` in the metrics:\n{text}"))
}

/// Whether `/metrics` text has the series at all.
pub fn has_series(text: &str, series: &str) -> bool {
    series_value(text, series).is_some()
}

fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?;
        // The whole series: `name{labels} value`, not a longer name or label set.
        value.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// Polls `condition` until it holds, failing the test after 10 s. For conditions that become
/// true through another task; the short pause between polls is not a timing assumption.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
