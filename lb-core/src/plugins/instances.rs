//! Running a plugin: what every plugin kind shares.
//!
//! A [`LoadedPolicy`] is one compiled plugin (a built-in, or a user's file by content) with its
//! fault record, prepared for one world; it lives as long as the file is unchanged, so
//! quarantine lasts until the file changes. A [`Generation`] is that plugin configured for one
//! port with one backend set. It prepares, off the request path, one instance per worker
//! thread with the parameters and the set already given to it (tables built). Each worker
//! thread moves one into a thread-local map on its first call, so calls never share an
//! instance and never wait on a lock. [`Generation::call`] runs one call under the call
//! deadline and classifies what went wrong; the caller decides the fallback.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use lb_config::{Backend, PluginLimits, Protocol};
use wasmtime::{Engine, Store};

use super::bindings::{IpAddress, Parameter, WitBackend, WitProtocol, WitRequest};
use super::faults::{FaultKind, Faults};
use super::host::{HostState, CURRENT_HEADERS};
use super::sandbox::Sandbox;
use super::worlds::World;
use super::PluginError;
use crate::balancer::{BackendFigures, Figures, PickContext};

/// A compiled plugin prepared for world `W`, and its fault record.
pub(crate) struct LoadedPolicy<W: World> {
    /// `builtin:NAME` or the user's plugin name.
    pub name: Arc<str>,
    pub(crate) pre: W::Pre,
    /// Shared fault record.
    pub faults: Faults,
}

/// A plugin with one port's parameters, as accepted by its `configure`.
pub(crate) struct Configured<W: World> {
    pub(crate) policy: Arc<LoadedPolicy<W>>,
    params: Vec<Parameter>,
    limits: PluginLimits,
    engine: Engine,
    workers: usize,
    /// What the plugin's `configure` returned.
    pub(crate) settings: W::Settings,
}

impl<W: World> Configured<W> {
    /// Checks that `policy` accepts `params` by configuring a scratch instance.
    pub(crate) fn new(
        policy: Arc<LoadedPolicy<W>>,
        params: &[(String, String)],
        limits: PluginLimits,
        engine: Engine,
        workers: usize,
    ) -> Result<Self, PluginError> {
        let params: Vec<Parameter> = params
            .iter()
            .map(|(name, value)| Parameter {
                name: name.clone(),
                value: value.clone(),
            })
            .collect();
        let scratch = Generation::<W> {
            id: 0,
            policy: policy.clone(),
            params: params.clone(),
            limits,
            engine: engine.clone(),
            backends: Vec::new(),
            figures: Arc::new(NoFigures),
            sequence: Arc::default(),
            spare: Mutex::new(Vec::new()),
        };
        let settings = match scratch.instantiate() {
            Ok((_, settings)) => settings,
            Err(Setup::Rejected(message)) => {
                return Err(PluginError::Rejected {
                    plugin: policy.name.to_string(),
                    message,
                })
            }
            Err(Setup::Failed(message)) => {
                return Err(PluginError::Invalid {
                    plugin: policy.name.to_string(),
                    message,
                })
            }
        };
        Ok(Configured {
            policy,
            params,
            limits,
            engine,
            workers: workers.max(1),
            settings,
        })
    }

