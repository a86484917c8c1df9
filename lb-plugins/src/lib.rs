//! `lb-plugins`: Gantry's policy plugins, WebAssembly components implementing the
//! `gantry:plugins` worlds (`plugins-wit/`), run by wasmtime behind the `lb-policy` traits.
//! The built-in policies are plugins too, embedded at build time from
//! `plugins/builtin/KIND/NAME`; users name their own files under `plugins:` in the
//! configuration.
//!
//! [`PluginHost`] turns a port's [`BalancerPolicy`] into a [`BalancerFactory`], its
//! [`AffinityPolicy`] into an [`AffinityFactory`] and each health policy into a
//! [`HealthPolicy`]: it compiles a plugin once per content ([`sandbox`]), keeps one fault
//! record per loaded plugin so quarantine survives reloads that do not change the file
//! ([`faults`]), and checks the port's parameters against the plugin's `configure` (on a
//! scratch instance) before anything is swapped. Building computes only; activation prepares
//! what runs a policy, and [`PluginHost::commit`] shows the metrics of the plugins a model uses
//! and forgets the others.
//!
//! Three contract versions are served: plugins built against `gantry:plugins@0.3.0` or
//! `@0.2.0` share one instance per worker thread among all ports, each port a resource in it
//! (`instances`); 0.3.0 balancers may also state a pick plan the host evaluates natively
//! (`balancer`). Plugins built against the frozen 0.1.0 get instances of their own per port
//! (`v1`). Each call's deadline counts the plugin's own CPU time (`cpu`).

mod affinity;
mod balancer;
mod bindings;
mod convert;
mod cpu;
pub mod faults;
pub mod fuzzing;
mod health;
mod host;
mod instances;
mod plan;
mod policy;
pub mod sandbox;
mod stores;
mod ticker;
mod v1;
mod wasi;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use lb_config::{
    AffinityPolicy, BalancerPolicy, FieldPath, HealthPolicy as HealthConfig, Model, PluginCache,
    PluginLimits, PolicySource, Problems, Protocol, ShadowPolicy,
};
use lb_policy::{AffinityFactory, BalancerFactory, HealthPolicy, RoundRobin};

use self::affinity::{AffinityKind, WasmAffinityFactory};
use self::balancer::{BalancerKind, WasmBalancerFactory};
use self::faults::Faults;
pub use self::faults::{FaultHandles, FaultKind, NoTelemetry, PluginTelemetry};
use self::health::{HealthKind, WasmHealthPolicy};
use self::policy::{Configured, Kind, Loaded};
use self::sandbox::Sandbox;
pub use self::stores::{ticks_for, EPOCH_TICK};

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

/// Where the build put every plugin of `plugins/` (built-ins, examples, test plugins), as
/// `CRATE_NAME.wasm`: for tests and benchmarks that load one as a user's file.
pub const BUILT_PLUGIN_DIR: &str = env!("GANTRY_PLUGIN_DIR");

/// Where `plugins/python/build.sh` puts the Python plugins (`NAME.wasm`), for tests: the
/// outer build's `target/plugins-python`, as `.ci/setup` builds them.
pub const PYTHON_PLUGIN_DIR: &str = env!("GANTRY_PYTHON_PLUGIN_DIR");

/// Where `plugins/js/build.sh` puts the JavaScript plugins (`NAME.wasm`), for tests: the
/// outer build's `target/plugins-js`, as `.ci/setup` builds them.
pub const JS_PLUGIN_DIR: &str = env!("GANTRY_JS_PLUGIN_DIR");

/// The names of the embedded built-ins of one kind (`balancer`, `affinity`).
pub fn builtin_names(kind: &str) -> impl Iterator<Item = &'static str> + '_ {
    BUILTINS
        .iter()
        .filter(move |(k, _, _)| *k == kind)
        .map(|(_, name, _)| *name)
}

/// Why a plugin cannot be used; the running configuration keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The WebAssembly engine could not be set up.
    #[error("plugin engine: {0}")]
    Engine(String),
    /// The component is not a usable plugin of the kind asked for.
    #[error("plugin `{plugin}` {message}")]
    Invalid {
        /// Plugin name.
        plugin: String,
        /// What is wrong.
        message: String,
    },
    /// The plugin's `configure` refused the port's parameters.
    #[error("plugin `{plugin}` refused its parameters: {message}")]
    Rejected {
        /// Plugin name.
        plugin: String,
        /// The plugin's own message.
        message: String,
    },
}

/// Loaded plugins of one kind, by [`Identity::plugin`].
type LoadedMap<K> = Mutex<HashMap<String, Arc<Loaded<K>>>>;

