//! Running plugins built against `gantry:plugins@0.2.0` or `@0.3.0` (the same life; 0.3.0
//! adds the balancer's plan): one instance per plugin per worker thread, and in it one
//! resource per port policy, so the cost of plugins grows with the number of plugins and
//! workers, not of ports.
//!
//! A [`Shared`] plugin has one *slot* per worker thread, each holding (behind its own lock,
//! which only that worker takes on the request path) an instance and the resources made in
//! it. A [`PortPolicy`] is one port's policy (its parameters and one backend set): when the
//! route serving it is activated, its resource is made in every slot (`configure`, then
//! `set-backends`); a call runs on the calling thread's slot; dropping the policy drops its
//! resources. A policy with one state for all threads (health) lives in one home slot.
//!
//! A trap or a missed deadline ends the slot's instance (its memory may be half-updated), and
//! with it every resource in it: the next call makes a new instance and remakes each policy's
//! resource as it is next used, from the parameters and backends the policy keeps. A policy
//! that cannot be made beside others (its tables do not fit in what they left of the memory
//! cap) is moved to instances of its own instead of failing for ever.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arc_swap::ArcSwap;
use wasmtime::component::{InstancePre, ResourceAny};
use wasmtime::Store;

use lb_config::Backend;

use super::bindings::{v2, v3};
use super::convert::{to_v2, to_v3};
use super::faults::{classify, FaultKind, Faults};
use super::host::{CallContext, HostState, CURRENT_HEADERS};
use super::stores::{begin_call, Stores};
use super::PluginError;

/// What every world of 0.2.0 and later exports besides its policy's own calls.
pub(crate) trait World: Sized + Send + 'static {
    /// The world's pre-instantiated form.
    type Pre: Clone + Send + Sync + 'static;
    /// What `configure` returns besides the policy.
    type Settings: Clone + Send + Sync + 'static;
    /// The version's operator parameter.
    type Parameter: Send + Sync + 'static;
    /// The version's backend.
    type Backend: Clone + Send + Sync + 'static;

    /// The operator's parameters as this version passes them.
    fn parameters(params: &[(String, String)]) -> Vec<Self::Parameter>;
    /// A backend set as this version passes it.
    fn backends(backends: &[Backend]) -> Vec<Self::Backend>;

    /// Checks that a compiled component exports this world.
    fn prepare(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre>;
    /// A new instance.
    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self>;
    /// Calls `configure`: the policy resource and its settings, or the plugin's refusal.
    fn configure(
        &self,
        store: &mut Store<HostState>,
        params: &[Self::Parameter],
    ) -> wasmtime::Result<Result<(ResourceAny, Self::Settings), String>>;
    /// Calls the policy's `set-backends`.
    fn set_backends(
        &self,
        store: &mut Store<HostState>,
        policy: ResourceAny,
        backends: &[Self::Backend],
    ) -> wasmtime::Result<()>;
}

/// The worlds' generated bindings differ only in names: the version, the exported interface,
/// its resource, and what `configure` returns beside the resource. One definition serves them.
macro_rules! world {
    ($version:ident, $convert:ident, $world:ident, $pre:ident, $settings:ty, $interface:ident, $resource:ident, $split:expr) => {
        impl World for $version::$world {
            type Pre = $version::$pre<HostState>;
            type Settings = $settings;
            type Parameter = $version::Parameter;
            type Backend = $version::Backend;

            fn parameters(params: &[(String, String)]) -> Vec<$version::Parameter> {
                $convert::parameters(params)
            }

            fn backends(backends: &[Backend]) -> Vec<$version::Backend> {
                $convert::backends(backends)
            }

            fn prepare(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
                <$version::$pre<HostState>>::new(pre)
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
                params: &[$version::Parameter],
            ) -> wasmtime::Result<Result<(ResourceAny, $settings), String>> {
                let answer = self.$interface().call_configure(store, params)?;
                Ok(answer.map($split))
            }

            fn set_backends(
                &self,
                store: &mut Store<HostState>,
                policy: ResourceAny,
                backends: &[$version::Backend],
            ) -> wasmtime::Result<()> {
                self.$interface()
                    .$resource()
                    .call_set_backends(store, policy, backends)
            }
        }
    };
}

/// The three worlds of one resource-based version.
macro_rules! worlds {
    ($version:ident, $convert:ident) => {
        world!(
            $version,
            $convert,
            BalancerWorld,
            BalancerPre,
            (),
            gantry_plugins_balancers,
            balancer,
            |policy| (policy, ())
        );
        world!(
            $version,
            $convert,
            AffinityWorld,
            AffinityPre,
            $version::TableSettings,
            gantry_plugins_affinities,
            affinity,
            |answer| answer
        );
        world!(
            $version,
            $convert,
            HealthWorld,
            HealthPre,
            $version::HealthSettings,
            gantry_plugins_health_checks,
            checker,
            |answer| answer
        );
    };
}

