//! Policy plugins: WebAssembly components implementing the `gantry:plugins` worlds
//! (`plugins-wit/`). The built-in balancers are plugins too, embedded at build time from
//! `plugins/builtin`; users name their own files under `plugins:` in the configuration.
//!
//! [`PluginHost`] turns a port's [`BalancerPolicy`] into a [`BalancerFactory`]: it compiles a
//! plugin once per content ([`sandbox`]), keeps one fault record per loaded plugin so
//! quarantine survives reloads that do not change the file ([`policy`]), and checks the port's
//! parameters against the plugin's `configure` before anything is swapped.

mod bindings;
mod host;
pub mod policy;
pub mod sandbox;
mod wasi;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lb_config::{BalancerPolicy, Model, PluginLimits, PolicySource};

use self::policy::{Faults, LoadedPolicy, WasmBalancerFactory};
use self::sandbox::Sandbox;
use crate::balancer::{BalancerFactory, RoundRobin};
use crate::metrics::Metrics;

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

/// The names of the embedded built-in balancers.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTIN_BALANCERS.iter().map(|(name, _)| *name)
}

/// Why a plugin cannot be used; the running configuration keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The WebAssembly engine could not be set up.
    #[error("plugin engine: {0}")]
    Engine(String),
    /// The component is not a usable balancer.
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

/// Loads plugins and makes balancer factories from ports' policies.
pub struct PluginHost {
    sandbox: Sandbox,
    metrics: Arc<Metrics>,
    workers: usize,
    /// Loaded policies by identity (`builtin:NAME`, or the file's SHA-256).
    loaded: Mutex<HashMap<String, Arc<LoadedPolicy>>>,
}

impl PluginHost {
    /// A host whose instances are capped by `limits`, preparing `workers` instances (one per
    /// worker thread) whenever a backend set changes.
    pub fn new(
        limits: &PluginLimits,
        metrics: Arc<Metrics>,
        workers: usize,
    ) -> Result<Self, PluginError> {
        Ok(PluginHost {
            sandbox: Sandbox::new(limits)?,
            metrics,
            workers,
            loaded: Mutex::new(HashMap::new()),
        })
    }

    /// The factory for `policy`, with its parameters checked by the plugin itself.
    pub fn factory(
        &self,
        policy: &BalancerPolicy,
        limits: &PluginLimits,
    ) -> Result<Arc<dyn BalancerFactory>, PluginError> {
        let loaded = match &policy.policy {
            PolicySource::Native => return Ok(Arc::new(RoundRobin)),
            PolicySource::Builtin(name) => {
                let bytes = BUILTIN_BALANCERS
                    .iter()
                    .find(|(builtin, _)| builtin == name)
                    .map(|(_, bytes)| *bytes)
                    .ok_or_else(|| PluginError::Invalid {
                        plugin: format!("builtin:{name}"),
                        message: "is not built into this gantry".into(),
                    })?;
                self.load(
                    &format!("builtin:{name}"),
                    &format!("builtin:{name}"),
                    bytes,
                    limits,
                )?
            }
            PolicySource::File(plugin) => {
                self.load(&plugin.sha256, &plugin.name, &plugin.bytes, limits)?
            }
        };
        let factory = WasmBalancerFactory::new(
            loaded,
            &policy.params,
            *limits,
            self.sandbox.engine().clone(),
            self.workers,
        )?;
        Ok(Arc::new(factory))
    }

    fn load(
        &self,
        identity: &str,
        name: &str,
        bytes: &[u8],
        limits: &PluginLimits,
    ) -> Result<Arc<LoadedPolicy>, PluginError> {
        if let Some(found) = self
            .loaded
            .lock()
            .ok()
            .and_then(|l| l.get(identity).cloned())
        {
            return Ok(found);
        }
        let pre = self.sandbox.compile(identity, name, bytes)?;
        let name: Arc<str> = name.into();
        let (counters, gauge) = self.metrics.plugin(&name);
        let loaded = Arc::new(LoadedPolicy {
            faults: Faults::new(name.clone(), counters, gauge, limits.quarantine_after),
            name,
            pre,
        });
        if let Ok(mut all) = self.loaded.lock() {
            all.insert(identity.to_owned(), loaded.clone());
        }
        Ok(loaded)
    }

    /// Forgets plugins `model` no longer uses (a changed file is a new plugin).
    pub fn retain_used_by(&self, model: &Model) {
        let used: Vec<String> = model
            .ports()
            .filter_map(|p| match &p.balancer.policy {
                PolicySource::Native => None,
                PolicySource::Builtin(name) => Some(format!("builtin:{name}")),
                PolicySource::File(plugin) => Some(plugin.sha256.clone()),
            })
            .collect();
        if let Ok(mut loaded) = self.loaded.lock() {
            loaded.retain(|identity, policy| {
                let keep = used.contains(identity);
                if !keep {
                    self.metrics.forget_plugin(&policy.name);
                }
                keep
            });
        }
        let keep: Vec<&str> = used.iter().map(String::as_str).collect();
        self.sandbox.retain(&keep);
    }
}

/// Every problem the plugins of `model` have with their ports' parameters, as
/// `field path: message` lines, for `gantry check`.
pub fn check(model: &Model) -> Vec<String> {
    let host = match PluginHost::new(&model.plugin_limits, Arc::new(Metrics::new()), 1) {
        Ok(host) => host,
        Err(err) => return vec![err.to_string()],
    };
    model
        .ports()
        .filter_map(|port| {
            let err = host.factory(&port.balancer, &model.plugin_limits).err()?;
            Some(format!("{}.balancer: {err}", port.origin))
        })
        .collect()
}
