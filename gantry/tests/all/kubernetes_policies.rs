//! Service fields and Gantry annotations, end to end through the API server: source ranges,
//! session affinity, protocols, TLS from a Secret, and what a bad annotation does.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use base64::Engine;
use lb_k8s_testing::Kind;
use serde_json::json;

use crate::support::certs::TestCa;
use crate::support::client::tls_connect;
use crate::support::cluster::{ask, free_port, load_balancer, origin_behind, pool, slice, Cluster};
use crate::support::origin::{HttpOrigin, OriginProtocol};
use crate::support::{eventually, metric};

#[tokio::test]
async fn source_ranges_are_set_widened_and_cleared() {
    let (first, range) = pool(23);
    let cluster = Cluster::start(&range, "").await;
    let origin = HttpOrigin::start("a", OriginProtocol::Http1).await;
    let port = free_port(first);
    let mut service = load_balancer("guarded", &[("http", port)]);
    service["spec"]["loadBalancerSourceRanges"] = json!(["10.0.0.0/8"]);
    cluster.create(service);
    cluster.create(slice("guarded", 0, "http", origin.addr));
    let addr = SocketAddr::new(cluster.ingress_ip("guarded").await, port);
    // The listener is up (a listener that refuses everyone still accepts and resets).
    eventually("the listener is up", || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    assert_eq!(
        origin_behind(addr).await,
        None,
        "127.0.0.1 is outside 10.0.0.0/8"
    );
    let refused = |cluster: &Cluster| {
        metric(
            &cluster.gantry.metrics().render(),
            "gantry_connections_refused_total{port=\"http\",reason=\"source_range\",service=\"default/guarded\"}",
        )
    };
    assert!(refused(&cluster) >= 1.0);
    assert_eq!(origin.requests(), 0, "no byte reached the backend");

    cluster.patch(
        Kind::Service,
        "guarded",
        json!({"spec": {"loadBalancerSourceRanges": ["10.0.0.0/8", "127.0.0.0/8"]}}),
    );
    eventually("widened", || async { origin_behind(addr).await.is_some() }).await;
    cluster.patch(
        Kind::Service,
        "guarded",
        json!({"spec": {"loadBalancerSourceRanges": ["10.0.0.0/8"]}}),
    );
    eventually("narrowed", || async { origin_behind(addr).await.is_none() }).await;
    cluster.patch(
        Kind::Service,
        "guarded",
        json!({"spec": {"loadBalancerSourceRanges": null}}),
    );
    eventually("cleared: everyone", || async {
        origin_behind(addr).await.is_some()
    })
    .await;
    cluster.stop().await;
}

#[tokio::test]
async fn client_ip_affinity_sticks_and_switches_off_and_on() {
    let (first, range) = pool(24);
    let cluster = Cluster::start(&range, "").await;
    let origins = [
        HttpOrigin::start("a", OriginProtocol::Http1).await,
        HttpOrigin::start("b", OriginProtocol::Http1).await,
        HttpOrigin::start("c", OriginProtocol::Http1).await,
    ];
    let port = free_port(first);
    let mut service = load_balancer("sticky", &[("http", port)]);
    service["spec"]["sessionAffinity"] = json!("ClientIP");
    service["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 600}});
    cluster.create(service);
    for (i, origin) in origins.iter().enumerate() {
        cluster.create(slice("sticky", i, "http", origin.addr));
    }
    let addr = SocketAddr::new(cluster.ingress_ip("sticky").await, port);
    let all_three = |cluster: &Cluster| {
        let model = cluster.gantry.model();
        model
            .services
            .get("default/sticky")
            .and_then(|s| s.ports.get("http"))
            .map_or(0, |p| p.backends.len())
            == 3
    };
    eventually("three backends", || async { all_three(&cluster) }).await;
    let answers = async || {
        let mut seen = Vec::new();
        for _ in 0..15 {
            seen.push(origin_behind(addr).await.expect("an answer"));
        }
        seen
    };
    let stuck = answers().await;
    assert!(
        stuck.iter().all(|o| *o == stuck[0]),
        "15 requests, one backend: {stuck:?}"
    );

    cluster.patch(
        Kind::Service,
        "sticky",
        json!({"spec": {"sessionAffinity": "None", "sessionAffinityConfig": null}}),
    );
    eventually("affinity off: the requests spread", || async {
        answers().await.into_iter().collect::<BTreeSet<_>>().len() >= 2
    })
    .await;

    cluster.patch(
        Kind::Service,
        "sticky",
        json!({"spec": {"sessionAffinity": "ClientIP"}}),
    );
    eventually("affinity on again", || async {
        let seen = answers().await;
        seen.iter().all(|o| *o == seen[0])
    })
    .await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_bad_annotation_is_reported_and_the_last_good_configuration_keeps_serving() {
    let (first, range) = pool(25);
    let cluster = Cluster::start(&range, "").await;
    let origin = HttpOrigin::start("a", OriginProtocol::Http1).await;
    let port = free_port(first);
    cluster.create(load_balancer("web", &[("http", port)]));
    cluster.create(slice("web", 0, "http", origin.addr));
    let addr = SocketAddr::new(cluster.ingress_ip("web").await, port);
    eventually("served", || async { origin_behind(addr).await.is_some() }).await;

    cluster.patch(
        Kind::Service,
        "web",
        json!({"metadata": {"annotations": {"gantry.io/protocol": "gopher"}}}),
    );
    eventually("a Warning names the annotation", || async {
        cluster
            .events("web", "InvalidConfiguration")
            .iter()
            .any(|e| {
                e["type"] == "Warning"
                    && e["note"]
                        .as_str()
                        .is_some_and(|n| n.contains("gantry.io/protocol") && n.contains("gopher"))
            })
    })
    .await;
    eventually("the condition says why", || async {
        let condition =
            cluster.get(Kind::Service, "web").expect("web")["status"]["conditions"][0].clone();
        (condition["status"].as_str(), condition["reason"].as_str())
            == (Some("False"), Some("InvalidConfiguration"))
    })
    .await;
    assert!(
        origin_behind(addr).await.is_some(),
        "the last good configuration serves"
    );

    // Fixed: HTTP now, so the origin sees X-Forwarded-For.
    cluster.patch(
        Kind::Service,
        "web",
        json!({"metadata": {"annotations": {"gantry.io/protocol": "http"}}}),
    );
    eventually("served as HTTP", || async {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            return false;
        };
        use tokio::io::AsyncWriteExt;
        if stream
            .write_all(b"GET / HTTP/1.0\r\nHost: lb\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        crate::support::client::read_until_closed(&mut stream)
            .await
            .contains("x-seen-xff: 127.0.0.1")
    })
    .await;
    eventually("the condition is good again", || async {
        cluster.get(Kind::Service, "web").expect("web")["status"]["conditions"][0]["status"]
            == "True"
    })
    .await;
    cluster.stop().await;
}

fn tls_secret(name: &str, cert_pem: &[u8], key_pem: &[u8]) -> serde_json::Value {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
           "metadata": {"name": name, "namespace": "default"},
           "data": {"tls.crt": b64(cert_pem), "tls.key": b64(key_pem)}})
}

#[tokio::test]
async fn tls_from_a_secret_is_served_and_rotated_without_a_restart() {
    let (first, range) = pool(26);
    let cluster = Cluster::start(&range, "").await;
    let origin = HttpOrigin::start("a", OriginProtocol::Http1).await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let first_leaf = ca.issue(dir.path(), "one", &["shop.example"]);
    let read = |p: &std::path::Path| std::fs::read(p).expect("pem");
    cluster.create(tls_secret(
        "shop-tls",
        &read(&first_leaf.cert_path),
        &read(&first_leaf.key_path),
    ));
    let port = free_port(first);
    let mut service = load_balancer("shop", &[("https", port)]);
    service["metadata"]["annotations"] =
        json!({"gantry.io/protocol": "tls", "gantry.io/tls-secret": "shop-tls"});
    cluster.create(service);
    cluster.create(slice("shop", 0, "https", origin.addr));
    let addr = SocketAddr::new(cluster.ingress_ip("shop").await, port);
    // A new client each time: a resumed session would show the certificate it began with.
    let served_cert = async || {
        let stream = tls_connect(addr, ca.client_config(&[]), "shop.example")
            .await
            .ok()?;
        let cert = stream.get_ref().1.peer_certificates()?.first()?.clone();
        ask(stream).await.map(|origin| (origin, cert))
    };
    eventually("TLS with the Secret's certificate", || async {
        served_cert()
            .await
            .is_some_and(|(o, cert)| o == "a" && cert == first_leaf.der)
    })
    .await;

    let second_leaf = ca.issue(dir.path(), "two", &["shop.example"]);
    cluster.patch(Kind::Secret, "shop-tls", json!({"data": {
        "tls.crt": base64::engine::general_purpose::STANDARD.encode(read(&second_leaf.cert_path)),
        "tls.key": base64::engine::general_purpose::STANDARD.encode(read(&second_leaf.key_path)),
    }}));
    eventually("the rotated certificate", || async {
        served_cert()
            .await
            .is_some_and(|(_, cert)| cert == second_leaf.der)
    })
    .await;
    assert_eq!(
        cluster.ingress_ip("shop").await,
        addr.ip(),
        "the same listener, the same address"
    );
    cluster.stop().await;
}
