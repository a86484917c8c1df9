//! Shadow policies through real sockets: a shadow balancer or affinity sees the serving
//! policy's calls, its answers are compared and counted but never used; its faults and
//! quarantine are its own; sampling bounds what it sees; promoting it is a reload that fails
//! no request; `/config` and `/metrics` show what is shadowed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use gantry::Gantry;
use http::StatusCode;
use lb_config::{Change, PortAspect, PortAspects};

use crate::sandbox::plugin;
use crate::support::client::{exchange_from, get, H1};
use crate::support::origin::{HttpOrigin, OriginProtocol, TcpOrigin};
use crate::support::scenario::{Port, Scenario};
use crate::support::steady::SteadyLoad;
use crate::support::{addr, has_series, metric};

/// Serving answers the first backend; this shadow answers the last one on every first pick
/// (its plan), so the two never agree on a set of two.
const ALWAYS_LAST: &str = "{ policy: misbehave, params: { mode: good, plan: last } }";

/// Port `web/http` over `origins`, balanced by the misbehave plugin in mode `good` (the first
/// backend), with `shadow` (YAML) as its shadow balancer.
fn shadowed(origins: &[&HttpOrigin], shadow: &str) -> Scenario {
    let backends: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    Scenario::new()
        .plugin("misbehave", &plugin("misbehave"))
        .section("plugin_limits: { quarantine_after: 5, call_deadline: 2ms, memory_mib: 16 }")
        .port(
            "web",
            Port::http("http").backends(&backends).set(
                "balancer",
                &format!("{{ policy: misbehave, params: {{ mode: good }}, shadow: {shadow} }}"),
            ),
        )
}

/// The value of a shadow series of `web/http` (`labels` sorted, after `port=`).
fn shadow_calls(gantry: &Gantry, role: &str, result: &str) -> f64 {
    metric(
        &gantry.metrics().render(),
        &format!(
            "gantry_shadow_calls_total{{port=\"http\",result=\"{result}\",role=\"{role}\",service=\"web\"}}"
        ),
    )
}

fn shadow_picks(gantry: &Gantry, port: &str, backend: SocketAddr, role: &str, side: &str) -> f64 {
    let service = if port == "http" { "web" } else { "db" };
    metric(
        &gantry.metrics().render(),
        &format!(
            "gantry_shadow_picks_total{{backend=\"{backend}\",port=\"{port}\",role=\"{role}\",service=\"{service}\",side=\"{side}\"}}"
        ),
    )
}

