//! A policy plugin of one kind (balancer, affinity, health), whatever contract version it was
//! built against: loaded ([`Loaded`]), configured for one port ([`Configured`]), and running
//! for one backend set, either with state per worker thread ([`PerThread`]: balancers,
//! affinities) or with one state for all threads ([`Single`]: health). The kinds' own calls
//! (`pick`, `stick`, `probed`, ...) are made by the kinds' modules, per version.

use std::sync::Arc;

use lb_config::Backend;
use lb_policy::BackendFigures;

use super::convert::to_v1;
use super::faults::Faults;
use super::host::CallContext;
use super::instances::{self, Placement, PortPolicy, Shared};
use super::stores::Stores;
use super::{v1, PluginError};

/// A plugin kind: one world in each contract version.
pub(crate) trait Kind: Send + Sync + 'static {
    /// `balancer`, `affinity` or `health`, for messages and built-in lookup.
    const NAME: &'static str;
    /// The kind's 0.1.0 world.
    type V1: v1::World;
    /// The kind's 0.2.0 world.
    type V2: instances::World;
    /// The kind's 0.3.0 world.
    type V3: instances::World;
    /// What the plugin's `configure` tells the host, whatever the version.
    type Settings: Clone + Send + Sync + 'static;

    /// The settings of a 0.1.0 plugin.
    fn from_v1(settings: <Self::V1 as v1::World>::Settings) -> Self::Settings;
    /// The settings of a 0.2.0 plugin.
    fn from_v2(settings: <Self::V2 as instances::World>::Settings) -> Self::Settings;
    /// The settings of a 0.3.0 plugin.
    fn from_v3(settings: <Self::V3 as instances::World>::Settings) -> Self::Settings;
}

/// A compiled plugin prepared for kind `K` in the version it was built against.
pub(crate) enum Loaded<K: Kind> {
    /// Built against 0.1.0: instances per port.
    V1 {
        name: Arc<str>,
        faults: Arc<Faults>,
        pre: <K::V1 as v1::World>::Pre,
        reads_headers: bool,
    },
    /// Built against 0.2.0: instances per worker, shared by ports.
    V2 {
        shared: Arc<Shared<K::V2>>,
        reads_headers: bool,
    },
    /// Built against 0.3.0: as 0.2.0.
    V3 {
        shared: Arc<Shared<K::V3>>,
        reads_headers: bool,
    },
}

impl<K: Kind> Loaded<K> {
    /// Prepares a compiled component for `K` in the newest version whose world it exports;
    /// otherwise says why it is not a plugin of this kind.
    pub(crate) fn prepare(
        name: Arc<str>,
        faults: Arc<Faults>,
        pre: wasmtime::component::InstancePre<super::host::HostState>,
        stores: &Stores,
        workers: usize,
    ) -> Result<Self, String> {
        let reads_headers = super::sandbox::reads_headers(pre.component());
        let stores = stores.clone();
        if let Ok(v3) = <K::V3 as instances::World>::prepare(pre.clone()) {
            let shared = Shared::new(name, v3, faults, stores, workers);
            return Ok(Loaded::V3 {
                shared: Arc::new(shared),
                reads_headers,
            });
        }
        let newest = match <K::V2 as instances::World>::prepare(pre.clone()) {
            Ok(v2) => {
                let shared = Shared::new(name, v2, faults, stores, workers);
                return Ok(Loaded::V2 {
                    shared: Arc::new(shared),
                    reads_headers,
                });
            }
            Err(newest) => newest,
        };
        match <K::V1 as v1::World>::prepare(pre) {
            Ok(pre) => Ok(Loaded::V1 {
                name,
                faults,
                pre,
                reads_headers,
            }),
            Err(_) => Err(format!(
                "is not a{} {} plugin of gantry:plugins@0.3.0, @0.2.0 or @0.1.0: {newest:#}",
                if K::NAME.starts_with(['a', 'e', 'i', 'o', 'u']) {
                    "n"
                } else {
                    ""
                },
                K::NAME
            )),
        }
    }

