//! End to end with a Kubernetes API server: Services and EndpointSlices created through the
//! API become load balancers that real clients reach, and Gantry reports back through the
//! API (status, finalizer, Events).

use std::net::SocketAddr;

use lb_k8s_testing::Kind;
use serde_json::json;

use crate::support::cluster::{free_port, load_balancer, origin_behind, pool, slice, Cluster};
use crate::support::origin::{HttpOrigin, OriginProtocol};
use crate::support::{eventually, metric};

#[tokio::test]
async fn a_load_balancer_follows_its_endpoints_and_goes_with_its_service() {
    let (first, range) = pool(20);
    let cluster = Cluster::start(&range, "").await;
    let a = HttpOrigin::start("a", OriginProtocol::Http1).await;
    let b = HttpOrigin::start("b", OriginProtocol::Http1).await;
    let port = free_port(first);
    cluster.create(load_balancer("web", &[("http", port)]));
    cluster.create(slice("web", 0, "http", a.addr));
    cluster.create(slice("web", 1, "http", b.addr));
    let ip = cluster.ingress_ip("web").await;
    assert_eq!(ip, first, "the first address of the pool");
    let addr = SocketAddr::new(ip, port);

    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    eventually("both endpoints answer", || async {
        let origin = origin_behind(addr).await;
        let mut seen = seen.lock().expect("lock");
        seen.extend(origin);
        seen.len() == 2
    })
    .await;

    let service = cluster.get(Kind::Service, "web").expect("service");
    assert_eq!(
        service["metadata"]["finalizers"],
        json!(["service.kubernetes.io/load-balancer-cleanup"])
    );
    let ingress = &service["status"]["loadBalancer"]["ingress"][0];
    assert_eq!(ingress["ipMode"], "Proxy");
    assert_eq!(ingress["ports"], json!([{"port": port, "protocol": "TCP"}]));
    assert_eq!(cluster.events("web", "EnsuredLoadBalancer").len(), 1);

    // /config shows where the service came from; the source's metrics count what it did.
    let config = crate::support::client::get(cluster.admin(), "/config").await;
    let config: serde_json::Value = serde_json::from_str(&config.body).expect("json");
    let source = &config["config"]["services"]["default/web"]["source"]["kubernetes"];
    assert_eq!(
        (
            source["kind"].as_str(),
            source["namespace"].as_str(),
            source["name"].as_str()
        ),
        (Some("Service"), Some("default"), Some("web"))
    );
    assert_eq!(source["uid"], service["metadata"]["uid"]);
    let metrics = cluster.gantry.metrics().render();
    assert!(
        metric(
            &metrics,
            "gantry_kubernetes_watch_events_total{kind=\"EndpointSlice\",outcome=\"applied\"}"
        ) >= 2.0
    );
    assert_eq!(
        metric(
            &metrics,
            "gantry_kubernetes_pool_addresses_in_use{pool=\"main\"}"
        ),
        1.0
    );
    assert!(
        metric(
            &metrics,
            "gantry_kubernetes_programming_duration_seconds_count"
        ) >= 1.0
    );
    assert!(
        metric(
            &metrics,
            "gantry_kubernetes_api_writes_total{outcome=\"ok\",what=\"status\"}"
        ) >= 1.0
    );

    // Scaled to zero: the address stays, nothing answers; scaled back: served again.
    cluster.delete(Kind::EndpointSlice, "web-0");
    cluster.delete(Kind::EndpointSlice, "web-1");
    eventually("no endpoint answers", || async {
        origin_behind(addr).await.is_none()
    })
    .await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_ok(),
        "the listener stays"
    );
    cluster.create(slice("web", 2, "http", b.addr));
    eventually("b answers again", || async {
        origin_behind(addr).await.as_deref() == Some("b")
    })
    .await;
    assert_eq!(
        cluster.ingress_ip("web").await,
        ip,
        "the address never changed"
    );

    // Deleted: the listener goes, then the finalizer, then the object.
    cluster.delete(Kind::Service, "web");
    eventually("the Service is gone", || async {
        cluster.get(Kind::Service, "web").is_none()
    })
    .await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is gone"
    );
    assert_eq!(cluster.events("web", "DeletedLoadBalancer").len(), 1);
    cluster.stop().await;
}

