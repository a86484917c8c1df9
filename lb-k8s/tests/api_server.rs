//! The test API server, driven by kube-rs exactly as Gantry drives it: if these pass, the
//! server answers kube's requests as a real kube-apiserver would, and refuses what it refuses.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use lb_k8s::client::{connect, Credentials};
use lb_k8s_testing::{Kind, Options, TestApiServer};
use serde_json::json;

async fn server_and_client() -> (TestApiServer, Client, tempfile::TempDir) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = TestApiServer::start(Options::default())
        .await
        .expect("server");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, server.kubeconfig()).expect("kubeconfig");
    let client = connect(&Credentials::Kubeconfig {
        path,
        context: None,
    })
    .await
    .expect("client");
    (server, client, dir)
}

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "gantry.io/lb",
                 "ports": [{"name": "http", "port": 80}]}
    }))
    .expect("service")
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn services_are_defaulted_and_stale_updates_conflict() {
    let (_server, client, _dir) = server_and_client().await;
    let api: Api<Service> = Api::namespaced(client, "default");
    let created = api
        .create(&PostParams::default(), &service("web"))
        .await
        .expect("create");
    let spec = created.spec.clone().expect("spec");
    let node_port = spec.ports.as_ref().expect("ports")[0]
        .node_port
        .expect("node port");
    assert!((30_000..=32_767).contains(&node_port), "{node_port}");
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
    assert_eq!(spec.allocate_load_balancer_node_ports, Some(true));

    let mut stale = created.clone();
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
    )
    .await
    .expect("patch");
    stale.metadata.labels = Some([("c".to_owned(), "d".to_owned())].into());
    let err = api
        .replace("web", &PostParams::default(), &stale)
        .await
        .expect_err("stale");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "{err}"
    );

    // The class is immutable while the Service is a LoadBalancer.
    let err = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"loadBalancerClass": "other.io/lb"}})),
        )
        .await
        .expect_err("immutable class");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err}"
    );

    // Back to ClusterIP: the server itself clears what only load balancers carry.
    let cluster_ip = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
        )
        .await
        .expect("to ClusterIP");
    let spec = cluster_ip.spec.expect("spec");
    assert_eq!(spec.load_balancer_class, None);
    assert_eq!(spec.ports.expect("ports")[0].node_port, None);
}

fn api_code(result: Result<Lease, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Leases as kube-apiserver serves them to an elector: 404 before the first create, 409 for a
/// second create, a new resourceVersion per update, 409 for an update at a stale version, 422
/// for an update without one (their strategy refuses unconditional updates) and for a spec
/// that `ValidateLeaseSpec` refuses; MicroTimes kept to the microsecond.
#[tokio::test]
async fn leases_conflict_as_the_real_server_does() {
    let (_server, client, _dir) = server_and_client().await;
    let api: Api<Lease> = Api::namespaced(client, "default");
    assert!(api.get_opt("gantry").await.expect("get").is_none());
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "gantry", "namespace": "default"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15,
                 "acquireTime": "2026-12-06T03:00:00.123456Z",
                 "renewTime": "2026-12-06T03:00:00.123456Z", "leaseTransitions": 0}
    }))
    .expect("lease");
    let created = api
        .create(&PostParams::default(), &lease)
        .await
        .expect("create");
    let spec = created.spec.clone().expect("spec");
    assert_eq!(
        serde_json::to_value(&spec.renew_time).expect("time"),
        json!("2026-12-06T03:00:00.123456Z")
    );
    let (code, message) = api_code(api.create(&PostParams::default(), &lease).await);
    assert_eq!(code, 409, "{message}");

    let mut renewed = created.clone();
    renewed.spec.as_mut().expect("spec").renew_time = lease_time("2026-12-06T03:00:02.5Z");
    let renewed = api
        .replace("gantry", &PostParams::default(), &renewed)
        .await
        .expect("renew");
    assert_ne!(
        renewed.metadata.resource_version,
        created.metadata.resource_version
    );

    // Another candidate writing at the version it read before the renewal loses.
    let mut taken = created.clone();
    taken.spec.as_mut().expect("spec").holder_identity = Some("b".to_owned());
    let (code, message) = api_code(api.replace("gantry", &PostParams::default(), &taken).await);
    assert_eq!(code, 409, "{message}");

    taken.metadata.resource_version = None;
    let (code, message) = api_code(api.replace("gantry", &PostParams::default(), &taken).await);
    assert_eq!(code, 422, "{message}");
    assert!(
        message.starts_with(
            "Lease.coordination.k8s.io \"gantry\" is invalid: metadata.resourceVersion"
        ),
        "{message}"
    );

    let mut invalid = renewed.clone();
    invalid.spec.as_mut().expect("spec").lease_duration_seconds = Some(0);
    let (code, message) = api_code(
        api.replace("gantry", &PostParams::default(), &invalid)
            .await,
    );
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"),
        "{message}"
    );
    let held = api.get("gantry").await.expect("get");
    assert_eq!(
        held.spec.expect("spec").holder_identity.as_deref(),
        Some("a")
    );
}

