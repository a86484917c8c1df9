//! Health policies through real sockets: active HTTP checks take a backend out and bring it
//! back, TCP checks find a dead backend, passive outlier ejection takes out a failing backend
//! but never more than its share, the state shows in metrics and `/config`, and a health
//! policy written in Python or JavaScript judges the probes itself.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use crate::sandbox::{js_plugin, python_plugin};
use crate::support::client::{get, tcp_exchange};
use crate::support::origin::{HttpOrigin, OriginProtocol, TcpOrigin};
use crate::support::scenario::{Port, Scenario};
use crate::support::{addr, eventually, metric};

fn healthy(gantry: &gantry::Gantry, port: &str, backend: SocketAddr) -> f64 {
    metric(
        &gantry.metrics().render(),
        &format!("gantry_backend_healthy{{backend=\"{backend}\",port=\"{port}\",service=\"s\"}}"),
    )
}

/// An address nothing listens on (a port just released).
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_failing_backends_out_and_bring_them_back() {
    let a = HttpOrigin::start("a", OriginProtocol::Http1).await;
    let b = HttpOrigin::start("b", OriginProtocol::Http1).await;
    let alive = TcpOrigin::start("alive", false).await;
    let dead = closed_port().await;
    let gantry = Scenario::new()
        .port(
            "s",
            Port::http("web").backends(&[a.addr, b.addr]).set(
                "health",
                "[{ policy: \"builtin:http-check\", params: { path: /healthz, interval: 100ms, \
                 timeout: 100ms, healthy_threshold: 2, unhealthy_threshold: 2, \
                 expected_statuses: \"200-299\" } }]",
            ),
        )
        .port(
            "s",
            Port::tcp("db").backends(&[alive.addr, dead]).set(
                "health",
                "[{ policy: \"builtin:tcp-check\", params: { interval: 100ms, timeout: 100ms } }]",
            ),
        )
        .start()
        .await;
    let web = addr(&gantry, "s", "web");

    a.set_health(503);
    eventually("a to be taken out", || async {
        healthy(&gantry, "web", a.addr) == 0.0
    })
    .await;
    assert_eq!(healthy(&gantry, "web", b.addr), 1.0);
    let served_before = a.requests();
    for _ in 0..20 {
        assert_eq!(get(web, "/").await.header("x-origin"), "b");
    }
    assert_eq!(
        a.requests(),
        served_before,
        "an unhealthy backend gets no traffic"
    );
    let config = gantry_config(&gantry).await;
    assert!(config.contains("\"healthy\": false"), "{config}");

    a.set_health(204);
    eventually("a to come back", || async {
        healthy(&gantry, "web", a.addr) == 1.0
    })
    .await;
    let seen: HashSet<String> = futures_of_gets(web, 6).await;
    assert_eq!(seen.len(), 2, "both backends serve again: {seen:?}");

    eventually("the dead TCP backend to be found", || async {
        healthy(&gantry, "db", dead) == 0.0
    })
    .await;
    assert_eq!(healthy(&gantry, "db", alive.addr), 1.0);

    // Dropping the policy by a reload voids its verdicts at once: a, failing its checks
    // again, gets traffic, and nothing takes it out later.
    a.set_health(503);
    eventually("a to be taken out again", || async {
        healthy(&gantry, "web", a.addr) == 0.0
    })
    .await;
    let without = Scenario::new()
        .port("s", Port::http("web").backends(&[a.addr, b.addr]))
        .port("s", Port::tcp("db").backends(&[alive.addr]));
    gantry.apply(without.model()).await.expect("reload");
    assert_eq!(healthy(&gantry, "web", a.addr), 1.0);
    let seen = futures_of_gets(addr(&gantry, "s", "web"), 4).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    gantry.shutdown(std::time::Duration::from_secs(1)).await;
}

async fn futures_of_gets(proxy: SocketAddr, n: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..n {
        seen.insert(get(proxy, "/").await.header("x-origin").to_owned());
    }
    seen
}

