//! `cargo bench -p gantry --bench kubernetes`: how the Kubernetes source scales against the
//! test API server (the real HTTP API over TLS on loopback, kube-rs unmodified). The API
//! server runs in a child process (this bench again, `GANTRY_BENCH_API_SERVER` set), so this
//! process is Gantry (with the shipped binary's allocator, jemalloc) and the driver that
//! writes to the cluster through the API on threads of its own (`driver`): its resident
//! memory is Gantry's, and Gantry's CPU is its threads' less the driver's and the main one's.
//!
//! - provision: N LoadBalancer Services with E ready endpoints each are in the cluster
//!   before Gantry starts; the time from its start (its LIST) until every one serves (its
//!   listener in the running model, with every endpoint) and until every status shows its
//!   address; the resident memory then.
//! - churn: for `CHURN_SECONDS`, `CHURN_PERCENT` % of all endpoints change per second (an
//!   endpoint of a random Service replaced by a new address, ten rounds of writes a second);
//!   for each, the time from the API server accepting the write to the running model holding
//!   the new backend, p50/p99, and Gantry's CPU per change (less what it spends idle).
//! - restart: Gantry stops and a new one starts on the same cluster; once it serves
//!   everything, how many Services and Events it changed (re-adoption must change none).
//!
//! `SERVICES` (default 1000), `ENDPOINTS` (10), `CHURN_PERCENT` (1), `CHURN_SECONDS` (20) set
//! them, and `BATCH_DELAY` Gantry's `kubernetes.batch_delay` (default: its own). Figures are
//! printed, one line per phase; nothing is asserted but that each phase completes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use gantry::Gantry;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use lb_k8s::client::{connect, Credentials};
use lb_k8s_testing::{Options, Policy, TestApiServer};
use serde_json::json;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn service(i: usize) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": format!("s{i}"), "namespace": "bench"},
           // No node ports: a cluster has 2768 of them, fewer than the Services here.
           "spec": {"type": "LoadBalancer", "loadBalancerClass": "gantry.io/lb",
                    "allocateLoadBalancerNodePorts": false,
                    "ports": [{"name": "http", "port": 8080}]}})
}

/// The endpoint address number `n` (distinct for every n below 2^24).
fn endpoint(n: usize) -> String {
    let n = u32::try_from(n % (1 << 24)).unwrap_or(0);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + n).to_string()
}

fn endpoints(addresses: &[String]) -> serde_json::Value {
    addresses
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect()
}

fn slice(i: usize, addresses: &[String]) -> serde_json::Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
           "metadata": {"name": format!("s{i}-1"), "namespace": "bench",
                        "labels": {"kubernetes.io/service-name": format!("s{i}")}},
           "ports": [{"name": "http", "port": 9000}], "endpoints": endpoints(addresses)})
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

/// CPU seconds used so far by this process's threads: Gantry's (every thread but the
/// driver's and the main one), and the others'.
fn cpu_seconds() -> (f64, f64) {
    let pid = std::process::id().to_string();
    let ticks = 100.0; // USER_HZ on Linux
    let (mut gantry, mut other) = (0.0, 0.0);
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten() {
        let Ok(task) = task else { continue };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: the fields after the comm, utime and stime the 12th and 13th.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let comm = head.split_once(" (").map_or("", |(_, c)| c);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let used = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let seconds = (used(11) + used(12)) / ticks;
        let main = task.file_name().to_string_lossy() == pid;
        if main || comm.starts_with("driver") {
            other += seconds;
        } else {
            gantry += seconds;
        }
    }
    (gantry, other)
}

/// Waits until `done`, trying every `every` (a check that copies the cluster's objects is
/// tried less often, so the bench does not take the cores it measures).
async fn wait_until(what: &str, every: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{what} never happened"
        );
        tokio::time::sleep(every).await;
    }
    started.elapsed()
}

/// Whether the running model serves `bench/s{i}` with exactly these endpoints.
fn serves(gantry: &Gantry, i: usize, addresses: &[String]) -> bool {
    gantry
        .model()
        .services
        .get(&format!("bench/s{i}"))
        .is_some_and(|s| {
            let backends = &s.ports["http"].backends;
            backends.len() == addresses.len()
                && addresses.iter().all(|a| {
                    let want: SocketAddr = format!("{a}:9000").parse().expect("addr");
                    backends.iter().any(|b| b.address == want)
                })
        })
}

/// A small deterministic generator (xorshift), so every run churns alike.
struct Pick(u64);

impl Pick {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % n.max(1) as u64).unwrap_or(0)
    }
}

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// In the child: serves the test API server, its kubeconfig written to `path`, until the
/// parent closes its standard input.
fn serve_api(path: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
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
        let partial = format!("{path}.partial");
        std::fs::write(&partial, api.kubeconfig()).expect("kubeconfig");
        std::fs::rename(&partial, path).expect("kubeconfig");
        let mut stdin = tokio::io::stdin();
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stdin, &mut sink).await;
    });
}

