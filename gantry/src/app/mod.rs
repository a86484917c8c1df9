//! The running appliance. [`Gantry`] only ever receives [`Model`]s, whatever their source (the
//! file source is `crate::reload`); [`Gantry::apply`] moves it from the running model to a new
//! one by the typed diff ([`apply`]). Starting is applying the first model to an empty one.

mod apply;
mod handoff;
mod sources;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use lb_config::{Kubernetes, ListenerKey, Model, ModelBuilder};
use lb_plugins::PluginHost;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminApp, AdminView, ListenerState};
use crate::explain::{ExplainError, ExplainRequest, Explainer};
use lb_core::connection::ListenerShared;
use lb_core::http_server::{BoundServer, SmallServer};
use lb_core::listener::{Listener, OpenCount};
use lb_core::metrics::Metrics;

use crate::kube_metrics::KubeMetrics;
use crate::routing::{Routes, Served};
use lb_core::sockets::{Inherited, Sockets};

pub use apply::{ApplyError, PolicyError};
pub use handoff::HandedSocket;
pub use sources::FileApplyError;

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
    /// The Kubernetes source's metrics, in the same registry.
    kube: Arc<KubeMetrics>,
    plugins: PluginHost,
    /// The UDP sockets by address, and the sockets a predecessor handed over.
    sockets: Sockets,
    admin: Mutex<Option<SmallServer>>,
    ready: AtomicBool,
    /// `runtime.access_log`, read by every route.
    access_log: Arc<AtomicBool>,
    /// Listeners removed by reloads, finishing their connections.
    draining: TaskTracker,
    /// The last good state of each source; its lock serializes rebuilding the model.
    sources: tokio::sync::Mutex<sources::Sources>,
    /// The file's builder, for checking Kubernetes services without that lock.
    file: ArcSwapOption<ModelBuilder>,
    /// Serializes reloads from the configuration file, and holds the fingerprint of the files
    /// they last applied: a reload of the same files is a no-op.
    file_inputs: tokio::sync::Mutex<Option<u64>>,
    /// The `kubernetes:` section of the running model, followed by the Kubernetes source.
    kubernetes: tokio::sync::watch::Sender<Option<Kubernetes>>,
    /// Stops the Kubernetes source.
    kubernetes_stop: CancellationToken,
    kubernetes_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Announces the served addresses through the routing daemon.
    routes: Routes,
    /// Answers `/explain`, with plugin instances of its own.
    explainer: Explainer,
}

#[derive(Clone)]
struct LiveListener {
    local_addr: SocketAddr,
    shared: Arc<ListenerShared>,
    open: OpenCount,
}

impl Gantry {
    /// Starts serving `model` (with no file to check another source's services against).
    pub async fn start(model: Model) -> Result<Gantry, ApplyError> {
        Self::start_with(model, None, Inherited::default()).await
    }

    /// Starts serving the configuration file `builder` holds (checked:
    /// [`lb_config::load_builder`]), and the Kubernetes source when it has that section.
    pub async fn start_file(builder: ModelBuilder) -> Result<Gantry, FileApplyError> {
        let model = builder
            .clone()
            .finish()
            .map_err(lb_config::ConfigError::Invalid)?;
        Ok(Self::start_with(model, Some(builder), Inherited::default()).await?)
    }

