//! The reconcile: from the running model to a new one, driven by the typed diff.
//!
//! Build, then activate. [`Gantry::apply`] first *builds* a [`Plan`] from the changes: it binds
//! new sockets (not accepting yet), creates TLS state, loads and checks plugins, and builds
//! routes, all of which only compute; nothing live (a running listener, a health checker, a
//! backend's state, a plugin instance, a metric series) is touched, so a reload that fails at
//! any step of the build leaves no trace. Then it *commits* the plan, which cannot fail: routes
//! are activated and swapped in, listeners start or drain, and the new model is stored.
//!
//! The build is a `match` over the changes; what a change names is all it acts on (Sozu's
//! `ConfigState::diff` → requests). It compares no fields of its own.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lb_config::{
    Change, FieldPath, ListenerKey, Model, Port, PortAspect, PortAspects, RuntimeAspect,
    RuntimeAspects, ServiceSource,
};
use lb_plugins::PluginError;

use super::{Gantry, LiveListener};
use lb_core::health::HealthChecker;
use lb_core::http_server::BoundServer;
use lb_core::listener::Listener;
use lb_core::route::{Carry, Route, RouteContext, RoutePolicies, ShadowFactories};
use lb_core::tls::TlsEndpoint;

/// Why a model could not be applied; the running model keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A port's address and port are held by another process: binding beside it would share
    /// them (the kernel lets sockets of one user with `SO_REUSEPORT` do that).
    #[error(
        "{address}/{transport} is already held by {holder}: Gantry shares a port only with the \
         Gantry it takes over from. Stop that process, or if it is a Gantry to replace, start \
         this one with --takeover (and its --control-socket)"
    )]
    PortHeld {
        /// The port (none: the admin endpoint).
        key: Option<ListenerKey>,
        /// The address this configuration binds.
        address: SocketAddr,
        /// Its protocol.
        transport: lb_core::ports::Transport,
        /// The other socket and its process.
        holder: Box<lb_core::ports::Holder>,
    },
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
    /// A port's policy plugin cannot be used (it failed to load, or refused the port's
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
    /// Where the port is in its source (`services[0].ports[1]`).
    pub origin: FieldPath,
    /// `balancer`, `affinity` or `health[i]`.
    pub field: String,
    /// What is wrong with its plugin.
    pub source: PluginError,
}

/// Everything a reload will do, built with nothing live touched.
#[derive(Default)]
struct Plan {
    /// New listeners, bound but not accepting, each with the route it replaces (a rebound
    /// port's old route, whose state it carries on).
    starts: Vec<(Listener, Option<Arc<Route>>)>,
    /// Listeners to drain.
    stops: Vec<ListenerKey>,
    /// New routes for kept listeners.
    swaps: Vec<Swap>,
    /// The admin listener's new socket.
    admin: Option<BoundServer>,
    /// Process-wide settings that changed.
    runtime: RuntimeAspects,
    /// Whether the plugins' sandbox limits changed.
    plugin_limits: bool,
    /// Whether the set of plugins in use may have changed (a port came, went, or changed its
    /// policies): only then does the plugin host need to hear of the new model.
    plugins_in_use: bool,
}

/// A new route for a kept listener.
struct Swap {
    key: ListenerKey,
    route: Route,
    /// TLS state for a port that did not terminate TLS before.
    new_endpoint: Option<Arc<TlsEndpoint>>,
    /// The listener's certificates are replaced.
    certificates: bool,
}

/// The aspects that name plugins.
const POLICY_ASPECTS: [PortAspect; 4] = [
    PortAspect::Balancer,
    PortAspect::Affinity,
    PortAspect::Health,
    PortAspect::Shadow,
];

/// The aspects a backend pool is built from: when none changed, a port keeps its pool.
const POOL_ASPECTS: [PortAspect; 6] = [
    PortAspect::Backends,
    PortAspect::Settings,
    PortAspect::Balancer,
    PortAspect::Affinity,
    PortAspect::Health,
    PortAspect::Shadow,
];

