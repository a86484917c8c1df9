//! Where a load balancer's traffic goes, end to end: endpoints churning under load, a
//! terminating endpoint draining, node mode with `externalTrafficPolicy: Local` and its health
//! port, and `allocateLoadBalancerNodePorts: false` forcing pod mode.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use lb_k8s_testing::Kind;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::support::client::read_until_closed;
use crate::support::cluster::{
    endpoint_slice, free_port, load_balancer, origin_behind, pool, slice, Cluster,
};
use crate::support::eventually;
use crate::support::origin::{HttpOrigin, OriginProtocol};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_churning_under_load_fail_no_request() {
    let (first, range) = pool(27);
    let cluster = Cluster::start(&range, "").await;
    let port = free_port(first);
    cluster.create(load_balancer("churn", &[("http", port)]));
    let mut origins = vec![HttpOrigin::start("o0", OriginProtocol::Http1).await];
    cluster.create(slice("churn", 0, "http", origins[0].addr));
    let addr = SocketAddr::new(cluster.ingress_ip("churn").await, port);
    eventually("served", || async { origin_behind(addr).await.is_some() }).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match origin_behind(addr).await {
                    Some(_) => ok.fetch_add(1, Ordering::SeqCst),
                    None => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        })
    };
    // Each round adds a new endpoint, waits until it takes traffic, then removes the oldest:
    // a rollout, one pod at a time.
    for round in 1..=6 {
        let origin = HttpOrigin::start(&format!("o{round}"), OriginProtocol::Http1).await;
        cluster.create(slice("churn", round, "http", origin.addr));
        eventually("the new endpoint takes traffic", || async {
            origin.requests() > 0
        })
        .await;
        cluster.delete(Kind::EndpointSlice, &format!("churn-{}", round - 1));
        origins.push(origin);
    }
    let before_stop = ok.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    load.await.expect("load");
    assert!(
        before_stop >= 12,
        "the load was running: {before_stop} requests"
    );
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "failed requests during the churn"
    );
    assert!(origins[6].requests() > 0);
    assert_eq!(
        cluster.events("churn", "EnsuredLoadBalancer").len(),
        1,
        "a rollout is no news about the load balancer"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_endpoint_gets_no_new_work_and_finishes_its_own() {
    let (first, range) = pool(28);
    let cluster = Cluster::start(&range, "").await;
    let (a, b) = (
        HttpOrigin::start("a", OriginProtocol::Http1).await,
        HttpOrigin::start("b", OriginProtocol::Http1).await,
    );
    let port = free_port(first);
    cluster.create(load_balancer("drain", &[("http", port)]));
    cluster.create(slice("drain", 0, "http", a.addr));
    let addr = SocketAddr::new(cluster.ingress_ip("drain").await, port);
    eventually("a serves", || async {
        origin_behind(addr).await.as_deref() == Some("a")
    })
    .await;

    // A request in flight on a.
    let mut parked = tokio::net::TcpStream::connect(addr).await.expect("connect");
    parked
        .write_all(b"GET /slow HTTP/1.0\r\nHost: lb\r\n\r\n")
        .await
        .expect("write");
    eventually("the request is parked on a", || async { a.parked() == 1 }).await;

    // a terminates (still serving), b is ready: new work goes to b only.
    cluster.create(slice("drain", 1, "http", b.addr));
    cluster.patch(
        Kind::EndpointSlice,
        "drain-0",
        json!({"endpoints": [{"addresses": [a.addr.ip().to_string()],
        "conditions": {"ready": false, "serving": true, "terminating": true}}]}),
    );
    eventually("only b takes new work", || async {
        let mut all_b = true;
        for _ in 0..6 {
            all_b &= origin_behind(addr).await.as_deref() == Some("b");
        }
        all_b
    })
    .await;
    let a_requests = a.requests();
    for _ in 0..10 {
        assert_eq!(origin_behind(addr).await.as_deref(), Some("b"));
    }
    assert_eq!(
        a.requests(),
        a_requests,
        "no new request reached the terminating endpoint"
    );

    // Its own request finishes.
    a.release(1);
    let answer = read_until_closed(&mut parked).await;
    assert!(
        answer.contains("x-origin: a"),
        "the in-flight request completed: {answer}"
    );

    // Gone entirely, and b ready: b serves; with only a serving-terminating endpoint left, it
    // would be used (there is no ready one); a not-serving one never is.
    cluster.delete(Kind::EndpointSlice, "drain-1");
    eventually("no ready endpoint: the terminating one serves", || async {
        origin_behind(addr).await.as_deref() == Some("a")
    })
    .await;
    cluster.patch(
        Kind::EndpointSlice,
        "drain-0",
        json!({"endpoints": [{"addresses": [a.addr.ip().to_string()],
        "conditions": {"ready": false, "serving": false, "terminating": true}}]}),
    );
    eventually("a not-serving endpoint never serves", || async {
        origin_behind(addr).await.is_none()
    })
    .await;
    cluster.stop().await;
}

fn node(name: &str, ip: IpAddr) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_mode_with_local_traffic_only_uses_nodes_whose_health_port_says_200() {
    let (first, range) = pool(29);
    let cluster = Cluster::start(&range, "  backends: nodes\n").await;
    let node_ips: [IpAddr; 2] = [
        "127.0.29.101".parse().expect("ip"),
        "127.0.29.102".parse().expect("ip"),
    ];
    cluster.create(node("node-1", node_ips[0]));
    cluster.create(node("node-2", node_ips[1]));
    let port = free_port(first);
    let mut service = load_balancer("local", &[("http", port)]);
    service["spec"]["externalTrafficPolicy"] = json!("Local");
    let created = cluster.create(service);
    let node_port = created["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("node port") as u16;
    let health_port = created["spec"]["healthCheckNodePort"]
        .as_u64()
        .expect("health port") as u16;

    // What kube-proxy would be on each node: the node port forwarding to a local pod, and the
    // health port saying whether the node has one (node-2 has none: 503).
    let mut keep = Vec::new();
    for (i, ip) in node_ips.iter().enumerate() {
        keep.push(
            HttpOrigin::start_on(
                SocketAddr::new(*ip, node_port),
                &format!("node-{}", i + 1),
                OriginProtocol::Http1,
            )
            .await,
        );
        let health = HttpOrigin::start_on(
            SocketAddr::new(*ip, health_port),
            "health",
            OriginProtocol::Http1,
        )
        .await;
        health.set_health(if i == 0 { 200 } else { 503 });
        keep.push(health);
    }
    let addr = SocketAddr::new(cluster.ingress_ip("local").await, port);
    eventually("only node-1 gets traffic", || async {
        let mut only_one = true;
        for _ in 0..6 {
            only_one &= origin_behind(addr).await.as_deref() == Some("node-1");
        }
        only_one
    })
    .await;

    // A node labelled out of external load balancers is dropped, whatever its health.
    cluster.patch(Kind::Node, "node-1", json!({"metadata": {"labels": {"node.kubernetes.io/exclude-from-external-load-balancers": "true"}}}));
    eventually("node-1 excluded: nothing healthy is left", || async {
        let model = cluster.gantry.model();
        let backends = model.services["default/local"].ports["http"]
            .backends
            .clone();
        backends.iter().all(|b| b.address.ip() != node_ips[0])
    })
    .await;
    cluster.stop().await;
}

#[tokio::test]
async fn without_node_ports_a_load_balancer_goes_to_its_pods_even_in_node_mode() {
    let (first, range) = pool(30);
    let cluster = Cluster::start(&range, "  backends: nodes\n").await;
    let origin = HttpOrigin::start("pod", OriginProtocol::Http1).await;
    let port = free_port(first);
    let mut service = load_balancer("direct", &[("http", port)]);
    service["spec"]["allocateLoadBalancerNodePorts"] = json!(false);
    let created = cluster.create(service);
    assert!(
        created["spec"]["ports"][0]["nodePort"].is_null(),
        "no node port allocated"
    );
    cluster.create(endpoint_slice(
        "direct",
        0,
        "http",
        origin.addr,
        json!({"ready": true}),
    ));
    let addr = SocketAddr::new(cluster.ingress_ip("direct").await, port);
    eventually("the pod serves", || async {
        origin_behind(addr).await.as_deref() == Some("pod")
    })
    .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_and_tcp_share_a_port_number_on_one_load_balancer() {
    use crate::support::udp::{UdpClient, UdpOrigin};
    let (first, range) = pool(36);
    let cluster = Cluster::start(&range, "").await;
    let tcp = HttpOrigin::start("tcp-pod", OriginProtocol::Http1).await;
    let udp = UdpOrigin::start("udp-pod").await;
    // A port number free for both transports.
    let port = loop {
        let port = free_port(first);
        if std::net::UdpSocket::bind((first, port)).is_ok() {
            break port;
        }
    };
    let mut service = load_balancer("dns", &[("dns-tcp", port)]);
    service["spec"]["ports"] = json!([
        {"name": "dns-tcp", "port": port, "protocol": "TCP"},
        {"name": "dns-udp", "port": port, "protocol": "UDP"},
    ]);
    cluster.create(service);
    cluster.create(slice("dns", 0, "dns-tcp", tcp.addr));
    let mut udp_slice = slice("dns", 1, "dns-udp", udp.addr);
    udp_slice["ports"][0]["protocol"] = json!("UDP");
    cluster.create(udp_slice);
    let ip = cluster.ingress_ip("dns").await;
    let addr = SocketAddr::new(ip, port);
    eventually("TCP serves", || async {
        origin_behind(addr).await.as_deref() == Some("tcp-pod")
    })
    .await;
    let client = UdpClient::new().await;
    eventually("UDP serves", || async {
        client
            .ask(addr, "q")
            .await
            .is_some_and(|(origin, _)| origin == "udp-pod")
    })
    .await;
    let ports = cluster.get(Kind::Service, "dns").expect("dns")["status"]["loadBalancer"]
        ["ingress"][0]["ports"]
        .clone();
    assert_eq!(
        ports,
        json!([{"port": port, "protocol": "TCP"}, {"port": port, "protocol": "UDP"}])
    );
    cluster.stop().await;
}
