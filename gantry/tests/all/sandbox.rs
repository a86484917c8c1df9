//! The plugin sandbox, through real sockets: a plugin that traps, loops forever, grows its
//! memory past the cap, floods the host with calls, hands it giant strings, or answers an
//! unknown backend never fails a request; the fault is
//! counted, the plugin is quarantined after repeated faults, and a changed file lifts the
//! quarantine. Plugins that cannot be used are refused at load with a clear message.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gantry::{ApplyError, Gantry};
use http::StatusCode;

use crate::support::client::H1;
use crate::support::origin::{HttpOrigin, OriginProtocol};
use crate::support::scenario::{Port, Scenario};
use crate::support::{addr, metric};

/// A plugin built from `plugins/`, by crate name.
pub fn plugin(name: &str) -> PathBuf {
    Path::new(lb_plugins::BUILT_PLUGIN_DIR).join(format!("{}.wasm", name.replace('-', "_")))
}

/// A Python plugin built from `plugins/python/` (examples and testing), by folder name.
pub fn python_plugin(name: &str) -> PathBuf {
    built_apart(lb_plugins::PYTHON_PLUGIN_DIR, name)
}

/// A JavaScript plugin built from `plugins/js/` (examples and testing), by folder name.
pub fn js_plugin(name: &str) -> PathBuf {
    built_apart(lb_plugins::JS_PLUGIN_DIR, name)
}

/// `NAME.wasm` in `folder`, where `.ci/setup` builds the plugins of other languages.
fn built_apart(folder: &str, name: &str) -> PathBuf {
    let file = Path::new(folder).join(format!("{name}.wasm"));
    assert!(
        file.exists(),
        "{} is missing: the Python and JavaScript plugins are built by `bash .ci/setup` \
         (plugins/python/build.sh, plugins/js/build.sh)",
        file.display()
    );
    file
}

/// Port `web/http` balanced by plugin `bad` (from `plugin_file`) with these parameters.
fn config(plugin_file: &Path, params: &str, backends: &[&HttpOrigin]) -> Scenario {
    let backends: Vec<SocketAddr> = backends.iter().map(|o| o.addr).collect();
    Scenario::new()
        .plugin("bad", plugin_file)
        .section("plugin_limits: { quarantine_after: 5, call_deadline: 2ms, memory_mib: 16 }")
        .port(
            "web",
            Port::http("http")
                .backends(&backends)
                .set("balancer", &format!("{{ policy: bad, params: {params} }}")),
        )
}

async fn start_with_mode(mode: &str, origins: &[&HttpOrigin]) -> Gantry {
    let params = format!("{{ mode: {mode} }}");
    config(&plugin("misbehave"), &params, origins).start().await
}

/// `times` requests on `client`, each answered 200 (a faulting plugin never fails one).
async fn answered_ok(client: &mut H1, times: usize) {
    for _ in 0..times {
        assert_eq!(
            client.get("/").await.expect("answered").status,
            StatusCode::OK
        );
    }
}

fn faults(gantry: &Gantry, kind: &str) -> f64 {
    let text = gantry.metrics().render();
    metric(
        &text,
        &format!("gantry_plugin_faults_total{{kind=\"{kind}\",plugin=\"bad\"}}"),
    )
}

