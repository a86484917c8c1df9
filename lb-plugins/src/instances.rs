//! Running a plugin: what every plugin kind shares.
//!
//! A [`LoadedPolicy`] is one compiled plugin (a built-in, or a user's file by content) with its
//! fault record, prepared for one world; it lives as long as the file is unchanged, so
//! quarantine lasts until the file changes. A [`Recipe`] is that plugin with one port's
//! parameters: everything an instance is made from but the backend set. A [`Generation`] is
//! the recipe given one backend set. When the route serving it is activated it prepares one
//! instance per worker thread with the parameters and the set already given to it (tables
//! built); each worker thread moves one into a thread-local map on its first call, so calls
//! never share an instance and never wait on a lock. [`Generation::call`] runs one call under
//! the call deadline and classifies what went wrong; the caller decides the fallback.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use lb_config::{Backend, Protocol};
use lb_policy::{BackendFigures, Figures, PickContext};
use wasmtime::{Engine, Store};

use super::bindings::{IpAddress, Parameter, WitBackend, WitProtocol, WitRequest};
use super::faults::{FaultKind, Faults};
use super::host::{HostState, CURRENT_HEADERS};
use super::sandbox::{Deadlines, Sandbox};
use super::worlds::World;
use super::PluginError;

/// A compiled plugin prepared for world `W`, and its fault record.
pub(crate) struct LoadedPolicy<W: World> {
    /// `builtin:NAME` or the user's plugin name.
    pub name: Arc<str>,
    pub(crate) pre: W::Pre,
    /// Shared fault record.
    pub faults: Arc<Faults>,
}

/// Everything an instance of a plugin with one port's parameters is made from, but the
/// backend set.
pub(crate) struct Recipe<W: World> {
    pub(crate) policy: Arc<LoadedPolicy<W>>,
    params: Vec<Parameter>,
    deadlines: Arc<Deadlines>,
    memory_bytes: u64,
    engine: Engine,
}

impl<W: World> Clone for Recipe<W> {
    fn clone(&self) -> Self {
        Recipe {
            policy: self.policy.clone(),
            params: self.params.clone(),
            deadlines: self.deadlines.clone(),
            memory_bytes: self.memory_bytes,
            engine: self.engine.clone(),
        }
    }
}

/// What an instance is given besides its recipe.
struct Inputs<'a> {
    backends: &'a [WitBackend],
    figures: Arc<dyn BackendFigures>,
    sequence: Arc<AtomicU64>,
}