impl Gantry {
    /// Moves to `new`, changing only what differs; returns what changed. On an error nothing
    /// changed.
    pub async fn apply(&self, new: Model) -> Result<Vec<Change>, ApplyError> {
        self.apply_with(|old| {
            let changes = lb_config::diff(old, &new);
            (new, changes)
        })
        .await
    }

    /// Moves to the model `next` makes of the running one, with the changes it says; for a
    /// source that knows what it changed, so that neither making the model nor diffing it
    /// costs with the services it did not touch. On an error nothing changed.
    pub(crate) async fn apply_with(
        &self,
        next: impl FnOnce(&Model) -> (Model, Vec<Change>),
    ) -> Result<Vec<Change>, ApplyError> {
        let mut listeners = self.inner.listeners.lock().await;
        let old = self.inner.model.load_full();
        let diffing = std::time::Instant::now();
        let (new, changes) = next(&old);
        let diffed = diffing.elapsed();
        if changes.is_empty() {
            return Ok(changes);
        }
        let started = std::time::Instant::now();
        let plan = self.build(&changes, &new, &listeners).await?;
        let built = started.elapsed();
        let kubernetes = new.kubernetes.clone();
        let routing = new.routing.clone();
        self.commit(plan, new, &mut listeners).await;
        // What serves may have changed (the announcer also reads the health it follows).
        self.inner.routes.follow(routing.as_ref());
        self.inner.kubernetes.send_if_modified(|section| {
            let changed = *section != kubernetes;
            *section = kubernetes;
            changed
        });
        for change in &changes {
            self.inner.metrics.change(change.kind());
            tracing::info!(change = %change, "applied");
        }
        super::log_warnings(&self.inner.model.load(), Some(&old));
        let ms = lb_core::logging::millis;
        tracing::info!(
            changes = changes.len(),
            diff_ms = ms(diffed),
            build_ms = ms(built),
            apply_ms = ms(started.elapsed()),
            "reconciled"
        );
        Ok(changes)
    }

    /// Builds the plan for `changes`: every fallible step, nothing live touched.
    async fn build(
        &self,
        changes: &[Change],
        new: &Model,
        listeners: &std::collections::BTreeMap<ListenerKey, Listener>,
    ) -> Result<Plan, ApplyError> {
        let mut plan = Plan::default();
        for change in changes {
            if matches!(
                change,
                Change::ListenerAdded(_)
                    | Change::ListenerRemoved(_)
                    | Change::ListenerRebound { .. }
            ) {
                plan.plugins_in_use = true;
            }
            match change {
                Change::ListenerAdded(key) => {
                    plan.starts.push((self.bind(new, key, None)?, None));
                }
                Change::ListenerRemoved(key) => plan.stops.push(key.clone()),
                Change::ListenerRebound { key, .. } => {
                    let previous = listeners.get(key).map(Listener::route);
                    let listener = self.bind(new, key, previous.as_deref())?;
                    plan.stops.push(key.clone());
                    plan.starts.push((listener, previous));
                }
                Change::PortChanged { key, what } => {
                    plan.plugins_in_use |= POLICY_ASPECTS.iter().any(|a| what.contains(*a));
                    if let Some(listener) = listeners.get(key) {
                        plan.swaps
                            .push(self.prepare_swap(listener, port_of(new, key), *what)?);
                    }
                }
                Change::AdminChanged { to, .. } => {
                    let bound = self
                        .bind_admin(*to)
                        .await
                        .map_err(|source| ApplyError::Admin {
                            address: *to,
                            source,
                        })?;
                    plan.admin = Some(bound);
                }
                Change::RuntimeChanged(what) => plan.runtime = *what,
                Change::PluginLimitsChanged => {
                    plan.plugin_limits = true;
                    plan.plugins_in_use = true;
                }
                // Storing the new model is all these take: the Kubernetes source and the
                // announcer follow their sections of the model (each restarts when its
                // changes), and a service's source
                // is shown by the admin endpoint, which also reads its token from the model.
                Change::KubernetesChanged
                | Change::RoutingChanged
                | Change::SourceChanged(_)
                | Change::AdminTokenChanged => {}
            }
        }
        check_ports_held_elsewhere(&plan)?;
        Ok(plan)
    }

