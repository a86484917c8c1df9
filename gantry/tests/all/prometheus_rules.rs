//! Every alert of `docs/prometheus-alerts.yaml` and every query of
//! `docs/grafana-dashboard.json`, evaluated by Prometheus's own `promtool` on series scraped
//! from the real binary's `/metrics`: each alert fires in the situation it is about and stays
//! silent on a healthy Gantry, and each dashboard query gives the value its situation implies.
//!
//! A round of traffic stands for one 15 s scrape interval: each round sends a fixed number of
//! requests, so each rate the queries compute is known exactly (15 requests a round is one a
//! second).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sandbox::plugin;
use crate::support::binary::Running;
use crate::support::certs::TestCa;
use crate::support::client::{get, raw_exchange, tls_connect, H1};
use crate::support::fake_bird::{guard_gone, FakeBird};
use crate::support::origin::{HttpOrigin, OriginProtocol};
use crate::support::promtool::{self, AlertCheck, QueryCheck, Scrapes, Situation};
use crate::support::scenario::{Port, Scenario};
use crate::support::{eventually, metric, Refusing};

/// Requests per service and round: one a second at the 15 s scrape interval.
const PER_ROUND: usize = 15;
const ROUNDS: usize = 6;
/// Steps after the last round in which everything goes on as in it (25 minutes).
const STEADY: usize = 100;
/// When the alerts are evaluated: after the longest `for:` (10 minutes).
const ALERTS_AT: u64 = 12;
/// The plugins the troubled configuration uses: the built-in ones are plugins too.
const PLUGINS: [&str; 3] = ["bad", "builtin:client-ip", "builtin:round-robin"];
/// Idle keep-alive connections held open on `web/http` throughout.
const HELD: usize = 2;

fn docs(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name)
}

/// A label set.
fn labels(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

fn port(service: &str) -> Vec<(&'static str, String)> {
    labels(&[("service", service), ("port", "http")])
}

/// The running binary, its ports by service, and what it was started with.
struct Under {
    gantry: Running,
    admin: SocketAddr,
    ports: BTreeMap<String, SocketAddr>,
    config: PathBuf,
}

impl Under {
    async fn start(scenario: &Scenario, config: PathBuf) -> Under {
        scenario.write(&config);
        let mut gantry = Running::start(&config);
        let (mut admin, mut ports) = (None, BTreeMap::new());
        for line in gantry.logs_until("ready").await {
            let address = line["address"].as_str().and_then(|a| a.parse().ok());
            match line["message"].as_str() {
                Some("admin listening") => admin = address,
                Some("listening") => {
                    let service = line["service"].as_str().expect("service").to_owned();
                    ports.insert(service, address.expect("address"));
                }
                _ => {}
            }
        }
        Under {
            gantry,
            admin: admin.expect("admin listening"),
            ports,
            config,
        }
    }

    fn port(&self, service: &str) -> SocketAddr {
        self.ports[service]
    }

    async fn scrape(&self) -> String {
        let answer = get(self.admin, "/metrics").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body
    }

    /// A scrape once the connections of the round are gone: only the held ones are open.
    async fn settled_scrape(&self, held: usize) -> String {
        let series = "gantry_connections_active{port=\"http\",service=\"web\"}";
        eventually("the round's connections to close", || async {
            let text = self.scrape().await;
            metric(&text, series) == held as f64
                && text
                    .lines()
                    .filter(|l| l.starts_with("gantry_connections_active{"))
                    .all(|l| l.starts_with(series) || l.ends_with(" 0"))
        })
        .await;
        self.scrape().await
    }
}

/// Body bytes of one exchange (what `gantry_bytes_*_total` count for HTTP): sent by the
/// client, and received by it.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
struct Bytes {
    request: usize,
    response: usize,
}

/// A request body, so that bytes from clients count too.
const PING: &str = "ping";

/// Sends `POST path` with [`PING`] on a connection of its own: the status code and the body
/// bytes each way.
async fn exchange(addr: SocketAddr, path: &str) -> (u16, Bytes) {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{PING}",
        PING.len()
    );
    let answer = raw_exchange(addr, request.as_bytes()).await;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let bytes = Bytes {
        request: PING.len(),
        response: body.len(),
    };
    (status, bytes)
}