fn lease_time(text: &str) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime> {
    serde_json::from_value(json!(text)).expect("a MicroTime")
}

#[tokio::test]
async fn status_goes_through_its_subresource_only() {
    let (_server, client, _dir) = server_and_client().await;
    let api: Api<Service> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &service("web"))
        .await
        .expect("create");
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10", "ipMode": "Proxy"}]}},
                        "spec": {"type": "NodePort"}});
    let written = api
        .patch_status("web", &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("status");
    assert_eq!(
        written.spec.expect("spec").type_.as_deref(),
        Some("LoadBalancer"),
        "status writes keep the spec"
    );
    let ingress = &written
        .status
        .expect("status")
        .load_balancer
        .expect("lb")
        .ingress
        .expect("ingress")[0];
    assert_eq!(
        (ingress.ip.as_deref(), ingress.ip_mode.as_deref()),
        (Some("192.0.2.10"), Some("Proxy"))
    );
    // An update of the object keeps the status.
    let relabelled = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"loadBalancer": null}, "metadata": {"labels": {"x": "y"}}}),
            ),
        )
        .await
        .expect("patch");
    assert!(relabelled
        .status
        .expect("status")
        .load_balancer
        .expect("lb")
        .ingress
        .is_some());
    // Without ipMode the server fills in VIP.
    let written = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.11"}]}}})),
        )
        .await
        .expect("status");
    let ingress = &written
        .status
        .expect("status")
        .load_balancer
        .expect("lb")
        .ingress
        .expect("ingress")[0];
    assert_eq!(ingress.ip_mode.as_deref(), Some("VIP"));
}

#[tokio::test]
async fn finalizers_keep_a_deleted_object_until_the_last_goes() {
    let (server, client, _dir) = server_and_client().await;
    let api: Api<Service> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &service("web"))
        .await
        .expect("create");
    let add = json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                     {"op": "add", "path": "/metadata/finalizers", "value": ["service.kubernetes.io/load-balancer-cleanup"]}]);
    let patch =
        |v: serde_json::Value| Patch::<()>::Json(serde_json::from_value(v).expect("json patch"));
    api.patch("web", &PatchParams::default(), &patch(add.clone()))
        .await
        .expect("add finalizer");
    // The same patch again fails its test: 422.
    let err = api
        .patch("web", &PatchParams::default(), &patch(add))
        .await
        .expect_err("test fails");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err}"
    );

    api.delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    let marked = api.get("web").await.expect("still there");
    assert!(marked.metadata.deletion_timestamp.is_some());
    let err = api
        .patch(
            "web",
            &PatchParams::default(),
            &patch(json!([{"op": "add", "path": "/metadata/finalizers/-", "value": "x.io/y"}])),
        )
        .await
        .expect_err("no new finalizers while deleting");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err}"
    );

    let remove = json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "service.kubernetes.io/load-balancer-cleanup"},
                        {"op": "remove", "path": "/metadata/finalizers/0"}]);
    api.patch("web", &PatchParams::default(), &patch(remove))
        .await
        .expect("remove finalizer");
    let err = api.get("web").await.expect_err("gone");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err}"
    );
    assert!(server
        .get(&(Kind::Service, "default".into(), "web".into()))
        .is_none());
}