    /// Carries out `plan` and stores `new`; nothing here can fail.
    async fn commit(
        &self,
        plan: Plan,
        new: Model,
        listeners: &mut std::collections::BTreeMap<ListenerKey, Listener>,
    ) {
        let inner = &self.inner;
        let listeners_changed = !plan.starts.is_empty() || !plan.stops.is_empty();
        if plan.plugin_limits {
            inner.plugins.set_limits(&new.plugin_limits);
            if inner.model.load().plugin_limits.memory_bytes != new.plugin_limits.memory_bytes {
                tracing::warn!("plugin_limits.memory_mib takes effect at the next start");
            }
        }
        for swap in plan.swaps {
            let Some(listener) = listeners.get_mut(&swap.key) else {
                continue;
            };
            if let (true, Some(endpoint), Some(tls)) =
                (swap.certificates, listener.tls(), &swap.route.port.tls)
            {
                endpoint.replace_certificates(tls);
            }
            if let Some(endpoint) = swap.new_endpoint {
                listener.set_tls(endpoint);
            }
            let previous = listener.route();
            swap.route.activate(Some(&previous), &inner.metrics);
            let previous = listener.swap(swap.route);
            previous.replaced_by(&listener.route(), &inner.metrics);
        }
        // New listeners start before the ones they replace drain: a UDP port that takes over
        // the socket of one going away must be serving it when that one stops taking new flows,
        // and a TCP port at an address another is leaving listens before that one closes.
        let stopping: Vec<Listener> = plan
            .stops
            .iter()
            .filter_map(|key| listeners.remove(key))
            .collect();
        for (mut listener, previous) in plan.starts {
            listener
                .route()
                .activate(previous.as_deref(), &inner.metrics);
            listener.start();
            listeners.insert(listener.key().clone(), listener);
        }
        for listener in stopping {
            listener.route().retire_health_not_in(None);
            self.drain_in_background(listener, new.runtime.shutdown_grace)
                .await;
        }
        if let Some(bound) = plan.admin {
            let previous = self.set_admin(self.serve_admin(bound));
            if let Some(previous) = previous {
                tokio::spawn(previous.stop());
            }
        }
        for aspect in plan.runtime.iter() {
            match aspect {
                RuntimeAspect::AccessLog => inner
                    .access_log
                    .store(new.runtime.access_log, Ordering::Relaxed),
                RuntimeAspect::Workers => {
                    tracing::warn!("runtime.workers takes effect at the next start")
                }
                RuntimeAspect::PluginCache => {
                    tracing::warn!("runtime.plugin_cache takes effect at the next start")
                }
                // Read where they are used: at the next drain, at the next poll.
                RuntimeAspect::ShutdownGrace | RuntimeAspect::WatchInterval => {}
            }
        }
        if plan.plugins_in_use {
            inner.plugins.commit(&new);
        }
        inner.model.store(Arc::new(new));
        // The view of the listeners follows their routes by itself; only a listener that came
        // or went changes it.
        if listeners_changed {
            inner.live.store(Arc::new(
                listeners
                    .iter()
                    .map(|(key, l)| {
                        let live = LiveListener {
                            local_addr: l.local_addr(),
                            shared: l.shared().clone(),
                            open: l.open_count(),
                        };
                        (key.clone(), live)
                    })
                    .collect(),
            ));
        }
    }

    fn route_context<'a>(&'a self, tls: Option<&'a TlsEndpoint>) -> RouteContext<'a> {
        RouteContext {
            tls,
            access_log: &self.inner.access_log,
        }
    }

