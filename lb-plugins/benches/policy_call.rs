//! `cargo bench -p lb-plugins --bench policy_call`: what one balancing decision costs, per
//! policy, through the same `Balancer::pick` the proxy calls (for a Wasm policy that includes
//! the per-thread instance lookup, marshalling the request summary and the backend figures
//! into the guest, the epoch-deadline set-up, and validating the answer).
//!
//! Each call is timed on its own with the monotonic clock; the clock's own cost (measured in
//! the same run, printed as `timer`) is subtracted, so figures are per call, not per batch.
//! Prints p50/p90/p99 in nanoseconds for the native round-robin and, for every built-in, a
//! first pick (placed by the host from the plugin's plan when it states one, 0.3.0) and a
//! retry (`attempt` 1, always a call into the plugin), with the ratio of each p50 to the
//! native one. The contract's target is p50 ≤ 1 µs per call.
//!
//! Then one policy written in each language, the canary balancer (which reads a header, so
//! every pick is a call): in Rust (`plugins/examples/canary`), in Python
//! (`plugins/python/examples/canary`) and in JavaScript (`plugins/js/examples/canary`; both
//! built by `bash .ci/setup`). For each, the load (compile, instantiate, `configure`,
//! `set-backends`) timed once, and the process's resident memory grown by it (the compiler's
//! working memory, kept by the allocator, the compiled code and one instance: the bench runs
//! one worker), then the call cost as above.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use lb_config::{Backend, BalancerPolicy, HashKey, PolicySource, Protocol};
use lb_plugins::{
    builtin_names, NoTelemetry, PluginHost, BUILT_PLUGIN_DIR, JS_PLUGIN_DIR, PYTHON_PLUGIN_DIR,
};
use lb_policy::{BackendFigures, Balancer, BalancerFactory, Figures, PickContext, RoundRobin};

/// Calls measured per policy, after as many warm-up calls.
const CALLS: usize = 200_000;
/// Backends in the set every policy balances.
const BACKENDS: usize = 16;

/// Figures that vary by backend, so least-request has real choices to make.
struct Busy;

impl BackendFigures for Busy {
    fn figures(&self, index: usize) -> Option<Figures> {
        Some(Figures {
            in_flight: (index as u32 * 7) % 11,
            latency_micros: 400 + index as u32 * 13,
            healthy: true,
        })
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and runs quickly.
    let calls = if std::env::args().any(|a| a == "--bench") {
        CALLS
    } else {
        1_000
    };
    let backends: Vec<Backend> = (0..BACKENDS)
        .map(|i| Backend {
            address: SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080)),
            weight: 1 + (i as u32 % 3),
        })
        .collect();
    let limits = match lb_config::parse_str("", std::path::Path::new("/")) {
        Ok(model) => model.plugin_limits,
        Err(problems) => fail(&format!("default configuration: {problems:?}")),
    };
    let host = PluginHost::new(&limits, Arc::new(NoTelemetry), 1)
        .unwrap_or_else(|e| fail(&format!("plugin host: {e}")));

    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::HOST, "shop.example".parse().expect("header"));
    headers.insert("x-canary", "no".parse().expect("header"));

    println!("policy call cost, {BACKENDS} backends, {calls} calls each (ns per call)");
    let timer = measure_timer(calls);
    println!("{:<26} {:>8} {:>8} {:>8}", "", "p50", "p90", "p99");
    println!(
        "{:<26} {:>8} {:>8} {:>8}",
        "timer (subtracted)", timer, "", ""
    );

    let native = RoundRobin.build(&backends, Arc::new(Busy));
    let native_p50 = report(
        "native:round-robin",
        native.as_ref(),
        0,
        calls,
        timer,
        None,
        &headers,
    );

    let mut names: Vec<&str> = builtin_names("balancer").collect();
    names.sort_unstable();
    for name in names {
        let policy = BalancerPolicy {
            policy: PolicySource::Builtin(name.to_string()),
            params: Default::default(),
            hash_key: HashKey::ClientIp,
        };
        let factory = host
            .factory(&policy, Protocol::Tcp)
            .unwrap_or_else(|e| fail(&format!("builtin:{name}: {e}")));
        let balancer = factory.build(&backends, Arc::new(Busy));
        balancer.activate();
        // A first pick is placed from the plugin's plan when it states one; a retry is always
        // a call into the plugin.
        for (attempt, label) in [(0, format!("builtin:{name}")), (1, "  retry".to_string())] {
            report(
                &label,
                balancer.as_ref(),
                attempt,
                calls,
                timer,
                Some(native_p50),
                &headers,
            );
        }
    }

    println!();
    println!("one policy per language: the canary balancer (a call per pick)");
    println!(
        "{:<26} {:>8} {:>8} {:>8}   load ms, resident MiB",
        "", "p50", "p90", "p99"
    );
    for (label, folder) in [
        ("rust: canary", BUILT_PLUGIN_DIR),
        ("python: canary", PYTHON_PLUGIN_DIR),
        ("javascript: canary", JS_PLUGIN_DIR),
    ] {
        let file = std::path::Path::new(folder).join("canary.wasm");
        if !file.exists() {
            fail(&format!(
                "{} is missing (the Python and JavaScript plugins are built by `bash .ci/setup`)",
                file.display()
            ));
        }
        let policy = file_policy(&file);
        let resident_before = resident_bytes();
        let started = Instant::now();
        let factory = host
            .factory(&policy, Protocol::Http)
            .unwrap_or_else(|e| fail(&format!("{label}: {e}")));
        let balancer = factory.build(&backends, Arc::new(Busy));
        balancer.activate();
        let load = started.elapsed();
        let grown = resident_bytes().saturating_sub(resident_before);
        report(
            label,
            balancer.as_ref(),
            0,
            calls,
            timer,
            Some(native_p50),
            &headers,
        );
        println!(
            "{:<26} {:>8} {:>8} {:>8}   {:.0} ms, {:.1} MiB",
            "  load",
            "",
            "",
            "",
            load.as_secs_f64() * 1e3,
            grown as f64 / (1024.0 * 1024.0)
        );
    }
}