/// Loads plugins and makes policy factories from ports' policies.
pub struct PluginHost {
    sandbox: Sandbox,
    telemetry: Arc<dyn PluginTelemetry>,
    workers: usize,
    /// Faults in a row before a plugin loaded from now on is quarantined.
    quarantine_after: AtomicU32,
    balancers: LoadedMap<BalancerKind>,
    affinities: LoadedMap<AffinityKind>,
    health: LoadedMap<HealthKind>,
}

impl PluginHost {
    /// Whether the epoch ticker is parked: no plugin call has run for a second, so nothing
    /// wakes the process a thousand times a second.
    pub fn epoch_ticker_idle(&self) -> bool {
        self.sandbox.ticker_idle()
    }

    /// A host whose instances are capped by `limits`, serving `workers` worker threads (a
    /// 0.2.0 or 0.3.0 plugin has one instance per worker). Compiles in memory only.
    pub fn new(
        limits: &PluginLimits,
        telemetry: Arc<dyn PluginTelemetry>,
        workers: usize,
    ) -> Result<Self, PluginError> {
        Self::with_compile_cache(limits, telemetry, workers, &PluginCache::Off)
    }

    /// As [`PluginHost::new`], keeping compiled plugins in `cache` across restarts.
    pub fn with_compile_cache(
        limits: &PluginLimits,
        telemetry: Arc<dyn PluginTelemetry>,
        workers: usize,
        cache: &PluginCache,
    ) -> Result<Self, PluginError> {
        Ok(PluginHost {
            sandbox: Sandbox::new(limits, cache)?,
            telemetry,
            workers: workers.max(1),
            quarantine_after: AtomicU32::new(limits.quarantine_after),
            balancers: Mutex::default(),
            affinities: Mutex::default(),
            health: Mutex::default(),
        })
    }

    /// The balancer factory for `policy` on a port of `protocol`, with its parameters checked
    /// by the plugin itself.
    pub fn factory(
        &self,
        policy: &BalancerPolicy,
        protocol: Protocol,
    ) -> Result<Arc<dyn BalancerFactory>, PluginError> {
        if policy.policy == PolicySource::Native {
            return Ok(Arc::new(RoundRobin));
        }
        let configured = self.configure(
            &self.balancers,
            Role::Serving,
            &policy.policy,
            &policy.params,
            protocol,
        )?;
        Ok(Arc::new(WasmBalancerFactory(configured)))
    }

    /// The factory of a port's shadow balancer: a plugin loaded apart from any serving use of
    /// the same file (instances, fault record, quarantine and metrics of its own, named
    /// `shadow:NAME`), so nothing it does reaches serving.
    pub fn shadow_factory(
        &self,
        shadow: &ShadowPolicy,
        protocol: Protocol,
    ) -> Result<Arc<dyn BalancerFactory>, PluginError> {
        if shadow.policy == PolicySource::Native {
            return Ok(Arc::new(RoundRobin));
        }
        let configured = self.configure(
            &self.balancers,
            Role::Shadow,
            &shadow.policy,
            &shadow.params,
            protocol,
        )?;
        Ok(Arc::new(WasmBalancerFactory(configured)))
    }

    /// The factory of a port's shadow affinity, loaded apart as [`PluginHost::shadow_factory`]
    /// says, with a table of its own holding up to `max_entries` keys.
    pub fn shadow_affinity_factory(
        &self,
        shadow: &ShadowPolicy,
        max_entries: u32,
        protocol: Protocol,
    ) -> Result<Arc<dyn AffinityFactory>, PluginError> {
        let configured = self.configure(
            &self.affinities,
            Role::Shadow,
            &shadow.policy,
            &shadow.params,
            protocol,
        )?;
        Ok(Arc::new(WasmAffinityFactory::new(configured, max_entries)))
    }

    /// The affinity factory for `policy` (with a fresh table), its parameters checked by the
    /// plugin itself.
    pub fn affinity_factory(
        &self,
        policy: &AffinityPolicy,
        protocol: Protocol,
    ) -> Result<Arc<dyn AffinityFactory>, PluginError> {
        let configured = self.configure(
            &self.affinities,
            Role::Serving,
            &policy.policy,
            &policy.params,
            protocol,
        )?;
        Ok(Arc::new(WasmAffinityFactory::new(
            configured,
            policy.max_entries,
        )))
    }

