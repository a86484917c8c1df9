//! Running plugins built against the frozen `gantry:plugins@0.1.0`, in which an instance holds
//! one port's state: instances grow with ports × workers, as they always did for these
//! plugins (0.2.0 plugins share one instance per worker; see [`crate::instances`]).
//!
//! A [`Recipe`] is a plugin with one port's parameters: everything an instance is made from
//! but the backend set. A [`Generation`] is the recipe given one backend set. When the route
//! serving it is activated it prepares one instance per worker thread with the parameters and
//! the set already given to it (tables built); each worker thread moves one into a
//! thread-local map on its first call, so calls never share an instance and never wait on a
//! lock. An [`Exclusive`] is one instance for all threads, behind a lock (health policies).

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use wasmtime::component::InstancePre;
use wasmtime::Store;

use super::bindings::v1;
use super::convert::to_v1;
use super::faults::{classify, FaultKind, Faults};
use super::host::{CallContext, HostState, CURRENT_HEADERS};
use super::stores::{begin_call, Stores};
use super::PluginError;

/// What every 0.1.0 world exports besides its own calls.
pub(crate) trait World: Sized + Send + 'static {
    /// The world's pre-instantiated form.
    type Pre: Clone + Send + Sync + 'static;
    /// What `configure` returns besides success.
    type Settings: Clone + Send + Sync + 'static;

    /// Checks that a compiled component exports this world.
    fn prepare(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre>;
    /// A new instance.
    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self>;
    /// Calls `configure`.
    fn configure(
        &self,
        store: &mut Store<HostState>,
        params: &[v1::Parameter],
    ) -> wasmtime::Result<Result<Self::Settings, String>>;
    /// Calls `set-backends`.
    fn set_backends(
        &self,
        store: &mut Store<HostState>,
        backends: &[v1::Backend],
    ) -> wasmtime::Result<()>;
}

/// The 0.1.0 worlds' generated bindings have the same shape; one definition serves them all.
macro_rules! world {
    ($world:ty, $pre:ty, $settings:ty) => {
        impl World for $world {
            type Pre = $pre;
            type Settings = $settings;

            fn prepare(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
                <$pre>::new(pre)
            }
            fn instantiate(
                pre: &Self::Pre,
                store: &mut Store<HostState>,
            ) -> wasmtime::Result<Self> {
                pre.instantiate(store)
            }
            fn configure(
                &self,
                store: &mut Store<HostState>,
                params: &[v1::Parameter],
            ) -> wasmtime::Result<Result<$settings, String>> {
                self.call_configure(store, params)
            }
            fn set_backends(
                &self,
                store: &mut Store<HostState>,
                backends: &[v1::Backend],
            ) -> wasmtime::Result<()> {
                self.call_set_backends(store, backends)
            }
        }
    };
}

world!(v1::BalancerWorld, v1::BalancerPre<HostState>, ());
world!(
    v1::AffinityWorld,
    v1::AffinityPre<HostState>,
    v1::TableSettings
);
world!(
    v1::HealthWorld,
    v1::HealthPre<HostState>,
    v1::HealthSettings
);

/// One instance: its store and its bindings.
struct Instance<W> {
    store: Store<HostState>,
    bindings: W,
}

/// A 0.1.0 plugin with one port's parameters, as accepted by its `configure`.
pub(crate) struct Recipe<W: World> {
    name: Arc<str>,
    faults: Arc<Faults>,
    pre: W::Pre,
    params: Vec<v1::Parameter>,
    stores: Stores,
    workers: usize,
}

impl<W: World> Recipe<W> {
    /// Checks that the plugin accepts `params` by configuring a scratch instance, which is
    /// then dropped: its recipe and what `configure` answered.
    pub(crate) fn configure(
        name: Arc<str>,
        faults: Arc<Faults>,
        pre: W::Pre,
        params: &[(String, String)],
        stores: Stores,
        workers: usize,
    ) -> Result<(Self, W::Settings), PluginError> {
        let recipe = Recipe {
            name,
            faults,
            pre,
            params: to_v1::parameters(params),
            stores,
            workers: workers.max(1),
        };
        let plugin = recipe.name.to_string();
        match recipe.instantiate(&[], CallContext::empty()) {
            Ok((_, settings)) => Ok((recipe, settings)),
            Err(Setup::Rejected(message)) => Err(PluginError::Rejected { plugin, message }),
            Err(Setup::Failed(message)) => Err(PluginError::Invalid { plugin, message }),
        }
    }

    /// The plugin's name.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The plugin's fault record.
    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    /// A new instance, configured and (when there are any) given the backends.
    fn instantiate(
        &self,
        backends: &[v1::Backend],
        context: Arc<CallContext>,
    ) -> Result<(Instance<W>, W::Settings), Setup> {
        let failed = |e: wasmtime::Error| Setup::Failed(format!("{e:#}"));
        let mut store = self.stores.new_store(self.name.clone());
        store.data_mut().set_context(&context);
        let _call = begin_call(&mut store, self.stores.deadlines().setup());
        let bindings = W::instantiate(&self.pre, &mut store).map_err(failed)?;
        let settings = bindings
            .configure(&mut store, &self.params)
            .map_err(failed)?
            .map_err(Setup::Rejected)?;
        if !backends.is_empty() {
            bindings
                .set_backends(&mut store, backends)
                .map_err(failed)?;
        }
        Ok((Instance { store, bindings }, settings))
    }

