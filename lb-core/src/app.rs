//! The running appliance. [`Gantry::apply`] moves it from the running model to a new one by the
//! typed diff, in two phases: first everything that can fail (binding new sockets, TLS state,
//! building routes) with nothing live touched, then the swaps, which cannot fail. A reload that
//! fails therefore changes nothing. Starting is applying the first model to an empty one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use lb_config::{Change, ConfigError, ListenerKey, Model, Port};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::admin::{AdminApp, AdminView};
use crate::health::HealthChecker;
use crate::http_server::SmallServer;
use crate::listener::{Listener, ListenerShared};
use crate::metrics::Metrics;
use crate::plugins::{PluginError, PluginHost};
use crate::route::{Route, RouteContext, RoutePolicies};
use crate::tls::TlsEndpoint;

/// Why a model could not be applied; the running model keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A port's socket could not be bound.
    #[error("cannot listen on {address} for {key}: {source}")]
    Bind {
        /// The port.
        key: ListenerKey,
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The admin socket could not be bound.
    #[error("cannot listen on {address} for the admin endpoint: {source}")]
    Admin {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A port's balancing plugin cannot be used (it failed to load, or refused the port's
    /// parameters).
    #[error("{0}")]
    Policy(#[from] PolicyError),
    /// The plugin engine could not start.
    #[error("{0}")]
    Plugins(PluginError),
    /// TLS state could not be set up.
    #[error("TLS setup for {key} failed: {source}")]
    Tls {
        /// The port.
        key: ListenerKey,
        /// The rustls error.
        source: rustls::Error,
    },
}

/// A plugin problem found while applying, with the field path of the port that uses it.
#[derive(Debug, thiserror::Error)]
#[error("{origin}.{field}: {source}")]
pub struct PolicyError {
    /// Where the port is in the configuration (`services[0].ports[1]`).
    pub origin: String,
    /// `balancer`, `affinity` or `health[i]`.
    pub field: String,
    /// What is wrong with its plugin.
    pub source: PluginError,
}

/// Why a reload from a file failed; the running model keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is invalid (the same messages as `gantry check`).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The new model could not be applied.
    #[error("{0}")]
    Apply(#[from] ApplyError),
}

/// A running Gantry.
#[derive(Clone)]
pub struct Gantry {
    inner: Arc<Inner>,
}

struct Inner {
    model: ArcSwap<Model>,
    /// Only the control plane (apply, shutdown) takes this lock; it also serializes reloads.
    listeners: tokio::sync::Mutex<BTreeMap<ListenerKey, Listener>>,
    /// Lock-free view of the listeners for the admin endpoint and tests.
    live: ArcSwap<BTreeMap<ListenerKey, LiveListener>>,
    metrics: Arc<Metrics>,
    plugins: PluginHost,
    admin: Mutex<Option<SmallServer>>,
    ready: AtomicBool,
    /// `runtime.access_log`, read by every route.
    access_log: Arc<AtomicBool>,
    /// Listeners removed by reloads, finishing their connections.
    draining: TaskTracker,
}

#[derive(Clone)]
struct LiveListener {
    local_addr: SocketAddr,
    shared: Arc<ListenerShared>,
    connections: TaskTracker,
}

/// A swap prepared for a kept listener.
struct PreparedSwap {
    key: ListenerKey,
    route: Route,
    /// TLS state created for a port that did not terminate TLS before.
    new_endpoint: Option<Arc<TlsEndpoint>>,
}

impl Gantry {
    /// Starts serving `model`.
    pub async fn start(model: Model) -> Result<Gantry, ApplyError> {
        let metrics = Arc::new(Metrics::new());
        let workers = model.runtime.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let plugins = PluginHost::with_compile_cache(
            &model.plugin_limits,
            metrics.clone(),
            workers,
            &model.runtime.plugin_cache,
        )
        .map_err(ApplyError::Plugins)?;
        let empty = Model {
            admin: model.admin.clone(),
            runtime: model.runtime.clone(),
            plugin_limits: model.plugin_limits,
            services: BTreeMap::new(),
        };
        let gantry = Gantry {
            inner: Arc::new(Inner {
                model: ArcSwap::from_pointee(empty),
                listeners: tokio::sync::Mutex::new(BTreeMap::new()),
                live: ArcSwap::default(),
                metrics,
                plugins,
                admin: Mutex::new(None),
                ready: AtomicBool::new(false),
                access_log: Arc::new(AtomicBool::new(model.runtime.access_log)),
                draining: TaskTracker::new(),
            }),
        };
        let admin = gantry.start_admin(model.admin.listen).await?;
        gantry.set_admin(admin);
        if let Err(err) = gantry.apply(model).await {
            gantry.stop_admin().await;
            return Err(err);
        }
        gantry.inner.ready.store(true, Ordering::Release);
        tracing::info!("ready");
        Ok(gantry)
    }

    /// Moves to `new`, changing only what differs; returns what changed.
    pub async fn apply(&self, new: Model) -> Result<Vec<Change>, ApplyError> {
        let inner = &self.inner;
        let mut listeners = inner.listeners.lock().await;
        let old = inner.model.load_full();
        let changes = lb_config::diff(&old, &new);
        if changes.is_empty() {
            return Ok(changes);
        }

        // Phase 1: everything that can fail, with nothing live touched.
        let mut starts = Vec::new();
        let mut stops = Vec::new();
        let mut swapped = BTreeSet::new();
        let mut swaps = Vec::new();
        let mut admin_target = None;
        for change in &changes {
            match change {
                Change::ListenerAdded(key) => starts.push(self.bind(port_of(&new, key), &new)?),
                Change::ListenerRemoved(key) => stops.push(key.clone()),
                Change::ListenerRebound { key, .. } => {
                    stops.push(key.clone());
                    starts.push(self.bind(port_of(&new, key), &new)?);
                }
                Change::BackendsChanged(key)
                | Change::CertificatesChanged(key)
                | Change::ListenerSettingsChanged(key)
                | Change::BalancerChanged(key) => {
                    if swapped.insert(key.clone()) {
                        if let Some(listener) = listeners.get(key) {
                            swaps.push(self.prepare_swap(
                                listener,
                                port_of(&new, key),
                                &new,
                                false,
                            )?);
                        }
                    }
                }
                Change::AdminChanged { to, .. } => admin_target = Some(*to),
                Change::RuntimeChanged => {
                    if old.runtime.workers != new.runtime.workers {
                        tracing::warn!("runtime.workers takes effect at the next start");
                    }
                    if old.runtime.plugin_cache != new.runtime.plugin_cache {
                        tracing::warn!("runtime.plugin_cache takes effect at the next start");
                    }
                    if old.plugin_limits.memory_bytes != new.plugin_limits.memory_bytes {
                        tracing::warn!("plugin_limits.memory_mib takes effect at the next start");
                    }
                }
            }
        }
        // New deadlines or quarantine threshold: every kept port gets a new factory.
        if old.plugin_limits != new.plugin_limits {
            for port in new.ports() {
                if let (true, Some(listener)) =
                    (swapped.insert(port.key.clone()), listeners.get(&port.key))
                {
                    swaps.push(self.prepare_swap(listener, port, &new, true)?);
                }
            }
        }

        // Last, as it is the one preparation that is live at once.
        let new_admin = match admin_target {
            Some(address) => Some(self.start_admin(address).await?),
            None => None,
        };

        // Phase 2: commit; nothing below can fail.
        for swap in swaps {
            let Some(listener) = listeners.get_mut(&swap.key) else {
                continue;
            };
            let port = &swap.route.port;
            if let (Some(tls), Some(endpoint)) = (&port.tls, listener.tls()) {
                if old.port(&swap.key).map(|p| &p.tls) != Some(&port.tls) {
                    endpoint.replace_certificates(tls);
                }
            }
            if let Some(endpoint) = swap.new_endpoint {
                listener.set_tls(endpoint);
            }
            let previous = listener.swap(swap.route);
            let current = listener.shared().route.load();
            previous.retire_health_not_in(Some(&current));
            for departed in previous.departed_backends(&current) {
                inner
                    .metrics
                    .forget_backend(&swap.key.service, &swap.key.port, departed);
            }
        }
        for key in stops {
            if let Some(listener) = listeners.remove(&key) {
                listener.shared().route.load().retire_health_not_in(None);
                self.drain_in_background(listener, new.runtime.shutdown_grace)
                    .await;
            }
        }
        for mut listener in starts {
            listener.start();
            listeners.insert(listener.key().clone(), listener);
        }
        if let Some(admin) = new_admin {
            let previous = self.set_admin(admin);
            if let Some(previous) = previous {
                tokio::spawn(previous.stop());
            }
        }
        inner.plugins.retain_used_by(&new);
        inner
            .access_log
            .store(new.runtime.access_log, Ordering::Relaxed);
        inner.model.store(Arc::new(new));
        inner.live.store(Arc::new(
            listeners
                .iter()
                .map(|(key, l)| {
                    let live = LiveListener {
                        local_addr: l.local_addr(),
                        shared: l.shared().clone(),
                        connections: l.connections().clone(),
                    };
                    (key.clone(), live)
                })
                .collect(),
        ));
        for change in &changes {
            inner.metrics.change(change.kind());
            tracing::info!(change = %change, "applied");
        }
        Ok(changes)
    }

    /// Loads `path` and applies it; on any error the running model keeps serving. Counted in
    /// `gantry_config_reloads_total`.
    pub async fn reload_from_file(&self, path: &Path) -> Result<Vec<Change>, ReloadError> {
        let result = match lb_config::load_file(path) {
            Ok(model) => self.apply(model).await.map_err(ReloadError::from),
            Err(err) => Err(ReloadError::from(err)),
        };
        self.inner.metrics.reload(result.is_ok());
        match &result {
            Ok(changes) if changes.is_empty() => {
                tracing::info!(file = %path.display(), "reload: no change")
            }
            Ok(changes) => {
                tracing::info!(file = %path.display(), changes = changes.len(), "reload applied")
            }
            Err(err) => {
                tracing::error!(file = %path.display(), "reload rejected, previous configuration keeps serving: {err}")
            }
        }
        result
    }

    /// Stops accepting everywhere, lets open work finish for up to `grace`, then closes what
    /// is left and the admin listener.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.ready.store(false, Ordering::Release);
        let listeners = std::mem::take(&mut *self.inner.listeners.lock().await);
        let mut draining = tokio::task::JoinSet::new();
        for (_, mut listener) in listeners {
            listener.begin_drain().await;
            draining.spawn(async move { listener.finish_drain(grace).await });
        }
        while draining.join_next().await.is_some() {}
        self.inner.draining.close();
        self.inner.draining.wait().await;
        self.inner.live.store(Arc::default());
        self.stop_admin().await;
    }

    /// The address a port is bound to (the actual port when configured as 0).
    pub fn listener_addr(&self, service: &str, port: &str) -> Option<SocketAddr> {
        let key = ListenerKey {
            service: service.to_owned(),
            port: port.to_owned(),
        };
        self.inner.live.load().get(&key).map(|l| l.local_addr)
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.inner
            .admin
            .lock()
            .ok()?
            .as_ref()
            .map(SmallServer::local_addr)
    }

    /// The model being served.
    pub fn model(&self) -> Arc<Model> {
        self.inner.model.load_full()
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    fn route_context<'a>(&'a self, tls: Option<&'a TlsEndpoint>) -> RouteContext<'a> {
        RouteContext {
            metrics: &self.inner.metrics,
            tls,
            access_log: &self.inner.access_log,
        }
    }

    /// The policy factories for `port`: the previous route's while a policy is unchanged (no
    /// reload of the plugin for a backend change, and the affinity table is kept), else fresh
    /// ones from the plugin host.
    fn policies_for(
        &self,
        port: &Port,
        previous: Option<&Route>,
        model: &Model,
        limits_changed: bool,
    ) -> Result<RoutePolicies, ApplyError> {
        let failed = |field: String| {
            move |source| {
                ApplyError::Policy(PolicyError {
                    origin: port.origin.to_string(),
                    field,
                    source,
                })
            }
        };
        let kept = previous.filter(|_| !limits_changed);
        let balancer = match kept {
            Some(previous) if previous.port.balancer == port.balancer => {
                previous.policies.balancer.clone()
            }
            _ => self
                .inner
                .plugins
                .factory(&port.balancer, &model.plugin_limits)
                .map_err(failed("balancer".into()))?,
        };
        let affinity = match (kept, &port.affinity) {
            (_, None) => None,
            (Some(previous), Some(policy)) if previous.port.affinity.as_ref() == Some(policy) => {
                previous.policies.affinity.clone()
            }
            (_, Some(policy)) => Some(
                self.inner
                    .plugins
                    .affinity_factory(policy, &model.plugin_limits)
                    .map_err(failed("affinity".into()))?,
            ),
        };
        let health = match kept {
            Some(previous) if previous.port.health == port.health => {
                previous.policies.health.clone()
            }
            _ => {
                let mut checkers = Vec::with_capacity(port.health.len());
                for (slot, policy) in port.health.iter().enumerate() {
                    let policy = self
                        .inner
                        .plugins
                        .health_policy(policy, &model.plugin_limits)
                        .map_err(failed(format!("health[{slot}]")))?;
                    let slot = u8::try_from(slot).unwrap_or(7);
                    checkers.push(Arc::new(HealthChecker::start(policy, slot)));
                }
                checkers
            }
        };
        Ok(RoutePolicies {
            balancer,
            affinity,
            health,
        })
    }

    fn bind(&self, port: &Port, model: &Model) -> Result<Listener, ApplyError> {
        let tls_error = |source| ApplyError::Tls {
            key: port.key.clone(),
            source,
        };
        let endpoint = match &port.tls {
            Some(tls) => Some(Arc::new(TlsEndpoint::new(tls).map_err(tls_error)?)),
            None => None,
        };
        let policies = self.policies_for(port, None, model, false)?;
        let cx = self.route_context(endpoint.as_deref());
        let route = Route::build(port, None, policies, &cx).map_err(tls_error)?;
        Listener::bind(port.key.clone(), port.bind, route, endpoint).map_err(|source| {
            ApplyError::Bind {
                key: port.key.clone(),
                address: port.bind,
                source,
            }
        })
    }

    fn prepare_swap(
        &self,
        listener: &Listener,
        port: &Port,
        model: &Model,
        limits_changed: bool,
    ) -> Result<PreparedSwap, ApplyError> {
        let tls_error = |source| ApplyError::Tls {
            key: port.key.clone(),
            source,
        };
        let new_endpoint = match (&port.tls, listener.tls()) {
            (Some(tls), None) => Some(Arc::new(TlsEndpoint::new(tls).map_err(tls_error)?)),
            _ => None,
        };
        let endpoint = new_endpoint.as_deref().or(listener.tls().map(Arc::as_ref));
        let previous = listener.shared().route.load();
        let policies = self.policies_for(port, Some(&previous), model, limits_changed)?;
        let cx = self.route_context(endpoint);
        let route = Route::build(port, Some(&previous), policies, &cx).map_err(tls_error)?;
        Ok(PreparedSwap {
            key: port.key.clone(),
            route,
            new_endpoint,
        })
    }

    /// Closes the listener's socket now; its connections finish in the background.
    async fn drain_in_background(&self, mut listener: Listener, grace: Duration) {
        listener.begin_drain().await;
        let inner = self.inner.clone();
        self.inner.draining.spawn(async move {
            listener.finish_drain(grace).await;
            let key = listener.key();
            // A rebound port reuses its label sets; only a port that is gone is forgotten.
            if inner.model.load().port(key).is_none() {
                let route = listener.shared().route.load();
                for backend in route.pool.backends() {
                    inner
                        .metrics
                        .forget_backend(&key.service, &key.port, &backend.label);
                }
                inner
                    .metrics
                    .forget_backend(&key.service, &key.port, "none");
                inner.metrics.forget_port(&key.service, &key.port);
            }
        });
    }

    async fn start_admin(&self, address: SocketAddr) -> Result<SmallServer, ApplyError> {
        let admin_error = |source| ApplyError::Admin { address, source };
        let socket = TcpListener::bind(address).await.map_err(admin_error)?;
        let view: Arc<dyn AdminView> = self.inner.clone();
        let server = SmallServer::start(socket, AdminApp::new(view)).map_err(admin_error)?;
        tracing::info!(address = %server.local_addr(), "admin listening");
        Ok(server)
    }

    fn set_admin(&self, server: SmallServer) -> Option<SmallServer> {
        match self.inner.admin.lock() {
            Ok(mut slot) => slot.replace(server),
            Err(poisoned) => poisoned.into_inner().replace(server),
        }
    }

    async fn stop_admin(&self) {
        let server = match self.inner.admin.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(server) = server {
            server.stop().await;
        }
    }
}

/// A key the diff named is in the model it came from.
fn port_of<'a>(model: &'a Model, key: &ListenerKey) -> &'a Port {
    model
        .port(key)
        .expect("the diff names only ports present in the new model")
}