    /// The plugin's name.
    pub(crate) fn name(&self) -> &Arc<str> {
        match self {
            Loaded::V1 { name, .. } => name,
            Loaded::V2 { shared, .. } => shared.name(),
            Loaded::V3 { shared, .. } => shared.name(),
        }
    }

    /// The plugin's fault record.
    pub(crate) fn faults(&self) -> &Arc<Faults> {
        match self {
            Loaded::V1 { faults, .. } => faults,
            Loaded::V2 { shared, .. } => shared.faults(),
            Loaded::V3 { shared, .. } => shared.faults(),
        }
    }

    /// Whether its contract has the `udp` protocol (0.2.0 on).
    pub(crate) fn knows_udp(&self) -> bool {
        matches!(self, Loaded::V2 { .. } | Loaded::V3 { .. })
    }

    /// Whether it can ask for the request's headers (see [`super::sandbox::reads_headers`]).
    fn reads_headers(&self) -> bool {
        match self {
            Loaded::V1 { reads_headers, .. }
            | Loaded::V2 { reads_headers, .. }
            | Loaded::V3 { reads_headers, .. } => *reads_headers,
        }
    }

    /// The plugin with one port's parameters, checked by its `configure` on a scratch
    /// instance (nothing live is touched).
    pub(crate) fn configure(
        &self,
        params: &[(String, String)],
        stores: &Stores,
        workers: usize,
    ) -> Result<Configured<K>, PluginError> {
        let reads_headers = self.reads_headers();
        match self {
            Loaded::V1 {
                name, faults, pre, ..
            } => {
                let (recipe, settings) = v1::Recipe::configure(
                    name.clone(),
                    faults.clone(),
                    pre.clone(),
                    params,
                    stores.clone(),
                    workers,
                )?;
                Ok(Configured {
                    settings: K::from_v1(settings),
                    reads_headers,
                    runner: Runner::V1(recipe),
                })
            }
            Loaded::V2 { shared, .. } => {
                let settings = shared.check(params)?;
                Ok(Configured {
                    settings: K::from_v2(settings),
                    reads_headers,
                    runner: Runner::V2 {
                        shared: shared.clone(),
                        params: params.to_vec(),
                    },
                })
            }
            Loaded::V3 { shared, .. } => {
                let settings = shared.check(params)?;
                Ok(Configured {
                    settings: K::from_v3(settings),
                    reads_headers,
                    runner: Runner::V3 {
                        shared: shared.clone(),
                        params: params.to_vec(),
                    },
                })
            }
        }
    }
}

/// A plugin of kind `K` with one port's parameters, as accepted by its `configure`.
pub(crate) struct Configured<K: Kind> {
    /// What `configure` answered.
    pub(crate) settings: K::Settings,
    /// Whether the plugin can ask for the request's headers.
    pub(crate) reads_headers: bool,
    runner: Runner<K>,
}

enum Runner<K: Kind> {
    V1(v1::Recipe<K::V1>),
    V2 {
        shared: Arc<Shared<K::V2>>,
        params: Vec<(String, String)>,
    },
    V3 {
        shared: Arc<Shared<K::V3>>,
        params: Vec<(String, String)>,
    },
}

impl<K: Kind> Configured<K> {
    /// The plugin's name.
    pub(crate) fn name(&self) -> &Arc<str> {
        match &self.runner {
            Runner::V1(recipe) => recipe.name(),
            Runner::V2 { shared, .. } => shared.name(),
            Runner::V3 { shared, .. } => shared.name(),
        }
    }

    /// Whether the plugin is quarantined.
    pub(crate) fn is_quarantined(&self) -> bool {
        match &self.runner {
            Runner::V1(recipe) => recipe.faults().is_quarantined(),
            Runner::V2 { shared, .. } => shared.faults().is_quarantined(),
            Runner::V3 { shared, .. } => shared.faults().is_quarantined(),
        }
    }

