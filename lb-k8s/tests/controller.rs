//! The controller against the test API server, with a data plane that only records what it
//! is asked to serve: addresses, finalizers, status and Events as the cluster sees them.

mod support;

use lb_k8s_testing::Kind;
use serde_json::json;
use support::{lb, slice, Cluster};

/// One replica (holding the Lease), two addresses.
const YAML: &str = "kubernetes:\n  kubeconfig: kubeconfig\n  instance: test\n  address_pools:\n    - { name: main, addresses: [192.0.2.10-192.0.2.11] }\n";

#[tokio::test]
async fn a_load_balancer_is_provisioned_reported_and_cleaned_up() {
    let run = Cluster::start().await;
    let gantry = run.launch(YAML);
    run.server.create(lb("web")).expect("service");
    run.server
        .create(slice("web", "198.51.100.7"))
        .expect("slice");
    let ingress = run
        .until("status", || {
            let s = run.service("web")?;
            let ingress = s["status"]["loadBalancer"]["ingress"][0].clone();
            ingress.is_object().then_some(ingress)
        })
        .await;
    assert_eq!(ingress["ip"], "192.0.2.10");
    assert_eq!(ingress["ipMode"], "Proxy");
    assert_eq!(
        ingress["ports"][1]["error"],
        "gantry.io/UnsupportedProtocol"
    );
    let service = run.service("web").expect("service");
    assert_eq!(
        service["metadata"]["finalizers"],
        json!(["service.kubernetes.io/load-balancer-cleanup"])
    );
    let served = run
        .until("served", || {
            let served = gantry.plane.served.lock().expect("lock");
            served.get("default/web").cloned()
        })
        .await;
    let port = served.ports.get("web").expect("port web");
    assert_eq!(port.bind.to_string(), "192.0.2.10:80");
    assert_eq!(
        port.backends
            .iter()
            .map(|b| b.address.to_string())
            .collect::<Vec<_>>(),
        vec!["198.51.100.7:8080"]
    );
    run.until("EnsuredLoadBalancer", || {
        (run.events("EnsuredLoadBalancer") == 1).then_some(())
    })
    .await;
    run.until("a Warning for the SCTP port", || {
        (run.events("UnsupportedPort") == 1).then_some(())
    })
    .await;

    // A second Service gets the next address; a third finds the pool exhausted.
    run.server.create(lb("two")).expect("two");
    run.until("two addressed", || run.address("two")).await;
    run.server.create(lb("three")).expect("three");
    let condition = run
        .until("exhausted", || {
            let c = run.service("three")?["status"]["conditions"][0].clone();
            (c["reason"] == "AddressPoolExhausted").then_some(c)
        })
        .await;
    assert_eq!(condition["status"], "False");
    assert_eq!(run.address("two").as_deref(), Some("192.0.2.11"));

    // Deleting: the finalizer holds the object until the listeners are gone and the address
    // is back in the pool; the waiting Service then gets it.
    run.server
        .delete(&(Kind::Service, "default".into(), "web".into()))
        .expect("delete");
    run.until("deleted", || run.service("web").is_none().then_some(()))
        .await;
    assert_eq!(gantry.bind("default/web", "web"), None);
    let ip = run
        .until("three gets the freed address", || run.address("three"))
        .await;
    assert_eq!(ip, "192.0.2.10");
    assert!(run.events("DeletedLoadBalancer") >= 1);
    gantry.stop().await;
}

#[tokio::test]
async fn a_restart_readopts_every_address() {
    let run = Cluster::start().await;
    let gantry = run.launch(YAML);
    for name in ["a", "b"] {
        run.server.create(lb(name)).expect("service");
    }
    // One whose trouble the status reports: it must not be reported again.
    let mut three = lb("three");
    three["spec"]["ports"] = json!([{"name": "web", "port": 80}]);
    three["metadata"]["annotations"] = json!({"gantry.io/address-pool": "edge"});
    run.server.create(three).expect("three");
    let before: Vec<String> = run
        .until("a and b addressed", || {
            ["a", "b"].iter().map(|n| run.address(n)).collect()
        })
        .await;
    run.until("no pool for three", || {
        let c = run.service("three")?["status"]["conditions"][0].clone();
        (c["reason"] == "UnknownAddressPool").then_some(())
    })
    .await;
    run.until("Warnings for a's and b's SCTP ports, three's pool", || {
        (run.events("UnsupportedPort") == 2 && run.events("UnknownAddressPool") == 1).then_some(())
    })
    .await;
    gantry.stop().await;
    // "c" arrives while Gantry is away: after the restart it must not take a's or b's
    // address, though it comes first in no order but the pool's.
    let writes_before = run.server.seen().len();
    run.server.create(lb("c")).expect("c");
    let restarted = run.launch(&YAML.replace("192.0.2.11", "192.0.2.12"));
    let c = run.until("c addressed", || run.address("c")).await;
    assert_eq!(c, "192.0.2.12");
    for (name, ip) in ["a", "b"].iter().zip(&before) {
        assert_eq!(run.address(name).as_ref(), Some(ip));
    }
    // No status of a, b or three was rewritten.
    let rewrites: Vec<String> = run.server.seen()[writes_before..]
        .iter()
        .filter(|s| {
            s.method == http::Method::PATCH
                && ["/a/status", "/b/status", "/three/status"]
                    .iter()
                    .any(|p| s.path.ends_with(p))
        })
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(rewrites, Vec::<String>::new());
    // Taken over quietly: one EnsuredLoadBalancer each for a and b (before the restart), one
    // for c; and no Warning said again.
    run.until("c announced", || {
        (run.events("EnsuredLoadBalancer") == 3).then_some(())
    })
    .await;
    assert_eq!(run.events("UnsupportedPort"), 3, "a's, b's, then c's");
    assert_eq!(run.events("UnknownAddressPool"), 1);
    restarted.stop().await;
}