worlds!(v2, to_v2);
worlds!(v3, to_v3);

/// One instance: its store and its bindings.
struct Instance<W> {
    store: Store<HostState>,
    bindings: W,
}

/// One worker thread's instance of a plugin and the policy resources made in it.
struct Slot<W> {
    instance: Option<Instance<W>>,
    /// By [`PortPolicy`] id.
    policies: HashMap<u64, ResourceAny>,
}

impl<W> Slot<W> {
    /// The instance trapped or overran: it and every resource in it are gone.
    fn discard(&mut self) {
        self.instance = None;
        self.policies.clear();
    }
}

/// A 0.2.0 or 0.3.0 plugin loaded for one world: its slots and its fault record.
pub(crate) struct Shared<W: World> {
    name: Arc<str>,
    pre: W::Pre,
    faults: Arc<Faults>,
    stores: Stores,
    slots: Box<[Mutex<Slot<W>>]>,
    /// Parameters the plugin accepted, with what it answered: a second port with the same
    /// parameters is not checked again.
    accepted: Mutex<HashMap<Params, W::Settings>>,
}

/// The operator's parameters of a port's policy.
type Params = Vec<(String, String)>;

static NEXT_POLICY: AtomicU64 = AtomicU64::new(1);

/// This thread's slot number: worker threads take 0, 1, ... in the order they first call a
/// plugin, so each worker has a slot of its own.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SLOT.with(|slot| *slot)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A slot's state stays consistent whatever a panicking holder did: at worst its instance
    // is discarded by the next fault.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<W: World> Shared<W> {
    /// The plugin `pre` (already checked to export `W`) with `workers` slots.
    pub(crate) fn new(
        name: Arc<str>,
        pre: W::Pre,
        faults: Arc<Faults>,
        stores: Stores,
        workers: usize,
    ) -> Self {
        Shared {
            name,
            pre,
            faults,
            stores,
            slots: (0..workers.max(1))
                .map(|_| {
                    Mutex::new(Slot {
                        instance: None,
                        policies: HashMap::new(),
                    })
                })
                .collect(),
            accepted: Mutex::default(),
        }
    }

    /// The plugin's name.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The plugin's fault record.
    pub(crate) fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    fn instantiate(&self) -> wasmtime::Result<Instance<W>> {
        let mut store = self.stores.new_store(self.name.clone());
        let _call = begin_call(&mut store, self.stores.deadlines().setup());
        let bindings = W::instantiate(&self.pre, &mut store)?;
        Ok(Instance { store, bindings })
    }

    /// Whether the plugin accepts `params`, asked of a scratch instance (nothing live is
    /// touched); its settings when it does.
    pub(crate) fn check(&self, params: &[(String, String)]) -> Result<W::Settings, PluginError> {
        if let Some(settings) = lock(&self.accepted).get(params) {
            return Ok(settings.clone());
        }
        let invalid = |e: wasmtime::Error| PluginError::Invalid {
            plugin: self.name.to_string(),
            message: format!("{e:#}"),
        };
        let mut scratch = self.instantiate().map_err(invalid)?;
        let Instance { store, bindings } = &mut scratch;
        let _call = begin_call(store, self.stores.deadlines().setup());
        let (policy, settings) = bindings
            .configure(store, &W::parameters(params))
            .map_err(invalid)?
            .map_err(|message| PluginError::Rejected {
                plugin: self.name.to_string(),
                message,
            })?;
        // The scratch instance is dropped whole; dropping the resource first is courtesy.
        let _ = policy.resource_drop(&mut *store);
        lock(&self.accepted).insert(params.to_vec(), settings.clone());
        Ok(settings)
    }
}

/// Where a policy's resources live.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Placement {
    /// One per slot; each call runs on the calling thread's (balancers, affinities).
    Everywhere,
    /// One, in this slot (health: one state for all threads).
    Home(usize),
}

/// What a policy's resources are made from besides its parameters: its backends and what
/// the host functions answer for while it runs.
struct Inputs<B> {
    backends: Vec<B>,
    context: Arc<CallContext>,
}