    async fn start_with(
        model: Model,
        file: Option<ModelBuilder>,
        inherited: Inherited,
    ) -> Result<Gantry, ApplyError> {
        let metrics = Arc::new(Metrics::new());
        let kube = Arc::new(KubeMetrics::new(metrics.registry()));
        crate::build_info::register(metrics.registry());
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
            kubernetes: None,
            routing: None,
        };
        let gantry = Gantry {
            inner: Arc::new(Inner {
                model: ArcSwap::from_pointee(empty),
                listeners: tokio::sync::Mutex::new(BTreeMap::new()),
                live: ArcSwap::default(),
                metrics,
                kube,
                plugins,
                sockets: Sockets::inheriting(inherited),
                admin: Mutex::new(None),
                ready: AtomicBool::new(false),
                access_log: Arc::new(AtomicBool::new(model.runtime.access_log)),
                draining: TaskTracker::new(),
                file: ArcSwapOption::new(file.clone().map(Arc::new)),
                file_inputs: tokio::sync::Mutex::new(None),
                sources: tokio::sync::Mutex::new(sources::Sources::with_file(file)),
                kubernetes: tokio::sync::watch::channel(None).0,
                kubernetes_stop: CancellationToken::new(),
                kubernetes_task: Mutex::new(None),
                routes: Routes::new(),
                explainer: Explainer::default(),
            }),
        };
        let admin = gantry
            .bind_admin(model.admin.listen)
            .await
            .map_err(|source| ApplyError::Admin {
                address: model.admin.listen,
                source,
            })?;
        if admin.fresh() && !crate::handover::started_by_a_legacy_parent() {
            let address = admin.local_addr();
            let held = lb_core::ports::held_elsewhere(&[(lb_core::ports::Transport::Tcp, address)]);
            if let Some((transport, holder)) = held {
                return Err(ApplyError::PortHeld {
                    key: None,
                    address,
                    transport,
                    holder: Box::new(holder),
                });
            }
        }
        gantry.set_admin(gantry.serve_admin(admin));
        if let Err(err) = gantry.apply(model).await {
            gantry.stop_admin().await;
            return Err(err);
        }
        let unused = gantry.inner.sockets.close_unused_inherited();
        if unused > 0 {
            tracing::info!(
                sockets = unused,
                "closed sockets handed over for ports this configuration does not have"
            );
        }
        let task = crate::kubernetes::supervise(
            Arc::new(gantry.clone()),
            gantry.inner.kube.clone(),
            gantry.inner.kubernetes.subscribe(),
            gantry.inner.kubernetes_stop.clone(),
        );
        if let Ok(mut slot) = gantry.inner.kubernetes_task.lock() {
            *slot = Some(task);
        }
        let served: Arc<dyn Served> = gantry.inner.clone();
        gantry
            .inner
            .routes
            .start(served, gantry.inner.metrics.clone());
        log_warnings(&gantry.inner.model.load(), None);
        gantry.inner.ready.store(true, Ordering::Release);
        tracing::info!("ready");
        Ok(gantry)
    }

    /// Withdraws every address from the routing daemon (when there is a `routing:` section)
    /// and serves on for `routing.withdraw_delay`, so routers stop sending here before the
    /// listeners close: the first step of a stop that no successor takes over from. `/readyz`
    /// answers 503 from its start.
    pub async fn withdraw_routes(&self) {
        self.inner.ready.store(false, Ordering::Release);
        self.inner.routes.withdraw().await;
    }

    /// Stops accepting everywhere, lets open work finish for up to `grace`, then closes what
    /// is left and the admin listener. Routes stay as they are: withdrawn before
    /// ([`Gantry::withdraw_routes`]), or announced by a successor.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.ready.store(false, Ordering::Release);
        self.inner.routes.stop().await;
        self.inner.kubernetes_stop.cancel();
        let task = self
            .inner
            .kubernetes_task
            .lock()
            .ok()
            .and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
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

    /// The fingerprint of the configuration files last applied, locked for one reload.
    pub(crate) fn file_inputs(&self) -> &tokio::sync::Mutex<Option<u64>> {
        &self.inner.file_inputs
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    fn serve_admin(&self, bound: BoundServer) -> SmallServer {
        let view: Arc<dyn AdminView> = self.inner.clone();
        let server = bound.serve(AdminApp::new(view));
        tracing::info!(address = %server.local_addr(), "admin listening");
        server
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

impl Served for Inner {
    fn served(&self) -> BTreeMap<std::net::IpAddr, bool> {
        let mut served = BTreeMap::new();
        for listener in self.live.load().values() {
            let route = listener.shared.route.load();
            let healthy = route.pool.backends().iter().any(|b| b.is_healthy());
            *served.entry(listener.local_addr.ip()).or_insert(false) |= healthy;
        }
        served
    }
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
        let listeners = live.iter().map(|(key, l)| ListenerState {
            key,
            address: l.local_addr,
            route: l.shared.route.load_full(),
            open_connections: l.open.get(),
        });
        let leadership = self.kube.leadership();
        let model = self.model.load_full();
        let routing = model.routing.as_ref().map(|_| self.routes.shown());
        admin::config_document(&model, listeners, leadership.as_ref(), routing.as_ref())
    }

    fn explain(&self, query: &str) -> Result<serde_json::Value, ExplainError> {
        let request = ExplainRequest::from_query(query).map_err(ExplainError::BadRequest)?;
        let key = ListenerKey {
            service: request.service.clone(),
            port: request.port.clone(),
        };
        let route = (self.live.load().get(&key))
            .map(|listener| listener.shared.route.load_full())
            .ok_or_else(|| ExplainError::NotFound(format!("no port {key} is served")))?;
        self.explainer.explain(&self.model.load(), &route, &request)
    }

    fn authorized(&self, authorization: Option<&[u8]>) -> admin::Authorization {
        admin::Authorization::of(&self.model.load().admin, authorization)
    }
}

/// Logs the warnings of `model` (see [`lb_config::Model::warnings`]): all of them, or those
/// `previous` did not have already.
pub(crate) fn log_warnings(model: &Model, previous: Option<&Model>) {
    let known = previous.map(Model::warnings).unwrap_or_default();
    for warning in model.warnings() {
        if !known.contains(&warning) {
            tracing::warn!(field = %warning.field, "{}", warning.message);
        }
    }
}
