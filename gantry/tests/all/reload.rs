//! Live reload: a reload under load touches only what changed, an invalid file changes
//! nothing, replaced certificates are served without a restart (by reload and by the file
//! watcher), and a removed port drains its in-flight requests.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gantry::reload::{watch_files, Baseline};
use gantry::Gantry;
use http::StatusCode;
use lb_config::{Change, PortAspect, PortAspects, RuntimeAspect, RuntimeAspects};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::support::certs::{Leaf, TestCa};
use crate::support::client::{get, tls_connect, H1};
use crate::support::origin::{HttpOrigin, OriginProtocol};
use crate::support::scenario::{Port, Scenario};
use crate::support::steady::SteadyLoad;
use crate::support::{access_log, addr, eventually, metric};

/// The runtime settings of the configurations these tests start from a file.
const RUNTIME: &str = "runtime: { shutdown_grace: 5s }";

/// Writes `scenario` to `path` and starts Gantry from the file.
async fn start_from(path: &Path, scenario: &Scenario) -> Gantry {
    scenario.write(path);
    let model = lb_config::load_file(path).expect("valid config");
    Gantry::start(model).await.expect("gantry starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_changes_only_what_changed_and_fails_no_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    let (a, b) = (
        HttpOrigin::start("a", OriginProtocol::Http1).await,
        HttpOrigin::start("b", OriginProtocol::Http1).await,
    );
    let ports = |changing: &[SocketAddr], extra: Port| {
        Scenario::new()
            .section(RUNTIME)
            .port("web", Port::http("stable").backends(&[a.addr]))
            .port("web", Port::http("changing").backends(changing))
            .port("web", extra)
    };
    let before = ports(&[a.addr], Port::http("retired"));
    let after = ports(&[a.addr, b.addr], Port::http("added").backends(&[b.addr]));
    let gantry = start_from(&config, &before).await;
    let stable = addr(&gantry, "web", "stable");
    let changing = addr(&gantry, "web", "changing");
    let retired = addr(&gantry, "web", "retired");

    let (stable_load, changing_load) = (SteadyLoad::start(stable), SteadyLoad::start(changing));
    stable_load.wait_for_more(50).await;
    after.write(&config);
    let changes = gantry::reload::reload_from_file(&gantry, &config)
        .await
        .expect("reload applies");
    let key = |port: &str| lb_config::ListenerKey {
        service: "web".into(),
        port: port.into(),
    };
    assert_eq!(
        changes,
        [
            Change::ListenerAdded(key("added")),
            Change::PortChanged {
                key: key("changing"),
                what: PortAspects::of(&[PortAspect::Backends]),
            },
            Change::ListenerRemoved(key("retired")),
        ]
    );
    stable_load.wait_for_more(50).await;
    changing_load.wait_for_more(50).await;
    let (stable_ok, stable_failed) = stable_load.finish().await;
    let (changing_ok, changing_failed) = changing_load.finish().await;
    assert_eq!(stable_failed, 0, "{stable_ok} ok");
    assert_eq!(changing_failed, 0, "{changing_ok} ok");

    assert_eq!(
        addr(&gantry, "web", "stable"),
        stable,
        "the unchanged port kept its socket"
    );
    assert!(b.requests() > 0, "the changed backend set took effect");
    assert_eq!(
        get(addr(&gantry, "web", "added"), "/")
            .await
            .header("x-origin"),
        "b"
    );
    assert!(
        TcpStream::connect(retired).await.is_err(),
        "the removed port stopped listening"
    );
    let text = gantry.metrics().render();
    assert_eq!(
        metric(&text, "gantry_config_reloads_total{result=\"success\"}"),
        1.0
    );
    // Three listeners at start, one more by the reload.
    assert_eq!(
        metric(
            &text,
            "gantry_config_changes_total{kind=\"listener_added\"}"
        ),
        4.0
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_is_refused_with_every_problem_and_service_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = start_from(
        &config,
        &Scenario::new()
            .section(RUNTIME)
            .port("web", Port::http("http").backends(&[origin.addr])),
    )
    .await;
    let proxy = addr(&gantry, "web", "http");
    let mut kept = H1::connect(proxy).await.expect("connect");
    assert_eq!(kept.get("/").await.expect("answer").status, StatusCode::OK);
    let model_before = gantry.model();

    std::fs::write(
        &config,
        "services:\n  - name: web\n    ports:\n      - { name: http, port: 99999, protocol: http }\n      - { name: tls, port: 443, protocol: https, tls: { certificates: [{ cert: /nonexistent.crt, key: /nonexistent.key }] } }\n",
    )
    .expect("write");
    let err = gantry::reload::reload_from_file(&gantry, &config)
        .await
        .expect_err("invalid");
    let message = err.to_string();
    for expected in [
        "services[0].ports[0].port",
        "services[0].ports[1].tls.certificates[0].cert: file not found: /nonexistent.crt",
        "services[0].ports[1].tls.certificates[0].key: file not found: /nonexistent.key",
    ] {
        assert!(
            message.contains(expected),
            "missing {expected:?} in {message}"
        );
    }
    assert!(
        Arc::ptr_eq(&model_before, &gantry.model()),
        "the running model is untouched"
    );
    assert_eq!(
        kept.get("/").await.expect("still served").status,
        StatusCode::OK
    );
    assert_eq!(get(proxy, "/").await.status, StatusCode::OK);
    let text = gantry.metrics().render();
    assert_eq!(
        metric(&text, "gantry_config_reloads_total{result=\"failure\"}"),
        1.0
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}

fn tls_port(origin: SocketAddr, leaf: &Leaf) -> Port {
    let tls = format!(
        "{{ certificates: [{{ cert: \"{}\", key: \"{}\" }}] }}",
        leaf.cert_path.display(),
        leaf.key_path.display()
    );
    Port::new("https", "https")
        .backends(&[origin])
        .set("tls", &tls)
}

async fn served_certificate(gantry: &Gantry, ca: &TestCa) -> Vec<u8> {
    let tls = tls_connect(
        addr(gantry, "web", "https"),
        ca.client_config(&[b"http/1.1"]),
        "web.test",
    )
    .await
    .expect("handshake");
    tls.get_ref().1.peer_certificates().expect("certificate")[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_without_restart_and_a_broken_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    let ca = TestCa::new();
    let first = ca.issue(dir.path(), "web", &["web.test"]);
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let scenario = Scenario::new()
        .section(RUNTIME)
        .port("web", tls_port(origin.addr, &first));
    let gantry = start_from(&config, &scenario).await;
    assert_eq!(served_certificate(&gantry, &ca).await, first.der.to_vec());
    let tls = tls_connect(
        addr(&gantry, "web", "https"),
        ca.client_config(&[b"http/1.1"]),
        "web.test",
    )
    .await
    .expect("handshake");
    let mut open = H1::over(tls, "web.test".into()).await.expect("h1");
    assert_eq!(open.get("/").await.expect("answer").status, StatusCode::OK);

    // Same file names, new contents: what certificate rotation does.
    let second = ca.issue(dir.path(), "web", &["web.test"]);
    let changes = gantry::reload::reload_from_file(&gantry, &config)
        .await
        .expect("reload");
    assert!(
        matches!(
            changes[..],
            [Change::PortChanged { what, .. }] if what == PortAspects::of(&[PortAspect::Certificates])
        ),
        "{changes:?}"
    );
    assert_eq!(served_certificate(&gantry, &ca).await, second.der.to_vec());
    assert_eq!(
        open.get("/").await.expect("open connection kept").status,
        StatusCode::OK
    );

    std::fs::write(&second.key_path, "not a key").expect("break the key");
    let err = gantry::reload::reload_from_file(&gantry, &config)
        .await
        .expect_err("broken key");
    assert!(err.to_string().contains("tls.certificates[0].key"), "{err}");
    assert_eq!(
        served_certificate(&gantry, &ca).await,
        second.der.to_vec(),
        "old certificate keeps serving"
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_watcher_picks_up_a_rotated_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    let ca = TestCa::new();
    let first = ca.issue(dir.path(), "web", &["web.test"]);
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    Scenario::new()
        .section("runtime: { watch_interval: 100ms }")
        .port("web", tls_port(origin.addr, &first))
        .write(&config);
    let baseline = Baseline::before_loading(&config);
    let gantry = Gantry::start(lb_config::load_file(&config).expect("valid"))
        .await
        .expect("start");
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(watch_files(
        gantry.clone(),
        config.clone(),
        baseline,
        stop.clone(),
    ));

    let second = ca.issue(dir.path(), "web", &["web.test"]);
    let expected = second.der.to_vec();
    eventually("the rotated certificate to be served", || {
        let (gantry, ca, expected) = (&gantry, &ca, expected.clone());
        async move { served_certificate(gantry, ca).await == expected }
    })
    .await;
    stop.cancel();
    watcher.await.expect("watcher stops");
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_follows_a_reload_that_changes_only_runtime_settings() {
    access_log::capture();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let service = |access_log: bool| {
        Scenario::new()
            .section(&format!("runtime: {{ access_log: {access_log} }}"))
            .port("audited", Port::http("http").backends(&[origin.addr]))
    };
    service(false).write(&config);
    let gantry = Gantry::start(lb_config::load_file(&config).expect("valid"))
        .await
        .expect("start");
    let proxy = addr(&gantry, "audited", "http");
    get(proxy, "/quiet").await;
    // The request is counted after its access-log decision: once counted, it was decided.
    let counted = format!(
        "gantry_requests_total{{backend=\"{}\",class=\"2xx\",port=\"http\",service=\"audited\"}}",
        origin.addr
    );
    eventually("the quiet request to be counted", || async {
        metric(&gantry.metrics().render(), &counted) == 1.0
    })
    .await;
    assert!(access_log::lines_for("audited").is_empty());

    service(true).write(&config);
    let changes = gantry::reload::reload_from_file(&gantry, &config)
        .await
        .expect("reload");
    assert_eq!(
        changes,
        [Change::RuntimeChanged(RuntimeAspects::of(&[
            RuntimeAspect::AccessLog
        ]))]
    );
    get(proxy, "/logged").await;
    // The line is written once the response is out, so possibly after the client has it.
    eventually("the access log line", || async {
        !access_log::lines_for("audited").is_empty()
    })
    .await;
    let lines = access_log::lines_for("audited");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("path=/logged") && lines[0].contains("status=200"),
        "{}",
        lines[0]
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_port_stops_accepting_and_lets_in_flight_requests_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    let origin = HttpOrigin::start("slow", OriginProtocol::Http1).await;
    let gantry = start_from(
        &config,
        &Scenario::new()
            .section(RUNTIME)
            .port("web", Port::http("going").backends(&[origin.addr])),
    )
    .await;
    let going = addr(&gantry, "web", "going");
    let in_flight = tokio::spawn(async move { get(going, "/slow").await.status });
    let parked = origin.clone();
    eventually("the request to reach the origin", || {
        let parked = parked.clone();
        async move { parked.parked() == 1 }
    })
    .await;

    Scenario::new()
        .section(RUNTIME)
        .section("services: []")
        .write(&config);
    gantry::reload::reload_from_file(&gantry, &config)
        .await
        .expect("reload");
    assert!(
        TcpStream::connect(going).await.is_err(),
        "no new connections"
    );
    origin.release(1);
    assert_eq!(
        in_flight.await.expect("join"),
        StatusCode::OK,
        "the in-flight request finished"
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}

/// A port moved onto an address that overlaps its old one (the wildcard to loopback) in one
/// reload: the new socket binds beside the old one (they share the port), then the old one
/// drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_moved_onto_an_overlapping_address_in_one_reload_keeps_serving() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let port = crate::support::cluster::free_port(std::net::IpAddr::from([127, 0, 0, 1]));
    let on = |address: &str| {
        format!(
            "admin: {{ listen: \"127.0.0.1:0\" }}\nservices:\n  - name: web\n    address: {address}\n    ports:\n      - {{ name: http, port: {port}, protocol: http, backends: [\"{}\"] }}\n",
            origin.addr
        )
    };
    let gantry = Gantry::start(crate::support::model(&on("0.0.0.0")))
        .await
        .expect("gantry starts");
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(get(target, "/").await.status, StatusCode::OK);

    gantry
        .apply(crate::support::model(&on("127.0.0.1")))
        .await
        .expect("the move is applied");
    assert_eq!(addr(&gantry, "web", "http"), target);
    assert_eq!(get(target, "/").await.status, StatusCode::OK);
}
