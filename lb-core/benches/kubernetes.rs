//! `cargo bench -p lb-core --bench kubernetes`: how the Kubernetes source scales, in process,
//! against the test API server (the real HTTP API over TLS on loopback, kube-rs unmodified).
//!
//! - provision: N LoadBalancer Services (each with an EndpointSlice) created through the API
//!   at once; the time until every one serves (its listener in the running model) and until
//!   every status shows its address.
//! - programming: M changes, one at a time, each adding an endpoint to one Service's slice;
//!   for each, the time from the API server accepting the write to the data plane serving the
//!   new backend (the model holding it), p50/p90/p99. The same span as
//!   `gantry_kubernetes_programming_duration_seconds` plus the watch's delivery; Kubernetes'
//!   own SLO for network programming is p99 ≤ 30 s.
//!
//! `SERVICES` (default 1000) and `CHANGES` (default 200) set N and M. Figures are printed;
//! nothing is asserted.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use lb_core::Gantry;
use lb_k8s_testing::{Kind, Options, Policy, TestApiServer};
use serde_json::json;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The i-th address of the pool 127.3.0.0/16 (the /16's first usable is .0.1).
fn address(i: usize) -> IpAddr {
    let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 3, 0, 0)) + n))
}

fn service(i: usize) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": format!("s{i}"), "namespace": "bench"},
           // No node ports: a cluster has 2768 of them, fewer than the Services here.
           "spec": {"type": "LoadBalancer", "loadBalancerClass": "gantry.io/lb",
                    "allocateLoadBalancerNodePorts": false,
                    "ports": [{"name": "http", "port": 8080}]}})
}

fn slice(i: usize, endpoints: &[&str]) -> serde_json::Value {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
           "metadata": {"name": format!("s{i}-1"), "namespace": "bench",
                        "labels": {"kubernetes.io/service-name": format!("s{i}")}},
           "ports": [{"name": "http", "port": 9000}], "endpoints": endpoints})
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(at).copied().unwrap_or_default()
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{what} never happened"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    started.elapsed()
}

fn main() {
    let services = env("SERVICES", 1000);
    let changes = env("CHANGES", 200);
    let _ = rustls::crypto::ring::default_provider().install_default();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
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
            "admin: { listen: 127.0.0.1:0 }\nkubernetes:\n  kubeconfig: kubeconfig\n  address_pools: [{ name: bench, addresses: [127.3.0.0/16] }]\n",
        )
        .expect("config");
        let gantry = Gantry::start_file(lb_config::load_builder(&config).expect("config"))
            .await
            .expect("gantry");

        let started = Instant::now();
        for i in 0..services {
            api.create(service(i)).expect("service");
            api.create(slice(i, &["127.0.0.1"])).expect("slice");
        }
        let created = started.elapsed();
        wait_until("every Service serving", || gantry.model().services.len() == services).await;
        let serving = started.elapsed();
        wait_until("every status written", || {
            api.list(Kind::Service)
                .iter()
                .all(|s| s["status"]["loadBalancer"]["ingress"][0]["ip"].is_string())
        })
        .await;
        let reported = started.elapsed();
        println!(
            "provision  services={services} created_in={:.2}s serving_after={:.2}s status_after={:.2}s rss={:.0}MiB",
            created.as_secs_f64(),
            serving.as_secs_f64(),
            reported.as_secs_f64(),
            rss_mib()
        );
        assert_eq!(
            gantry.model().services["bench/s0"].address,
            address(0),
            "addresses in pool order"
        );

        let mut latencies = Vec::with_capacity(changes);
        for n in 0..changes {
            let i = (n * 7919) % services;
            let extra = format!("127.0.{}.{}", 1 + n / 250, 1 + n % 250);
            let id = (Kind::EndpointSlice, "bench".to_owned(), format!("s{i}-1"));
            let patch = json!({"endpoints": [
                {"addresses": ["127.0.0.1"], "conditions": {"ready": true}},
                {"addresses": [extra], "conditions": {"ready": true}}]});
            let sent = Instant::now();
            api.patch(&id, lb_k8s_testing::Part::Main, &patch).expect("patch");
            let name = format!("bench/s{i}");
            let backend: std::net::SocketAddr = format!("{extra}:9000").parse().expect("addr");
            wait_until("the new endpoint serving", || {
                gantry.model().services.get(&name).is_some_and(|s| {
                    s.ports["http"].backends.iter().any(|b| b.address == backend)
                })
            })
            .await;
            latencies.push(sent.elapsed());
        }
        latencies.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "programming changes={changes} services={services} p50={:.1}ms p90={:.1}ms p99={:.1}ms max={:.1}ms",
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.9)),
            ms(percentile(&latencies, 0.99)),
            ms(percentile(&latencies, 1.0)),
        );
        gantry.shutdown(Duration::from_secs(1)).await;
    });
}