#[tokio::test]
async fn endpoint_slices_are_checked_as_the_real_server_does() {
    let (_server, client, _dir) = server_and_client().await;
    let api: Api<EndpointSlice> = Api::namespaced(client, "default");
    let slice = |address_type: Option<&str>, ip: &str| -> EndpointSlice {
        let mut v = json!({"metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
                           "endpoints": [{"addresses": [ip]}], "ports": [{"name": "http", "port": 8080}]});
        if let Some(t) = address_type {
            v["addressType"] = json!(t);
        }
        // kube's type makes addressType a String; send raw JSON to leave it out.
        serde_json::from_value(v).unwrap_or_else(|_| EndpointSlice::default())
    };
    let err = api
        .create(&PostParams::default(), &slice(Some("IPv4"), "127.0.0.1"))
        .await
        .expect_err("loopback");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("loopback")),
        "{err}"
    );
    let err = api
        .create(&PostParams::default(), &slice(Some("IPv6"), "198.51.100.7"))
        .await
        .expect_err("family");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err}"
    );
    let err = api
        .create(&PostParams::default(), &slice(Some(""), "198.51.100.7"))
        .await
        .expect_err("no addressType");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("addressType")),
        "{err}"
    );
    api.create(&PostParams::default(), &slice(Some("IPv4"), "198.51.100.7"))
        .await
        .expect("routable");
}

#[tokio::test]
async fn watchers_follow_changes_and_relist_after_410() {
    let (server, client, _dir) = server_and_client().await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &service("a"))
        .await
        .expect("create a");
    let (reader, writer) = kube::runtime::reflector::store::<Service>();
    let mut events = Box::pin(
        watcher::watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .reflect(writer),
    );
    let mut next = async || {
        tokio::time::timeout(WAIT, events.next())
            .await
            .expect("in time")
            .expect("stream")
    };
    let mut inits = 0;
    loop {
        match next().await.expect("event") {
            Event::InitDone => break,
            Event::Init => inits += 1,
            _ => {}
        }
    }
    assert_eq!(inits, 1);
    assert_eq!(reader.state().len(), 1);
    api.create(&PostParams::default(), &service("b"))
        .await
        .expect("create b");
    assert!(
        matches!(next().await.expect("event"), Event::Apply(s) if s.metadata.name.as_deref() == Some("b"))
    );

    // The server drops its history and ends the watch with 410: the watcher lists again and
    // sees what changed meanwhile.
    server.expire_watches();
    api.delete("a", &DeleteParams::default())
        .await
        .expect("delete a");
    let mut relisted = false;
    loop {
        match next().await {
            Ok(Event::InitDone) => break,
            Ok(Event::Init) => relisted = true,
            _ => {}
        }
    }
    assert!(relisted);
    let names: Vec<_> = reader
        .state()
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    assert_eq!(names, vec!["b".to_owned()]);
    let lists = server
        .seen()
        .iter()
        .filter(|s| {
            s.method == http::Method::GET
                && s.path == "/api/v1/namespaces/default/services"
                && !s.query.contains("watch=")
        })
        .count();
    assert_eq!(lists, 2, "one list at start, one after the 410");
}