    /// The plugin given `backends`, with an instance per worker thread made ready now (unless
    /// the plugin is quarantined).
    pub(crate) fn generation(
        &self,
        backends: &[Backend],
        figures: Arc<dyn BackendFigures>,
    ) -> Arc<Generation<W>> {
        let generation = Arc::new(Generation {
            id: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            policy: self.policy.clone(),
            params: self.params.clone(),
            limits: self.limits,
            engine: self.engine.clone(),
            backends: wit_backends(backends),
            figures,
            sequence: Arc::default(),
            spare: Mutex::new(Vec::new()),
        });
        if !self.policy.faults.is_quarantined() {
            let mut spare = Vec::with_capacity(self.workers);
            for _ in 0..self.workers {
                match generation.instantiate() {
                    Ok((instance, _)) => spare.push(instance),
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
        generation
    }
}

/// One instance: its store and its bindings.
struct Instance<W> {
    store: Store<HostState>,
    bindings: W,
}

/// Everything the instances of one plugin for one backend set of one port are made from.
pub(crate) struct Generation<W: World> {
    id: u64,
    policy: Arc<LoadedPolicy<W>>,
    params: Vec<Parameter>,
    limits: PluginLimits,
    engine: Engine,
    backends: Vec<WitBackend>,
    figures: Arc<dyn BackendFigures>,
    /// The `host.sequence` counter of this backend set.
    sequence: Arc<AtomicU64>,
    /// Instances built with the set, waiting for a worker thread to take one.
    spare: Mutex<Vec<Instance<W>>>,
}

/// An owner whose instances a thread may drop once it is gone.
trait Owner {}
impl<W: World> Owner for Generation<W> {}

/// A thread's instance of one generation (an `Instance<W>`), with its owner.
type Adopted = (Weak<dyn Owner>, Box<dyn Any>);

thread_local! {
    /// This worker thread's instances, by generation; entries of dropped generations are
    /// cleared when the thread adopts a new one.
    static INSTANCES: RefCell<HashMap<u64, Adopted>> = RefCell::new(HashMap::new());
}

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

struct NoFigures;

impl BackendFigures for NoFigures {
    fn figures(&self, _index: usize) -> Option<Figures> {
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

impl<W: World> Generation<W> {
    /// The plugin's name.
    pub(crate) fn name(&self) -> &str {
        &self.policy.name
    }

    /// The plugin's fault record.
    pub(crate) fn faults(&self) -> &Faults {
        &self.policy.faults
    }

    fn instantiate(&self) -> Result<(Instance<W>, W::Settings), Setup> {
        let failed = |e: wasmtime::Error| Setup::Failed(format!("{e:#}"));
        let state = HostState::new(
            self.policy.name.clone(),
            self.figures.clone(),
            self.sequence.clone(),
            self.limits.memory_bytes,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(Sandbox::ticks_for(self.limits.setup_deadline));
        let bindings = W::instantiate(&self.policy.pre, &mut store).map_err(failed)?;
        let settings = bindings
            .configure(&mut store, &self.params)
            .map_err(failed)?
            .map_err(Setup::Rejected)?;
        if !self.backends.is_empty() {
            bindings
                .set_backends(&mut store, &self.backends)
                .map_err(failed)?;
        }
        Ok((Instance { store, bindings }, settings))
    }

    /// Runs `call` on this thread's instance under the call deadline, with `headers` readable
    /// through `host.request-header`. A trap or a missed deadline drops the instance (its
    /// state may be half-updated) and is returned as a fault, not yet recorded.
    pub(crate) fn call<R>(
        self: &Arc<Self>,
        headers: Option<&http::HeaderMap>,
        call: impl FnOnce(&W, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, FaultKind> {
        INSTANCES.with(|cell| {
            let mut instances = cell.borrow_mut();
            if !instances.contains_key(&self.id) {
                let spare = self.spare.lock().ok().and_then(|mut s| s.pop());
                let instance = match spare {
                    Some(instance) => instance,
                    None => self.instantiate().map_err(|_| FaultKind::Instantiate)?.0,
                };
                instances.retain(|_, (owner, _)| owner.strong_count() > 0);
                let owner: Weak<dyn Owner> = Arc::downgrade(self) as Weak<Generation<W>>;
                instances.insert(self.id, (owner, Box::new(instance)));
            }
            let Some(instance) = instances
                .get_mut(&self.id)
                .and_then(|(_, any)| any.downcast_mut::<Instance<W>>())
            else {
                return Err(FaultKind::Instantiate);
            };
            run(instance, self.limits.call_deadline, headers, call).inspect_err(|_| {
                // After a trap the instance's own state may be half-updated: never reuse it.
                instances.remove(&self.id);
            })
        })
    }
}

/// Runs one call under `deadline`; a trap or an interrupted call is a fault.
fn run<W: World, R>(
    instance: &mut Instance<W>,
    deadline: std::time::Duration,
    headers: Option<&http::HeaderMap>,
    call: impl FnOnce(&W, &mut Store<HostState>) -> wasmtime::Result<R>,
) -> Result<R, FaultKind> {
    let Instance { store, bindings } = instance;
    store.set_epoch_deadline(Sandbox::ticks_for(deadline));
    let result = match headers {
        Some(headers) => CURRENT_HEADERS.set(headers, || call(bindings, store)),
        None => call(bindings, store),
    };
    result.map_err(|err| match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => FaultKind::Deadline,
        _ => FaultKind::Trap,
    })
}

/// A plugin with a single instance shared by every thread, called under a lock and off the
/// request path: health policies, whose state must be one per backend. The backend set is
/// replaced in place (`set-backends` on the same instance), so the plugin's state survives
/// set changes; after a fault the instance is rebuilt on the next call.
pub(crate) struct Exclusive<W: World> {
    policy: Arc<LoadedPolicy<W>>,
    params: Vec<Parameter>,
    limits: PluginLimits,
    engine: Engine,
    state: Mutex<ExclusiveState<W>>,
}

struct ExclusiveState<W> {
    instance: Option<Instance<W>>,
    backends: Vec<WitBackend>,
    figures: Arc<dyn BackendFigures>,
}

impl<W: World> Exclusive<W> {
    /// The single instance of `configured`, made at the first call.
    pub(crate) fn new(configured: &Configured<W>) -> Self {
        Exclusive {
            policy: configured.policy.clone(),
            params: configured.params.clone(),
            limits: configured.limits,
            engine: configured.engine.clone(),
            state: Mutex::new(ExclusiveState {
                instance: None,
                backends: Vec::new(),
                figures: Arc::new(NoFigures),
            }),
        }
    }

    /// The plugin's name.
    pub(crate) fn name(&self) -> &str {
        &self.policy.name
    }

    /// The plugin's fault record.
    pub(crate) fn faults(&self) -> &Faults {
        &self.policy.faults
    }

    /// Hands the plugin a new backend set (under the setup deadline).
    pub(crate) fn set_backends(
        &self,
        backends: &[Backend],
        figures: Arc<dyn BackendFigures>,
    ) -> Result<(), FaultKind> {
        let Ok(mut state) = self.state.lock() else {
            return Err(FaultKind::Instantiate);
        };
        state.backends = wit_backends(backends);
        state.figures = figures.clone();
        let backends = state.backends.clone();
        let Some(instance) = state.instance.as_mut() else {
            return Ok(()); // the next call instantiates with the new set
        };
        instance.store.data_mut().set_figures(figures);
        let deadline = self.limits.setup_deadline;
        run(instance, deadline, None, |bindings, store| {
            bindings.set_backends(store, &backends)
        })
        .inspect_err(|_| state.instance = None)
    }

    /// Runs `call` on the instance under the call deadline.
    pub(crate) fn call<R>(
        &self,
        call: impl FnOnce(&W, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, FaultKind> {
        let Ok(mut state) = self.state.lock() else {
            return Err(FaultKind::Instantiate);
        };
        if state.instance.is_none() {
            let recipe = Generation {
                id: 0,
                policy: self.policy.clone(),
                params: self.params.clone(),
                limits: self.limits,
                engine: self.engine.clone(),
                backends: state.backends.clone(),
                figures: state.figures.clone(),
                sequence: Arc::default(),
                spare: Mutex::new(Vec::new()),
            };
            let (instance, _) = recipe.instantiate().map_err(|_| FaultKind::Instantiate)?;
            state.instance = Some(instance);
        }
        let Some(instance) = state.instance.as_mut() else {
            return Err(FaultKind::Instantiate);
        };
        run(instance, self.limits.call_deadline, None, call).inspect_err(|_| state.instance = None)
    }
}

fn wit_backends(backends: &[Backend]) -> Vec<WitBackend> {
    backends
        .iter()
        .enumerate()
        .map(|(id, b)| WitBackend {
            id: u32::try_from(id).unwrap_or(u32::MAX),
            address: wit_ip(b.address.ip()),
            port: b.address.port(),
            weight: b.weight,
        })
        .collect()
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

/// The request summary every plugin call takes.
pub(crate) fn wit_request(cx: &PickContext<'_>) -> WitRequest {
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