    /// The policies of `port` that `fresh` names are built anew from the plugin host; the
    /// others are `previous`'s (no reload of the plugin for a backend change, and the
    /// affinity table is kept).
    fn policies(
        &self,
        port: &Port,
        previous: Option<&RoutePolicies>,
        fresh: PortAspects,
    ) -> Result<RoutePolicies, ApplyError> {
        let failed = |field: String| {
            move |source| {
                ApplyError::Policy(PolicyError {
                    origin: port.origin.0.clone(),
                    field,
                    source,
                })
            }
        };
        let plugins = &self.inner.plugins;
        let kept = |aspect| previous.filter(|_| !fresh.contains(aspect));
        let balancer = match kept(PortAspect::Balancer) {
            Some(previous) => previous.balancer.clone(),
            None => plugins
                .factory(&port.balancer, port.protocol)
                .map_err(failed("balancer".into()))?,
        };
        let affinity = match (kept(PortAspect::Affinity), &port.affinity) {
            (Some(previous), _) => previous.affinity.clone(),
            (None, None) => None,
            (None, Some(policy)) => Some(
                plugins
                    .affinity_factory(policy, port.protocol)
                    .map_err(failed("affinity".into()))?,
            ),
        };
        let health = match kept(PortAspect::Health) {
            Some(previous) => previous.health.clone(),
            None => {
                let mut checkers = Vec::with_capacity(port.health.len());
                for (slot, policy) in port.health.iter().enumerate() {
                    let policy = plugins
                        .health_policy(policy, port.protocol)
                        .map_err(failed(format!("health[{slot}]")))?;
                    let slot = u8::try_from(slot).unwrap_or(7);
                    checkers.push(Arc::new(HealthChecker::new(policy, slot)));
                }
                checkers
            }
        };
        // A shadow is rebuilt when it or what it stands beside changed; what serves is kept
        // when only a shadow changed.
        let shadow_kept = [
            PortAspect::Shadow,
            PortAspect::Balancer,
            PortAspect::Affinity,
        ]
        .iter()
        .all(|aspect| !fresh.contains(*aspect));
        let shadow = match previous.filter(|_| shadow_kept) {
            Some(previous) => previous.shadow.clone(),
            None => ShadowFactories {
                balancer: match &port.shadow.balancer {
                    Some(shadow) => Some((
                        (plugins.shadow_factory(shadow, port.protocol))
                            .map_err(failed("balancer.shadow".into()))?,
                        shadow.sample_per_million,
                    )),
                    None => None,
                },
                affinity: match (&port.shadow.affinity, &port.affinity) {
                    (Some(shadow), Some(serving)) => Some((
                        (plugins.shadow_affinity_factory(
                            shadow,
                            serving.max_entries,
                            port.protocol,
                        ))
                        .map_err(failed("affinity.shadow".into()))?,
                        shadow.sample_per_million,
                    )),
                    _ => None,
                },
            },
        };
        Ok(RoutePolicies {
            balancer,
            affinity,
            health,
            shadow,
        })
    }

    /// A listener for `port`, bound but not accepting, carrying the state of `previous` (the
    /// route of the port it replaces at another address) with all-new policies.
    ///
    /// A Kubernetes service binds with `freebind`: its address comes from a pool and may be
    /// routed to the appliance rather than configured on it. A static service's address must
    /// be the host's, so a typo fails loudly.
    fn bind(
        &self,
        model: &Model,
        key: &ListenerKey,
        previous: Option<&Route>,
    ) -> Result<Listener, ApplyError> {
        let port = port_of(model, key);
        let freebind = model
            .services
            .get(&key.service)
            .is_some_and(|s| matches!(s.source, ServiceSource::Kubernetes(_)));
        let tls_error = |source| ApplyError::Tls {
            key: port.key.clone(),
            source,
        };
        let endpoint = match &port.tls {
            Some(tls) => Some(Arc::new(TlsEndpoint::new(tls).map_err(tls_error)?)),
            None => None,
        };
        let all = PortAspects::of(PortAspect::ALL);
        let policies = self.policies(port, None, all)?;
        let carry = previous.map_or(Carry::Nothing, Carry::State);
        let cx = self.route_context(endpoint.as_deref());
        let route = Route::build(port, carry, policies, &cx).map_err(tls_error)?;
        Listener::bind(
            port.key.clone(),
            port.bind,
            freebind,
            route,
            endpoint,
            &self.inner.sockets,
        )
        .map_err(|source| ApplyError::Bind {
            key: port.key.clone(),
            address: port.bind,
            source,
        })
    }

