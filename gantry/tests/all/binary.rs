//! The `gantry` binary itself: `check` output and exit codes (and the shipped examples pass
//! it), `run` reloading on SIGHUP and draining on SIGTERM before exiting 0, and `run` serving
//! a cluster's Services from its `kubernetes:` section.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use tokio::net::TcpStream;

use crate::support::binary::{Running, GANTRY};
use crate::support::client::get;
use crate::support::metric;
use crate::support::origin::{HttpOrigin, OriginProtocol};
use crate::support::scenario::{Port, Scenario};
use crate::support::Refusing;

fn check(config: &Path) -> std::process::Output {
    std::process::Command::new(GANTRY)
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run gantry check")
}

/// `gantry --version` names the build: version, the commit of this checkout, whether it had
/// changes not committed, and the profile (these tests run the `dev` build).
#[test]
fn the_version_names_the_commit_and_the_profile() {
    let out = std::process::Command::new(GANTRY)
        .arg("--version")
        .output()
        .expect("run gantry --version");
    let text = String::from_utf8_lossy(&out.stdout);
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git");
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    assert_eq!(head.len(), 40, "the tests run in a git checkout");
    let expected = format!(
        "gantry {} (commit {head}, dirty ",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.starts_with(&expected), "{text}");
    assert!(
        text.ends_with(", profile dev)\n")
            && (text.contains("dirty true") || text.contains("dirty false")),
        "{text}"
    );
}

/// Every `gantry check` the docs quote: a ```` ```console ```` block starting
/// `$ gantry check --config NAME`, after a ```` ```yaml ```` block whose first line is
/// `# NAME`. Returns (document, file name, file text, quoted output).
fn quoted_checks() -> Vec<(String, String, String, String)> {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&docs).expect("docs") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let mut files = std::collections::HashMap::new();
        for block in text.split("```").skip(1).step_by(2) {
            if let Some(yaml) = block.strip_prefix("yaml\n# ") {
                if let Some((name, body)) = yaml.split_once('\n') {
                    files.insert(name.to_owned(), body.to_owned());
                }
            } else if let Some(console) = block.strip_prefix("console\n$ gantry check --config ") {
                let (name, output) = console.split_once('\n').expect("output");
                let file = files
                    .get(name)
                    .unwrap_or_else(|| panic!("{}: no ```yaml block `# {name}`", path.display()));
                let doc = path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                found.push((doc, name.to_owned(), file.clone(), output.to_owned()));
            }
        }
    }
    found
}

/// What the docs quote `gantry check` printing is what it prints, word for word, for the file
/// quoted beside it.
#[test]
fn the_check_output_quoted_in_the_docs_is_the_binarys() {
    let quoted = quoted_checks();
    assert!(quoted.len() >= 2, "the docs quote gantry check: {quoted:?}");
    for (doc, name, file, output) in quoted {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(&name), &file).expect("write");
        let ran = std::process::Command::new(GANTRY)
            .args(["check", "--config", &name])
            .current_dir(dir.path())
            .output()
            .expect("run gantry check");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&ran.stdout),
            String::from_utf8_lossy(&ran.stderr)
        );
        assert_eq!(printed.trim_end(), output.trim_end(), "{doc}: {name}");
    }
}

/// An admin endpoint off loopback is accepted, with a warning at its field: without a token
/// (its configuration and metrics will answer 401), or open to anyone.
#[test]
fn check_warns_of_an_admin_endpoint_off_loopback_without_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    for (admin, warning) in [
        (
            "{ listen: \"0.0.0.0:9901\" }",
            "warning: admin.listen: 0.0.0.0:9901 is not a loopback address and no token is set",
        ),
        (
            "{ listen: \"0.0.0.0:9901\", open: true }",
            "warning: admin.open: /config and /metrics are served without a token to anyone",
        ),
    ] {
        std::fs::write(&config, format!("admin: {admin}\n")).expect("write");
        let output = check(&config);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{admin}: {stderr}");
        assert!(stderr.contains(warning), "{warning:?} in {stderr}");
    }
    std::fs::write(&config, "admin: { listen: \"127.0.0.1:9901\" }\n").expect("write");
    let output = check(&config);
    assert!(output.status.success());
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("warning"),
        "no warning on loopback"
    );
}

/// A cookie affinity with `same_site: none` and `secure: false` is accepted with a warning at
/// its field: the cookie is made Secure anyway.
#[test]
fn check_warns_of_a_same_site_none_cookie_said_not_secure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    for (secure, warned) in [("false", true), ("true", false)] {
        let affinity = format!(
            "{{ policy: \"builtin:cookie\", params: {{ same_site: none, secure: {secure} }} }}"
        );
        Scenario::new()
            .port(
                "shop",
                Port::http("web")
                    .backends(&["127.0.0.1:8080".parse().expect("addr")])
                    .set("affinity", &affinity),
            )
            .write(&config);
        let output = check(&config);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        let warning = "warning: shop/web affinity.params.secure: browsers refuse a cookie with SameSite=None that is not Secure";
        assert_eq!(
            stderr.contains(warning),
            warned,
            "secure: {secure}: {stderr}"
        );
    }
}