    /// A health policy for `policy` (with fresh state), its parameters checked by the plugin.
    pub fn health_policy(
        &self,
        policy: &HealthConfig,
        protocol: Protocol,
    ) -> Result<Arc<dyn HealthPolicy>, PluginError> {
        let configured = self.configure(
            &self.health,
            Role::Serving,
            &policy.policy,
            &policy.params,
            protocol,
        )?;
        let plugin = configured.name().to_string();
        let policy = WasmHealthPolicy::new(configured)
            .map_err(|message| PluginError::Invalid { plugin, message })?;
        Ok(Arc::new(policy))
    }

    /// Plugin calls run under `limits`' deadlines from now on, and loaded plugins are
    /// quarantined after its count of faults in a row (the memory cap is the engine's, fixed
    /// until the next start).
    pub fn set_limits(&self, limits: &PluginLimits) {
        self.sandbox.stores().deadlines().set(limits);
        self.quarantine_after
            .store(limits.quarantine_after, Ordering::Relaxed);
    }

    fn configure<K: Kind>(
        &self,
        loaded: &LoadedMap<K>,
        role: Role,
        source: &PolicySource,
        params: &[(String, String)],
        protocol: Protocol,
    ) -> Result<Configured<K>, PluginError> {
        let plugin = match source {
            PolicySource::Native => {
                return Err(PluginError::Invalid {
                    plugin: "native:round-robin".into(),
                    message: format!("is not a{} {} policy", article(K::NAME), K::NAME),
                })
            }
            PolicySource::Builtin(name) => {
                let identity = Identity::builtin(name).in_role(role);
                let bytes = BUILTINS
                    .iter()
                    .find(|(kind, builtin, _)| *kind == K::NAME && builtin == name)
                    .map(|(_, _, bytes)| *bytes)
                    .ok_or_else(|| PluginError::Invalid {
                        plugin: identity.name.clone(),
                        message: format!("is not a {} built into this gantry", K::NAME),
                    })?;
                self.load(loaded, &identity, bytes)?
            }
            PolicySource::File(plugin) => {
                let identity = Identity::file(&plugin.name, &plugin.sha256).in_role(role);
                self.load(loaded, &identity, &plugin.bytes)?
            }
        };
        if protocol.is_udp() && !plugin.knows_udp() {
            return Err(PluginError::Invalid {
                plugin: plugin.name().to_string(),
                message: "is built against gantry:plugins@0.1.0, which has no `udp` protocol: rebuild it against 0.2.0 to use it on a UDP port".into(),
            });
        }
        plugin.configure(params, self.sandbox.stores(), self.workers)
    }

    fn load<K: Kind>(
        &self,
        loaded: &LoadedMap<K>,
        identity: &Identity,
        bytes: &[u8],
    ) -> Result<Arc<Loaded<K>>, PluginError> {
        let name = identity.name.as_str();
        let found = loaded
            .lock()
            .ok()
            .and_then(|l| l.get(&identity.plugin).cloned());
        if let Some(found) = found {
            return Ok(found);
        }
        let pre = self.sandbox.compile(&identity.code, name, bytes)?;
        let name: Arc<str> = name.into();
        let faults = Arc::new(Faults::new(
            name.clone(),
            self.quarantine_after.load(Ordering::Relaxed),
        ));
        let plugin = Loaded::prepare(
            name.clone(),
            faults,
            pre,
            self.sandbox.stores(),
            self.workers,
        )
        .map_err(|message| PluginError::Invalid {
            plugin: name.to_string(),
            message,
        })?;
        let plugin = Arc::new(plugin);
        if let Ok(mut all) = loaded.lock() {
            all.insert(identity.plugin.clone(), plugin.clone());
        }
        Ok(plugin)
    }

    /// The model is now serving: shows the metrics of the plugins it uses, applies its
    /// quarantine threshold to them, and forgets the plugins it no longer uses (a changed file
    /// is a new plugin).
    pub fn commit(&self, model: &Model) {
        let serving = model
            .ports()
            .flat_map(lb_config::Port::policies)
            .filter_map(|policy| Identity::of(policy, Role::Serving));
        let shadows = model
            .ports()
            .flat_map(|port| [&port.shadow.balancer, &port.shadow.affinity])
            .flatten()
            .filter_map(|shadow| Identity::of(&shadow.policy, Role::Shadow));
        let used: Vec<Identity> = serving.chain(shadows).collect();
        let plugins: Vec<String> = used.iter().map(|id| id.plugin.clone()).collect();
        let mut kept = Vec::new();
        let mut forgotten = Vec::new();
        retain(&self.balancers, &plugins, &mut kept, &mut forgotten);
        retain(&self.affinities, &plugins, &mut kept, &mut forgotten);
        retain(&self.health, &plugins, &mut kept, &mut forgotten);
        for name in forgotten {
            self.telemetry.hide(&name);
        }
        for (name, faults) in kept {
            faults.set_quarantine_after(model.plugin_limits.quarantine_after);
            self.telemetry.show(&name, faults.handles());
        }
        let keep: Vec<&str> = used.iter().map(|id| id.code.as_str()).collect();
        self.sandbox.retain(&keep);
    }
}