impl AdminView for Inner {
    fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn config_json(&self) -> serde_json::Value {
        let live = self.live.load();
        let listeners: serde_json::Map<String, serde_json::Value> = live
            .iter()
            .map(|(key, l)| {
                let route = l.shared.route.load();
                let backends: Vec<_> = route
                    .pool
                    .backends()
                    .iter()
                    .map(|b| {
                        serde_json::json!({
                            "address": b.label,
                            "backing_off": b.is_backing_off(),
                            "health": b.health_view(),
                            "in_flight": b.metrics.in_flight.get(),
                        })
                    })
                    .collect();
                let state = serde_json::json!({
                    "address": l.local_addr.to_string(),
                    "protocol": route.port.protocol.as_str(),
                    "policy": route.pool.policy(),
                    "affinity": route.policies.affinity.as_ref().map(|a| a.name()),
                    "affinity_entries": route
                        .policies
                        .affinity
                        .as_ref()
                        .and_then(|a| a.table())
                        .map(|t| t.len()),
                    "health": route
                        .policies
                        .health
                        .iter()
                        .map(|h| h.name())
                        .collect::<Vec<_>>(),
                    "open_connections": l.connections.len(),
                    "backends": backends,
                });
                (key.to_string(), state)
            })
            .collect();
        serde_json::json!({
            "config": &*self.model.load_full(),
            "listeners": listeners,
        })
    }
}