/// One port's policy in a shared plugin.
///
/// A policy whose making fails in an instance that holds others (typically: its tables do
/// not fit in the memory the others left) is *isolated*: from then on it gets instances of its
/// own, so one large port neither fails for ever nor keeps ending the instance its neighbours
/// live in. Only a policy that fails alone is a plugin fault that lasts.
pub(crate) struct PortPolicy<W: World> {
    id: u64,
    shared: Arc<Shared<W>>,
    params: Vec<W::Parameter>,
    inputs: ArcSwap<Inputs<W::Backend>>,
    placement: Placement,
    /// Instances of its own, once isolated.
    own: OnceLock<Box<[Mutex<Slot<W>>]>>,
}

impl<W: World> PortPolicy<W> {
    /// A policy with `params` over `backends`; nothing is made until it is prepared or called.
    pub(crate) fn new(
        shared: Arc<Shared<W>>,
        params: &[(String, String)],
        backends: &[Backend],
        context: Arc<CallContext>,
        placement: Placement,
    ) -> Self {
        PortPolicy {
            id: NEXT_POLICY.fetch_add(1, Ordering::Relaxed),
            params: W::parameters(params),
            inputs: ArcSwap::from_pointee(Inputs {
                backends: W::backends(backends),
                context,
            }),
            placement: match placement {
                Placement::Home(slot) => Placement::Home(slot % shared.slots.len()),
                Placement::Everywhere => Placement::Everywhere,
            },
            shared,
            own: OnceLock::new(),
        }
    }

    /// The plugin's name.
    pub(crate) fn name(&self) -> &str {
        &self.shared.name
    }

    /// The plugin's fault record.
    pub(crate) fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Whether the policy has instances of its own.
    fn is_isolated(&self) -> bool {
        self.own.get().is_some()
    }

    /// The slots the policy lives in: the plugin's, or its own once isolated.
    fn all_slots(&self) -> &[Mutex<Slot<W>>] {
        self.own.get().unwrap_or(&self.shared.slots)
    }

    /// The indices of the slots holding this policy's resources.
    fn slots(&self) -> impl Iterator<Item = usize> {
        let all = self.all_slots().len();
        let (first, count) = match self.placement {
            Placement::Everywhere => (0, all),
            Placement::Home(slot) => (slot % all, 1),
        };
        first..first + count
    }

    /// Makes the policy's resources now, off the request path (not while the plugin is
    /// quarantined). Called when the route serving it is activated; a failure is a fault,
    /// and the next call tries again.
    pub(crate) fn prepare(&self) {
        if self.shared.faults.is_quarantined() {
            return;
        }
        for index in self.slots() {
            let mut slot = lock(&self.all_slots()[index]);
            if let Err(kind) = self.ensure(&mut slot) {
                tracing::warn!(plugin = %self.shared.name, fault = kind.label(), "plugin policy could not be prepared");
                self.shared.faults.record(kind);
                return;
            }
        }
    }

    /// The instance and this policy's resource in `slot`, made if missing. Any failure is an
    /// [`FaultKind::Instantiate`] fault; one in an instance other policies share isolates
    /// this policy.
    fn ensure(&self, slot: &mut Slot<W>) -> Result<ResourceAny, FaultKind> {
        if slot.instance.is_none() {
            let instance = self
                .shared
                .instantiate()
                .map_err(|_| FaultKind::Instantiate)?;
            slot.instance = Some(instance);
            slot.policies.clear();
        }
        if let Some(resource) = slot.policies.get(&self.id) {
            return Ok(*resource);
        }
        let Some(Instance { store, bindings }) = slot.instance.as_mut() else {
            return Err(FaultKind::Instantiate);
        };
        let inputs = self.inputs.load();
        store.data_mut().set_context(&inputs.context);
        let _call = begin_call(store, self.shared.stores.deadlines().setup());
        let made = match bindings.configure(store, &self.params) {
            Ok(Ok((resource, _))) => {
                if inputs.backends.is_empty() {
                    Ok(resource)
                } else {
                    bindings
                        .set_backends(store, resource, &inputs.backends)
                        .map(|()| resource)
                }
            }
            // Accepted when checked, refused now: the plugin is not what it was.
            Ok(Err(_)) => return Err(FaultKind::Instantiate),
            Err(err) => Err(err),
        };
        match made {
            Ok(resource) => {
                slot.policies.insert(self.id, resource);
                Ok(resource)
            }
            Err(_) => {
                let crowded = !slot.policies.is_empty();
                slot.discard();
                if crowded && !self.is_isolated() {
                    self.isolate();
                }
                Err(FaultKind::Instantiate)
            }
        }
    }

