//! Balancers run by a plugin.
//!
//! A [`LoadedPolicy`] is one compiled plugin (a built-in, or a user's file by content) with its
//! fault record; it lives as long as the file is unchanged, so quarantine lasts until the file
//! changes. A [`WasmBalancerFactory`] is that policy with one port's parameters. When a port's
//! backend set changes, the factory builds a balancer and, off the request path, one
//! configured instance per worker thread with the set already given to it (tables built).
//! Each worker thread moves one into a thread-local map on its first pick, so picks never
//! share an instance and never wait on a lock. A trap, a missed deadline or an id outside the
//! set is a fault: that call is answered by the native round-robin, the instance is dropped,
//! and after `quarantine_after` faults in a row the policy is not called again.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use lb_config::{Backend, PluginLimits, Protocol};
use prometheus::{IntCounter, IntGauge};
use wasmtime::{Engine, Store};

use super::bindings::{
    BalancerPre, BalancerWorld, IpAddress, Parameter, WitBackend, WitProtocol, WitRequest,
};
use super::host::{HostState, CURRENT_HEADERS};
use super::sandbox::Sandbox;
use super::PluginError;
use crate::balancer::{BackendFigures, Balancer, BalancerFactory, PickContext, RoundRobin};

/// What went wrong in one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The plugin trapped (a panic, an out-of-memory, an invalid operation).
    Trap,
    /// The call ran past its deadline and was interrupted.
    Deadline,
    /// The plugin answered an id that is not in the set.
    InvalidAnswer,
    /// No instance could be made (instantiation, `configure` or `set-backends` failed).
    Instantiate,
}

impl FaultKind {
    /// All kinds, in metric order.
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Trap,
        FaultKind::Deadline,
        FaultKind::InvalidAnswer,
        FaultKind::Instantiate,
    ];

    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            FaultKind::Trap => "trap",
            FaultKind::Deadline => "deadline",
            FaultKind::InvalidAnswer => "invalid_answer",
            FaultKind::Instantiate => "instantiate",
        }
    }
}

/// The fault record of one loaded policy, shared by every port and thread using it.
pub struct Faults {
    plugin: Arc<str>,
    consecutive: AtomicU32,
    quarantined: AtomicBool,
    quarantine_after: AtomicU32,
    counters: [IntCounter; 4],
    gauge: IntGauge,
}

impl Faults {
    pub(crate) fn new(
        plugin: Arc<str>,
        counters: [IntCounter; 4],
        gauge: IntGauge,
        after: u32,
    ) -> Self {
        gauge.set(0);
        Faults {
            plugin,
            consecutive: AtomicU32::new(0),
            quarantined: AtomicBool::new(false),
            quarantine_after: AtomicU32::new(after),
            counters,
            gauge,
        }
    }

    /// True once the policy is no longer called.
    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Relaxed)
    }

    fn success(&self) {
        // Read first: writing on every call would bounce the cache line between threads.
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    fn record(&self, kind: FaultKind) {
        let index = FaultKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.counters[index].inc();
        let in_a_row = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if in_a_row == 1 {
            tracing::warn!(plugin = %self.plugin, fault = kind.label(), "plugin fault; native round-robin answered this call");
        }
        if in_a_row >= self.quarantine_after.load(Ordering::Relaxed)
            && !self.quarantined.swap(true, Ordering::Relaxed)
        {
            self.gauge.set(1);
            tracing::error!(
                plugin = %self.plugin,
                faults_in_a_row = in_a_row,
                "plugin quarantined: native round-robin serves its ports until the plugin changes"
            );
        }
    }
}

/// A compiled policy and its fault record.
pub struct LoadedPolicy {
    /// `builtin:NAME` or the user's plugin name.
    pub name: Arc<str>,
    pub(crate) pre: BalancerPre<HostState>,
    /// Shared fault record.
    pub faults: Faults,
}

/// A policy with one port's parameters.
pub struct WasmBalancerFactory {
    policy: Arc<LoadedPolicy>,
    params: Vec<Parameter>,
    limits: PluginLimits,
    engine: Engine,
    workers: usize,
}

/// One instance: its store and its bindings.
struct Instance {
    store: Store<HostState>,
    bindings: BalancerWorld,
}