/// `times` requests on one connection: the origin that answered each.
async fn served(gantry: &Gantry, times: usize) -> Vec<String> {
    let mut client = H1::connect(addr(gantry, "web", "http"))
        .await
        .expect("connect");
    let mut served = Vec::new();
    for _ in 0..times {
        let answer = client.get("/").await.expect("answered");
        assert_eq!(answer.status, StatusCode::OK);
        served.push(answer.header("x-origin").to_owned());
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_always_disagrees_is_counted_and_never_decides() {
    let (a, b) = (
        HttpOrigin::start("a", OriginProtocol::Http1).await,
        HttpOrigin::start("b", OriginProtocol::Http1).await,
    );
    let gantry = shadowed(&[&a, &b], ALWAYS_LAST).start().await;
    assert_eq!(served(&gantry, 20).await, vec!["a"; 20]);
    assert_eq!(b.requests(), 0, "the shadow's choice was never used");
    assert_eq!(shadow_calls(&gantry, "balancer", "disagree"), 20.0);
    assert_eq!(shadow_calls(&gantry, "balancer", "agree"), 0.0);
    assert_eq!(shadow_calls(&gantry, "balancer", "fault"), 0.0);
    // Side by side: serving put every compared pick on a, the shadow on b.
    assert_eq!(
        shadow_picks(&gantry, "http", a.addr, "balancer", "serving"),
        20.0
    );
    assert_eq!(
        shadow_picks(&gantry, "http", b.addr, "balancer", "serving"),
        0.0
    );
    assert_eq!(
        shadow_picks(&gantry, "http", b.addr, "balancer", "shadow"),
        20.0
    );
    assert_eq!(
        shadow_picks(&gantry, "http", a.addr, "balancer", "shadow"),
        0.0
    );
    let text = gantry.metrics().render();
    assert!(
        !has_series(
            &text,
            "gantry_shadow_calls_total{port=\"http\",result=\"agree\",role=\"affinity\",service=\"web\"}"
        ),
        "an unshadowed role has no series"
    );
    // The shadow's plugin has its own record, beside the serving use of the same file.
    assert_eq!(
        metric(
            &text,
            "gantry_plugin_quarantined{plugin=\"shadow:misbehave\"}"
        ),
        0.0
    );

    // `/config` says what is shadowed, in the configuration and on the listener.
    let admin = gantry.admin_addr().expect("admin address");
    let config: serde_json::Value =
        serde_json::from_str(&get(admin, "/config").await.body).expect("/config is JSON");
    let shadow = &config["config"]["services"]["web"]["ports"]["http"]["shadow"]["balancer"];
    assert_eq!(
        shadow["params"],
        serde_json::json!([["mode", "good"], ["plan", "last"]])
    );
    assert_eq!(shadow["sample_per_million"], 1_000_000);
    assert_eq!(
        config["listeners"]["web/http"]["shadow"]["balancer"],
        "shadow:misbehave"
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_traps_or_spins_fails_no_request_and_is_quarantined_alone() {
    let (a, b) = (
        HttpOrigin::start("a", OriginProtocol::Http1).await,
        HttpOrigin::start("b", OriginProtocol::Http1).await,
    );
    for (mode, kind) in [("trap", "trap"), ("loop", "deadline")] {
        let shadow = format!("{{ policy: misbehave, params: {{ mode: {mode} }} }}");
        let gantry = shadowed(&[&a, &b], &shadow).start().await;
        // Every request is served by serving's choice, whatever the shadow does.
        assert_eq!(served(&gantry, 12).await, vec!["a"; 12], "{mode}");
        let text = gantry.metrics().render();
        let faults = |plugin: &str| {
            metric(
                &text,
                &format!("gantry_plugin_faults_total{{kind=\"{kind}\",plugin=\"{plugin}\"}}"),
            )
        };
        // A spinning shadow is stopped at its call deadline (counted as such), at most
        // `quarantine_after` times, and then not called again.
        assert_eq!(faults("shadow:misbehave"), 5.0, "{mode}");
        assert_eq!(
            metric(
                &text,
                "gantry_plugin_quarantined{plugin=\"shadow:misbehave\"}"
            ),
            1.0,
            "{mode}"
        );
        assert_eq!(
            faults("misbehave"),
            0.0,
            "{mode}: serving's record is untouched"
        );
        assert_eq!(
            metric(&text, "gantry_plugin_quarantined{plugin=\"misbehave\"}"),
            0.0
        );
        assert_eq!(shadow_calls(&gantry, "balancer", "fault"), 5.0, "{mode}");
        assert_eq!(
            shadow_calls(&gantry, "balancer", "quarantined"),
            7.0,
            "{mode}"
        );
        gantry.shutdown(Duration::from_secs(1)).await;
    }
    assert_eq!(b.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_shadow_sees_its_share_of_the_calls() {
    let (a, b) = (
        HttpOrigin::start("a", OriginProtocol::Http1).await,
        HttpOrigin::start("b", OriginProtocol::Http1).await,
    );
    let shadow = "{ policy: misbehave, params: { mode: good, plan: last }, sample_percent: 10 }";
    let gantry = shadowed(&[&a, &b], shadow).start().await;
    served(&gantry, 100).await;
    assert_eq!(shadow_calls(&gantry, "balancer", "disagree"), 10.0);
    assert_eq!(
        shadow_picks(&gantry, "http", a.addr, "balancer", "serving"),
        10.0
    );
    gantry.shutdown(Duration::from_secs(1)).await;

    let refused = lb_config::parse_str(
        &shadowed(&[&a, &b], "{ policy: misbehave, sample_percent: 0 }").yaml(),
        std::path::Path::new("/"),
    )
    .expect_err("a sampling rate of 0 is refused");
    assert!(
        refused.to_string().contains(
            "services[0].ports[0].balancer.shadow.sample_percent: 0 is out of range 0.01..=100"
        ),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoting_the_shadow_under_load_fails_no_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    let (a, b) = (
        HttpOrigin::start("a", OriginProtocol::Http1).await,
        HttpOrigin::start("b", OriginProtocol::Http1).await,
    );
    let port = |balancer: &str| {
        Scenario::new()
            .plugin("misbehave", &plugin("misbehave"))
            .section("runtime: { shutdown_grace: 5s }")
            .port(
                "web",
                Port::http("http")
                    .backends(&[a.addr, b.addr])
                    .set("balancer", balancer),
            )
    };
    let before = port(&format!(
        "{{ policy: \"builtin:round-robin\", shadow: {ALWAYS_LAST} }}"
    ));
    before.write(&config);
    let gantry = Gantry::start(lb_config::load_file(&config).expect("valid config"))
        .await
        .expect("gantry starts");
    let load = SteadyLoad::start(addr(&gantry, "web", "http"));
    load.wait_for_more(100).await;
    // Round-robin serves both; the shadow would have sent everything to b.
    assert!(a.requests() > 0 && b.requests() > 0);
    assert!(shadow_calls(&gantry, "balancer", "disagree") > 0.0);

    port(ALWAYS_LAST).write(&config);
    let changes = gantry::reload::reload_from_file(&gantry, &config)
        .await
        .expect("the promotion applies");
    let key = lb_config::ListenerKey {
        service: "web".into(),
        port: "http".into(),
    };
    assert_eq!(
        changes,
        [Change::PortChanged {
            key,
            what: PortAspects::of(&[PortAspect::Balancer, PortAspect::Shadow]),
        }]
    );
    let a_before = a.requests();
    load.wait_for_more(100).await;
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{ok} requests answered");
    // The promoted policy decides now: new requests go to b alone.
    let a_after = a.requests();
    assert!(
        a_after - a_before <= 1,
        "a took {} more",
        a_after - a_before
    );
    assert_eq!(served(&gantry, 5).await, vec!["b"; 5]);
    let text = gantry.metrics().render();
    assert!(
        !has_series(
            &text,
            "gantry_shadow_calls_total{port=\"http\",result=\"disagree\",role=\"balancer\",service=\"web\"}"
        ),
        "nothing is shadowed any more"
    );
    assert!(!has_series(
        &text,
        "gantry_plugin_quarantined{plugin=\"shadow:misbehave\"}"
    ));
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_affinity_keeps_its_own_table_and_is_compared_per_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    let (a, b) = (
        TcpOrigin::start("a", false).await,
        TcpOrigin::start("b", false).await,
    );
    let client_ip = "policy: \"builtin:client-ip\", params: { timeout_seconds: 600 }";
    let port = |backends: &[SocketAddr], shadow: &str| {
        Scenario::new()
            .plugin("misbehave-affinity", &plugin("misbehave-affinity"))
            .section("plugin_limits: { quarantine_after: 5 }")
            .port(
                "db",
                Port::tcp("pg")
                    .backends(backends)
                    .set("affinity", &format!("{{ {client_ip}{shadow} }}")),
            )
    };
    // Eight clients are remembered on a, the only backend.
    port(&[a.addr], "").write(&config);
    let gantry = Gantry::start(lb_config::load_file(&config).expect("valid config"))
        .await
        .expect("gantry starts");
    let proxy = addr(&gantry, "db", "pg");
    let clients = 1..=8_u8;
    for client in clients.clone() {
        assert_eq!(exchange_from(client, proxy).await, "a");
    }

    // b joins, and a client-IP shadow starts with an empty table: it places each client where
    // rendezvous hashing ranks it over {a, b}, while serving keeps every client on a.
    let shadow = format!(", shadow: {{ {client_ip} }}");
    port(&[a.addr, b.addr], &shadow).write(&config);
    let changes = gantry::reload::reload_from_file(&gantry, &config)
        .await
        .expect("reload applies");
    assert_eq!(
        changes,
        [Change::PortChanged {
            key: lb_config::ListenerKey {
                service: "db".into(),
                port: "pg".into(),
            },
            what: PortAspects::of(&[PortAspect::Backends, PortAspect::Shadow]),
        }],
        "serving's affinity (and its table) is kept"
    );
    let ranked_b: usize = clients
        .clone()
        .filter(|client| {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, *client));
            let key = lb_policy::hash_key(&lb_config::HashKey::ClientIp, Some(ip), None);
            let candidates = [(0, a.addr, 1), (1, b.addr, 1)].into_iter();
            lb_policy::rendezvous(key, candidates) == Some(1)
        })
        .count();
    assert!(
        (1..8).contains(&ranked_b),
        "the clients must split for this test to see both results: {ranked_b} of 8 rank b"
    );
    for _round in 0..2 {
        for client in clients.clone() {
            assert_eq!(exchange_from(client, proxy).await, "a", "client {client}");
        }
    }
    let text = gantry.metrics().render();
    let calls = |result: &str| {
        metric(
            &text,
            &format!("gantry_shadow_calls_total{{port=\"pg\",result=\"{result}\",role=\"affinity\",service=\"db\"}}"),
        )
    };
    // The shadow placed its clients once and then kept them (its own table): the same split
    // in both rounds.
    assert_eq!(calls("disagree"), (2 * ranked_b) as f64);
    assert_eq!(calls("agree"), (2 * (8 - ranked_b)) as f64);
    assert_eq!(
        shadow_picks(&gantry, "pg", a.addr, "affinity", "serving"),
        16.0
    );
    assert_eq!(
        shadow_picks(&gantry, "pg", b.addr, "affinity", "shadow"),
        (2 * ranked_b) as f64
    );

    // A shadow affinity that traps: every connection served, the shadow quarantined alone.
    let trap = ", shadow: { policy: misbehave-affinity, params: { mode: trap } }";
    port(&[a.addr, b.addr], trap).write(&config);
    gantry::reload::reload_from_file(&gantry, &config)
        .await
        .expect("reload applies");
    for client in clients.clone() {
        assert_eq!(exchange_from(client, proxy).await, "a", "client {client}");
    }
    let text = gantry.metrics().render();
    assert_eq!(
        metric(
            &text,
            "gantry_plugin_quarantined{plugin=\"shadow:misbehave-affinity\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "gantry_affinity_total{outcome=\"stuck\",port=\"pg\",service=\"db\"}"
        ),
        16.0 + 8.0,
        "serving kept every client on a throughout (their first connections were new)"
    );
    assert!(
        !has_series(
            &text,
            "gantry_plugin_quarantined{plugin=\"shadow:builtin:client-ip\"}"
        ),
        "the replaced shadow's series are gone"
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}