#[test]
fn the_shipped_examples_pass_check() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).expect("examples folder") {
        let example = entry.expect("entry").path();
        if example.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        // Run each example where the certificates it names exist, issued for the name in the
        // file name (`certs/api.example.com.crt` is a certificate for api.example.com).
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join(example.file_name().expect("name"));
        std::fs::copy(&example, &copy).expect("copy");
        for file in lb_config::files_named_by(&copy) {
            if file.extension().is_some_and(|e| e == "crt") {
                write_self_signed(&file);
            }
        }
        let output = check(&copy);
        assert!(
            output.status.success(),
            "{}: {}",
            example.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        checked += 1;
    }
    assert!(
        checked >= 5,
        "expected the five documented examples, found {checked}"
    );
}

fn write_self_signed(cert: &Path) {
    let name = cert
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .into_owned();
    let generated = rcgen::generate_simple_self_signed(vec![name]).expect("rcgen");
    std::fs::create_dir_all(cert.parent().expect("folder")).expect("mkdir");
    std::fs::write(cert, generated.cert.pem()).expect("cert");
    std::fs::write(
        cert.with_extension("key"),
        generated.key_pair.serialize_pem(),
    )
    .expect("key");
}

fn write(config: &Path, backends: &[SocketAddr]) {
    Scenario::new()
        .section("runtime: { shutdown_grace: 20s, watch_interval: 1h }")
        .port("web", Port::http("http").backends(backends))
        .write(config);
}

/// `gantry_config_reloads_total` by result, from the admin endpoint.
async fn reloads(admin: SocketAddr) -> [f64; 3] {
    let text = get(admin, "/metrics").await.body;
    ["success", "failure", "unchanged"].map(|result| {
        metric(
            &text,
            &format!("gantry_config_reloads_total{{result=\"{result}\"}}"),
        )
    })
}

/// A reload of the files last applied does nothing and is counted as `unchanged`: a SIGHUP with
/// nothing edited, and an edit seen by both the file watcher and a SIGHUP, which applies once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_the_files_last_applied_is_a_no_op_counted_as_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    let (a, b) = (
        HttpOrigin::start("a", OriginProtocol::Http1).await,
        HttpOrigin::start("b", OriginProtocol::Http1).await,
    );
    Scenario::new()
        .section("runtime: { watch_interval: 100ms }")
        .port("web", Port::http("http").backends(&[a.addr]))
        .write(&config);
    let mut gantry = Running::start(&config);
    let admin = gantry.address("admin listening").await;
    gantry.log("ready").await;
    assert_eq!(reloads(admin).await, [0.0, 0.0, 0.0]);

    gantry.signal("HUP");
    gantry
        .log("reload: the files are as last applied; nothing to do")
        .await;
    assert_eq!(reloads(admin).await, [0.0, 0.0, 1.0]);

    // The watcher (every 100 ms) and the signal both see the edit: one applies it, the other
    // finds nothing to do, whichever comes first.
    let edited = Scenario::new()
        .section("runtime: { watch_interval: 100ms }")
        .port("web", Port::http("http").backends(&[a.addr, b.addr]));
    // Renamed into place, as editors do: the watcher never reads half a file.
    let next = config.with_extension("next");
    edited.write(&next);
    std::fs::rename(&next, &config).expect("rename");
    gantry.signal("HUP");
    gantry.log("reload applied").await;
    crate::support::eventually("both the watcher and the signal to reload", || async {
        reloads(admin).await[0] + reloads(admin).await[2] >= 3.0
    })
    .await;
    assert_eq!(reloads(admin).await, [1.0, 0.0, 2.0]);
}