#[tokio::test]
async fn lists_page_and_watches_carry_bookmarks_and_replay_from_a_version() {
    use kube::api::{ListParams, WatchEvent, WatchParams};
    let (_server, client, _dir) = server_and_client().await;
    let api: Api<Service> = Api::namespaced(client, "default");
    for name in ["a", "b", "c"] {
        api.create(&PostParams::default(), &service(name))
            .await
            .expect("create");
    }
    // Pages of one, each page naming where the next starts, all at the first page's version.
    let first = api
        .list(&ListParams::default().limit(1))
        .await
        .expect("page 1");
    assert_eq!(first.items.len(), 1);
    let token = first.metadata.continue_.clone().expect("a continue token");
    let second = api
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .expect("page 2");
    assert_eq!(second.items[0].metadata.name.as_deref(), Some("b"));
    assert_eq!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );

    // A watch from the list's version replays what came after it, then bookmarks.
    let version = first.metadata.resource_version.clone().expect("version");
    api.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let mut events = Box::pin(
        api.watch(&WatchParams::default().timeout(10), &version)
            .await
            .expect("watch"),
    );
    let mut next = async || {
        tokio::time::timeout(WAIT, events.next())
            .await
            .expect("in time")
            .expect("stream")
            .expect("event")
    };
    assert!(
        matches!(next().await, WatchEvent::Deleted(s) if s.metadata.name.as_deref() == Some("a"))
    );
    let bookmark = loop {
        if let WatchEvent::Bookmark(bookmark) = next().await {
            break bookmark;
        }
    };
    let bookmarked: u64 = bookmark
        .metadata
        .resource_version
        .parse()
        .expect("a number");
    assert!(bookmarked > version.parse::<u64>().expect("a number"));
}

/// A `DELETED` event, and the answer to the DELETE, carry the resourceVersion of the deletion
/// (etcd's revision of it), not the object's last one: a client that lists from it sees the
/// object gone.
#[tokio::test]
async fn a_deletion_carries_its_own_resource_version() {
    use kube::api::{ListParams, WatchEvent, WatchParams};
    let (_server, client, _dir) = server_and_client().await;
    let api: Api<Service> = Api::namespaced(client, "default");
    let created = api
        .create(&PostParams::default(), &service("gone"))
        .await
        .expect("create");
    let last = created.metadata.resource_version.clone().expect("version");
    let mut events = Box::pin(
        api.watch(&WatchParams::default().timeout(10), &last)
            .await
            .expect("watch"),
    );
    api.delete("gone", &DeleteParams::default())
        .await
        .expect("delete");
    let deleted = loop {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("in time")
            .expect("stream")
            .expect("event");
        if let WatchEvent::Deleted(service) = event {
            break service;
        }
    };
    let at_deletion = deleted.metadata.resource_version.expect("version");
    let listed = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("version");
    assert_ne!(at_deletion, last, "the deletion is a change of its own");
    assert_eq!(at_deletion, listed, "nothing else changed after it");
}

/// A paged list is one snapshot: the continue token holds the first page's resourceVersion,
/// so an object deleted or created between pages changes nothing in the pages that follow.
#[tokio::test]
async fn a_paged_list_is_a_snapshot_at_its_first_page() {
    use kube::api::ListParams;
    let (_server, client, _dir) = server_and_client().await;
    let api: Api<Service> = Api::namespaced(client, "default");
    for name in ["a", "b", "c"] {
        api.create(&PostParams::default(), &service(name))
            .await
            .expect("create");
    }
    let mut names = Vec::new();
    let mut page = api
        .list(&ListParams::default().limit(1))
        .await
        .expect("page 1");
    let version = page.metadata.resource_version.clone();
    for pages in 1.. {
        names.extend(page.items.iter().filter_map(|s| s.metadata.name.clone()));
        assert_eq!(page.metadata.resource_version, version, "one version");
        let Some(token) = page.metadata.continue_.clone().filter(|t| !t.is_empty()) else {
            break;
        };
        // Between the first pages the first object goes; between the next, one that sorts
        // before the rest comes.
        match pages {
            1 => api
                .delete("a", &DeleteParams::default())
                .await
                .map(|_| ())
                .expect("delete"),
            2 => api
                .create(&PostParams::default(), &service("a0"))
                .await
                .map(|_| ())
                .expect("create"),
            _ => {}
        }
        page = api
            .list(&ListParams::default().limit(1).continue_token(&token))
            .await
            .expect("next page");
    }
    assert_eq!(
        names,
        ["a", "b", "c"],
        "every page from the first's snapshot"
    );
}