async fn status(addr: SocketAddr, path: &str) -> u16 {
    exchange(addr, path).await.0
}

/// `n` requests to `addr` at once, each answered `expected`: the bytes of all of them.
async fn burst(addr: SocketAddr, path: &str, n: usize, expected: u16) -> Bytes {
    let answers = futures::future::join_all((0..n).map(|_| exchange(addr, path))).await;
    assert!(
        answers.iter().all(|(s, _)| *s == expected),
        "{path}: {answers:?}"
    );
    answers.iter().fold(Bytes::default(), |sum, (_, b)| Bytes {
        request: sum.request + b.request,
        response: sum.response + b.response,
    })
}

fn scenario(origin: SocketAddr, dead: SocketAddr, tls: &str, troubled: bool) -> Scenario {
    let mode = if troubled { "trap" } else { "good" };
    let mut scenario = Scenario::new()
        .section("runtime: { watch_interval: 1h }")
        .section("plugin_limits: { quarantine_after: 15 }")
        .plugin("bad", &plugin("misbehave"))
        .port(
            "web",
            Port::http("http")
                .backends(&[origin])
                .set("affinity", "{ policy: \"builtin:client-ip\" }"),
        )
        .port(
            "secure",
            Port::new("http", "https")
                .backends(&[origin])
                .set("tls", tls),
        )
        .port(
            "plugged",
            Port::http("http").backends(&[origin]).set(
                "balancer",
                &format!("{{ policy: bad, params: {{ mode: {mode} }} }}"),
            ),
        );
    if troubled {
        scenario = scenario
            .port("errors", Port::http("http").backends(&[origin]))
            .port("slow", Port::http("http").backends(&[origin]))
            // Back-off shorter than the pause between requests: each request tries it.
            .port(
                "dead",
                Port::http("http")
                    .backends(&[dead])
                    .set("backoff", "{ initial: 1ms, max: 1ms }"),
            )
            .port("empty", Port::http("http").set("backends", "[]"));
    }
    scenario
}

