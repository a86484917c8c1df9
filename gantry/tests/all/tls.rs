//! TLS termination: ALPN choosing HTTP/2 or HTTP/1.1, SNI choosing the certificate, session
//! resumption, TLS-terminated TCP with the server name passed on in a PROXY v2 header.

use std::time::Duration;

use http::{StatusCode, Version};
use rustls::client::Resumption;
use tokio::io::AsyncWriteExt;

use crate::support::certs::{Leaf, TestCa};
use crate::support::client::{read_until_closed, tls_connect, H1, H2};
use crate::support::origin::{HttpOrigin, OriginProtocol, TcpOrigin};
use crate::support::scenario::{Port, Scenario};
use crate::support::{addr, eventually, metric};

/// A port's `tls:` value serving these certificates, the first one the default.
fn certificates(leaves: &[&Leaf]) -> String {
    let list: Vec<String> = leaves
        .iter()
        .map(|leaf| {
            format!(
                "{{ cert: \"{}\", key: \"{}\" }}",
                leaf.cert_path.display(),
                leaf.key_path.display()
            )
        })
        .collect();
    format!("{{ certificates: [{}] }}", list.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_speaks_http2_when_alpn_offers_it_and_http1_otherwise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let leaf = ca.issue(dir.path(), "web", &["web.test"]);
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = Scenario::new()
        .port(
            "web",
            Port::new("https", "https")
                .backends(&[origin.addr])
                .set("tls", &certificates(&[&leaf])),
        )
        .start()
        .await;
    let proxy = addr(&gantry, "web", "https");

    let tls = tls_connect(proxy, ca.client_config(&[b"h2", b"http/1.1"]), "web.test")
        .await
        .expect("tls");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h2 = H2::over(tls).await;
    for _ in 0..3 {
        let answer = h2.get("https://web.test/").await;
        assert_eq!(
            (answer.status, answer.version),
            (StatusCode::OK, Version::HTTP_2)
        );
        assert_eq!(answer.header("x-seen-xfp"), "https");
    }

    let tls = tls_connect(proxy, ca.client_config(&[b"http/1.1"]), "web.test")
        .await
        .expect("tls");
    let mut h1 = H1::over(tls, "web.test".into()).await.expect("h1");
    let answer = h1.get("/").await.expect("response");
    assert_eq!(
        (answer.status, answer.version),
        (StatusCode::OK, Version::HTTP_11)
    );

    let text = gantry.metrics().render();
    assert_eq!(
        metric(
            &text,
            "gantry_tls_handshakes_total{port=\"https\",service=\"web\"}"
        ),
        2.0
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate_and_unknown_names_get_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let default = ca.issue(dir.path(), "default", &["default.test"]);
    let a = ca.issue(dir.path(), "a", &["a.test"]);
    let wildcard = ca.issue(dir.path(), "b", &["*.b.test"]);
    let gantry = Scenario::new()
        .port(
            "web",
            Port::new("https", "https").set("tls", &certificates(&[&default, &a, &wildcard])),
        )
        .start()
        .await;
    let proxy = addr(&gantry, "web", "https");
    let client = ca.client_config(&[b"http/1.1"]);
    for (name, expected) in [
        ("a.test", &a),
        ("x.b.test", &wildcard),
        ("default.test", &default),
    ] {
        let tls = tls_connect(proxy, client.clone(), name)
            .await
            .expect("verified handshake");
        let served = &tls.get_ref().1.peer_certificates().expect("certificate")[0];
        assert_eq!(served, &expected.der, "certificate for {name}");
    }
    // An unknown name gets the default certificate, which the client rightly refuses.
    let err = tls_connect(proxy, client, "unknown.test")
        .await
        .expect_err("name mismatch");
    let err = err.to_string();
    assert!(
        err.contains("not valid for name") && err.contains("default.test"),
        "{err}"
    );
    // The server learns of the refusal from the client's alert, after the client returned.
    eventually("the refused handshake to be counted", || {
        let text = gantry.metrics().render();
        async move {
            metric(
                &text,
                "gantry_tls_handshake_failures_total{port=\"https\",service=\"web\"}",
            ) == 1.0
        }
    })
    .await;
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_client_resumes_its_tls_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let leaf = ca.issue(dir.path(), "web", &["web.test"]);
    let origin = TcpOrigin::start("o", false).await;
    let gantry = Scenario::new()
        .port(
            "db",
            Port::new("tls", "tls")
                .backends(&[origin.addr])
                .set("tls", &certificates(&[&leaf])),
        )
        .start()
        .await;
    let proxy = addr(&gantry, "db", "tls");
    let mut config = (*ca.client_config(&[])).clone();
    config.resumption = Resumption::in_memory_sessions(16);
    let config = std::sync::Arc::new(config);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let mut tls = tls_connect(proxy, config.clone(), "web.test")
            .await
            .expect("tls");
        kinds.push(tls.get_ref().1.handshake_kind());
        // Finish the exchange so the session ticket is received before the next connection.
        tls.write_all(b"x").await.expect("write");
        tls.shutdown().await.expect("close_notify");
        let answer = read_until_closed(&mut tls).await;
        assert_eq!(answer, "o:x");
    }
    assert_eq!(
        kinds,
        [
            Some(rustls::HandshakeKind::Full),
            Some(rustls::HandshakeKind::Resumed)
        ]
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_terminated_tcp_reaches_a_plain_backend_with_the_server_name_in_proxy_v2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let leaf = ca.issue(dir.path(), "db", &["db.test"]);
    let origin = TcpOrigin::start("db", true).await;
    let gantry = Scenario::new()
        .port(
            "db",
            Port::new("tls", "tls")
                .set("proxy_protocol", "v2")
                .backends(&[origin.addr])
                .set("tls", &certificates(&[&leaf])),
        )
        .start()
        .await;
    let proxy = addr(&gantry, "db", "tls");
    let mut tls = tls_connect(proxy, ca.client_config(&[]), "db.test")
        .await
        .expect("tls");
    let client_addr = tls.get_ref().0.local_addr().expect("local addr");
    tls.write_all(b"select 1").await.expect("write");
    tls.shutdown().await.expect("half-close");
    let answer = read_until_closed(&mut tls).await;
    assert_eq!(answer, "db:select 1");
    let headers = origin.proxy_headers();
    assert_eq!(headers.len(), 1);
    assert_eq!(headers[0].source, client_addr);
    assert_eq!(headers[0].destination, proxy);
    assert_eq!(headers[0].authority.as_deref(), Some("db.test"));
    gantry.shutdown(Duration::from_secs(1)).await;
}
