//! The Kubernetes source with routable addresses, as in a real cluster: the whole scenario
//! (API server, Gantry, pods) runs inside a network namespace this test makes, where the
//! pods have addresses of a pod network and the load-balancer pool is routed to the
//! host as the docs say (`ip route add local POOL dev lo`), not configured on any interface.
//! The API server refuses loopback endpoints, as a real one does.

use std::net::{IpAddr, SocketAddr};

use lb_k8s_testing::Kind;
use serde_json::json;

use crate::support::cluster::{free_port, load_balancer, origin_behind, slice, Cluster};
use crate::support::eventually;
use crate::support::netns::Netns;
use crate::support::origin::{HttpOrigin, OriginProtocol};

/// The namespace: `pods`, an interface (a veth pair, both ends inside) with 10.200.0.2 and .3;
/// the pool 10.201.0.0/28 routed to the namespace's own host.
fn pod_network() -> Netns {
    let netns = Netns::create("k8s");
    netns.ip(&[
        "link",
        "add",
        "pods",
        "type",
        "veth",
        "peer",
        "name",
        "pods-peer",
    ]);
    netns.ip(&["addr", "add", "10.200.0.2/24", "dev", "pods"]);
    netns.ip(&["addr", "add", "10.200.0.3/24", "dev", "pods"]);
    netns.ip(&["link", "set", "pods", "up"]);
    netns.ip(&["link", "set", "pods-peer", "up"]);
    netns.ip(&["route", "add", "local", "10.201.0.0/28", "dev", "lo"]);
    netns
}

#[test]
fn routable_pod_addresses_and_a_routed_pool_serve_as_in_a_real_cluster() {
    pod_network().run(scenario);
}

async fn scenario() {
    let first: IpAddr = "10.201.0.1".parse().expect("ip");
    let cluster = Cluster::start_faithful("10.201.0.0/28", "").await;
    let pods = [
        HttpOrigin::start_on(
            "10.200.0.2:0".parse().expect("addr"),
            "pod-2",
            OriginProtocol::Http1,
        )
        .await,
        HttpOrigin::start_on(
            "10.200.0.3:0".parse().expect("addr"),
            "pod-3",
            OriginProtocol::Http1,
        )
        .await,
    ];
    let port = free_port(IpAddr::from([127, 0, 0, 1]));
    cluster.create(load_balancer("web", &[("http", port)]));
    // A real API server refuses loopback endpoints; this one does too.
    let refused = cluster.api.create(slice(
        "web",
        9,
        "http",
        "127.0.0.1:8080".parse().expect("addr"),
    ));
    assert!(
        matches!(&refused, Err(e) if e.code == 422 && e.message.contains("loopback")),
        "{refused:?}"
    );
    for (i, pod) in pods.iter().enumerate() {
        cluster.create(slice("web", i, "http", pod.addr));
    }
    let ip = cluster.ingress_ip("web").await;
    assert_eq!(
        ip, first,
        "the pool's first address (10.201.0.0/28 leaves out .0)"
    );
    let addr = SocketAddr::new(ip, port);
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    eventually("both pods answer through the routed address", || async {
        let origin = origin_behind(addr).await;
        let mut seen = seen.lock().expect("lock");
        seen.extend(origin);
        seen.len() == 2
    })
    .await;
    // One pod goes: no new request reaches it.
    cluster.delete(Kind::EndpointSlice, "web-0");
    eventually("only pod-3 serves", || async {
        let mut only = true;
        for _ in 0..4 {
            only &= origin_behind(addr).await.as_deref() == Some("pod-3");
        }
        only
    })
    .await;
    let status = cluster.get(Kind::Service, "web").expect("web")["status"]["loadBalancer"]
        ["ingress"][0]
        .clone();
    assert_eq!(status["ipMode"], json!("Proxy"));
    cluster.stop().await;
}