/// The troubled Gantry: 5xx, a slow origin, a refusing backend, a port without backends,
/// failing TLS handshakes, a quarantined plugin, a refused reload and a routing daemon that
/// refuses its routes, beside healthy traffic. Returns its scrapes, the refusing backend, and
/// the bytes of `web`'s last round.
async fn troubled(dir: &Path, origin: SocketAddr, tls: &str) -> (Scrapes, SocketAddr, Bytes) {
    let refusing = Refusing::new();
    let dead = refusing.addr;
    let config = dir.join("troubled.yaml");
    let (socket, routes) = (dir.join("bird.ctl"), dir.join("routes"));
    let bird = FakeBird::start(&socket, routes.clone());
    bird.refuse(true);
    let routing = format!(
        "routing: {{ daemon: bird, control_socket: \"{}\", directory: \"{}\", asn: 65010, peers: [{{ address: 10.0.0.1, asn: 65000 }}], pools: [{{ addresses: [127.0.0.1] }}] }}",
        socket.display(),
        routes.display()
    );
    let troubled = scenario(origin, dead, tls, true).section(&routing);
    let mut under = Under::start(&troubled, config).await;
    let mut held = Vec::new();
    for _ in 0..HELD {
        let mut client = H1::connect(under.port("web")).await.expect("connect");
        assert_eq!(client.get("/").await.expect("held").status, 200);
        held.push(client);
    }
    let mut scrapes = Scrapes::default();
    scrapes.push(Some(under.settled_scrape(HELD).await));
    let mut web = Bytes::default();
    for round in 0..ROUNDS {
        let dead_port = under.port("dead");
        let sequential_dead = async {
            for _ in 0..PER_ROUND {
                assert_eq!(status(dead_port, "/").await, 502);
                // Past the 1 ms back-off: the next request tries the backend again.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        let tls_failures = futures::future::join_all(
            (0..PER_ROUND).map(|_| raw_exchange(under.port("secure"), b"GET / HTTP/1.1\r\n\r\n")),
        );
        (web, ..) = tokio::join!(
            burst(under.port("web"), "/", PER_ROUND, 200),
            burst(under.port("errors"), "/status/500", PER_ROUND, 500),
            burst(under.port("slow"), "/delay/1100", PER_ROUND, 200),
            burst(under.port("empty"), "/", PER_ROUND, 503),
            burst(under.port("plugged"), "/", PER_ROUND, 200),
            sequential_dead,
            tls_failures,
        );
        if round == 1 {
            std::fs::write(&under.config, "services: [ {").expect("break the config");
            under.gantry.signal("HUP");
            under.gantry.log_starting("reload rejected").await;
        }
        scrapes.push(Some(under.settled_scrape(HELD).await));
    }
    drop(held);
    // Gone, its guard withdraws: let the daemon take that, and wait for the guard to exit.
    bird.refuse(false);
    drop(under);
    guard_gone(&routes).await;
    (scrapes, dead, web)
}

/// A healthy Gantry (healthy traffic on every port it has), then the same Gantry stopped: the
/// scrapes of the first and the scrapes of both.
async fn healthy_then_stopped(
    dir: &Path,
    origin: SocketAddr,
    tls: &str,
    ca: &TestCa,
) -> (Scrapes, Scrapes) {
    let config = dir.join("healthy.yaml");
    // (The healthy Gantry's `dead` port is never asked: it only has to exist.)
    let refusing = Refusing::new();
    let scenario = scenario(origin, refusing.addr, tls, false);
    let mut under = Under::start(&scenario, config).await;
    let client = ca.client_config(&[b"http/1.1"]);
    let (mut healthy, mut stopped) = (Scrapes::default(), Scrapes::default());
    for _ in 0..ROUNDS {
        let secure = futures::future::join_all((0..PER_ROUND).map(|_| async {
            let tls = tls_connect(under.port("secure"), client.clone(), "web.test")
                .await
                .expect("handshake");
            let mut h1 = H1::over(tls, "web.test".into()).await.expect("h1");
            assert_eq!(h1.get("/").await.expect("response").status, 200);
        }));
        tokio::join!(
            burst(under.port("web"), "/", PER_ROUND, 200),
            burst(under.port("plugged"), "/", PER_ROUND, 200),
            secure,
        );
        let scrape = under.settled_scrape(0).await;
        healthy.push(Some(scrape.clone()));
        stopped.push(Some(scrape));
    }
    under.gantry.signal("TERM");
    let exit = under.gantry.child.wait().await.expect("wait");
    assert!(exit.success(), "{exit:?}");
    let refused = tokio::net::TcpStream::connect(under.admin).await;
    assert!(
        refused.is_err(),
        "the stopped Gantry's admin port still answers"
    );
    stopped.push(None);
    (healthy, stopped)
}

fn alert(name: &'static str, firing: Vec<Vec<(&'static str, String)>>) -> AlertCheck {
    AlertCheck {
        alert: name,
        eval_minutes: ALERTS_AT,
        firing,
    }
}