    /// Gives the policy instances of its own from now on.
    fn isolate(&self) {
        let workers = self.shared.slots.len();
        let _ = self.own.set(
            (0..workers)
                .map(|_| {
                    Mutex::new(Slot {
                        instance: None,
                        policies: HashMap::new(),
                    })
                })
                .collect(),
        );
        tracing::warn!(
            plugin = %self.shared.name,
            "a port's policy could not be made beside others in a shared instance (raise \
             plugin_limits.memory_mib if it ran out of memory); it runs in instances of its own"
        );
    }

    /// Runs `call` on this policy's resource in the calling thread's slot (or its home),
    /// under the call deadline, with `headers` readable through `host.request-header`. A trap
    /// or a missed deadline ends the slot's instance and is returned as a fault, not yet
    /// recorded.
    pub(crate) fn call<R>(
        &self,
        headers: Option<&http::HeaderMap>,
        call: impl FnOnce(&W, &mut Store<HostState>, ResourceAny) -> wasmtime::Result<R>,
    ) -> Result<R, FaultKind> {
        self.run(headers, self.shared.stores.deadlines().call(), call)
    }

    /// Runs `call` as [`Self::call`] does, under the setup deadline: for a call made once per
    /// backend set (a balancer's `plan`), not per request.
    pub(crate) fn call_once_per_set<R>(
        &self,
        call: impl FnOnce(&W, &mut Store<HostState>, ResourceAny) -> wasmtime::Result<R>,
    ) -> Result<R, FaultKind> {
        self.run(None, self.shared.stores.deadlines().setup(), call)
    }

    /// What the host functions answer for while this policy runs (its backends' figures,
    /// its shared sequence), for what the host does on its behalf: a pick plan's rotation.
    pub(crate) fn context(&self) -> Arc<CallContext> {
        self.inputs.load().context.clone()
    }

    fn run<R>(
        &self,
        headers: Option<&http::HeaderMap>,
        budget: std::time::Duration,
        call: impl FnOnce(&W, &mut Store<HostState>, ResourceAny) -> wasmtime::Result<R>,
    ) -> Result<R, FaultKind> {
        let slots = self.all_slots();
        let index = match self.placement {
            Placement::Everywhere => thread_slot() % slots.len(),
            Placement::Home(slot) => slot % slots.len(),
        };
        let mut slot = lock(&slots[index]);
        let resource = self.ensure(&mut slot)?;
        let Some(Instance { store, bindings }) = slot.instance.as_mut() else {
            return Err(FaultKind::Instantiate);
        };
        store.data_mut().set_context(&self.inputs.load().context);
        let _call = begin_call(store, budget);
        let result = match headers {
            Some(headers) => CURRENT_HEADERS.set(headers, || call(bindings, store, resource)),
            None => call(bindings, store, resource),
        };
        result.map_err(|err| {
            slot.discard();
            classify(&err)
        })
    }

    /// Gives a single-state policy (placed at home) a new backend set in place, so its state
    /// survives the change.
    pub(crate) fn set_backends(
        &self,
        backends: &[Backend],
        context: Arc<CallContext>,
    ) -> Result<(), FaultKind> {
        let set = W::backends(backends);
        self.inputs.store(Arc::new(Inputs {
            backends: set.clone(),
            context,
        }));
        for index in self.slots() {
            let mut slot = lock(&self.all_slots()[index]);
            let Some(resource) = slot.policies.get(&self.id).copied() else {
                continue; // made with the new set when next used
            };
            let Some(Instance { store, bindings }) = slot.instance.as_mut() else {
                continue;
            };
            store.data_mut().set_context(&self.inputs.load().context);
            let _call = begin_call(store, self.shared.stores.deadlines().setup());
            if let Err(err) = bindings.set_backends(store, resource, &set) {
                slot.discard();
                return Err(classify(&err));
            }
        }
        Ok(())
    }
}

impl<W: World> Drop for PortPolicy<W> {
    fn drop(&mut self) {
        // Its resources in the shared instances are dropped (some may be left from before it
        // was isolated); instances of its own go with it.
        let all = self.shared.slots.len();
        let indices = match self.placement {
            Placement::Everywhere => 0..all,
            Placement::Home(slot) => slot % all..slot % all + 1,
        };
        for index in indices {
            let mut slot = lock(&self.shared.slots[index]);
            let Some(resource) = slot.policies.remove(&self.id) else {
                continue;
            };
            let Some(Instance { store, .. }) = slot.instance.as_mut() else {
                continue;
            };
            let _call = begin_call(store, self.shared.stores.deadlines().setup());
            if resource.resource_drop(&mut *store).is_err() {
                // A destructor that traps or overruns takes its instance along.
                slot.discard();
            }
        }
    }
}
