//! Layer-4 proxying: bytes both ways with half-close, PROXY v1 and v2 headers parsed by the
//! origin, and failover past a refused backend.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::client::read_until_closed;
use crate::support::origin::TcpOrigin;
use crate::support::scenario::{Port, Scenario};
use crate::support::{addr, metric};

async fn exchange(proxy: std::net::SocketAddr, payload: &[u8]) -> (String, std::net::SocketAddr) {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let local = stream.local_addr().expect("local addr");
    stream.write_all(payload).await.expect("write");
    // The origin answers only after seeing our FIN: the half-close must pass through while
    // the other direction stays open for the answer.
    stream.shutdown().await.expect("half-close");
    let answer = read_until_closed(&mut stream).await;
    (answer, local)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_relays_both_ways_across_a_half_close() {
    let origin = TcpOrigin::start("echo", false).await;
    let gantry = Scenario::new()
        .port("db", Port::tcp("tcp").backends(&[origin.addr]))
        .start()
        .await;
    let proxy = addr(&gantry, "db", "tcp");
    let big = vec![b'x'; 1 << 20];
    let (answer, _) = exchange(proxy, &big).await;
    assert_eq!(answer.len(), "echo:".len() + big.len());
    let text = gantry.metrics().render();
    let labels = format!(
        "{{backend=\"{}\",port=\"tcp\",service=\"db\"}}",
        origin.addr
    );
    assert_eq!(
        metric(&text, &format!("gantry_bytes_received_total{labels}")),
        big.len() as f64
    );
    assert_eq!(
        metric(&text, &format!("gantry_bytes_sent_total{labels}")),
        answer.len() as f64
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_headers_tell_the_backend_who_the_client_is() {
    for version in ["v1", "v2"] {
        let origin = TcpOrigin::start("pp", true).await;
        let gantry = Scenario::new()
            .port(
                "db",
                Port::tcp("tcp")
                    .set("proxy_protocol", version)
                    .backends(&[origin.addr]),
            )
            .start()
            .await;
        let proxy = addr(&gantry, "db", "tcp");
        let (answer, client) = exchange(proxy, b"hello").await;
        assert_eq!(answer, "pp:hello", "{version}");
        let headers = origin.proxy_headers();
        assert_eq!(headers.len(), 1, "{version}");
        assert_eq!(headers[0].source, client, "{version}");
        assert_eq!(headers[0].destination, proxy, "{version}");
        gantry.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tcp_backend_is_passed_over() {
    let live = TcpOrigin::start("live", false).await;
    let dead = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        listener.local_addr().expect("addr")
    };
    let gantry = Scenario::new()
        .port(
            "db",
            Port::tcp("tcp")
                .backends(&[dead, live.addr])
                .set("backoff", "{ initial: 1h, max: 1h }"),
        )
        .start()
        .await;
    let proxy = addr(&gantry, "db", "tcp");
    for _ in 0..4 {
        assert_eq!(exchange(proxy, b"q").await.0, "live:q");
    }
    let text = gantry.metrics().render();
    let labels = format!("{{backend=\"{dead}\",port=\"tcp\",service=\"db\"}}");
    assert_eq!(
        metric(
            &text,
            &format!("gantry_upstream_connect_errors_total{labels}")
        ),
        1.0
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}