    /// The plugin given `backends`. Computes only: instances are made by
    /// [`Generation::prepare`] when the route serving it is activated.
    pub(crate) fn generation(
        &self,
        backends: Vec<v1::Backend>,
        context: Arc<CallContext>,
    ) -> Arc<Generation<W>> {
        Arc::new(Generation {
            id: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            recipe: self.clone(),
            backends,
            context,
            prepared: AtomicBool::new(false),
            spare: Mutex::new(Vec::new()),
        })
    }
}

impl<W: World> Clone for Recipe<W> {
    fn clone(&self) -> Self {
        Recipe {
            name: self.name.clone(),
            faults: self.faults.clone(),
            pre: self.pre.clone(),
            params: self.params.clone(),
            stores: self.stores.clone(),
            workers: self.workers,
        }
    }
}

/// Everything the instances of one plugin for one backend set of one port are made from.
pub(crate) struct Generation<W: World> {
    id: u64,
    recipe: Recipe<W>,
    backends: Vec<v1::Backend>,
    /// The set's figures and `host.sequence` counter.
    context: Arc<CallContext>,
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
        &self.recipe.name
    }

    /// The plugin's fault record.
    pub(crate) fn faults(&self) -> &Faults {
        &self.recipe.faults
    }

    fn instantiate(&self) -> Result<Instance<W>, Setup> {
        self.recipe
            .instantiate(&self.backends, self.context.clone())
            .map(|(instance, _)| instance)
    }

    /// Makes an instance per worker thread ready now, off the request path (once; not while
    /// the plugin is quarantined). Called when the route serving this set is activated.
    pub(crate) fn prepare(&self) {
        if self.prepared.swap(true, Ordering::Relaxed) || self.faults().is_quarantined() {
            return;
        }
        let mut spare = Vec::with_capacity(self.recipe.workers);
        for _ in 0..self.recipe.workers {
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
            let deadline = self.recipe.stores.deadlines().call();
            run(instance, deadline, headers, call).inspect_err(|_| {
                // After a trap the instance's own state may be half-updated: never reuse it.
                instances.remove(&self.id);
            })
        })
    }
}

/// Runs one call within `budget` of CPU; a trap or an interrupted call is a fault.
fn run<W: World, R>(
    instance: &mut Instance<W>,
    budget: Duration,
    headers: Option<&http::HeaderMap>,
    call: impl FnOnce(&W, &mut Store<HostState>) -> wasmtime::Result<R>,
) -> Result<R, FaultKind> {
    let Instance { store, bindings } = instance;
    let _call = begin_call(store, budget);
    let result = match headers {
        Some(headers) => CURRENT_HEADERS.set(headers, || call(bindings, store)),
        None => call(bindings, store),
    };
    result.map_err(|err| classify(&err))
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
    backends: Vec<v1::Backend>,
    context: Arc<CallContext>,
}

impl<W: World> Exclusive<W> {
    /// The single instance of `recipe`, made at the first call.
    pub(crate) fn new(recipe: &Recipe<W>) -> Self {
        Exclusive {
            recipe: recipe.clone(),
            state: Mutex::new(ExclusiveState {
                instance: None,
                backends: Vec::new(),
                context: CallContext::empty(),
            }),
        }
    }

    /// The plugin's name.
    pub(crate) fn name(&self) -> &str {
        &self.recipe.name
    }

    /// The plugin's fault record.
    pub(crate) fn faults(&self) -> &Faults {
        &self.recipe.faults
    }

    /// Hands the plugin a new backend set (under the setup deadline).
    pub(crate) fn set_backends(
        &self,
        backends: Vec<v1::Backend>,
        context: Arc<CallContext>,
    ) -> Result<(), FaultKind> {
        let Ok(mut state) = self.state.lock() else {
            return Err(FaultKind::Instantiate);
        };
        state.backends = backends.clone();
        state.context = context.clone();
        let Some(instance) = state.instance.as_mut() else {
            return Ok(()); // the next call instantiates with the new set
        };
        instance.store.data_mut().set_context(&context);
        let deadline = self.recipe.stores.deadlines().setup();
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
            let (instance, _) = self
                .recipe
                .instantiate(&state.backends, state.context.clone())
                .map_err(|_| FaultKind::Instantiate)?;
            state.instance = Some(instance);
        }
        let Some(instance) = state.instance.as_mut() else {
            return Err(FaultKind::Instantiate);
        };
        let deadline = self.recipe.stores.deadlines().call();
        run(instance, deadline, None, call).inspect_err(|_| state.instance = None)
    }
}