fn quarantined(gantry: &Gantry) -> f64 {
    metric(
        &gantry.metrics().render(),
        "gantry_plugin_quarantined{plugin=\"bad\"}",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_plugin_fault_is_answered_by_the_fallback_and_quarantined() {
    let (a, b) = (
        HttpOrigin::start("a", OriginProtocol::Http1).await,
        HttpOrigin::start("b", OriginProtocol::Http1).await,
    );
    let rust = plugin("misbehave");
    let python = python_plugin("misbehave");
    let js = js_plugin("misbehave");
    for (file, mode, kind) in [
        (&rust, "trap", "trap"),
        (&rust, "loop", "deadline"),
        (&rust, "grow", "trap"),
        (&rust, "invalid", "invalid_answer"),
        // Host calls in a loop: each returns at once, the call's deadline still ends it.
        (&rust, "host_flood", "deadline"),
        // The same guarantees for a plugin written in Python: an exception out of `pick`
        // ends the call as a trap; a `while True` loop is interrupted at its deadline.
        (&python, "trap", "trap"),
        (&python, "loop", "deadline"),
        // And in JavaScript (QuickJS): a `throw` out of `pick`, a `for (;;) {}`.
        (&js, "trap", "trap"),
        (&js, "loop", "deadline"),
    ] {
        let gantry = config(file, &format!("{{ mode: {mode} }}"), &[&a, &b])
            .start()
            .await;
        let case = format!("{} in mode {mode}", file.display());
        let mut client = H1::connect(addr(&gantry, "web", "http"))
            .await
            .expect("connect");
        let mut served = Vec::new();
        for _ in 0..12 {
            let answer = client.get("/").await.expect("answered");
            assert_eq!(answer.status, StatusCode::OK, "{case}");
            served.push(answer.header("x-origin").to_owned());
        }
        assert!(
            faults(&gantry, kind) >= 5.0,
            "{case}: {} {kind} faults",
            faults(&gantry, kind)
        );
        assert_eq!(quarantined(&gantry), 1.0, "{case}");
        // The native round-robin answered: both backends served.
        assert!(
            served.contains(&"a".to_owned()) && served.contains(&"b".to_owned()),
            "{served:?}"
        );
        gantry.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giant_strings_handed_to_the_host_are_contained() {
    // A 4 MiB log line and header name per pick: the instance's memory cap bounds what the
    // host may be handed; the host cuts the line and looks no such name up. Whether a pick
    // finishes within its deadline or not, every request is answered.
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = start_with_mode("giant_strings", &[&origin]).await;
    let mut client = H1::connect(addr(&gantry, "web", "http"))
        .await
        .expect("connect");
    for _ in 0..20 {
        let answer = client.get("/").await.expect("answered");
        assert_eq!(answer.status, StatusCode::OK);
    }
    assert_eq!(
        faults(&gantry, "trap"),
        0.0,
        "the strings fit in the instance"
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_plugin_file_lifts_its_quarantine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.wasm");
    std::fs::copy(plugin("misbehave"), &file).expect("copy");
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let config_path = dir.path().join("gantry.yaml");
    config(&file, "{ mode: trap }", &[&origin]).write(&config_path);
    let gantry = Gantry::start(lb_config::load_file(&config_path).expect("valid"))
        .await
        .expect("start");
    let mut client = H1::connect(addr(&gantry, "web", "http"))
        .await
        .expect("connect");
    answered_ok(&mut client, 6).await;
    assert_eq!(quarantined(&gantry), 1.0);

    // The operator ships a fixed plugin under the same name and file.
    std::fs::copy(plugin("round-robin"), &file).expect("replace");
    config(&file, "{}", &[&origin]).write(&config_path);
    gantry::reload::reload_from_file(&gantry, &config_path)
        .await
        .expect("reload");
    answered_ok(&mut client, 6).await;
    assert_eq!(
        quarantined(&gantry),
        0.0,
        "a new file is a new plugin, not quarantined"
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}

/// Two plugin names for byte-identical files are two plugins: each has its own parameters,
/// fault counts, quarantine and metrics; faults under one name leave the other serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_names_for_identical_files_keep_their_own_faults_and_quarantine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let twin = dir.path().join("twin.wasm");
    std::fs::copy(plugin("misbehave"), &twin).expect("copy");
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = config(&plugin("misbehave"), "{ mode: trap }", &[&origin])
        .plugin("twin", &twin)
        .port(
            "other",
            Port::http("http")
                .backends(&[origin.addr])
                .set("balancer", "{ policy: twin, params: { mode: good } }"),
        )
        .start()
        .await;
    let mut client = H1::connect(addr(&gantry, "web", "http"))
        .await
        .expect("connect");
    answered_ok(&mut client, 6).await;
    let mut other = H1::connect(addr(&gantry, "other", "http"))
        .await
        .expect("connect");
    answered_ok(&mut other, 1).await;
    let text = gantry.metrics().render();
    let series =
        |name: &str, plugin: &str| metric(&text, &format!("{name}{{plugin=\"{plugin}\"}}"));
    assert_eq!(series("gantry_plugin_quarantined", "bad"), 1.0);
    assert_eq!(series("gantry_plugin_quarantined", "twin"), 0.0, "{text}");
    let traps = |plugin: &str| {
        metric(
            &text,
            &format!("gantry_plugin_faults_total{{kind=\"trap\",plugin=\"{plugin}\"}}"),
        )
    };
    assert_eq!((traps("bad"), traps("twin")), (5.0, 0.0));
    gantry.shutdown(Duration::from_secs(1)).await;
}

async fn start_error(scenario: &Scenario) -> String {
    match Gantry::start(scenario.model()).await {
        Ok(_) => panic!("the plugin should have been refused"),
        Err(err @ ApplyError::Policy(_)) => err.to_string(),
        Err(other) => panic!("unexpected error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_plugins_are_refused_at_load_with_the_reason() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let reject = config(&plugin("misbehave"), "{ mode: reject }", &[&origin]);
    let rejected = start_error(&reject).await;
    assert_eq!(
        rejected,
        "services[0].ports[0].balancer: plugin `bad` refused its parameters: mode `reject` refuses every configuration"
    );

    let reads_files = config(&plugin("reads-files"), "{ mode: good }", &[&origin]);
    let refused = start_error(&reads_files).await;
    assert!(
        refused.starts_with("services[0].ports[0].balancer: plugin `bad` imports `wasi:"),
        "{refused}"
    );
    assert!(refused.contains("which plugins cannot have"), "{refused}");
    // Every refused import is named, not only the first.
    assert!(
        refused.contains("`wasi:filesystem/preopens@") && refused.contains("`wasi:clocks/"),
        "{refused}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x01\0\0\0 but not a component").expect("write");
    let not_component = start_error(&config(&garbage, "{ mode: good }", &[&origin])).await;
    assert!(
        not_component.contains("not a WebAssembly component"),
        "{not_component}"
    );
}

/// The compiled code under `dir` (not the cache's own bookkeeping: usage statistics and
/// cleanup markers, which its background worker updates), with modification times.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => pending.push(path),
                Ok(meta) => {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !name.starts_with('.') && !name.ends_with(".stats") {
                        found.push((path, meta.modified().expect("mtime")));
                    }
                }
                Err(_) => {}
            }
        }
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_plugins_are_kept_on_disk_and_reused_by_the_next_start() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let cache = tempfile::tempdir().expect("tempdir");
    let scenario = Scenario::new()
        .section(&format!(
            "runtime: {{ plugin_cache: \"{}\" }}",
            cache.path().display()
        ))
        .port(
            "web",
            Port::http("http")
                .backends(&[origin.addr])
                .set("balancer", "{ policy: \"builtin:maglev\" }"),
        );
    let first = scenario.start().await;
    first.shutdown(Duration::from_secs(1)).await;
    let written = files_under(cache.path());
    assert!(!written.is_empty(), "nothing cached");

    let second = scenario.start().await;
    let answer = crate::support::client::get(addr(&second, "web", "http"), "/").await;
    assert_eq!(answer.header("x-origin"), "o");
    second.shutdown(Duration::from_secs(1)).await;
    assert_eq!(
        files_under(cache.path()),
        written,
        "the second start compiled again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulting_affinity_plugin_leaves_requests_balanced_and_is_quarantined() {
    let (a, b) = (
        HttpOrigin::start("a", OriginProtocol::Http1).await,
        HttpOrigin::start("b", OriginProtocol::Http1).await,
    );
    for (mode, kind) in [
        ("trap", "trap"),
        ("invalid", "invalid_answer"),
        ("bad-header", "invalid_answer"),
    ] {
        let gantry = Scenario::new()
            .plugin("bad", &plugin("misbehave-affinity"))
            .section("plugin_limits: { quarantine_after: 5 }")
            .port(
                "web",
                Port::http("http").backends(&[a.addr, b.addr]).set(
                    "affinity",
                    &format!("{{ policy: bad, params: {{ mode: {mode} }} }}"),
                ),
            )
            .start()
            .await;
        let mut client = H1::connect(addr(&gantry, "web", "http"))
            .await
            .expect("connect");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10 {
            let answer = client.get("/").await.expect("answer");
            assert_eq!(answer.status, StatusCode::OK, "{mode}");
            assert_eq!(answer.header("set-cookie"), "", "{mode}");
            seen.insert(answer.header("x-origin").to_owned());
        }
        assert_eq!(seen.len(), 2, "{mode}: requests are still balanced");
        assert_eq!(
            faults(&gantry, kind),
            5.0,
            "{mode}: counted until quarantined"
        );
        assert_eq!(quarantined(&gantry), 1.0, "{mode}");
        gantry.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_built_against_the_earlier_contracts_still_serve() {
    let origins = [
        HttpOrigin::start("a", OriginProtocol::Http1).await,
        HttpOrigin::start("b", OriginProtocol::Http1).await,
        HttpOrigin::start("c", OriginProtocol::Http1).await,
    ];
    let backends: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    // 0.1.0: an instance per port; 0.2.0: a resource per port, and no pick plan.
    for fixture in ["legacy-rotate", "legacy-v2-rotate"] {
        let gantry = Scenario::new()
            .plugin("legacy", &plugin(fixture))
            .port(
                "web",
                Port::http("http")
                    .backends(&backends)
                    .set("balancer", "{ policy: legacy, params: { offset: 1 } }"),
            )
            .start()
            .await;
        let mut client = H1::connect(addr(&gantry, "web", "http"))
            .await
            .expect("connect");
        let mut served = Vec::new();
        for _ in 0..6 {
            served.push(
                client
                    .get("/")
                    .await
                    .expect("answered")
                    .header("x-origin")
                    .to_owned(),
            );
        }
        // The plugin's rotation, shifted by its offset: not the native round-robin's a, b, c.
        assert_eq!(served, ["b", "c", "a", "b", "c", "a"], "{fixture}");
        let text = gantry.metrics().render();
        for kind in ["trap", "deadline", "invalid_answer", "instantiate"] {
            let series = format!("gantry_plugin_faults_total{{kind=\"{kind}\",plugin=\"legacy\"}}");
            assert_eq!(metric(&text, &series), 0.0, "{fixture}: {kind}");
        }
        gantry.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancers_plan_places_first_picks_and_its_pick_places_the_retries() {
    // `misbehave` picks its first backend but plans a rotation over its last one alone, so
    // where a request lands says which of the two placed it.
    let (first, last) = (
        HttpOrigin::start("first", OriginProtocol::Http1).await,
        HttpOrigin::start("last", OriginProtocol::Http1).await,
    );
    let refusing = crate::support::Refusing::new();
    let gantry = Scenario::new()
        .plugin("bad", &plugin("misbehave"))
        .port(
            "web",
            Port::http("live")
                .backends(&[first.addr, last.addr])
                .set("balancer", "{ policy: bad, params: { plan: last } }"),
        )
        .port(
            "web",
            Port::http("dead")
                .backends(&[first.addr, refusing.addr])
                .set("balancer", "{ policy: bad, params: { plan: last } }"),
        )
        .start()
        .await;
    for (port, expected) in [("live", "last"), ("dead", "first")] {
        let mut client = H1::connect(addr(&gantry, "web", port))
            .await
            .expect("connect");
        for _ in 0..10 {
            let answer = client.get("/").await.expect("answered");
            assert_eq!(answer.status, StatusCode::OK, "{port}");
            // live: the plan placed every request; dead: the plan's backend refuses, and the
            // plugin's own pick placed the next attempt.
            assert_eq!(answer.header("x-origin"), expected, "{port}");
        }
    }
    assert_eq!(faults(&gantry, "invalid_answer"), 0.0);
    assert_eq!(faults(&gantry, "trap"), 0.0);
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_that_names_no_backend_or_traps_is_one_fault_and_pick_serves() {
    let (first, last) = (
        HttpOrigin::start("first", OriginProtocol::Http1).await,
        HttpOrigin::start("last", OriginProtocol::Http1).await,
    );
    for (plan, kind) in [("invalid", "invalid_answer"), ("trap", "trap")] {
        let gantry = config(
            &plugin("misbehave"),
            &format!("{{ plan: {plan} }}"),
            &[&first, &last],
        )
        .start()
        .await;
        let mut client = H1::connect(addr(&gantry, "web", "http"))
            .await
            .expect("connect");
        for _ in 0..10 {
            let answer = client.get("/").await.expect("answered");
            assert_eq!(answer.status, StatusCode::OK, "{plan}");
            // The plugin's pick, not the native fallback's rotation.
            assert_eq!(answer.header("x-origin"), "first", "{plan}");
        }
        // Asked once for the set: one fault, far from quarantine.
        assert_eq!(faults(&gantry, kind), 1.0, "{plan}");
        assert_eq!(quarantined(&gantry), 0.0, "{plan}");
        gantry.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_whose_policy_traps_does_not_disturb_the_ports_sharing_its_plugin() {
    // One plugin, one instance per worker, two ports in it: `steady` always answers its first
    // backend; `broken` traps on every pick, which ends the instance each time.
    let (first, second, other) = (
        HttpOrigin::start("first", OriginProtocol::Http1).await,
        HttpOrigin::start("second", OriginProtocol::Http1).await,
        HttpOrigin::start("other", OriginProtocol::Http1).await,
    );
    let gantry = Scenario::new()
        .plugin("mis", &plugin("misbehave"))
        .section("plugin_limits: { quarantine_after: 1000 }")
        .port(
            "web",
            Port::http("steady")
                .backends(&[first.addr, second.addr])
                .set("balancer", "{ policy: mis, params: { mode: good } }"),
        )
        .port(
            "web",
            Port::http("broken")
                .backends(&[other.addr])
                .set("balancer", "{ policy: mis, params: { mode: trap } }"),
        )
        .start()
        .await;
    let mut steady = H1::connect(addr(&gantry, "web", "steady"))
        .await
        .expect("connect");
    let mut broken = H1::connect(addr(&gantry, "web", "broken"))
        .await
        .expect("connect");
    for _ in 0..10 {
        assert_eq!(
            broken.get("/").await.expect("answered").status,
            StatusCode::OK
        );
        let answer = steady.get("/").await.expect("answered");
        // The plugin itself answered (the native round-robin would also send some to the
        // second backend): the steady port's policy was made again in the new instance.
        assert_eq!(answer.header("x-origin"), "first");
    }
    let traps = metric(
        &gantry.metrics().render(),
        "gantry_plugin_faults_total{kind=\"trap\",plugin=\"mis\"}",
    );
    assert!(traps >= 10.0, "{traps} traps");
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_whose_tables_do_not_fit_beside_the_others_gets_instances_of_its_own() {
    // Two ports share the plugin; each keeps 10 MiB once given its backends, and an instance
    // may hold 16: the second cannot be made beside the first, so it moves to instances of
    // its own, and both keep being answered by the plugin.
    let (first, second) = (
        HttpOrigin::start("first", OriginProtocol::Http1).await,
        HttpOrigin::start("second", OriginProtocol::Http1).await,
    );
    let port = |name: &str| {
        Port::http(name).backends(&[first.addr, second.addr]).set(
            "balancer",
            "{ policy: big, params: { mode: good, hoard_mib: 10 } }",
        )
    };
    let gantry = Scenario::new()
        .section("plugin_limits: { memory_mib: 16, quarantine_after: 1000 }")
        .plugin("big", &plugin("misbehave"))
        .port("web", port("one"))
        .port("web", port("two"))
        .start()
        .await;
    let faults = |gantry: &Gantry| {
        metric(
            &gantry.metrics().render(),
            "gantry_plugin_faults_total{kind=\"instantiate\",plugin=\"big\"}",
        )
    };
    let mut clients = [
        H1::connect(addr(&gantry, "web", "one"))
            .await
            .expect("connect"),
        H1::connect(addr(&gantry, "web", "two"))
            .await
            .expect("connect"),
    ];
    // Each worker thread's instance meets the crowding once at most; after that the ports
    // are served without faults, by the plugin (always the first backend).
    for client in clients.iter_mut() {
        for _ in 0..4 {
            client.get("/").await.expect("answered");
        }
    }
    let settled = faults(&gantry);
    assert!(settled >= 1.0, "the crowding was met: {settled} faults");
    for client in clients.iter_mut() {
        for _ in 0..10 {
            let answer = client.get("/").await.expect("answered");
            assert_eq!(answer.header("x-origin"), "first");
        }
    }
    assert_eq!(faults(&gantry), settled, "no fault once isolated");
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn a_0_1_0_plugin_is_refused_on_a_udp_port_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    Scenario::new()
        .plugin("legacy", &plugin("legacy-rotate"))
        .port(
            "dns",
            Port::new("udp", "udp")
                .backends(&["127.0.0.1:53".parse().expect("addr")])
                .set("balancer", "{ policy: legacy }"),
        )
        .write(&config);
    let model = lb_config::load_file(&config).expect("the file itself is valid");
    let problems = lb_plugins::check(&model).to_string();
    assert!(
        problems.contains("services[0].ports[0].balancer: plugin `legacy` is built against gantry:plugins@0.1.0, which has no `udp` protocol"),
        "{problems}"
    );
}