    /// The plugin over `backends`, with state per worker thread. Computes only: it runs
    /// nothing until prepared (or called).
    pub(crate) fn per_thread(
        &self,
        backends: &[Backend],
        figures: Arc<dyn BackendFigures>,
    ) -> PerThread<K> {
        let context = CallContext::new(figures);
        match &self.runner {
            Runner::V1(recipe) => {
                PerThread::V1(recipe.generation(to_v1::backends(backends), context))
            }
            Runner::V2 { shared, params } => PerThread::V2(PortPolicy::new(
                shared.clone(),
                params,
                backends,
                context,
                Placement::Everywhere,
            )),
            Runner::V3 { shared, params } => PerThread::V3(PortPolicy::new(
                shared.clone(),
                params,
                backends,
                context,
                Placement::Everywhere,
            )),
        }
    }

    /// The plugin with one state for all threads (given its backends later), kept in the
    /// instance of worker `home` when the plugin shares instances.
    pub(crate) fn single(&self, home: usize) -> Single<K> {
        match &self.runner {
            Runner::V1(recipe) => Single::V1(v1::Exclusive::new(recipe)),
            Runner::V2 { shared, params } => Single::V2(PortPolicy::new(
                shared.clone(),
                params,
                &[],
                CallContext::empty(),
                Placement::Home(home),
            )),
            Runner::V3 { shared, params } => Single::V3(PortPolicy::new(
                shared.clone(),
                params,
                &[],
                CallContext::empty(),
                Placement::Home(home),
            )),
        }
    }
}

/// A plugin over one backend set, with state per worker thread.
pub(crate) enum PerThread<K: Kind> {
    /// Instances of its own, one per worker.
    V1(Arc<v1::Generation<K::V1>>),
    /// A resource in each worker's shared instance.
    V2(PortPolicy<K::V2>),
    /// As 0.2.0.
    V3(PortPolicy<K::V3>),
}

impl<K: Kind> PerThread<K> {
    /// The plugin's fault record.
    pub(crate) fn faults(&self) -> &Faults {
        match self {
            PerThread::V1(generation) => generation.faults(),
            PerThread::V2(policy) => policy.faults(),
            PerThread::V3(policy) => policy.faults(),
        }
    }

    /// The plugin's name.
    pub(crate) fn name(&self) -> &str {
        match self {
            PerThread::V1(generation) => generation.name(),
            PerThread::V2(policy) => policy.name(),
            PerThread::V3(policy) => policy.name(),
        }
    }

    /// Makes what runs it now, off the request path: called when its route is activated.
    pub(crate) fn prepare(&self) {
        match self {
            PerThread::V1(generation) => generation.prepare(),
            PerThread::V2(policy) => policy.prepare(),
            PerThread::V3(policy) => policy.prepare(),
        }
    }
}

/// A plugin with one state for all threads.
pub(crate) enum Single<K: Kind> {
    /// One instance of its own.
    V1(v1::Exclusive<K::V1>),
    /// One resource in a shared instance.
    V2(PortPolicy<K::V2>),
    /// As 0.2.0.
    V3(PortPolicy<K::V3>),
}

impl<K: Kind> Single<K> {
    /// The plugin's fault record.
    pub(crate) fn faults(&self) -> &Faults {
        match self {
            Single::V1(exclusive) => exclusive.faults(),
            Single::V2(policy) => policy.faults(),
            Single::V3(policy) => policy.faults(),
        }
    }

    /// The plugin's name.
    pub(crate) fn name(&self) -> &str {
        match self {
            Single::V1(exclusive) => exclusive.name(),
            Single::V2(policy) => policy.name(),
            Single::V3(policy) => policy.name(),
        }
    }

    /// Gives it a new backend set in place (its state survives).
    pub(crate) fn set_backends(
        &self,
        backends: &[Backend],
        figures: Arc<dyn BackendFigures>,
    ) -> Result<(), super::FaultKind> {
        let context = CallContext::new(figures);
        match self {
            Single::V1(exclusive) => exclusive.set_backends(to_v1::backends(backends), context),
            Single::V2(policy) => policy.set_backends(backends, context),
            Single::V3(policy) => policy.set_backends(backends, context),
        }
    }
}