/// A warning any client can cause, once per connection, is logged at most 10 times per 10 s
/// from one place; the rest are counted, and summarized in one line per window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warning_per_connection_is_rate_limited_counted_and_summarized() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    let refusing = Refusing::new();
    Scenario::new()
        .port("db", Port::tcp("tcp").backends(&[refusing.addr]))
        .write(&config);
    let mut gantry = Running::start(&config);
    let admin = gantry.address("admin listening").await;
    let proxy = gantry.address("listening").await;
    gantry.log("ready").await;
    const CONNECTIONS: usize = 100;
    for _ in 0..CONNECTIONS {
        let answer = crate::support::client::tcp_exchange(proxy, b"ping").await;
        assert_eq!(answer, "", "closed without a backend");
    }
    let logged = gantry
        .logs_until("similar log lines left out (at most 10 per 10s from one place)")
        .await;
    let warned = logged
        .iter()
        .filter(|l| l["message"] == "no backend reachable; closing connection")
        .count();
    assert_eq!(warned, 10, "at most 10 lines from one place per window");
    let summary = logged.last().expect("the summary");
    assert_eq!(summary["suppressed"], CONNECTIONS as u64 - 10, "{summary}");
    let text = get(admin, "/metrics").await.body;
    assert!(metric(&text, "gantry_log_events_total{level=\"warn\"}") >= CONNECTIONS as f64);
    assert_eq!(
        metric(&text, "gantry_log_lines_suppressed_total"),
        (CONNECTIONS - 10) as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reloads_on_sighup_and_drains_on_sigterm_then_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    let (a, b) = (
        HttpOrigin::start("a", OriginProtocol::Http1).await,
        HttpOrigin::start("b", OriginProtocol::Http1).await,
    );
    write(&config, &[a.addr]);
    let mut gantry = Running::start(&config);
    let admin = gantry.address("admin listening").await;
    let proxy = gantry.address("listening").await;
    gantry.log("ready").await;
    assert_eq!(get(admin, "/readyz").await.status, StatusCode::OK);
    assert_eq!(get(proxy, "/").await.header("x-origin"), "a");

    // The file watcher is off (1h); only the signal can bring b in.
    write(&config, &[a.addr, b.addr]);
    gantry.signal("HUP");
    gantry.log("reload applied").await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(get(proxy, "/").await.header("x-origin").to_owned());
    }
    assert!(seen.contains(&"b".to_owned()), "{seen:?}");

    // A request in flight when SIGTERM arrives completes; new connections are refused.
    let in_flight = tokio::spawn(async move { get(proxy, "/slow").await.status });
    let parked = (a.clone(), b.clone());
    crate::support::eventually("the slow request to reach an origin", || {
        let parked = parked.clone();
        async move { parked.0.parked() + parked.1.parked() == 1 }
    })
    .await;
    gantry.signal("TERM");
    gantry.log("shutting down: draining connections").await;
    crate::support::eventually("the listener to close", || async move {
        TcpStream::connect(proxy).await.is_err()
    })
    .await;
    a.release(1);
    b.release(1);
    assert_eq!(in_flight.await.expect("join"), StatusCode::OK);
    let status = tokio::time::timeout(Duration::from_secs(20), gantry.child.wait())
        .await
        .expect("exits after draining")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_a_cluster_from_the_kubernetes_section() {
    use lb_k8s_testing::{Kind, Options, Policy, TestApiServer};

    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = TestApiServer::start(Options {
        policy: Policy {
            allow_loopback_endpoints: true,
        },
        ..Options::default()
    })
    .await
    .expect("API server");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("kubeconfig"), api.kubeconfig()).expect("kubeconfig");
    let config = dir.path().join("gantry.yaml");
    std::fs::write(
        &config,
        "admin: { listen: 127.0.0.1:0 }\nkubernetes:\n  kubeconfig: kubeconfig\n  address_pools: [{ name: main, addresses: [127.0.34.1] }]\n",
    )
    .expect("config");
    let origin = HttpOrigin::start("pod", OriginProtocol::Http1).await;
    let port = crate::support::cluster::free_port("127.0.34.1".parse().expect("ip"));
    let mut gantry = Running::start(&config);
    let admin = gantry.address("admin listening").await;
    gantry.log("ready").await;
    api.create(crate::support::cluster::load_balancer(
        "web",
        &[("http", port)],
    ))
    .expect("service");
    api.create(crate::support::cluster::slice(
        "web",
        0,
        "http",
        origin.addr,
    ))
    .expect("slice");
    let addr = SocketAddr::new("127.0.34.1".parse().expect("ip"), port);
    crate::support::eventually("the binary serves the Service", || async {
        crate::support::cluster::origin_behind(addr)
            .await
            .as_deref()
            == Some("pod")
    })
    .await;
    // The status is written once the listener serves.
    crate::support::eventually("the status shows the address", || async {
        api.get(&(Kind::Service, "default".into(), "web".into()))
            .is_some_and(|s| s["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.34.1")
    })
    .await;
    // It wrote as the Lease's holder, which the metric and /config show.
    let lease_id = (Kind::Lease, "gantry-system".into(), "gantry".into());
    let lease = api.get(&lease_id).expect("the Lease");
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .expect("a holder")
        .to_owned();
    // The instance name (the host's), the process, the time it started electing.
    let pid = gantry.child.id().expect("running");
    assert!(holder.contains(&format!("_{pid}_")), "{holder}");
    let text = get(admin, "/metrics").await.body;
    assert_eq!(metric(&text, "gantry_kubernetes_leader"), 1.0);
    let shown: serde_json::Value =
        serde_json::from_str(&get(admin, "/config").await.body).expect("/config is JSON");
    assert_eq!(
        shown["kubernetes_leadership"],
        serde_json::json!({"lease": "gantry-system/gantry", "identity": holder, "leading": true, "holder": holder})
    );
    // A graceful stop hands the Lease back, so another replica takes it at once.
    gantry.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(20), gantry.child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(status.success(), "{status}");
    let lease = api.get(&lease_id).expect("the Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "", "{lease}");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 1, "{lease}");
}
