//! The `gantry` binary announcing through a routing daemon, against a stand-in for BIRD's
//! control socket that records what the routes file held at each `configure`: announced once
//! serving, withdrawn on SIGTERM while the listeners still accept (before the drain), shown in
//! `/config` and the metrics, withdrawn again by the guard once the process is gone, and
//! `gantry withdraw-routes` leaving a running Gantry's routes alone; with `announce: healthy`,
//! withdrawn while no backend passes its health checks. Real BIRD, ECMP and failover are in
//! `routing_ha`, keepalived in `routing_l2`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::support::binary::{Running, GANTRY};
use crate::support::fake_bird::{guard_gone, FakeBird};
use crate::support::metric;
use crate::support::origin::{HttpOrigin, OriginProtocol};
use crate::support::scenario::{Port, Scenario};

/// What each test here starts from: a folder, a stand-in BIRD in it, an origin, and where the
/// configuration goes.
struct Bench {
    dir: tempfile::TempDir,
    routes: std::path::PathBuf,
    socket: std::path::PathBuf,
    bird: FakeBird,
    origin: HttpOrigin,
    config: std::path::PathBuf,
}

impl Bench {
    async fn start() -> Bench {
        let dir = tempfile::tempdir().expect("tempdir");
        let routes = dir.path().join("routes");
        let socket = dir.path().join("bird.ctl");
        let bird = FakeBird::start(&socket, routes.clone());
        let origin = HttpOrigin::start("a", OriginProtocol::Http1).await;
        let config = dir.path().join("gantry.yaml");
        Bench {
            dir,
            routes,
            socket,
            bird,
            origin,
            config,
        }
    }
}

fn withdraw_routes(config: &Path) -> String {
    let output = std::process::Command::new(GANTRY)
        .args(["withdraw-routes", "--config"])
        .arg(config)
        .output()
        .expect("gantry withdraw-routes");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_announced_once_serving_and_withdrawn_before_the_drain_and_after_the_process() {
    let Bench {
        dir: _dir,
        routes,
        socket,
        mut bird,
        origin,
        config,
    } = Bench::start().await;
    Scenario::new()
        .section(&format!(
            "routing:\n  daemon: bird\n  control_socket: {}\n  directory: {}\n  asn: 65010\n  withdraw_delay: 1s\n  peers: [{{ address: 10.0.0.1, asn: 65000 }}]\n  pools: [{{ addresses: [127.0.0.1], communities: [\"65000:7\"] }}]",
            socket.display(),
            routes.display()
        ))
        .port("web", Port::http("http").backends(&[origin.addr]))
        .write(&config);
    let mut gantry = Running::start(&config);
    let admin = gantry.address("admin listening").await;
    let proxy: SocketAddr = gantry.address("listening").await;
    bird.configured(|r| r == "route 127.0.0.1/32 blackhole { bgp_community.add((65000,7)); };\n")
        .await;
    let protocols = std::fs::read_to_string(routes.join("gantry.conf")).expect("gantry.conf");
    assert!(
        protocols.contains("neighbor 10.0.0.1 as 65000;"),
        "{protocols}"
    );
    crate::support::eventually("the announcement in /config and the metrics", || async {
        let config = crate::support::client::get(admin, "/config").await;
        let config: serde_json::Value = serde_json::from_str(&config.body).expect("JSON");
        config["routing"]["announced"][0]["prefix"] == "127.0.0.1/32"
            && config["routing"]["announced"][0]["communities"][0] == "65000:7"
    })
    .await;
    let metrics = crate::support::client::get(admin, "/metrics").await.body;
    assert_eq!(
        metric(
            &metrics,
            "gantry_routing_announced_addresses{family=\"ipv4\"}"
        ),
        1.0
    );
    assert!(metric(&metrics, "gantry_routing_updates_total{outcome=\"ok\"}") >= 1.0);

    // A running Gantry holds the folder: `withdraw-routes` (systemd's ExecStopPost) leaves it.
    assert!(withdraw_routes(&config).contains("a Gantry still announces"));
    assert!(std::fs::read_to_string(routes.join("routes4.conf"))
        .expect("routes")
        .contains("127.0.0.1/32"));

    // SIGTERM: the routes go first, while the listener still accepts.
    gantry.signal("TERM");
    bird.configured(str::is_empty).await;
    TcpStream::connect(proxy)
        .await
        .expect("still listening after the withdraw, during withdraw_delay");
    let _ = tokio::time::timeout(Duration::from_secs(20), gantry.child.wait())
        .await
        .expect("gantry stops");
    // Its guard, seeing no Gantry left, withdraws once more (nothing left to withdraw) and
    // exits: its lock is free.
    bird.configured(str::is_empty).await;
    guard_gone(&routes).await;
    assert!(withdraw_routes(&config).contains("withdrawn"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_announce_healthy_an_address_is_withdrawn_while_no_backend_is_healthy() {
    let Bench {
        dir: _dir,
        routes,
        socket,
        mut bird,
        origin,
        config,
    } = Bench::start().await;
    Scenario::new()
        .section(&format!(
            "routing:\n  daemon: bird\n  control_socket: {}\n  directory: {}\n  asn: 65010\n  announce: healthy\n  peers: [{{ address: 10.0.0.1, asn: 65000 }}]\n  pools: [{{ addresses: [127.0.0.1] }}]",
            socket.display(),
            routes.display()
        ))
        .port(
            "web",
            Port::http("http").backends(&[origin.addr]).set(
                "health",
                "[{ policy: \"builtin:http-check\", params: { path: /healthz, interval: 100ms, \
                 timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 1 } }]",
            ),
        )
        .write(&config);
    let mut gantry = Running::start(&config);
    gantry.log("ready").await;
    let announced = |r: &str| r == "route 127.0.0.1/32 blackhole;\n";
    bird.configured(announced).await;
    // Its only backend fails its checks: the address goes; it passes again: it comes back.
    origin.set_health(503);
    bird.configured(str::is_empty).await;
    origin.set_health(200);
    bird.configured(announced).await;
    gantry.signal("TERM");
    let _ = tokio::time::timeout(Duration::from_secs(20), gantry.child.wait())
        .await
        .expect("gantry stops");
    guard_gone(&routes).await;
}