    /// The new route of a kept listener whose port changed in `what`.
    fn prepare_swap(
        &self,
        listener: &Listener,
        port: &Port,
        what: PortAspects,
    ) -> Result<Swap, ApplyError> {
        let tls_error = |source| ApplyError::Tls {
            key: port.key.clone(),
            source,
        };
        // A port that now terminates TLS needs the listener's long-lived TLS state.
        let new_endpoint = match (&port.tls, listener.tls()) {
            (Some(tls), None) => Some(Arc::new(TlsEndpoint::new(tls).map_err(tls_error)?)),
            _ => None,
        };
        let endpoint = new_endpoint.as_deref().or(listener.tls().map(Arc::as_ref));
        let previous = listener.route();
        let policies = self.policies(port, Some(&previous.policies), what)?;
        let carry = if POOL_ASPECTS.iter().any(|a| what.contains(*a)) {
            Carry::State(&previous)
        } else {
            Carry::Pool(&previous)
        };
        let cx = self.route_context(endpoint);
        let route = Route::build(port, carry, policies, &cx).map_err(tls_error)?;
        Ok(Swap {
            key: port.key.clone(),
            route,
            new_endpoint,
            certificates: what.contains(PortAspect::Certificates),
        })
    }

    /// Closes the listener's socket now; its connections finish in the background, then the
    /// series of a port that is gone are hidden (a rebound port keeps them).
    async fn drain_in_background(&self, mut listener: Listener, grace: Duration) {
        listener.begin_drain().await;
        let inner = self.inner.clone();
        self.inner.draining.spawn(async move {
            listener.finish_drain(grace).await;
            let key = listener.key();
            if inner.model.load().port(key).is_none() {
                inner.metrics.hide_port(key);
            }
        });
    }
}

/// A key the diff named is in the model it came from.
fn port_of<'a>(model: &'a Model, key: &ListenerKey) -> &'a Port {
    model
        .port(key)
        .expect("the diff names only ports present in the new model")
}

/// Fails if a socket the plan bound shares its port with another process's ([`lb_core::ports`]):
/// the plan is dropped then, and its sockets close before they listen or serve.
fn check_ports_held_elsewhere(plan: &Plan) -> Result<(), ApplyError> {
    // A Gantry from before the control socket hands over by letting its new process bind
    // beside it: its sockets are shared on purpose then.
    if crate::handover::started_by_a_legacy_parent() {
        return Ok(());
    }
    let mut bound: Vec<_> = plan
        .starts
        .iter()
        .filter_map(|(listener, _)| {
            let (transport, address) = listener.freshly_bound()?;
            Some((transport, address, Some(listener.key().clone())))
        })
        .collect();
    if let Some(admin) = plan.admin.as_ref().filter(|admin| admin.fresh()) {
        bound.push((lb_core::ports::Transport::Tcp, admin.local_addr(), None));
    }
    let wanted: Vec<_> = bound.iter().map(|(t, a, _)| (*t, *a)).collect();
    let Some((transport, holder)) = lb_core::ports::held_elsewhere(&wanted) else {
        return Ok(());
    };
    let (address, key) = bound
        .into_iter()
        .find(|(t, a, _)| *t == transport && a.port() == holder.address.port())
        .map_or((holder.address, None), |(_, a, key)| (a, key));
    Err(ApplyError::PortHeld {
        key,
        address,
        transport,
        holder: Box::new(holder),
    })
}