/// Every dashboard query, as the dashboard would send it with `service` selected, and what it
/// must give at `minutes` into the troubled situation.
fn panels(dead: SocketAddr, origin: SocketAddr, web: Bytes) -> Vec<QueryCheck> {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(docs("grafana-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let class = |c: &str| labels(&[("class", c)]);
    let per_port = |values: &[(&str, f64)]| -> Vec<(Vec<(&'static str, String)>, f64)> {
        values.iter().map(|(s, v)| (port(s), *v)).collect()
    };
    let troubled_ports = ["web", "errors", "slow", "dead", "plugged"];
    let mut checks = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("title");
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let legend = target["legendFormat"].as_str().unwrap_or_default();
            let none: Vec<(&'static str, String)> = Vec::new();
            // (selected service, minutes, samples)
            let (service, minutes, samples): (&str, u64, Vec<_>) = match (title, legend) {
                ("Requests per second by class", _) => (
                    ".*",
                    10,
                    vec![
                        (class("1xx"), 0.0),
                        (class("2xx"), 3.0),
                        (class("3xx"), 0.0),
                        (class("4xx"), 0.0),
                        (class("5xx"), 3.0),
                        (class("none"), 0.0),
                    ],
                ),
                ("Request duration (p50, p99)", "p50") => ("slow", 10, vec![(none, 1.75)]),
                ("Request duration (p50, p99)", "p99") => ("slow", 10, vec![(none, 2.485)]),
                ("5xx ratio", _) => (".*", 10, vec![(none, 0.5)]),
                ("Open client connections", _) => {
                    let mut values = vec![("web", HELD as f64)];
                    values.extend(["errors", "slow", "dead", "empty", "plugged"].map(|s| (s, 0.0)));
                    let mut samples = per_port(&values);
                    samples.push((labels(&[("service", "secure"), ("port", "http")]), 0.0));
                    (".*", 10, samples)
                }
                ("Backends up and healthy", legend) => {
                    // The port without backends has no series; `dead` is up 0 (its connects
                    // fail) but healthy (no health policy judges it).
                    let up = !legend.starts_with("healthy");
                    let mut values: Vec<(&str, f64)> = troubled_ports
                        .iter()
                        .map(|s| (*s, if up && *s == "dead" { 0.0 } else { 1.0 }))
                        .collect();
                    values.push(("secure", 1.0));
                    (".*", 10, per_port(&values))
                }
                ("Backend connect errors per second", _) => (
                    ".*",
                    10,
                    vec![
                        (labels(&[("backend", &dead.to_string())]), 1.0),
                        (labels(&[("backend", &origin.to_string())]), 0.0),
                    ],
                ),
                ("Requests refused before a backend", _) => (".*", 10, rejections()),
                // Every exchange on `web` is the same: its rate is one exchange's body bytes.
                ("Throughput", legend) => {
                    let bytes = if legend == "sent" {
                        web.response
                    } else {
                        web.request
                    };
                    ("web", 10, vec![(none, (bytes / PER_ROUND) as f64)])
                }
                ("TLS handshakes and failures", legend) => {
                    let value = if legend == "failed" { 1.0 } else { 0.0 };
                    (".*", 10, vec![(none, value)])
                }
                ("Plugin faults and quarantine", legend) if legend.starts_with("quarantined") => {
                    let samples = PLUGINS
                        .iter()
                        .map(|p| {
                            (
                                labels(&[("plugin", p)]),
                                if *p == "bad" { 1.0 } else { 0.0 },
                            )
                        })
                        .collect();
                    (".*", 10, samples)
                }
                ("Plugin faults and quarantine", _) => {
                    // quarantine_after: 15 traps in the first round, none after: 15 over the
                    // first minute.
                    let kinds = ["trap", "deadline", "invalid_answer", "instantiate"];
                    let samples = PLUGINS
                        .iter()
                        .flat_map(|p| kinds.iter().map(move |k| (*p, *k)))
                        .map(|(p, k)| {
                            let value = if (p, k) == ("bad", "trap") { 0.25 } else { 0.0 };
                            (labels(&[("plugin", p), ("kind", k)]), value)
                        })
                        .collect();
                    (".*", 1, samples)
                }
                ("Configuration reloads", _) => (
                    ".*",
                    1,
                    vec![
                        (labels(&[("result", "failure")]), 1.0),
                        (labels(&[("result", "success")]), 0.0),
                        (labels(&[("result", "unchanged")]), 0.0),
                    ],
                ),
                ("Session affinity", _) => (
                    ".*",
                    10,
                    vec![
                        (labels(&[("outcome", "moved")]), 0.0),
                        (labels(&[("outcome", "new")]), 0.0),
                        (labels(&[("outcome", "stuck")]), 1.0),
                    ],
                ),
                other => panic!("no expected value for dashboard query {other:?}: {expr}"),
            };
            checks.push(QueryCheck {
                what: format!("{title}: {legend}"),
                expr: expr
                    .replace("$service", service)
                    .replace("$__rate_interval", "1m"),
                eval_minutes: minutes,
                samples,
            });
        }
    }
    checks
}

fn rejections() -> Vec<(Vec<(&'static str, String)>, f64)> {
    [
        "ambiguous_length",
        "body_timeout",
        "header_timeout",
        "header_too_large",
        "malformed",
        "method_not_allowed",
        "too_many_headers",
    ]
    .iter()
    .map(|reason| (labels(&[("reason", reason)]), 0.0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_fires_in_its_situation_and_every_dashboard_query_shows_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let leaf = ca.issue(dir.path(), "web", &["web.test"]);
    let tls = format!(
        "{{ certificates: [{{ cert: \"{}\", key: \"{}\" }}] }}",
        leaf.cert_path.display(),
        leaf.key_path.display()
    );
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let (troubled, dead, web) = troubled(dir.path(), origin.addr, &tls).await;
    let (healthy, stopped) = healthy_then_stopped(dir.path(), origin.addr, &tls, &ca).await;

    let dead_backend = [
        ("service", "dead".to_owned()),
        ("port", "http".to_owned()),
        ("backend", dead.to_string()),
    ]
    .to_vec();
    let target = labels(&[("instance", "gantry:9090"), ("job", "gantry")]);
    let mut failed_reload = target.clone();
    failed_reload.push(("result", "failure".to_owned()));
    let all = [
        "GantryDown",
        "GantryHighErrorRatio",
        "GantryNoHealthyBackend",
        "GantryBackendConnectErrors",
        "GantryReloadFailing",
        "GantryPluginQuarantined",
        "GantryTLSHandshakeFailures",
        "GantryLatencyHigh",
        "GantryRoutingDaemonRefuses",
    ];
    let situations = [
        Situation {
            name: "troubled",
            scrapes: &troubled,
            steady_steps: STEADY,
            alerts: vec![
                alert("GantryDown", vec![]),
                alert(
                    "GantryHighErrorRatio",
                    vec![port("dead"), port("empty"), port("errors")],
                ),
                alert("GantryNoHealthyBackend", vec![port("dead"), port("empty")]),
                alert("GantryBackendConnectErrors", vec![dead_backend]),
                alert("GantryReloadFailing", vec![failed_reload]),
                alert(
                    "GantryPluginQuarantined",
                    vec![labels(&[("plugin", "bad")])],
                ),
                alert(
                    "GantryTLSHandshakeFailures",
                    vec![labels(&[("service", "secure"), ("port", "http")])],
                ),
                alert("GantryLatencyHigh", vec![port("slow")]),
                alert("GantryRoutingDaemonRefuses", vec![target.clone()]),
            ],
            queries: panels(dead, origin.addr, web),
        },
        Situation {
            name: "healthy",
            scrapes: &healthy,
            steady_steps: STEADY,
            alerts: all.iter().map(|name| alert(name, vec![])).collect(),
            queries: Vec::new(),
        },
        Situation {
            name: "stopped",
            scrapes: &stopped,
            steady_steps: STEADY,
            alerts: vec![alert("GantryDown", vec![target])],
            queries: Vec::new(),
        },
    ];
    promtool::check(dir.path(), &docs("prometheus-alerts.yaml"), &situations);
}
