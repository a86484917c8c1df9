//! Policy plugins: WebAssembly components implementing the `gantry:plugins` worlds
//! (`plugins-wit/`). The built-in policies are plugins too, embedded at build time from
//! `plugins/builtin/KIND/NAME`; users name their own files under `plugins:` in the
//! configuration.
//!
//! [`PluginHost`] turns a port's [`BalancerPolicy`] into a [`BalancerFactory`] and its
//! [`AffinityPolicy`] into an [`AffinityFactory`]: it compiles a plugin once per content
//! ([`sandbox`]), keeps one fault record per loaded plugin so quarantine survives reloads that
//! do not change the file ([`faults`]), and checks the port's parameters against the plugin's
//! `configure` before anything is swapped. What running a plugin involves is in `instances`.

mod affinity;
mod balancer;
mod bindings;
pub mod faults;
mod health;
mod host;
mod instances;
pub mod sandbox;
mod wasi;
mod worlds;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lb_config::{
    AffinityPolicy, BalancerPolicy, HealthPolicy as HealthConfig, Model, PluginCache, PluginLimits,
    PolicySource,
};

use self::affinity::WasmAffinityFactory;
use self::balancer::WasmBalancerFactory;
use self::bindings::{AffinityWorld, BalancerWorld, HealthWorld};
use self::faults::Faults;
use self::health::WasmHealthPolicy;
use self::instances::{Configured, LoadedPolicy};
use self::sandbox::Sandbox;
use self::worlds::World;
use crate::affinity::AffinityFactory;
use crate::balancer::{BalancerFactory, RoundRobin};
use crate::health::HealthPolicy;
use crate::metrics::Metrics;

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

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

/// Loaded plugins of one world, by identity (`builtin:NAME`, or the file's SHA-256).
type Loaded<W> = Mutex<HashMap<String, Arc<LoadedPolicy<W>>>>;

/// Loads plugins and makes policy factories from ports' policies.
pub struct PluginHost {
    sandbox: Sandbox,
    metrics: Arc<Metrics>,
    workers: usize,
    balancers: Loaded<BalancerWorld>,
    affinities: Loaded<AffinityWorld>,
    health: Loaded<HealthWorld>,
}

impl PluginHost {
    /// A host whose instances are capped by `limits`, preparing `workers` instances (one per
    /// worker thread) whenever a backend set changes. Compiles in memory only.
    pub fn new(
        limits: &PluginLimits,
        metrics: Arc<Metrics>,
        workers: usize,
    ) -> Result<Self, PluginError> {
        Self::with_compile_cache(limits, metrics, workers, &PluginCache::Off)
    }

    /// As [`PluginHost::new`], keeping compiled plugins in `cache` across restarts.
    pub fn with_compile_cache(
        limits: &PluginLimits,
        metrics: Arc<Metrics>,
        workers: usize,
        cache: &PluginCache,
    ) -> Result<Self, PluginError> {
        Ok(PluginHost {
            sandbox: Sandbox::new(limits, cache)?,
            metrics,
            workers,
            balancers: Mutex::default(),
            affinities: Mutex::default(),
            health: Mutex::default(),
        })
    }

    /// The balancer factory for `policy`, with its parameters checked by the plugin itself.
    pub fn factory(
        &self,
        policy: &BalancerPolicy,
        limits: &PluginLimits,
    ) -> Result<Arc<dyn BalancerFactory>, PluginError> {
        if policy.policy == PolicySource::Native {
            return Ok(Arc::new(RoundRobin));
        }
        let configured = self.configure(&self.balancers, &policy.policy, &policy.params, limits)?;
        Ok(Arc::new(WasmBalancerFactory(configured)))
    }

    /// The affinity factory for `policy` (with a fresh table), its parameters checked by the
    /// plugin itself.
    pub fn affinity_factory(
        &self,
        policy: &AffinityPolicy,
        limits: &PluginLimits,
    ) -> Result<Arc<dyn AffinityFactory>, PluginError> {
        let configured =
            self.configure(&self.affinities, &policy.policy, &policy.params, limits)?;
        Ok(Arc::new(WasmAffinityFactory::new(
            configured,
            policy.max_entries,
        )))
    }

    /// A health policy for `policy` (with fresh state), its parameters checked by the plugin.
    pub fn health_policy(
        &self,
        policy: &HealthConfig,
        limits: &PluginLimits,
    ) -> Result<Arc<dyn HealthPolicy>, PluginError> {
        let configured = self.configure(&self.health, &policy.policy, &policy.params, limits)?;
        let plugin = configured.policy.name.to_string();
        let policy = WasmHealthPolicy::new(configured)
            .map_err(|message| PluginError::Invalid { plugin, message })?;
        Ok(Arc::new(policy))
    }