impl<W: World> Recipe<W> {
    pub(crate) fn new(
        policy: Arc<LoadedPolicy<W>>,
        params: &[(String, String)],
        sandbox: &Sandbox,
    ) -> Self {
        Recipe {
            policy,
            params: params
                .iter()
                .map(|(name, value)| Parameter {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            deadlines: sandbox.deadlines().clone(),
            memory_bytes: sandbox.memory_bytes(),
            engine: sandbox.engine().clone(),
        }
    }

    /// A new instance, configured and (when there are any) given the backends.
    fn instantiate(&self, inputs: Inputs<'_>) -> Result<(Instance<W>, W::Settings), Setup> {
        let failed = |e: wasmtime::Error| Setup::Failed(format!("{e:#}"));
        let state = HostState::new(
            self.policy.name.clone(),
            inputs.figures,
            inputs.sequence,
            self.memory_bytes,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(Sandbox::ticks_for(self.deadlines.setup()));
        let bindings = W::instantiate(&self.policy.pre, &mut store).map_err(failed)?;
        let settings = bindings
            .configure(&mut store, &self.params)
            .map_err(failed)?
            .map_err(Setup::Rejected)?;
        if !inputs.backends.is_empty() {
            bindings
                .set_backends(&mut store, inputs.backends)
                .map_err(failed)?;
        }
        Ok((Instance { store, bindings }, settings))
    }
}

/// A plugin with one port's parameters, as accepted by its `configure`.
pub(crate) struct Configured<W: World> {
    pub(crate) recipe: Recipe<W>,
    workers: usize,
    /// What the plugin's `configure` returned.
    pub(crate) settings: W::Settings,
}

impl<W: World> Configured<W> {
    /// Checks that the recipe's plugin accepts its parameters by configuring a scratch
    /// instance, which is then dropped.
    pub(crate) fn new(recipe: Recipe<W>, workers: usize) -> Result<Self, PluginError> {
        let plugin = recipe.policy.name.to_string();
        let inputs = Inputs {
            backends: &[],
            figures: Arc::new(NoFigures),
            sequence: Arc::default(),
        };
        let settings = match recipe.instantiate(inputs) {
            Ok((_, settings)) => settings,
            Err(Setup::Rejected(message)) => return Err(PluginError::Rejected { plugin, message }),
            Err(Setup::Failed(message)) => return Err(PluginError::Invalid { plugin, message }),
        };
        Ok(Configured {
            recipe,
            workers: workers.max(1),
            settings,
        })
    }

    /// The plugin given `backends`. Computes only: instances are made by
    /// [`Generation::prepare`] when the route serving it is activated.
    pub(crate) fn generation(
        &self,
        backends: &[Backend],
        figures: Arc<dyn BackendFigures>,
    ) -> Arc<Generation<W>> {
        Arc::new(Generation {
            id: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            recipe: self.recipe.clone(),
            backends: wit_backends(backends),
            figures,
            sequence: Arc::default(),
            workers: self.workers,
            prepared: AtomicBool::new(false),
            spare: Mutex::new(Vec::new()),
        })
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
    recipe: Recipe<W>,
    backends: Vec<WitBackend>,
    figures: Arc<dyn BackendFigures>,
    /// The `host.sequence` counter of this backend set.
    sequence: Arc<AtomicU64>,
    workers: usize,
    prepared: AtomicBool,
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
        &self.recipe.policy.name
    }

    /// The plugin's fault record.
    pub(crate) fn faults(&self) -> &Faults {
        &self.recipe.policy.faults
    }

    fn instantiate(&self) -> Result<Instance<W>, Setup> {
        let inputs = Inputs {
            backends: &self.backends,
            figures: self.figures.clone(),
            sequence: self.sequence.clone(),
        };
        self.recipe
            .instantiate(inputs)
            .map(|(instance, _)| instance)
    }

    /// Makes an instance per worker thread ready now, off the request path (once; not while
    /// the plugin is quarantined). Called when the route serving this set is activated.
    pub(crate) fn prepare(&self) {
        if self.prepared.swap(true, Ordering::Relaxed) || self.faults().is_quarantined() {
            return;
        }
        let mut spare = Vec::with_capacity(self.workers);
        for _ in 0..self.workers {
            match self.instantiate() {
                Ok(instance) => spare.push(instance),
                Err(Setup::Rejected(message) | Setup::Failed(message)) => {
                    tracing::warn!(plugin = %self.name(), %message, "plugin instance could not be prepared");
                    self.faults().record(FaultKind::Instantiate);
                    break;
                }
            }
        }
        if let Ok(mut slot) = self.spare.lock() {
            *slot = spare;
        }
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
                    None => self.instantiate().map_err(|_| FaultKind::Instantiate)?,
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
            run(instance, self.recipe.deadlines.call(), headers, call).inspect_err(|_| {
                // After a trap the instance's own state may be half-updated: never reuse it.
                instances.remove(&self.id);
            })
        })
    }
}

/// Runs one call under `deadline`; a trap or an interrupted call is a fault.
fn run<W: World, R>(
    instance: &mut Instance<W>,
    deadline: Duration,
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
    recipe: Recipe<W>,
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
            recipe: configured.recipe.clone(),
            state: Mutex::new(ExclusiveState {
                instance: None,
                backends: Vec::new(),
                figures: Arc::new(NoFigures),
            }),
        }
    }

    /// The plugin's name.
    pub(crate) fn name(&self) -> &str {
        &self.recipe.policy.name
    }

    /// The plugin's fault record.
    pub(crate) fn faults(&self) -> &Faults {
        &self.recipe.policy.faults
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
        let deadline = self.recipe.deadlines.setup();
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
            let inputs = Inputs {
                backends: &state.backends,
                figures: state.figures.clone(),
                sequence: Arc::default(),
            };
            let (instance, _) = self
                .recipe
                .instantiate(inputs)
                .map_err(|_| FaultKind::Instantiate)?;
            state.instance = Some(instance);
        }
        let Some(instance) = state.instance.as_mut() else {
            return Err(FaultKind::Instantiate);
        };
        let deadline = self.recipe.deadlines.call();
        run(instance, deadline, None, call).inspect_err(|_| state.instance = None)
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