async fn gantry_config(gantry: &gantry::Gantry) -> String {
    let admin = gantry.admin_addr().expect("admin listener");
    get(admin, "/config").await.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_ejection_takes_out_failing_backends_but_never_more_than_its_share() {
    let good = TcpOrigin::start("good", false).await;
    let (bad_1, bad_2) = (closed_port().await, closed_port().await);
    let gantry = Scenario::new()
        .port(
            "s",
            Port::tcp("db")
                .backends(&[good.addr, bad_1, bad_2])
                .set("retries", "2")
                .set("backoff", "{ initial: 1ms, max: 1ms }")
                .set(
                    "health",
                    "[{ policy: \"builtin:outlier\", params: { consecutive_errors: 2, \
                     base_ejection: 10m, max_ejected_percent: 40 } }]",
                ),
        )
        .start()
        .await;
    let proxy = addr(&gantry, "s", "db");
    let ejections = |gantry: &gantry::Gantry| {
        let text = gantry.metrics().render();
        [bad_1, bad_2]
            .iter()
            .map(|b| {
                metric(
                    &text,
                    &format!("gantry_backend_ejections_total{{backend=\"{b}\",port=\"db\",service=\"s\"}}"),
                )
            })
            .sum::<f64>()
    };
    // Every connection is served (failed connects are retried on the good backend) while
    // the failures are observed, until one bad backend is ejected.
    let mut served = 0;
    while ejections(&gantry) < 1.0 {
        assert_eq!(tcp_exchange(proxy, b"ping").await, "good:ping");
        served += 1;
        assert!(served < 1000, "no ejection after {served} connections");
    }
    for _ in 0..40 {
        assert_eq!(tcp_exchange(proxy, b"ping").await, "good:ping");
    }
    // 40% of three backends is one: the second bad backend keeps failing but stays in.
    assert_eq!(ejections(&gantry), 1.0);
    let text = gantry.metrics().render();
    let unhealthy = [bad_1, bad_2]
        .iter()
        .filter(|b| {
            metric(
                &text,
                &format!("gantry_backend_healthy{{backend=\"{b}\",port=\"db\",service=\"s\"}}"),
            ) == 0.0
        })
        .count();
    assert_eq!(unhealthy, 1);
    gantry.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_checks_speak_tls_to_the_backend() {
    // The backend under check is an HTTPS endpoint: a second Gantry terminating TLS in front
    // of an origin whose /healthz the test controls.
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let leaf = crate::support::certs::TestCa::new().issue(dir.path(), "api", &["api.test"]);
    let tls = format!(
        "{{ certificates: [{{ cert: \"{}\", key: \"{}\" }}] }}",
        leaf.cert_path.display(),
        leaf.key_path.display()
    );
    let front = Scenario::new()
        .port(
            "front",
            Port::new("tls", "https")
                .backends(&[origin.addr])
                .set("tls", &tls),
        )
        .start()
        .await;
    let secure = addr(&front, "front", "tls");
    let gantry = Scenario::new()
        .port(
            "s",
            Port::http("web").backends(&[secure]).set(
                "health",
                "[{ policy: \"builtin:http-check\", params: { path: /healthz, host: api.test, \
                 tls: true, interval: 100ms, timeout: 100ms, healthy_threshold: 1, \
                 unhealthy_threshold: 1 } }]",
            ),
        )
        .start()
        .await;
    origin.set_health(500);
    eventually("the HTTPS backend to fail its check", || async {
        healthy(&gantry, "web", secure) == 0.0
    })
    .await;
    origin.set_health(200);
    eventually("the HTTPS backend to pass again", || async {
        healthy(&gantry, "web", secure) == 1.0
    })
    .await;
    gantry.shutdown(std::time::Duration::from_secs(1)).await;
    front.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_whose_health_is_told_on_another_port_is_probed_there() {
    // As a Kubernetes node tells its health on kube-proxy's port, not on the NodePort: the
    // backend serves on one port, a second server on the same address says whether it is fit.
    let served = HttpOrigin::start("served", OriginProtocol::Http1).await;
    let teller = HttpOrigin::start("teller", OriginProtocol::Http1).await;
    let check = format!(
        "[{{ policy: \"builtin:http-check\", params: {{ port: {}, path: /healthz, interval: 100ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 1 }} }}]",
        teller.addr.port()
    );
    let gantry = Scenario::new()
        .port(
            "s",
            Port::http("web")
                .backends(&[served.addr])
                .set("health", &check),
        )
        .start()
        .await;
    teller.set_health(503);
    eventually("the backend to be taken out by its teller", || async {
        healthy(&gantry, "web", served.addr) == 0.0
    })
    .await;
    served.set_health(503);
    teller.set_health(200);
    eventually("the backend to come back by its teller", || async {
        healthy(&gantry, "web", served.addr) == 1.0
    })
    .await;
    gantry.shutdown(std::time::Duration::from_secs(1)).await;
}

/// A health policy written in Python (plugins/python/examples/http_verdict) decides what
/// Gantry's HTTP probes mean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_health_policy_decides_what_probe_answers_mean() {
    verdict_policy_judges_probes(&python_plugin("http_verdict")).await;
}

/// The same policy in JavaScript (plugins/js/examples/http_verdict).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_health_policy_decides_what_probe_answers_mean() {
    verdict_policy_judges_probes(&js_plugin("http_verdict")).await;
}

/// The `http_verdict` example in `file`: a 503 ejects the backend at once, another bad status
/// takes it out after `fall` probes, a good one brings it back.
async fn verdict_policy_judges_probes(file: &Path) {
    let a = HttpOrigin::start("a", OriginProtocol::Http1).await;
    let b = HttpOrigin::start("b", OriginProtocol::Http1).await;
    let gantry = Scenario::new()
        .plugin("verdict", file)
        .port(
            "s",
            Port::http("web").backends(&[a.addr, b.addr]).set(
                "health",
                "[{ policy: verdict, params: { path: /healthz, interval_ms: 100, \
                 timeout_ms: 100, fall: 2, rise: 1, eject_seconds: 1 } }]",
            ),
        )
        .start()
        .await;
    let web = addr(&gantry, "s", "web");
    let ejections = |gantry: &gantry::Gantry| {
        metric(
            &gantry.metrics().render(),
            &format!(
                "gantry_backend_ejections_total{{backend=\"{}\",port=\"web\",service=\"s\"}}",
                a.addr
            ),
        )
    };
    assert_eq!(ejections(&gantry), 0.0);

    a.set_health(503);
    eventually("the 503 to eject a", || async {
        ejections(&gantry) >= 1.0 && healthy(&gantry, "web", a.addr) == 0.0
    })
    .await;
    let served_before = a.requests();
    for _ in 0..10 {
        assert_eq!(get(web, "/").await.header("x-origin"), "b");
    }
    assert_eq!(
        a.requests(),
        served_before,
        "an ejected backend gets no traffic"
    );

    a.set_health(200);
    eventually("a to come back", || async {
        healthy(&gantry, "web", a.addr) == 1.0
    })
    .await;
    // Another bad status is judged by `fall`: unhealthy, not ejected.
    let ejected = ejections(&gantry);
    a.set_health(500);
    eventually("a 500 to take a out", || async {
        healthy(&gantry, "web", a.addr) == 0.0
    })
    .await;
    assert_eq!(ejections(&gantry), ejected, "a 500 is no ejection");
    gantry.shutdown(std::time::Duration::from_secs(1)).await;
}
