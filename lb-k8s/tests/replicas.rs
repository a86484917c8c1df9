//! Two replicas on one cluster, as Gantry runs several appliances: both serve every Service;
//! only the holder of the Lease writes (finalizers, status, Events) and hands out addresses;
//! the other serves what the statuses say, and nothing for a Service with no address yet. A
//! takeover, after a holder that could not renew or one that stopped, rewrites nothing that
//! is already right and says nothing twice.

mod support;

use http::Method;
use lb_k8s_testing::{Fault, Kind, Part};
use serde_json::json;
use support::{lb, slice, Cluster, Controller};

/// A replica named `instance`, with the shortest timings the configuration accepts.
fn yaml(instance: &str) -> String {
    format!(
        "kubernetes:\n  kubeconfig: kubeconfig\n  instance: {instance}\n  leader_election: {{ lease_namespace: default, lease_duration: 1s, renew_deadline: 800ms, retry_period: 200ms }}\n  address_pools:\n    - {{ name: main, addresses: [192.0.2.10-192.0.2.13] }}\n"
    )
}

/// Waits until both replicas serve `default/name` on `address`, port 80.
async fn served_by_both(run: &Cluster, replicas: [&Controller; 2], name: &str, address: &str) {
    let wanted = format!("{address}:80");
    for replica in replicas {
        run.until(&format!("{name} served on {wanted}"), || {
            (replica.bind(&format!("default/{name}"), "web").as_deref() == Some(&wanted))
                .then_some(())
        })
        .await;
    }
}

/// The Events about `default/name`, as `(reason, reportingInstance, series count)`.
fn events_about(run: &Cluster, name: &str) -> Vec<(String, String, u64)> {
    run.server
        .list(Kind::Event)
        .iter()
        .filter(|e| e["regarding"]["name"] == name)
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_owned(),
                e["reportingInstance"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                e["series"]["count"].as_u64().unwrap_or(1),
            )
        })
        .collect()
}

/// The status writes made to `default/name`.
fn status_writes(run: &Cluster, name: &str) -> usize {
    let path = format!("/services/{name}/status");
    run.server
        .seen()
        .iter()
        .filter(|s| s.method == Method::PATCH && s.path.ends_with(&path))
        .count()
}

#[tokio::test]
async fn replicas_serve_alike_and_only_the_lease_holder_writes() {
    let run = Cluster::start().await;
    let a = run.launch(&yaml("a"));
    run.until("a holds the Lease", || a.leading().filter(|l| *l))
        .await;
    let b = run.launch(&yaml("b"));
    run.until("b follows", || (b.leading() == Some(false)).then_some(()))
        .await;

    // The holder hands out the address and writes; the follower serves it from the status.
    run.server.create(lb("web")).expect("web");
    run.server
        .create(slice("web", "198.51.100.7"))
        .expect("slice");
    assert_eq!(
        run.until("web addressed", || run.address("web")).await,
        "192.0.2.10"
    );
    served_by_both(&run, [&a, &b], "web", "192.0.2.10").await;
    run.until("web announced, its SCTP port reported", || {
        (run.events("EnsuredLoadBalancer") == 1 && run.events("UnsupportedPort") == 1).then_some(())
    })
    .await;
    let said = events_about(&run, "web");
    assert!(
        said.iter().all(|(_, by, count)| by == "a" && *count == 1),
        "{said:?}"
    );
    assert_eq!(b.writes(), Vec::new(), "the follower tried to write");
    assert_eq!(status_writes(&run, "web"), 1);

    // Nobody can hold the Lease: a stops writing, b cannot take it.
    run.server.inject(Fault {
        method: Method::PUT,
        path_contains: "/leases/".into(),
        status: 500,
        times: usize::MAX,
    });
    run.until("a lets go of the Lease", || {
        (a.leading() == Some(false)).then_some(())
    })
    .await;
    // A Service with no address yet is served by neither replica. `probe`, created after it,
    // shows an address a holder wrote: once both serve it, both have decided on `late` too
    // (one watch delivers both in order).
    run.server.create(lb("late")).expect("late");
    run.server.create(lb("probe")).expect("probe");
    let probe = (Kind::Service, "default".to_owned(), "probe".to_owned());
    let shown =
        json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.12", "ipMode": "Proxy"}]}}});
    run.server
        .patch(&probe, Part::Status, &shown)
        .expect("probe's status");
    served_by_both(&run, [&a, &b], "probe", "192.0.2.12").await;
    assert_eq!(a.bind("default/late", "web"), None);
    assert_eq!(b.bind("default/late", "web"), None);
    served_by_both(&run, [&a, &b], "web", "192.0.2.10").await;
    let touched_late = run
        .server
        .seen()
        .iter()
        .any(|s| s.method != Method::GET && s.path.contains("/services/late"));
    assert!(!touched_late, "a replica without the Lease wrote to late");
    let fenced = |replica: &Controller| {
        replica
            .writes()
            .iter()
            .any(|(_, outcome)| outcome == "fenced")
    };
    assert!(
        !fenced(&a) && !fenced(&b),
        "a replica that knew it did not hold the Lease tried to write"
    );

    // The Lease can be held again: one replica takes it and does what was left undone.
    run.server.clear_faults();
    let a_holds = run
        .until("a replica takes the Lease", || {
            match (a.leading(), b.leading()) {
                (Some(true), _) => Some(true),
                (_, Some(true)) => Some(false),
                _ => None,
            }
        })
        .await;
    let (holder, other, other_instance) = if a_holds { (a, b, "b") } else { (b, a, "a") };
    assert_eq!(
        run.until("late addressed", || run.address("late")).await,
        "192.0.2.11"
    );
    served_by_both(&run, [&holder, &other], "late", "192.0.2.11").await;
    assert_eq!(run.address("probe").as_deref(), Some("192.0.2.12"));
    let late = run.service("late").expect("late");
    assert_eq!(
        late["metadata"]["finalizers"],
        json!(["service.kubernetes.io/load-balancer-cleanup"])
    );
    // Nothing right was rewritten, nothing said twice.
    run.until("late announced", || {
        (run.events("EnsuredLoadBalancer") >= 3).then_some(())
    })
    .await;
    assert_eq!(status_writes(&run, "web"), 1);
    assert_eq!(events_about(&run, "web"), said);

    // A graceful stop hands the Lease over at once; the other writes from then on.
    holder.stop().await;
    run.until("the other takes the Lease", || {
        other.leading().filter(|l| *l)
    })
    .await;
    run.server.create(lb("last")).expect("last");
    assert_eq!(
        run.until("last addressed", || run.address("last")).await,
        "192.0.2.13"
    );
    run.until("last announced", || {
        events_about(&run, "last")
            .iter()
            .any(|(reason, _, _)| reason == "EnsuredLoadBalancer")
            .then_some(())
    })
    .await;
    assert!(events_about(&run, "last")
        .iter()
        .all(|(_, by, _)| by == other_instance));
    assert_eq!(status_writes(&run, "web"), 1);
    assert_eq!(events_about(&run, "web"), said);
    other.stop().await;
}