/// The canary plugin in `file` as a port's balancer (canary port 8081: none of the bench's
/// backends, so every pick rotates over all of them after reading the header), loaded as a
/// configuration file names it.
fn file_policy(file: &std::path::Path) -> BalancerPolicy {
    let text = format!(
        "plugins: {{ canary: {{ file: \"{}\" }} }}\n\
         services: [{{ name: web, address: 127.0.0.1, ports: [{{ port: 8080, protocol: http, \
         backends: [\"127.0.0.1:1\"], \
         balancer: {{ policy: canary, params: {{ canary_port: 8081 }} }} }}] }}]\n",
        file.display()
    );
    let model = lb_config::parse_str(&text, std::path::Path::new("/"))
        .unwrap_or_else(|problems| fail(&format!("{}: {problems:?}", file.display())));
    model
        .services
        .values()
        .flat_map(|service| service.ports.values())
        .map(|port| port.balancer.clone())
        .next()
        .unwrap_or_else(|| fail("the configuration has no port"))
}

/// The process's resident memory, bytes (0 where /proc is not there; pages of 4 KiB, as on
/// the x86-64 and arm64 Linux machines the bench runs on).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// The median cost of reading the clock twice, which every sample includes.
fn measure_timer(calls: usize) -> u64 {
    let mut samples: Vec<u64> = (0..calls)
        .map(|_| {
            let start = Instant::now();
            black_box(());
            start.elapsed().as_nanos() as u64
        })
        .collect();
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// Times `calls` picks of `attempt` (after as many warm-up picks), prints the percentiles and
/// returns p50.
fn report(
    label: &str,
    balancer: &dyn Balancer,
    attempt: u32,
    calls: usize,
    timer: u64,
    native_p50: Option<u64>,
    headers: &http::HeaderMap,
) -> u64 {
    let client = |i: usize| {
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(0xc633_6400_u32 + (i as u32 % 4096))),
            40_000 + (i % 20_000) as u16,
        )
    };
    let pick = |i: usize| {
        let cx = PickContext {
            client: Some(client(i)),
            authority: Some("shop.example"),
            protocol: Protocol::Http,
            hash_key: lb_policy::hash_key(&HashKey::ClientIp, Some(client(i).ip()), None),
            headers: Some(headers),
        };
        let start = Instant::now();
        let answer = balancer.pick(black_box(&cx), attempt);
        let elapsed = start.elapsed().as_nanos() as u64;
        if answer.is_none() {
            fail(&format!("{label}: no answer"));
        }
        elapsed
    };
    for i in 0..calls {
        pick(i);
    }
    let mut samples: Vec<u64> = (0..calls).map(|i| pick(i).saturating_sub(timer)).collect();
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    let (p50, p90, p99) = (at(0.50), at(0.90), at(0.99));
    let ratio = native_p50
        .map(|n| format!("  ×{:.1} native", p50 as f64 / n.max(1) as f64))
        .unwrap_or_default();
    println!("{label:<26} {p50:>8} {p90:>8} {p99:>8}{ratio}");
    p50
}

fn fail(message: &str) -> ! {
    eprintln!("policy_call: {message}");
    std::process::exit(1);
}
