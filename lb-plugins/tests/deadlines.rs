//! Call deadlines bound a plugin's own CPU work, not the scheduler's delays: on a machine
//! oversubscribed on purpose, calls that are descheduled past their deadline run to the end,
//! while a call that works past its budget is interrupted. Drives a balancer plugin through
//! the host as the proxy does, minus the sockets.

#![allow(missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lb_config::{Model, Protocol};
use lb_plugins::{FaultHandles, FaultKind, PluginHost, PluginTelemetry};
use lb_policy::{BackendFigures, Balancer, Figures, PickContext};

/// Keeps the fault handles the host shows, to read them.
#[derive(Default)]
struct Seen(Mutex<Vec<(String, FaultHandles)>>);

impl PluginTelemetry for Seen {
    fn show(&self, plugin: &str, handles: &FaultHandles) {
        self.0
            .lock()
            .expect("lock")
            .push((plugin.to_owned(), handles.clone()));
    }

    fn hide(&self, _plugin: &str) {}
}

impl Seen {
    fn faults(&self, kind: FaultKind) -> u64 {
        let index = FaultKind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("a kind");
        let seen = self.0.lock().expect("lock");
        let (_, handles) = seen.last().expect("the plugin's handles were shown");
        handles.counters[index].get()
    }
}

struct Idle;

impl BackendFigures for Idle {
    fn figures(&self, _index: usize) -> Option<Figures> {
        None
    }
}

/// A model with one port balanced by the misbehaving plugin spinning `spin_us` per pick,
/// under a `deadline_ms` call deadline.
fn model(spin_us: u64, deadline_ms: u64) -> Model {
    let plugin = Path::new(lb_plugins::BUILT_PLUGIN_DIR).join("misbehave.wasm");
    lb_config::parse_str(
        &format!(
            "plugins:\n  spin: {{ file: \"{}\" }}\nplugin_limits: {{ call_deadline: {deadline_ms}ms, quarantine_after: 1000000 }}\nservices:\n  - name: s\n    ports: [{{ port: 1, backends: [\"192.0.2.1:80\", \"192.0.2.2:80\"], balancer: {{ policy: spin, params: {{ mode: spin, spin_us: {spin_us} }} }} }}]\n",
            plugin.display()
        ),
        Path::new("/"),
    )
    .expect("valid config")
}

/// The port's balancer, running, and what the host shows of its faults.
fn balancer(model: &Model) -> (PluginHost, Box<dyn Balancer>, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let host = PluginHost::new(&model.plugin_limits, seen.clone(), 1).expect("host");
    let port = model.ports().next().expect("a port");
    let factory = host
        .factory(&port.balancer, port.protocol)
        .expect("factory");
    let balancer = factory.build(&port.backends, Arc::new(Idle));
    balancer.activate();
    host.commit(model);
    (host, balancer, seen)
}

fn pick(balancer: &dyn Balancer) -> Option<usize> {
    let cx = PickContext {
        client: Some(SocketAddr::from(([203, 0, 113, 9], 4000))),
        authority: None,
        protocol: Protocol::Tcp,
        hash_key: 7,
        headers: None,
    };
    balancer.pick(&cx, 0)
}

/// Threads that keep every core busy until dropped.
struct Oversubscribed {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Oversubscribed {
    fn start() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..4 * cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 1u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(3).wrapping_add(1));
                    }
                })
            })
            .collect();
        Oversubscribed { stop, threads }
    }
}

impl Drop for Oversubscribed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_call_descheduled_past_its_deadline_is_not_interrupted() {
    // Each pick works for 1 ms (of the monotonic clock, so at most 1 ms of CPU), under a
    // 4 ms deadline, while four busy threads per core compete for the CPU.
    let model = model(1_000, 4);
    let (_host, balancer, seen) = balancer(&model);
    let busy = Oversubscribed::start();
    let mut longest = Duration::ZERO;
    let mut past_deadline = 0;
    for _ in 0..200 {
        let started = Instant::now();
        assert_eq!(pick(balancer.as_ref()), Some(0), "answered by the plugin");
        let took = started.elapsed();
        longest = longest.max(took);
        if took > Duration::from_millis(4) {
            past_deadline += 1;
        }
        if past_deadline >= 5 {
            break;
        }
    }
    drop(busy);
    // The wall clock did run past the deadline: the test measured what it claims to.
    assert!(
        past_deadline >= 1,
        "no call outlived its deadline in wall time (longest {longest:?}): not oversubscribed"
    );
    assert_eq!(seen.faults(FaultKind::Deadline), 0);
}

#[test]
fn a_call_that_works_past_its_budget_is_interrupted() {
    // 200 ms of work per pick under a 4 ms deadline, on an otherwise idle machine.
    let model = model(200_000, 4);
    let (_host, balancer, seen) = balancer(&model);
    let started = Instant::now();
    let answer = pick(balancer.as_ref());
    let took = started.elapsed();
    assert_eq!(seen.faults(FaultKind::Deadline), 1, "interrupted");
    assert!(answer.is_some(), "the native round-robin answered instead");
    assert!(
        took < Duration::from_millis(150),
        "interrupted well before its work was done, after {took:?}"
    );
}

#[test]
fn the_epoch_ticker_rests_while_no_call_runs_and_wakes_for_the_next_one() {
    // 200 ms of work per pick under a 4 ms deadline: interrupted only if the epoch ticks.
    let model = model(200_000, 4);
    let (host, balancer, seen) = balancer(&model);
    // Building the balancer made calls; a second without any parks the ticker.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !host.epoch_ticker_idle() {
        assert!(Instant::now() < deadline, "the ticker never rested");
        std::thread::sleep(Duration::from_millis(10));
    }
    let answer = pick(balancer.as_ref());
    assert_eq!(
        seen.faults(FaultKind::Deadline),
        1,
        "the call woke the ticker, and its deadline fired"
    );
    assert!(answer.is_some(), "the native round-robin answered instead");
}
