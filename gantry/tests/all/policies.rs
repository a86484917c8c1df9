//! The built-in policies and the example plugins through real sockets: weighted splits,
//! least-request, consistent hashing by header, the canary example (in Rust, Python and
//! JavaScript), and a plugin replaced live under load.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gantry::Gantry;
use http::{Request, StatusCode};
use http_body_util::Full;
use lb_config::{Change, PortAspect, PortAspects};

use crate::sandbox::{js_plugin, plugin, python_plugin};
use crate::support::client::{get, H1};
use crate::support::origin::{HttpOrigin, OriginProtocol};
use crate::support::scenario::{Port, Scenario};
use crate::support::{addr, eventually};

/// Port `web/http` with these weighted backends and this balancer.
fn web_port(backends: &[(&HttpOrigin, u32)], balancer: &str) -> Scenario {
    let list: Vec<String> = backends
        .iter()
        .map(|(o, w)| format!("{{ address: \"{}\", weight: {w} }}", o.addr))
        .collect();
    Scenario::new().port(
        "web",
        Port::http("http")
            .set("backends", &format!("[{}]", list.join(", ")))
            .set("balancer", balancer),
    )
}

/// Sends `total` GETs over `connections` keep-alive connections; counts answers by origin.
async fn tally(proxy: SocketAddr, total: usize, connections: usize) -> HashMap<String, usize> {
    let mut tasks = Vec::new();
    for _ in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut client = H1::connect(proxy).await.expect("connect");
            let mut seen = HashMap::<String, usize>::new();
            for _ in 0..total / connections {
                let answer = client.get("/").await.expect("answer");
                assert_eq!(answer.status, StatusCode::OK);
                *seen
                    .entry(answer.header("x-origin").to_owned())
                    .or_default() += 1;
            }
            seen
        }));
    }
    let mut all = HashMap::new();
    for task in tasks {
        for (origin, n) in task.await.expect("join") {
            *all.entry(origin).or_default() += n;
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_split_by_weight_under_round_robin_and_random() {
    let (a, b) = (
        HttpOrigin::start("a", OriginProtocol::Http1).await,
        HttpOrigin::start("b", OriginProtocol::Http1).await,
    );
    for policy in ["builtin:round-robin", "builtin:random"] {
        let gantry = web_port(&[(&a, 1), (&b, 3)], &format!("{{ policy: \"{policy}\" }}"))
            .start()
            .await;
        let counts = tally(addr(&gantry, "web", "http"), 10_000, 4).await;
        let share_b = counts.get("b").copied().unwrap_or(0) as f64 / 10_000.0;
        // Round-robin is exact; random's standard deviation here is 0.43 points.
        let tolerance = if policy.ends_with("random") {
            0.02
        } else {
            0.001
        };
        assert!((share_b - 0.75).abs() <= tolerance, "{policy}: {counts:?}");
        gantry.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_new_work_to_the_idle_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    let (busy, idle) = (
        HttpOrigin::start("busy", OriginProtocol::Http1).await,
        HttpOrigin::start("idle", OriginProtocol::Http1).await,
    );
    let policy = "{ policy: \"builtin:least-request\" }";
    web_port(&[(&busy, 1)], policy).write(&config);
    let gantry = Gantry::start(lb_config::load_file(&config).expect("valid"))
        .await
        .expect("start");
    let proxy = addr(&gantry, "web", "http");
    // Two requests held in flight on the only backend there is...
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(proxy, "/slow").await.status }))
        .collect();
    let parked = busy.clone();
    eventually("two requests in flight on `busy`", || {
        let parked = parked.clone();
        async move { parked.parked() == 2 }
    })
    .await;
    // ...then a second backend arrives; `busy` keeps its in-flight count across the reload.
    web_port(&[(&busy, 1), (&idle, 1)], policy).write(&config);
    gantry::reload::reload_from_file(&gantry, &config)
        .await
        .expect("reload");
    for _ in 0..20 {
        assert_eq!(get(proxy, "/").await.header("x-origin"), "idle");
    }
    busy.release(2);
    for request in held {
        assert_eq!(request.await.expect("join"), StatusCode::OK);
    }
    gantry.shutdown(Duration::from_secs(1)).await;
}