#[tokio::test]
async fn a_secret_that_cannot_be_read_is_reported_not_waited_for() {
    let run = Cluster::start().await;
    let gantry = run.launch(YAML);
    run.server.inject(lb_k8s_testing::Fault {
        method: http::Method::GET,
        path_contains: "/secrets".into(),
        status: 403,
        times: 1,
    });
    let mut service = lb("tls");
    service["metadata"]["annotations"] =
        json!({"gantry.io/protocol": "tls", "gantry.io/tls-secret": "missing"});
    run.server.create(service).expect("service");
    let note = |text: &str| {
        run.server.list(Kind::Event).iter().any(|e| {
            e["reason"] == "InvalidConfiguration"
                && e["note"].as_str().is_some_and(|n| n.contains(text))
        })
    };
    run.until("cannot be read", || {
        note("Secret default/missing cannot be read").then_some(())
    })
    .await;
    // The watch recovers: the Secret is then known to be missing.
    run.until("not found", || {
        let condition = run.service("tls")?["status"]["conditions"][0].clone();
        condition["message"]
            .as_str()?
            .contains("Secret default/missing not found")
            .then_some(())
    })
    .await;
    gantry.stop().await;
}

/// On the real clock: the controller's timing is tokio's, but with a paused clock tokio
/// advances time whenever the runtime waits on the API server's sockets, so a renewal that is
/// merely in flight times out and the Lease is lost. The figure is measured by tokio's clock,
/// the one the controller's backoff and linger run on.
#[tokio::test]
async fn a_change_made_after_the_api_server_returns_is_served_within_seconds() {
    let mut run = Cluster::start().await;
    let gantry = run.launch(YAML);
    run.server.create(lb("web")).expect("web");
    run.server
        .create(slice("web", "198.51.100.7"))
        .expect("slice");
    let backends = |gantry: &support::Controller| -> Vec<String> {
        let served = gantry.plane.served.lock().expect("lock");
        served
            .get("default/web")
            .and_then(|s| s.ports.get("web"))
            .map(|p| p.backends.iter().map(|b| b.address.to_string()).collect())
            .unwrap_or_default()
    };
    run.until("served", || {
        (backends(&gantry) == ["198.51.100.7:8080"]).then_some(())
    })
    .await;

    // The API server goes away long enough for every watch to back off as far as it goes,
    // and comes back without the history its watches were at (they get 410 Gone).
    run.server.pause();
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    run.server
        .resume()
        .await
        .expect("the API server comes back");
    let back = tokio::time::Instant::now();
    let mut moved = slice("web", "198.51.100.8");
    moved["metadata"]["resourceVersion"] = run
        .server
        .get(&(Kind::EndpointSlice, "default".into(), "web-1".into()))
        .expect("the slice")["metadata"]["resourceVersion"]
        .clone();
    run.server.replace(moved).expect("the slice changes");
    run.until("the change served", || {
        (backends(&gantry) == ["198.51.100.8:8080"]).then_some(())
    })
    .await;
    let took = back.elapsed();
    eprintln!("figure: a change made when the API server came back was served after {took:?}");
    assert!(
        took < std::time::Duration::from_secs(5),
        "served {took:?} after the API server came back"
    );
    gantry.stop().await;
}

#[tokio::test]
async fn a_new_configuration_that_clashes_is_reported_while_the_old_one_keeps_serving() {
    let run = Cluster::start().await;
    // The file serves `static` on the node-facing address at 30080.
    let yaml = format!(
        "{YAML}  node_port_address: 192.0.2.50\nservices:\n  - name: static\n    address: 192.0.2.50\n    ports: [{{ name: web, port: 30080, backends: [\"198.51.100.1:80\"] }}]\n"
    );
    let gantry = run.launch(&yaml);
    run.server
        .create(json!({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "np", "namespace": "default"},
                       "spec": {"type": "NodePort", "ports": [{"name": "web", "port": 80, "nodePort": 30081}]}}))
        .expect("np");
    run.until("served at its node port", || {
        (gantry.bind("default/np", "web")? == "192.0.2.50:30081").then_some(())
    })
    .await;

    // Its new node port is the file's: the new configuration clashes, the old one serves on,
    // and the Service is told why its change is not served (a NodePort Service has no
    // load-balancer status: a Warning Event is what it gets).
    let mut moved = run.service("np").expect("np");
    moved["spec"]["ports"][0]["nodePort"] = json!(30080);
    run.server.replace(moved).expect("np moves");
    let note = run
        .until("a Warning Event tells the clash", || {
            run.server.list(Kind::Event).into_iter().find_map(|e| {
                (e["reason"] == "Conflict" && e["type"] == "Warning")
                    .then(|| e["note"].as_str().unwrap_or_default().to_owned())
            })
        })
        .await;
    assert!(
        note.contains("192.0.2.50:30080") && note.contains("already used by"),
        "{note}"
    );
    assert_eq!(
        gantry.bind("default/np", "web").as_deref(),
        Some("192.0.2.50:30081"),
        "the last good configuration keeps serving"
    );
    gantry.stop().await;
}