    fn configure<W: World>(
        &self,
        loaded: &Loaded<W>,
        source: &PolicySource,
        params: &[(String, String)],
        limits: &PluginLimits,
    ) -> Result<Configured<W>, PluginError> {
        let policy = match source {
            PolicySource::Native => {
                return Err(PluginError::Invalid {
                    plugin: "native:round-robin".into(),
                    message: format!("is not a{} {} policy", article(W::NAME), W::NAME),
                })
            }
            PolicySource::Builtin(name) => {
                let identity = format!("builtin:{name}");
                let bytes = BUILTINS
                    .iter()
                    .find(|(kind, builtin, _)| *kind == W::NAME && builtin == name)
                    .map(|(_, _, bytes)| *bytes)
                    .ok_or_else(|| PluginError::Invalid {
                        plugin: identity.clone(),
                        message: format!("is not a {} built into this gantry", W::NAME),
                    })?;
                self.load(loaded, &identity, &identity, bytes, limits)?
            }
            PolicySource::File(plugin) => {
                self.load(loaded, &plugin.sha256, &plugin.name, &plugin.bytes, limits)?
            }
        };
        Configured::new(
            policy,
            params,
            *limits,
            self.sandbox.engine().clone(),
            self.workers,
        )
    }

    fn load<W: World>(
        &self,
        loaded: &Loaded<W>,
        identity: &str,
        name: &str,
        bytes: &[u8],
        limits: &PluginLimits,
    ) -> Result<Arc<LoadedPolicy<W>>, PluginError> {
        if let Some(found) = loaded.lock().ok().and_then(|l| l.get(identity).cloned()) {
            return Ok(found);
        }
        let pre = self.sandbox.compile(identity, name, bytes)?;
        let pre = W::prepare(pre).map_err(|e| PluginError::Invalid {
            plugin: name.to_owned(),
            message: format!("is not a{} {} plugin: {e:#}", article(W::NAME), W::NAME),
        })?;
        let name: Arc<str> = name.into();
        let (counters, gauge) = self.metrics.plugin(&name);
        let policy = Arc::new(LoadedPolicy {
            faults: Faults::new(name.clone(), counters, gauge, limits.quarantine_after),
            name,
            pre,
        });
        if let Ok(mut all) = loaded.lock() {
            all.insert(identity.to_owned(), policy.clone());
        }
        Ok(policy)
    }

    /// Forgets plugins `model` no longer uses (a changed file is a new plugin).
    pub fn retain_used_by(&self, model: &Model) {
        let used: Vec<String> = model
            .ports()
            .flat_map(lb_config::Port::policies)
            .filter_map(|policy| match policy {
                PolicySource::Native => None,
                PolicySource::Builtin(name) => Some(format!("builtin:{name}")),
                PolicySource::File(plugin) => Some(plugin.sha256.clone()),
            })
            .collect();
        let mut forgotten = Vec::new();
        retain(&self.balancers, &used, &mut forgotten);
        retain(&self.affinities, &used, &mut forgotten);
        retain(&self.health, &used, &mut forgotten);
        for name in forgotten {
            self.metrics.forget_plugin(&name);
        }
        let keep: Vec<&str> = used.iter().map(String::as_str).collect();
        self.sandbox.retain(&keep);
    }
}

fn retain<W: World>(loaded: &Loaded<W>, used: &[String], forgotten: &mut Vec<Arc<str>>) {
    if let Ok(mut loaded) = loaded.lock() {
        loaded.retain(|identity, policy| {
            let keep = used.contains(identity);
            if !keep {
                forgotten.push(policy.name.clone());
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

/// Every problem the plugins of `model` have with their ports' parameters, as
/// `field path: message` lines, for `gantry check`.
pub fn check(model: &Model) -> Vec<String> {
    let host = match PluginHost::new(&model.plugin_limits, Arc::new(Metrics::new()), 1) {
        Ok(host) => host,
        Err(err) => return vec![err.to_string()],
    };
    let limits = &model.plugin_limits;
    let mut problems = Vec::new();
    for port in model.ports() {
        if let Err(err) = host.factory(&port.balancer, limits) {
            problems.push(format!("{}.balancer: {err}", port.origin));
        }
        if let Some(affinity) = &port.affinity {
            if let Err(err) = host.affinity_factory(affinity, limits) {
                problems.push(format!("{}.affinity: {err}", port.origin));
            }
        }
        for (i, health) in port.health.iter().enumerate() {
            if let Err(err) = host.health_policy(health, limits) {
                problems.push(format!("{}.health[{i}]: {err}", port.origin));
            }
        }
    }
    problems
}