/// Whether a plugin serves or shadows: a shadow is loaded apart, so that nothing it does
/// reaches a serving use of the same plugin.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Serving,
    Shadow,
}

/// What a loaded plugin is kept under, and what its compiled code is shared under.
struct Identity {
    /// The plugin: `builtin:NAME`, or a user plugin's name and its file's SHA-256; a shadow's
    /// begins with `shadow `. Two names for byte-identical files are two plugins, each with
    /// its own faults, quarantine and metrics; a changed file is a new plugin.
    plugin: String,
    /// Its name in messages and metrics: `builtin:NAME` or the user's, `shadow:` before a
    /// shadow's.
    name: String,
    /// The code: `builtin:NAME`, or the file's SHA-256, compiled once for every name and role.
    code: String,
}

impl Identity {
    fn builtin(name: &str) -> Identity {
        let identity = format!("builtin:{name}");
        Identity {
            plugin: identity.clone(),
            name: identity.clone(),
            code: identity,
        }
    }

    fn file(name: &str, sha256: &str) -> Identity {
        Identity {
            plugin: format!("{name} {sha256}"),
            name: name.to_owned(),
            code: sha256.to_owned(),
        }
    }

    fn in_role(self, role: Role) -> Identity {
        match role {
            Role::Serving => self,
            Role::Shadow => Identity {
                plugin: format!("shadow {}", self.plugin),
                name: format!("shadow:{}", self.name),
                code: self.code,
            },
        }
    }

    fn of(policy: &PolicySource, role: Role) -> Option<Identity> {
        let identity = match policy {
            PolicySource::Native => return None,
            PolicySource::Builtin(name) => Identity::builtin(name),
            PolicySource::File(plugin) => Identity::file(&plugin.name, &plugin.sha256),
        };
        Some(identity.in_role(role))
    }
}

/// Keeps the plugins in `used`, listing them in `kept` (with their fault records) and the
/// others' names in `forgotten`.
fn retain<K: Kind>(
    loaded: &LoadedMap<K>,
    used: &[String],
    kept: &mut Vec<(Arc<str>, Arc<Faults>)>,
    forgotten: &mut Vec<Arc<str>>,
) {
    if let Ok(mut loaded) = loaded.lock() {
        loaded.retain(|identity, plugin| {
            let keep = used.contains(identity);
            if keep {
                kept.push((plugin.name().clone(), plugin.faults().clone()));
            } else {
                forgotten.push(plugin.name().clone());
            }
            keep
        });
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "n"
    } else {
        ""
    }
}

/// Every problem the plugins of `model` have with their ports' parameters, located at the
/// field that names the policy, for `gantry check`.
pub fn check(model: &Model) -> Problems {
    let mut problems = Problems::default();
    let host = match PluginHost::new(&model.plugin_limits, Arc::new(NoTelemetry), 1) {
        Ok(host) => host,
        Err(err) => {
            problems.push(&FieldPath::root().field("plugin_limits"), err.to_string());
            return problems;
        }
    };
    for port in model.ports() {
        let at = &port.origin.0;
        if let Err(err) = host.factory(&port.balancer, port.protocol) {
            problems.push(&at.field("balancer"), err.to_string());
        }
        if let Some(affinity) = &port.affinity {
            if let Err(err) = host.affinity_factory(affinity, port.protocol) {
                problems.push(&at.field("affinity"), err.to_string());
            }
        }
        for (i, health) in port.health.iter().enumerate() {
            if let Err(err) = host.health_policy(health, port.protocol) {
                problems.push(&at.field("health").index(i), err.to_string());
            }
        }
        if let Some(shadow) = &port.shadow.balancer {
            if let Err(err) = host.shadow_factory(shadow, port.protocol) {
                problems.push(&at.field("balancer").field("shadow"), err.to_string());
            }
        }
        if let (Some(shadow), Some(affinity)) = (&port.shadow.affinity, &port.affinity) {
            if let Err(err) =
                host.shadow_affinity_factory(shadow, affinity.max_entries, port.protocol)
            {
                problems.push(&at.field("affinity").field("shadow"), err.to_string());
            }
        }
    }
    problems
}
