//! The shipped Grafana dashboard (`docs/grafana-dashboard.json`) and alert rules
//! (`docs/prometheus-alerts.yaml`) name only metrics Gantry really exports: every `gantry_*`
//! name in their queries is a family in `/metrics` of a Gantry serving the kinds of ports the
//! queries are about (HTTP with affinity, HTTPS), after traffic on each.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::support::addr;
use crate::support::certs::TestCa;
use crate::support::client::get;
use crate::support::origin::{HttpOrigin, OriginProtocol};
use crate::support::scenario::{Port, Scenario};

/// The `gantry_*` metric families a query names (`_bucket`, `_sum` and `_count` are the
/// histogram's).
fn families(query: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = query;
    while let Some(at) = rest.find("gantry_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        found.insert(family.to_owned());
    }
    found
}

fn shipped(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_name_only_metrics_gantry_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&shipped("grafana-dashboard.json")).expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            queries.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(query) = variable["query"].as_str() {
            queries.push(query.to_owned());
        }
    }
    let alerts: serde_yaml::Value =
        serde_yaml::from_str(&shipped("prometheus-alerts.yaml")).expect("alerts YAML");
    for group in alerts["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            queries.push(rule["expr"].as_str().expect("expr").to_owned());
        }
    }
    let named: BTreeSet<String> = queries.iter().flat_map(|q| families(q)).collect();
    assert!(named.len() >= 10, "the queries name the metrics: {named:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let leaf = TestCa::new().issue(dir.path(), "web", &["web.test"]);
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let tls = format!(
        "{{ certificates: [{{ cert: \"{}\", key: \"{}\" }}] }}",
        leaf.cert_path.display(),
        leaf.key_path.display()
    );
    let gantry = Scenario::new()
        .port(
            "web",
            Port::http("http")
                .backends(&[origin.addr])
                .set("affinity", "{ policy: \"builtin:client-ip\" }"),
        )
        .port(
            "web",
            Port::new("https", "https")
                .backends(&[origin.addr])
                .set("tls", &tls),
        )
        .start()
        .await;
    assert_eq!(get(addr(&gantry, "web", "http"), "/").await.status, 200);
    let text = gantry.metrics().render();
    let exported: BTreeSet<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split(' ').next())
        .collect();
    let missing: Vec<&String> = named
        .iter()
        .filter(|name| !exported.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "named by the dashboard or alerts but not exported: {missing:?}\nexported: {exported:?}"
    );
}