/// The API server in a child process; it ends when this process does (its stdin closes).
fn spawn_api(kubeconfig: &Path) -> std::process::Child {
    let child = std::process::Command::new(std::env::current_exe().expect("this bench"))
        .env("GANTRY_BENCH_API_SERVER", kubeconfig)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("the API server's process");
    let started = Instant::now();
    while !kubeconfig.exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "no API server");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// Creates `objects` through the API, 64 at a time.
async fn create_all<K>(api: &Api<K>, objects: Vec<serde_json::Value>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    futures::stream::iter(objects)
        .for_each_concurrent(64, |object| async move {
            let object: K = serde_json::from_value(object).expect("an object");
            api.create(&PostParams::default(), &object)
                .await
                .expect("created");
        })
        .await;
}

/// The resourceVersion of every Service, and how many Events there are.
async fn cluster_state(client: &kube::Client) -> (BTreeMap<String, String>, usize) {
    let services: Api<Service> = Api::namespaced(client.clone(), "bench");
    let versions = services
        .list(&ListParams::default())
        .await
        .expect("services")
        .items
        .into_iter()
        .map(|s| {
            (
                s.metadata.name.unwrap_or_default(),
                s.metadata.resource_version.unwrap_or_default(),
            )
        })
        .collect();
    let events: Api<Event> = Api::all(client.clone());
    let events = events.list(&ListParams::default()).await.expect("events");
    (versions, events.items.len())
}

async fn start_gantry(config: &Path) -> Gantry {
    Gantry::start_file(lb_config::load_builder(config).expect("config"))
        .await
        .expect("gantry")
}