#[tokio::test]
async fn type_and_port_changes_keep_the_address() {
    let (first, range) = pool(21);
    let node: std::net::IpAddr = "127.0.21.200".parse().expect("ip");
    let cluster = Cluster::start(&range, "  node_port_address: 127.0.21.200\n").await;
    let origin = HttpOrigin::start("a", OriginProtocol::Http1).await;
    let port = free_port(first);
    let mut service = load_balancer("shop", &[("http", port)]);
    service["spec"] = json!({"type": "ClusterIP", "ports": [{"name": "http", "port": port}]});
    cluster.create(service);
    cluster.create(slice("shop", 0, "http", origin.addr));

    // NodePort: served on the node-facing address at the allocated node port.
    let node_port = |cluster: &Cluster| {
        cluster.get(Kind::Service, "shop").expect("shop")["spec"]["ports"][0]["nodePort"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
    };
    cluster.patch(Kind::Service, "shop", json!({"spec": {"type": "NodePort"}}));
    let allocated = node_port(&cluster).expect("a node port");
    let at_node = SocketAddr::new(node, allocated);
    eventually("served at the node port", || async {
        origin_behind(at_node).await.is_some()
    })
    .await;

    // LoadBalancer: an address of the pool; the node port is no longer Gantry's to serve.
    cluster.patch(
        Kind::Service,
        "shop",
        json!({"spec": {"type": "LoadBalancer", "loadBalancerClass": "gantry.io/lb"}}),
    );
    let ip = cluster.ingress_ip("shop").await;
    eventually("served at the load balancer", || async {
        origin_behind(SocketAddr::new(ip, port)).await.is_some()
    })
    .await;
    eventually("not at the node port", || async {
        origin_behind(at_node).await.is_none()
    })
    .await;

    // A port change moves the listener, not the address.
    let other = free_port(ip);
    cluster.patch(
        Kind::Service,
        "shop",
        json!({"spec": {"ports": [{"name": "http", "port": other}]}}),
    );
    eventually("served on the new port", || async {
        origin_behind(SocketAddr::new(ip, other)).await.is_some()
    })
    .await;
    assert!(
        origin_behind(SocketAddr::new(ip, port)).await.is_none(),
        "the old port is closed"
    );
    assert_eq!(cluster.ingress_ip("shop").await, ip);

    // Back to NodePort: the load balancer goes (its listener, then its finalizer), the node
    // port is served again.
    cluster.patch(Kind::Service, "shop", json!({"spec": {"type": "NodePort"}}));
    let finalizer_gone = |cluster: &Cluster| {
        cluster.get(Kind::Service, "shop").expect("shop")["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty)
    };
    eventually("the finalizer is gone", || async {
        finalizer_gone(&cluster)
    })
    .await;
    assert!(
        origin_behind(SocketAddr::new(ip, other)).await.is_none(),
        "the load balancer is gone"
    );
    assert_eq!(cluster.events("shop", "DeletedLoadBalancer").len(), 1);
    let at_node = SocketAddr::new(node, node_port(&cluster).expect("a node port"));
    eventually("served at the node port again", || async {
        origin_behind(at_node).await.is_some()
    })
    .await;

    // ClusterIP: nothing of Gantry's is left.
    cluster.patch(
        Kind::Service,
        "shop",
        json!({"spec": {"type": "ClusterIP"}}),
    );
    eventually("the node port closes", || async {
        origin_behind(at_node).await.is_none()
    })
    .await;
    assert!(finalizer_gone(&cluster));
    cluster.stop().await;
}

#[tokio::test]
async fn a_restart_readopts_every_address_and_serves_at_once() {
    let (first, range) = pool(22);
    let mut cluster = Cluster::start(&range, "").await;
    let origin = HttpOrigin::start("a", OriginProtocol::Http1).await;
    let port = free_port(first);
    let names = ["one", "two", "three"];
    for (i, name) in names.iter().enumerate() {
        cluster.create(load_balancer(name, &[("http", port)]));
        cluster.create(slice(name, i, "http", origin.addr));
    }
    let mut before = Vec::new();
    for name in names {
        before.push(cluster.ingress_ip(name).await);
    }
    // Deleting "one" while Gantry is down; "four" arrives meanwhile. After the restart "two"
    // and "three" keep their addresses, "one" goes, and "four" takes none of theirs.
    cluster
        .gantry
        .shutdown(std::time::Duration::from_secs(1))
        .await;
    cluster.delete(Kind::Service, "one");
    cluster.create(load_balancer("four", &[("http", port)]));
    cluster.create(slice("four", 9, "http", origin.addr));
    cluster.restart().await;
    eventually("one is gone", || async {
        cluster.get(Kind::Service, "one").is_none()
    })
    .await;
    let four = cluster.ingress_ip("four").await;
    assert!(
        !before[1..].contains(&four),
        "four took a held address: {four}"
    );
    for (name, ip) in names.iter().zip(&before).skip(1) {
        assert_eq!(
            cluster.ingress_ip(name).await,
            *ip,
            "{name} kept its address"
        );
        let addr = SocketAddr::new(*ip, port);
        eventually(&format!("{name} serves"), || async {
            origin_behind(addr).await.is_some()
        })
        .await;
    }
    cluster.stop().await;
}

#[tokio::test]
async fn a_clash_with_the_file_is_reported_and_the_file_keeps_its_service() {
    let (first, range) = pool(31);
    let origin = HttpOrigin::start("file", OriginProtocol::Http1).await;
    // The file serves a service named as the Kubernetes one will be, on the node address at
    // a port a NodePort Service will also ask for.
    let node: std::net::IpAddr = "127.0.31.200".parse().expect("ip");
    let port = free_port(node);
    let section = format!(
        "  node_port_address: {node}\nservices:\n  - name: default/web\n    address: {node}\n    ports: [{{ name: http, port: {port}, backends: [\"{}\"] }}]\n",
        origin.addr
    );
    let cluster = Cluster::start(&range, &section).await;
    let at_file = SocketAddr::new(node, port);
    eventually("the file's service serves", || async {
        origin_behind(at_file).await.as_deref() == Some("file")
    })
    .await;

    cluster.create(load_balancer("web", &[("http", free_port(first))]));
    eventually("a Warning names the clash", || async {
        cluster.events("web", "Conflict").iter().any(|e| {
            e["note"]
                .as_str()
                .is_some_and(|n| n.contains("duplicate service name `default/web`"))
        })
    })
    .await;
    assert_eq!(
        origin_behind(at_file).await.as_deref(),
        Some("file"),
        "the file's service is untouched"
    );
    let condition = |cluster: &Cluster, name: &str| {
        cluster.get(Kind::Service, name).expect("service")["status"]["conditions"][0]["reason"]
            .clone()
    };
    eventually("the condition says so", || async {
        condition(&cluster, "web") == "Conflict"
    })
    .await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_deleted_service_frees_its_address_for_the_next() {
    let (first, range) = pool(32);
    // A pool of one address.
    let cluster = Cluster::start(&range.replace("127.0.32.14", "127.0.32.1"), "").await;
    let port = free_port(first);
    cluster.create(load_balancer("old", &[("http", port)]));
    assert_eq!(cluster.ingress_ip("old").await, first);
    cluster.create(load_balancer("new", &[("http", port)]));
    eventually("new waits: the pool is exhausted", || async {
        cluster.get(Kind::Service, "new").expect("new")["status"]["conditions"][0]["reason"]
            == "AddressPoolExhausted"
    })
    .await;
    cluster.delete(Kind::Service, "old");
    assert_eq!(
        cluster.ingress_ip("new").await,
        first,
        "the freed address goes to the waiting Service"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn a_dual_stack_service_is_served_on_an_address_of_each_family() {
    let (first, range) = pool(33);
    let v6: std::net::IpAddr = "::1".parse().expect("ip");
    let cluster = Cluster::start_with_pools(&[("v4", range.as_str()), ("v6", "::1")], "").await;
    let a = HttpOrigin::start("v4-pod", OriginProtocol::Http1).await;
    let b = HttpOrigin::start_on(
        "[::1]:0".parse().expect("addr"),
        "v6-pod",
        OriginProtocol::Http1,
    )
    .await;
    // A port free on both addresses.
    let port = loop {
        let port = free_port(v6);
        if std::net::TcpListener::bind((first, port)).is_ok() {
            break port;
        }
    };
    let mut service = load_balancer("dual", &[("http", port)]);
    service["spec"]["ipFamilyPolicy"] = json!("RequireDualStack");
    service["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    cluster.create(service);
    cluster.create(slice("dual", 0, "http", a.addr));
    let mut v6_slice = slice("dual", 1, "http", b.addr);
    v6_slice["addressType"] = json!("IPv6");
    cluster.create(v6_slice);

    let ingress_ips = |cluster: &Cluster| -> Vec<String> {
        cluster.get(Kind::Service, "dual").expect("dual")["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str().map(str::to_owned))
            .collect()
    };
    eventually("an address of each family", || async {
        ingress_ips(&cluster).len() == 2
    })
    .await;
    assert_eq!(
        ingress_ips(&cluster),
        vec![first.to_string(), v6.to_string()]
    );
    // Each family goes to the endpoints of its own family.
    eventually("IPv4 serves", || async {
        origin_behind(SocketAddr::new(first, port)).await.as_deref() == Some("v4-pod")
    })
    .await;
    eventually("IPv6 serves", || async {
        origin_behind(SocketAddr::new(v6, port)).await.as_deref() == Some("v6-pod")
    })
    .await;

    // Single-stack again: the IPv6 listener and address go.
    cluster.patch(
        Kind::Service,
        "dual",
        json!({"spec": {"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4"]}}),
    );
    eventually("one address left", || async {
        ingress_ips(&cluster) == vec![first.to_string()]
    })
    .await;
    eventually("IPv6 closed", || async {
        origin_behind(SocketAddr::new(v6, port)).await.is_none()
    })
    .await;
    assert_eq!(
        origin_behind(SocketAddr::new(first, port)).await.as_deref(),
        Some("v4-pod")
    );
    cluster.stop().await;
}

#[tokio::test]
async fn a_new_class_in_the_file_restarts_the_source_and_lets_go_of_the_old_ones() {
    let (first, range) = pool(35);
    let cluster = Cluster::start(&range, "").await;
    let origin = HttpOrigin::start("a", OriginProtocol::Http1).await;
    let port = free_port(first);
    cluster.create(load_balancer("web", &[("http", port)]));
    cluster.create(slice("web", 0, "http", origin.addr));
    let addr = SocketAddr::new(cluster.ingress_ip("web").await, port);
    eventually("served", || async { origin_behind(addr).await.is_some() }).await;

    // Gantry now answers to another class: the Service is another provider's, so Gantry
    // stops serving it and leaves its finalizer and status to that provider.
    cluster
        .reconfigure(&[("main", &range)], "  load_balancer_class: other.io/lb\n")
        .await;
    eventually("no longer served", || async {
        origin_behind(addr).await.is_none()
    })
    .await;
    let service = cluster.get(Kind::Service, "web").expect("web");
    assert_eq!(
        service["metadata"]["finalizers"],
        json!(["service.kubernetes.io/load-balancer-cleanup"])
    );

    // And back: served again at the address its status shows.
    cluster.reconfigure(&[("main", &range)], "").await;
    eventually("served again", || async {
        origin_behind(addr).await.is_some()
    })
    .await;
    cluster.stop().await;
}
