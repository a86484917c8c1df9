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
use lb_k8s::testing::{Kind, Options, TestApiServer};
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
