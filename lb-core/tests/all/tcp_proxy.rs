//! Layer-4 proxying: bytes both ways with half-close, PROXY v1 and v2 headers parsed by the
//! origin, and failover past a refused backend.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::origin::TcpOrigin;
use crate::support::{addr, metric, start};

async fn exchange(proxy: std::net::SocketAddr, payload: &[u8]) -> (String, std::net::SocketAddr) {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let local = stream.local_addr().expect("local addr");
    stream.write_all(payload).await.expect("write");
    // The origin answers only after seeing our FIN: the half-close must pass through while
    // the other direction stays open for the answer.
    stream.shutdown().await.expect("half-close");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    (answer, local)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_relays_both_ways_across_a_half_close() {
    let origin = TcpOrigin::start("echo", false).await;
    let gantry = start(&format!(
        "services:\n  - name: db\n    address: 127.0.0.1\n    ports:\n      - {{ name: tcp, port: 0, backends: [\"{}\"] }}\n",
        origin.addr
    ))
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
        let gantry = start(&format!(
            "services:\n  - name: db\n    address: 127.0.0.1\n    ports:\n      - {{ name: tcp, port: 0, proxy_protocol: {version}, backends: [\"{}\"] }}\n",
            origin.addr
        ))
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
    let gantry = start(&format!(
        "services:\n  - name: db\n    address: 127.0.0.1\n    ports:\n      - {{ name: tcp, port: 0, backends: [\"{dead}\", \"{}\"], backoff: {{ initial: 1h, max: 1h }} }}\n",
        live.addr
    ))
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