/// What the status subresource refuses as kube-apiserver does: a condition reason outside
/// `^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`, an ingress port whose protocol is not TCP,
/// UDP or SCTP; and, in the spec, a source range whose prefix its family cannot have.
#[tokio::test]
async fn reasons_protocols_and_prefixes_are_checked_as_the_real_server_does() {
    let (server, _client, _dir) = server_and_client().await;
    server
        .create(serde_json::to_value(service("web")).expect("json"))
        .expect("create");
    let id = (Kind::Service, "default".to_owned(), "web".to_owned());
    let status = |reason: &str, protocol: &str| {
        json!({"status": {
            "conditions": [{"type": "LoadBalancerReady", "status": "False", "reason": reason,
                            "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ports": [{"port": 80, "protocol": protocol}]}]}}})
    };
    let code = |result: Result<serde_json::Value, lb_k8s_testing::ApiError>| {
        result.map(|_| 200).unwrap_or_else(|e| e.code)
    };
    for (reason, protocol, expected) in [
        ("Conflict", "TCP", 200),
        ("Pool_Exhausted:v4,v6", "UDP", 200),
        ("Address-In-Use", "TCP", 422),
        ("example.com/Conflict", "TCP", 422),
        ("1Conflict", "TCP", 422),
        ("Conflict,", "TCP", 422),
        ("Conflict", "HTTP", 422),
        ("Conflict", "tcp", 422),
    ] {
        assert_eq!(
            code(server.patch(&id, lb_k8s_testing::Part::Status, &status(reason, protocol))),
            expected,
            "reason {reason:?}, protocol {protocol:?}"
        );
    }
    for (range, expected) in [
        ("10.0.0.0/8", 200),
        ("2001:db8::/128", 200),
        ("10.0.0.0/33", 422),
        ("10.0.0.0/99", 422),
        ("2001:db8::/129", 422),
    ] {
        let patch = json!({"spec": {"loadBalancerSourceRanges": [range]}});
        assert_eq!(
            code(server.patch(&id, lb_k8s_testing::Part::Main, &patch)),
            expected,
            "{range}"
        );
    }
}

/// `metadata.generation` counts changes of the spec as stored, defaults applied: a spec sent
/// without what the server defaults is the same spec, and a change of labels is no change of
/// it.
#[tokio::test]
async fn the_generation_counts_changes_of_the_defaulted_spec() {
    let (server, _client, _dir) = server_and_client().await;
    let created = server
        .create(serde_json::to_value(service("web")).expect("json"))
        .expect("create");
    let generation = |object: &serde_json::Value| object["metadata"]["generation"].as_i64();
    assert_eq!(generation(&created), Some(1));

    // The spec as first sent (without the defaults the server added) and a new label.
    let mut resent = created.clone();
    resent["spec"] = serde_json::to_value(service("web")).expect("json")["spec"].clone();
    resent["metadata"]["labels"] = json!({"team": "edge"});
    let relabelled = server.replace(resent).expect("replace");
    assert_ne!(
        relabelled["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );
    assert_eq!(generation(&relabelled), Some(1), "no change of the spec");

    let mut changed = relabelled.clone();
    changed["spec"]["ports"][0]["port"] = json!(8080);
    let changed = server.replace(changed).expect("replace");
    assert_eq!(generation(&changed), Some(2));
}
