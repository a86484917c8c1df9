//! `gantry explain` through real sockets: the admin endpoint names the backend a client's next
//! request gets and why (affinity hit, new key placed by rendezvous, a sticky backend that
//! moves because it backs off, a balancer answering by header, a faulting plugin answered by
//! the fallback, a client outside the source ranges), and a thousand explanations change
//! nothing live: no affinity entry, no count, no in-flight work, no plugin fault.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use gantry::Gantry;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use crate::sandbox::plugin;
use crate::support::binary::GANTRY;
use crate::support::client::{exchange_from, get, H1};
use crate::support::origin::{HttpOrigin, OriginProtocol, TcpOrigin};
use crate::support::scenario::{Port, Scenario};
use crate::support::{addr, eventually, metric, Refusing};

/// Asks the admin endpoint of `gantry` to explain `query`: the status and, on 200, the JSON.
async fn explain(gantry: &Gantry, query: &str) -> (StatusCode, Value) {
    let admin = gantry.admin_addr().expect("admin address");
    let answer = get(admin, &format!("/explain?{query}")).await;
    let json = match answer.status {
        StatusCode::OK => serde_json::from_str(&answer.body).expect("JSON"),
        _ => Value::String(answer.body),
    };
    (answer.status, json)
}

/// The explanation for `client` (127.0.0.`client`) on `db/pg`.
async fn explain_client(gantry: &Gantry, client: u8) -> Value {
    let (status, json) = explain(
        gantry,
        &format!("service=db&port=pg&client=127.0.0.{client}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    json
}

/// What the live state of a port shows: its affinity counts, table size, and each backend's
/// connections and in-flight work, as `/metrics` and `/config` have them.
async fn live_state(gantry: &Gantry, backends: &[SocketAddr]) -> Vec<f64> {
    let text = gantry.metrics().render();
    let mut state: Vec<f64> = ["new", "stuck", "moved"]
        .iter()
        .map(|outcome| {
            metric(
                &text,
                &format!(
                    "gantry_affinity_total{{outcome=\"{outcome}\",port=\"pg\",service=\"db\"}}"
                ),
            )
        })
        .collect();
    for backend in backends {
        let labels = format!("{{backend=\"{backend}\",port=\"pg\",service=\"db\"}}");
        state.push(metric(
            &text,
            &format!("gantry_backend_connections_total{labels}"),
        ));
        state.push(metric(&text, &format!("gantry_backend_in_flight{labels}")));
    }
    let admin = gantry.admin_addr().expect("admin address");
    let config: Value = serde_json::from_str(&get(admin, "/config").await.body).expect("JSON");
    let entries = config["listeners"]["db/pg"]["affinity_entries"].as_f64();
    state.push(entries.expect("the port has an affinity table"));
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explanation_names_the_backend_the_next_connection_gets_and_changes_nothing() {
    let origins = [
        TcpOrigin::start("a", false).await,
        TcpOrigin::start("b", false).await,
        TcpOrigin::start("c", false).await,
    ];
    let backends: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let name_of = |address: &str| {
        let index = backends.iter().position(|b| b.to_string() == address);
        ["a", "b", "c"][index.expect("one of the backends")]
    };
    let gantry = Scenario::new()
        .port(
            "db",
            Port::tcp("pg")
                .backends(&backends)
                .set(
                    "affinity",
                    "{ policy: \"builtin:client-ip\", params: { timeout_seconds: 600 } }",
                )
                .set("source_ranges", "[\"127.0.0.0/26\"]"),
        )
        .start()
        .await;
    let proxy = addr(&gantry, "db", "pg");

    // A new client: the table does not know it; rendezvous hashing places it.
    let fresh = explain_client(&gantry, 5).await;
    assert_eq!(fresh["decided_by"], "rendezvous", "{fresh:#}");
    assert_eq!(fresh["affinity"]["sticks_by"], "remembered");
    assert_eq!(fresh["affinity"]["table"], "miss");
    assert_eq!(fresh["affinity"]["outcome"], "new");
    let placed = fresh["backend"].as_str().expect("a backend");
    assert_eq!(
        exchange_from(5, proxy).await,
        name_of(placed),
        "the next connection goes there"
    );

    // Now remembered: a hit, stuck.
    let known = explain_client(&gantry, 5).await;
    assert_eq!(
        (
            &known["decided_by"],
            &known["affinity"]["table"],
            &known["affinity"]["outcome"]
        ),
        (
            &Value::from("affinity"),
            &Value::from("hit"),
            &Value::from("stuck")
        ),
        "{known:#}"
    );
    assert_eq!(known["affinity"]["sticky_backend"], placed);
    assert_eq!(known["backends"].as_array().map(Vec::len), Some(3));

    // A thousand explanations, for known and unknown clients, change nothing live.
    let before = live_state(&gantry, &backends).await;
    for i in 0..1000_u32 {
        let client = 5 + (i % 40) as u8;
        explain_client(&gantry, client).await;
    }
    assert_eq!(live_state(&gantry, &backends).await, before);
    assert_eq!(before[0], 1.0, "one new client so far: {before:?}");

    // Its backend fails: the next connection of another client finds it down, and client 5's
    // explanation says it moves, why, and where to.
    let home = ["a", "b", "c"]
        .iter()
        .position(|n| *n == name_of(placed))
        .expect("known");
    origins[home].stop().await;
    let mut other = 6;
    loop {
        let explained = explain_client(&gantry, other).await;
        if explained["backend"] == placed {
            break;
        }
        other += 1;
        assert!(
            other < 60,
            "no other client of {placed} among 127.0.0.6 to .59"
        );
    }
    let survivor = exchange_from(other, proxy).await;
    assert_ne!(
        survivor,
        name_of(placed),
        "the failed connect went elsewhere"
    );
    let moved = explain_client(&gantry, 5).await;
    assert_eq!(moved["affinity"]["outcome"], "moved", "{moved:#}");
    assert_eq!(moved["affinity"]["moved_because"], "backing_off");
    let elsewhere = moved["backend"].as_str().expect("a backend");
    assert_ne!(elsewhere, placed);
    assert_eq!(exchange_from(5, proxy).await, name_of(elsewhere));

    // Outside the source ranges: refused before any policy.
    let refused = explain_client(&gantry, 100).await;
    assert_eq!(refused["decided_by"], "source_range");
    assert_eq!(refused["backend"], Value::Null);

    // Questions that cannot be answered say why.
    let (status, why) = explain(&gantry, "service=db&port=nope&client=127.0.0.1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(why, "no port db/nope is served\n");
    let (status, why) = explain(&gantry, "service=db&port=pg&client=localhost").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(why, "client `localhost` is not an IP address or IP:port\n");

    // The command line asks the same endpoint and prints the answer for a person.
    let admin = gantry.admin_addr().expect("admin address").to_string();
    let printed = tokio::process::Command::new(GANTRY)
        .args([
            "explain",
            "--admin",
            &admin,
            "--service",
            "db",
            "--port",
            "pg",
        ])
        .args(["--client", "127.0.0.5"])
        .output()
        .await
        .expect("gantry explain runs");
    let text = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    assert!(
        text.starts_with(&format!(
            "db/pg for client 127.0.0.5:0\n-> backend {elsewhere}, decided by affinity\n"
        )),
        "{text}"
    );
    assert!(
        text.contains("affinity builtin:client-ip: sticks by remembered"),
        "{text}"
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explanation_reads_the_request_as_the_balancer_would_and_records_no_fault() {
    let (stable, canary) = (
        HttpOrigin::start("stable", OriginProtocol::Http1).await,
        HttpOrigin::start("canary", OriginProtocol::Http1).await,
    );
    let backends = [stable.addr, canary.addr];
    let refusing = Refusing::new();
    let gantry = Scenario::new()
        .plugin("canary", &plugin("canary"))
        .plugin("bad", &plugin("misbehave"))
        .section("plugin_limits: { quarantine_after: 5, call_deadline: 2ms, memory_mib: 16 }")
        .port(
            "web",
            Port::http("http").backends(&backends).set(
                "balancer",
                &format!(
                    "{{ policy: canary, params: {{ canary_port: {} }} }}",
                    canary.addr.port()
                ),
            ),
        )
        .port(
            "web",
            Port::http("faulty")
                .backends(&backends)
                .set("balancer", "{ policy: bad, params: { mode: trap } }"),
        )
        .port(
            "web",
            Port::http("checked")
                .backends(&[refusing.addr, stable.addr])
                .set("health", "[{ policy: \"builtin:tcp-check\", params: { interval: 100ms, timeout: 100ms, unhealthy_threshold: 1 } }]"),
        )
        .start()
        .await;

    // The canary balancer reads a header: the explanation hands it the one asked about.
    let query = "service=web&port=http&client=127.0.0.1&authority=shop.example:8080&header=x-canary:%20always&path=/cart";
    let (_, canary_answer) = explain(&gantry, query).await;
    assert_eq!(
        canary_answer["backend"],
        canary.addr.to_string(),
        "{canary_answer:#}"
    );
    assert_eq!(canary_answer["decided_by"], "balancer");
    assert_eq!(canary_answer["balancer"]["policy"], "canary");
    assert_eq!(canary_answer["path"], "not read by any policy");
    let (_, plain) = explain(&gantry, "service=web&port=http&client=127.0.0.1").await;
    assert_eq!(plain["backend"], stable.addr.to_string(), "{plain:#}");
    let mut client = H1::connect(addr(&gantry, "web", "http"))
        .await
        .expect("connect");
    let request = Request::get("/")
        .header("host", "shop.example")
        .header("x-canary", "always")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let answer = client.send(request).await.expect("answered");
    assert_eq!(
        answer.header("x-origin"),
        "canary",
        "the real request went as explained"
    );

    // A plugin that traps: each explanation says the fallback answered, and the serving
    // plugin's record stays clean; a real request then counts its fault.
    let faults = || {
        metric(
            &gantry.metrics().render(),
            "gantry_plugin_faults_total{kind=\"trap\",plugin=\"bad\"}",
        )
    };
    for _ in 0..20 {
        let (status, faulty) = explain(&gantry, "service=web&port=faulty&client=127.0.0.1").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            faulty["balancer"]["picks"][0]["fallback"], true,
            "{faulty:#}"
        );
        assert!(faulty["backend"].is_string());
    }
    assert_eq!(faults(), 0.0);
    assert_eq!(
        metric(
            &gantry.metrics().render(),
            "gantry_plugin_quarantined{plugin=\"bad\"}"
        ),
        0.0
    );
    let answer = get(addr(&gantry, "web", "faulty"), "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(faults(), 1.0);

    // Why does a backend get nothing? Its health check holds it out: the balancer's pick of it
    // is skipped, and the explanation names the policy.
    let checked = "service=web&port=checked&client=127.0.0.1";
    let gantry_ref = &gantry;
    eventually("the refusing backend is held out", || async move {
        let (_, answer) = explain(gantry_ref, checked).await;
        answer["backends"][0]["held_out_by"] == serde_json::json!(["builtin:tcp-check"])
    })
    .await;
    let (_, answer) = explain(&gantry, checked).await;
    assert_eq!(answer["backends"][0]["unusable"], "unhealthy", "{answer:#}");
    assert_eq!(answer["backend"], stable.addr.to_string());
    let picks = answer["balancer"]["picks"].as_array().expect("picks");
    assert!(
        picks
            .iter()
            .all(|p| p["backend"] != refusing.addr.to_string() || p["unusable"] == "unhealthy"),
        "{answer:#}"
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}
