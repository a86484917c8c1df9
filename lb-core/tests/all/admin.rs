//! The admin listener over real sockets: metrics, health, readiness and the config dump.

use std::time::Duration;

use http::StatusCode;

use crate::support::addr;
use crate::support::certs::TestCa;
use crate::support::client::get;
use crate::support::origin::{HttpOrigin, OriginProtocol};
use crate::support::scenario::{Port, Scenario};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoints_report_health_metrics_and_the_redacted_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let leaf = ca.issue(dir.path(), "web", &["web.test"]);
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let tls = format!(
        "{{ certificates: [{{ cert: \"{}\", key: \"{}\" }}] }}",
        leaf.cert_path.display(),
        leaf.key_path.display()
    );
    let gantry = Scenario::new()
        .port("web", Port::http("http").backends(&[origin.addr]))
        .port(
            "web",
            Port::new("https", "https")
                .backends(&[origin.addr])
                .set("tls", &tls),
        )
        .start()
        .await;
    let admin = gantry.admin_addr().expect("admin address");
    assert!(admin.ip().is_loopback());
    assert_eq!(get(addr(&gantry, "web", "http"), "/").await.body, "o 0");

    let health = get(admin, "/healthz").await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (StatusCode::OK, "ok\n")
    );
    let ready = get(admin, "/readyz").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (StatusCode::OK, "ready\n")
    );

    let metrics = get(admin, "/metrics").await;
    assert!(metrics.header("content-type").starts_with("text/plain"));
    assert!(
        metrics
            .body
            .contains("gantry_connections_total{port=\"http\",service=\"web\"} 1"),
        "{}",
        metrics.body
    );

    let config = get(admin, "/config").await;
    assert_eq!(config.header("content-type"), "application/json");
    let json: serde_json::Value = serde_json::from_str(&config.body).expect("json");
    let listener = &json["listeners"]["web/http"];
    assert_eq!(
        listener["address"],
        addr(&gantry, "web", "http").to_string()
    );
    assert_eq!(listener["policy"], "builtin:round-robin");
    assert_eq!(listener["backends"][0]["address"], origin.addr.to_string());
    let cert = &json["config"]["services"]["web"]["ports"]["https"]["tls"]["certificates"][0];
    assert_eq!(cert["names"][0], "web.test");
    assert_eq!(cert["key"], leaf.key_path.display().to_string());
    let key_pem = std::fs::read_to_string(&leaf.key_path).expect("key");
    let key_line = key_pem.lines().nth(1).expect("pem body");
    assert!(
        !config.body.contains(key_line),
        "no key material in /config"
    );

    assert_eq!(get(admin, "/nope").await.status, StatusCode::NOT_FOUND);
    gantry.shutdown(Duration::from_secs(1)).await;
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "admin stops with the rest"
    );
}