/// What every instance of one balancer (one backend set of one port) is made from.
struct Generation {
    id: u64,
    factory_policy: Arc<LoadedPolicy>,
    params: Vec<Parameter>,
    limits: PluginLimits,
    engine: Engine,
    backends: Vec<WitBackend>,
    figures: Arc<dyn BackendFigures>,
    /// The `host.sequence` counter of this backend set.
    sequence: Arc<AtomicU64>,
    /// Instances built with the set, waiting for a worker thread to take one.
    spare: Mutex<Vec<Instance>>,
}

thread_local! {
    /// This worker thread's instances, by generation; entries of dropped generations are
    /// cleared when the thread adopts a new one.
    static INSTANCES: RefCell<HashMap<u64, (Weak<Generation>, Instance)>> = RefCell::new(HashMap::new());
}

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

impl WasmBalancerFactory {
    /// Checks that `policy` accepts `params` (by configuring a scratch instance).
    pub(crate) fn new(
        policy: Arc<LoadedPolicy>,
        params: &[(String, String)],
        limits: PluginLimits,
        engine: Engine,
        workers: usize,
    ) -> Result<Self, PluginError> {
        let factory = WasmBalancerFactory {
            params: params
                .iter()
                .map(|(name, value)| Parameter {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            policy,
            limits,
            engine,
            workers: workers.max(1),
        };
        let scratch = Generation {
            id: 0,
            factory_policy: factory.policy.clone(),
            params: factory.params.clone(),
            limits,
            engine: factory.engine.clone(),
            backends: Vec::new(),
            figures: Arc::new(NoFigures),
            sequence: Arc::default(),
            spare: Mutex::new(Vec::new()),
        };
        match scratch.instantiate() {
            Ok(_) => Ok(factory),
            Err(Setup::Rejected(message)) => Err(PluginError::Rejected {
                plugin: factory.policy.name.to_string(),
                message,
            }),
            Err(Setup::Failed(message)) => Err(PluginError::Invalid {
                plugin: factory.policy.name.to_string(),
                message,
            }),
        }
    }
}

struct NoFigures;

impl BackendFigures for NoFigures {
    fn figures(&self, _index: usize) -> Option<crate::balancer::Figures> {
        None
    }
}

/// Why an instance could not be set up.
enum Setup {
    /// `configure` returned this error.
    Rejected(String),
    /// Anything else (trap, deadline, no slot).
    Failed(String),
}

impl Generation {
    fn instantiate(&self) -> Result<Instance, Setup> {
        let failed = |e: wasmtime::Error| Setup::Failed(format!("{e:#}"));
        let state = HostState::new(
            self.factory_policy.name.clone(),
            self.figures.clone(),
            self.sequence.clone(),
            self.limits.memory_bytes,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(Sandbox::ticks_for(self.limits.setup_deadline));
        let bindings = self
            .factory_policy
            .pre
            .instantiate(&mut store)
            .map_err(failed)?;
        bindings
            .call_configure(&mut store, &self.params)
            .map_err(failed)?
            .map_err(Setup::Rejected)?;
        if !self.backends.is_empty() {
            bindings
                .call_set_backends(&mut store, &self.backends)
                .map_err(failed)?;
        }
        Ok(Instance { store, bindings })
    }
}

impl BalancerFactory for WasmBalancerFactory {
    fn name(&self) -> &str {
        &self.policy.name
    }

    fn build(&self, backends: &[Backend], figures: Arc<dyn BackendFigures>) -> Box<dyn Balancer> {
        let generation = Arc::new(Generation {
            id: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            factory_policy: self.policy.clone(),
            params: self.params.clone(),
            limits: self.limits,
            engine: self.engine.clone(),
            backends: backends
                .iter()
                .enumerate()
                .map(|(id, b)| WitBackend {
                    id: u32::try_from(id).unwrap_or(u32::MAX),
                    address: wit_ip(b.address.ip()),
                    port: b.address.port(),
                    weight: b.weight,
                })
                .collect(),
            figures: figures.clone(),
            sequence: Arc::default(),
            spare: Mutex::new(Vec::new()),
        });
        // Off the request path: every worker thread will find its instance ready.
        if !self.policy.faults.is_quarantined() {
            let mut spare = Vec::with_capacity(self.workers);
            for _ in 0..self.workers {
                match generation.instantiate() {
                    Ok(instance) => spare.push(instance),
                    Err(Setup::Rejected(message) | Setup::Failed(message)) => {
                        tracing::warn!(plugin = %self.policy.name, %message, "plugin instance could not be prepared");
                        self.policy.faults.record(FaultKind::Instantiate);
                        break;
                    }
                }
            }
            if let Ok(mut slot) = generation.spare.lock() {
                *slot = spare;
            }
        }
        Box::new(WasmBalancer {
            fallback: RoundRobin.build(backends, figures),
            count: backends.len(),
            generation,
        })
    }
}

/// A balancer for one backend set, answered by the plugin.
struct WasmBalancer {
    generation: Arc<Generation>,
    fallback: Box<dyn Balancer>,
    count: usize,
}

impl Balancer for WasmBalancer {
    fn name(&self) -> &str {
        &self.generation.factory_policy.name
    }

    fn pick(&self, cx: &PickContext<'_>, attempt: u32) -> Option<usize> {
        let faults = &self.generation.factory_policy.faults;
        if faults.is_quarantined() {
            return self.fallback.pick(cx, attempt);
        }
        match self.call_pick(cx, attempt) {
            Ok(Some(id)) if (id as usize) < self.count => {
                faults.success();
                Some(id as usize)
            }
            Ok(None) => {
                faults.success();
                None
            }
            Ok(Some(_)) => {
                faults.record(FaultKind::InvalidAnswer);
                self.fallback.pick(cx, attempt)
            }
            Err(kind) => {
                faults.record(kind);
                self.fallback.pick(cx, attempt)
            }
        }
    }
}

impl WasmBalancer {
    fn call_pick(&self, cx: &PickContext<'_>, attempt: u32) -> Result<Option<u32>, FaultKind> {
        let generation = &self.generation;
        INSTANCES.with(|cell| {
            let mut instances = cell.borrow_mut();
            if !instances.contains_key(&generation.id) {
                let spare = generation.spare.lock().ok().and_then(|mut s| s.pop());
                let instance = match spare {
                    Some(instance) => instance,
                    None => generation
                        .instantiate()
                        .map_err(|_| FaultKind::Instantiate)?,
                };
                instances.retain(|_, (owner, _)| owner.strong_count() > 0);
                instances.insert(generation.id, (Arc::downgrade(generation), instance));
            }
            let Some((_, instance)) = instances.get_mut(&generation.id) else {
                return Err(FaultKind::Instantiate);
            };
            instance
                .store
                .set_epoch_deadline(Sandbox::ticks_for(generation.limits.call_deadline));
            let request = wit_request(cx);
            let Instance { store, bindings } = instance;
            let result = match cx.headers {
                Some(headers) => CURRENT_HEADERS.set(headers, || {
                    bindings.call_pick(&mut *store, &request, attempt)
                }),
                None => bindings.call_pick(&mut *store, &request, attempt),
            };
            result.map_err(|err| {
                // After a trap the instance's own state may be half-updated: never reuse it.
                instances.remove(&generation.id);
                match err.downcast_ref::<wasmtime::Trap>() {
                    Some(wasmtime::Trap::Interrupt) => FaultKind::Deadline,
                    _ => FaultKind::Trap,
                }
            })
        })
    }
}

fn wit_ip(ip: IpAddr) -> IpAddress {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            IpAddress::V4((a, b, c, d))
        }
        IpAddr::V6(v6) => {
            let [a, b, c, d, e, f, g, h] = v6.segments();
            IpAddress::V6((a, b, c, d, e, f, g, h))
        }
    }
}

fn wit_request(cx: &PickContext<'_>) -> WitRequest {
    let client = cx
        .client
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    WitRequest {
        client_address: wit_ip(client.ip()),
        client_port: client.port(),
        authority: cx.authority.map(str::to_owned),
        protocol: match cx.protocol {
            Protocol::Tcp => WitProtocol::Tcp,
            Protocol::Tls => WitProtocol::Tls,
            Protocol::Http => WitProtocol::Http,
            Protocol::Https => WitProtocol::Https,
        },
        hash_key: cx.hash_key,
    }
}