async fn served_by(proxy: SocketAddr, user: &str) -> String {
    let mut client = H1::connect(proxy).await.expect("connect");
    let request = Request::get("/")
        .header("host", "web")
        .header("x-user", user)
        .body(Full::new(Bytes::new()))
        .expect("request");
    client
        .send(request)
        .await
        .expect("answer")
        .header("x-origin")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_policies_keep_each_key_on_its_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    let origins = [
        HttpOrigin::start("a", OriginProtocol::Http1).await,
        HttpOrigin::start("b", OriginProtocol::Http1).await,
        HttpOrigin::start("c", OriginProtocol::Http1).await,
    ];
    for policy in ["builtin:maglev", "builtin:ring-hash"] {
        let balancer = format!("{{ policy: \"{policy}\", hash_key: \"header:x-user\" }}");
        let all: Vec<(&HttpOrigin, u32)> = origins.iter().map(|o| (o, 1)).collect();
        web_port(&all, &balancer).write(&config);
        let gantry = Gantry::start(lb_config::load_file(&config).expect("valid"))
            .await
            .expect("start");
        let proxy = addr(&gantry, "web", "http");
        let mut placement = HashMap::new();
        for user in (0..30).map(|i| format!("user-{i}")) {
            let first = served_by(proxy, &user).await;
            assert_eq!(
                served_by(proxy, &user).await,
                first,
                "{policy}: {user} moved"
            );
            placement.insert(user, first);
        }
        let used: std::collections::HashSet<_> = placement.values().collect();
        assert_eq!(used.len(), 3, "{policy}: {placement:?}");

        if policy.ends_with("ring-hash") {
            // Removing `c` moves only the keys that were on `c`.
            web_port(&all[..2], &balancer).write(&config);
            gantry::reload::reload_from_file(&gantry, &config)
                .await
                .expect("reload");
            for (user, before) in &placement {
                let now = served_by(proxy, user).await;
                if before != "c" {
                    assert_eq!(&now, before, "{user} moved without cause");
                }
            }
        }
        gantry.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_example_plugin_routes_by_header() {
    canary_routes_by_header(&plugin("canary")).await;
}

/// The same policy written in Python (plugins/python/examples/canary), built with
/// componentize-py: the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_canary_example_routes_by_header() {
    canary_routes_by_header(&python_plugin("canary")).await;
}

/// And in JavaScript (plugins/js/examples/canary), built with jco and QuickJS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_canary_example_routes_by_header() {
    canary_routes_by_header(&js_plugin("canary")).await;
}

/// And in TypeScript (plugins/js/examples/canary-ts), type-checked by tsc, compiled, built
/// with jco.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_canary_example_routes_by_header() {
    canary_routes_by_header(&js_plugin("canary-ts")).await;
}

/// Canary requests (header `x-canary: always`) reach only the canary backend; the others
/// rotate over the rest.
async fn canary_routes_by_header(file: &Path) {
    let (a, b, canary) = (
        HttpOrigin::start("a", OriginProtocol::Http1).await,
        HttpOrigin::start("b", OriginProtocol::Http1).await,
        HttpOrigin::start("canary", OriginProtocol::Http1).await,
    );
    let gantry = web_port(
        &[(&a, 1), (&b, 1), (&canary, 1)],
        &format!(
            "{{ policy: canary, params: {{ canary_port: {} }} }}",
            canary.addr.port()
        ),
    )
    .plugin("canary", file)
    .start()
    .await;
    let proxy = addr(&gantry, "web", "http");
    let mut client = H1::connect(proxy).await.expect("connect");
    for _ in 0..4 {
        let request = Request::get("/")
            .header("host", "web")
            .header("x-canary", "always")
            .body(Full::new(Bytes::new()))
            .expect("request");
        assert_eq!(
            client
                .send(request)
                .await
                .expect("answer")
                .header("x-origin"),
            "canary"
        );
    }
    let counts = tally(proxy, 8, 1).await;
    assert_eq!(
        (counts.get("a"), counts.get("b"), counts.get("canary")),
        (Some(&4), Some(&4), None)
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_file_replaced_under_load_fails_no_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, file) = (dir.path().join("gantry.yaml"), dir.path().join("mine.wasm"));
    std::fs::copy(plugin("round-robin"), &file).expect("copy");
    let (a, b) = (
        HttpOrigin::start("a", OriginProtocol::Http1).await,
        HttpOrigin::start("b", OriginProtocol::Http1).await,
    );
    web_port(&[(&a, 1), (&b, 1)], "{ policy: mine }")
        .plugin("mine", &file)
        .write(&config);
    let gantry = Gantry::start(lb_config::load_file(&config).expect("valid"))
        .await
        .expect("start");
    let proxy = addr(&gantry, "web", "http");

    let (ok, failed, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let load = {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            let mut client = H1::connect(proxy).await.expect("connect");
            while !stop.load(Ordering::SeqCst) {
                match client.get("/").await {
                    Ok(answer) if answer.status == StatusCode::OK => {
                        ok.fetch_add(1, Ordering::SeqCst)
                    }
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        })
    };
    let ok_before = ok.clone();
    eventually("load before the swap", || {
        let ok = ok_before.clone();
        async move { ok.load(Ordering::SeqCst) > 200 }
    })
    .await;
    std::fs::copy(plugin("random"), &file).expect("replace the plugin");
    let changes = gantry::reload::reload_from_file(&gantry, &config)
        .await
        .expect("reload");
    assert!(
        matches!(
            changes[..],
            [Change::PortChanged { what, .. }] if what == PortAspects::of(&[PortAspect::Balancer])
        ),
        "{changes:?}"
    );
    let target = ok.load(Ordering::SeqCst) + 200;
    let ok_after = ok.clone();
    eventually("load after the swap", || {
        let ok = ok_after.clone();
        async move { ok.load(Ordering::SeqCst) > target }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    load.await.expect("load task");
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    gantry.shutdown(Duration::from_secs(1)).await;
}