fn main() {
    if let Some(path) = std::env::var_os("GANTRY_BENCH_API_SERVER") {
        let _ = rustls::crypto::ring::default_provider().install_default();
        serve_api(&path.to_string_lossy());
        return;
    }
    let services = env("SERVICES", 1000);
    let per_service = env("ENDPOINTS", 10);
    let churn_percent = env("CHURN_PERCENT", 1);
    let churn_seconds = env("CHURN_SECONDS", 20);
    // Gantry's default unless asked.
    let batch_delay = std::env::var("BATCH_DELAY")
        .map(|delay| format!("  batch_delay: {delay}\n"))
        .unwrap_or_default();
    let _ = rustls::crypto::ring::default_provider().install_default();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut api = spawn_api(&dir.path().join("kubeconfig"));
    let config = dir.path().join("gantry.yaml");
    std::fs::write(
        &config,
        format!(
            "admin: {{ listen: 127.0.0.1:0 }}\nkubernetes:\n  kubeconfig: kubeconfig\n{batch_delay}  address_pools: [{{ name: bench, addresses: [127.3.0.0/16] }}]\n"
        ),
    )
    .expect("config");
    let driver = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("driver")
        .enable_all()
        .build()
        .expect("runtime");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gantry")
        .enable_all()
        .build()
        .expect("runtime");
    let client = driver
        .block_on(connect(&Credentials::Kubeconfig {
            path: dir.path().join("kubeconfig"),
            context: None,
        }))
        .expect("a client");
    let service_api: Api<Service> = Api::namespaced(client.clone(), "bench");
    let slice_api: Api<EndpointSlice> = Api::namespaced(client.clone(), "bench");

    // The cluster as Gantry will find it.
    let mut current: Vec<Vec<String>> = Vec::with_capacity(services);
    let mut next_address = 0;
    for _ in 0..services {
        current.push(
            (0..per_service)
                .map(|_| {
                    next_address += 1;
                    endpoint(next_address)
                })
                .collect(),
        );
    }
    driver.block_on(async {
        create_all(&service_api, (0..services).map(service).collect()).await;
        create_all(
            &slice_api,
            current
                .iter()
                .enumerate()
                .map(|(i, a)| slice(i, a))
                .collect(),
        )
        .await;
    });
    let before_gantry = rss_mib();

    runtime.block_on(async {
        let started = Instant::now();
        let gantry = start_gantry(&config).await;
        wait_until("every Service serving", Duration::from_millis(5), || {
            let model = gantry.model();
            model.services.len() == services
                && model
                    .services
                    .values()
                    .all(|s| s.ports["http"].backends.len() == per_service)
        })
        .await;
        let serving = started.elapsed();
        loop {
            let all = driver
                .spawn({
                    let api = service_api.clone();
                    async move { api.list(&ListParams::default()).await }
                })
                .await
                .expect("the driver")
                .expect("services");
            let reported = all.items.iter().all(|s| {
                s.status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .is_some_and(|i| !i.is_empty())
            });
            if reported {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(900), "statuses never written");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let reported = started.elapsed();
        println!(
            "provision  services={services} endpoints={} serving_after={:.2}s status_after={:.2}s rss={:.0}MiB (before gantry {before_gantry:.0}MiB)",
            services * per_service,
            serving.as_secs_f64(),
            reported.as_secs_f64(),
            rss_mib(),
        );

        // Churn: ten rounds a second, each replacing one endpoint of random Services.
        let per_second = (services * per_service * churn_percent).div_ceil(100);
        let per_tick = per_second.div_ceil(10).max(1);
        let mut pick = Pick(0x9e37_79b9_7f4a_7c15);
        let mut pending: BTreeMap<usize, (Instant, Vec<String>)> = BTreeMap::new();
        let mut latencies = Vec::new();
        // What Gantry spends idle (timers, health, the watches' bookmarks), over two seconds,
        // is taken out of the CPU the changes are charged.
        let (idle_before, _) = cpu_seconds();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle_per_second = (cpu_seconds().0 - idle_before) / 2.0;
        let (cpu_before, _) = cpu_seconds();
        let churn_started = Instant::now();
        let mut changes = 0usize;
        let mut next_tick = Instant::now();
        while churn_started.elapsed() < Duration::from_secs(churn_seconds as u64) {
            if Instant::now() >= next_tick {
                next_tick += Duration::from_millis(100);
                // One write per Service a round (its last list): concurrent writes to one
                // slice could land in either order.
                let mut writes = BTreeMap::new();
                for _ in 0..per_tick {
                    let i = pick.below(services);
                    let slot = pick.below(per_service);
                    next_address += 1;
                    current[i][slot] = endpoint(next_address);
                    writes.insert(i, current[i].clone());
                }
                let api = slice_api.clone();
                let written = driver
                    .spawn(async move {
                        futures::stream::iter(writes)
                            .map(|(i, addresses)| {
                                let api = api.clone();
                                async move {
                                    let patch = json!({"endpoints": endpoints(&addresses)});
                                    api.patch(
                                        &format!("s{i}-1"),
                                        &PatchParams::default(),
                                        &Patch::Merge(patch),
                                    )
                                    .await
                                    .expect("patched");
                                    (i, addresses, Instant::now())
                                }
                            })
                            .buffer_unordered(64)
                            .collect::<Vec<_>>()
                            .await
                    })
                    .await
                    .expect("the driver");
                for (i, addresses, accepted) in written {
                    // A second change to a Service still pending is timed from its first.
                    let sent = pending.get(&i).map_or(accepted, |(at, _)| *at);
                    pending.insert(i, (sent, addresses));
                    changes += 1;
                }
            }
            // Checked every millisecond, so a latency is read to the millisecond.
            tokio::time::sleep(Duration::from_millis(1)).await;
            pending.retain(|i, (sent, addresses)| {
                let done = serves(&gantry, *i, addresses);
                if done {
                    latencies.push(sent.elapsed());
                }
                !done
            });
        }
        wait_until("the last changes serving", Duration::from_millis(1), || {
            pending.retain(|i, (sent, addresses)| {
                let done = serves(&gantry, *i, addresses);
                if done {
                    latencies.push(sent.elapsed());
                }
                !done
            });
            pending.is_empty()
        })
        .await;
        let (cpu_after, _) = cpu_seconds();
        let busy = cpu_after - cpu_before - idle_per_second * churn_started.elapsed().as_secs_f64();
        latencies.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "churn      services={services} changes={changes} per_second={per_second} p50={:.1}ms p99={:.1}ms max={:.1}ms cpu_per_change={:.2}ms rss={:.0}MiB",
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(percentile(&latencies, 1.0)),
            busy.max(0.0) * 1000.0 / changes.max(1) as f64,
            rss_mib(),
        );

        // Restart: a new Gantry re-adopts every address and changes nothing in the cluster.
        gantry.shutdown(Duration::from_secs(1)).await;
        drop(gantry);
        let state = |client: kube::Client| {
            driver.spawn(async move { cluster_state(&client).await })
        };
        let before = state(client.clone()).await.expect("the driver");
        let restarted = Instant::now();
        let gantry = start_gantry(&config).await;
        wait_until("every Service serving again", Duration::from_millis(5), || {
            gantry.model().services.len() == services
        })
        .await;
        let serving = restarted.elapsed();
        // Whatever it would write, it would have written by the time it serves everything;
        // a second's grace for writes in flight.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = state(client.clone()).await.expect("the driver");
        let rewritten = before
            .0
            .iter()
            .filter(|(name, version)| after.0.get(*name) != Some(*version))
            .count();
        println!(
            "restart    services={services} serving_after={:.2}s services_changed={rewritten} events_added={}",
            serving.as_secs_f64(),
            after.1.saturating_sub(before.1),
        );
        gantry.shutdown(Duration::from_secs(1)).await;
    });
    // The API server ends with its standard input.
    drop(api.stdin.take());
    let _ = api.wait();
}
