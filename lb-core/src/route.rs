//! What one listener serves, as an immutable snapshot: the port's model, its backend pool, its
//! TLS acceptor and its metric handles. A reload builds a new [`Route`] off the data path and
//! swaps it in; each new connection (and each HTTP request) loads the current one.
//!
//! Build, then activate, as pingora's `LoadBalancer` builds a selector and then stores it:
//! [`Route::build`] only computes (a route built for a reload that is then refused is dropped
//! with no trace); [`Route::activate`] is called at the commit, just before the swap, and does
//! what makes the route live: its metric series appear, health checkers start or are pointed
//! at the new set, and policies prepare what runs them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lb_config::{HashKey, Port};
use lb_policy::{AffinityFactory, BalancerFactory};
use pingora::listeners::tls::Acceptor;

use crate::health::HealthChecker;
use crate::metrics::{BackendMetrics, Metrics, PortMetrics, ShadowRole};
use crate::pool::{BackendPool, Policies, ShadowPolicies, TrafficObserver};
use crate::tls::{Alpn, TlsEndpoint};

/// A listener's serving state.
pub struct Route {
    /// The port as configured.
    pub port: Port,
    /// Port-level metric handles.
    pub metrics: PortMetrics,
    /// Metrics for work that found no backend (`backend="none"`).
    pub unrouted: BackendMetrics,
    /// Backends and the balancer; shared with the previous route when neither changed.
    pub pool: Arc<BackendPool>,
    /// What built the balancer and the affinity; reused while the port's policies stay the
    /// same (which also keeps the affinity table).
    pub policies: RoutePolicies,
    /// Handshakes for `tls` and `https` ports.
    pub tls: Option<Acceptor>,
    /// Whether the port's policies may read an HTTP request's headers: its balancer or
    /// affinity can ask for them, or its hash key is a header or a cookie. Where none can,
    /// the HTTP path builds no header view per request.
    pub reads_headers: bool,
    /// `runtime.access_log`, shared by every route so a reload that changes only `runtime:`
    /// switches it everywhere at once.
    access_log: Arc<AtomicBool>,
}

/// The policy factories of a port.
#[derive(Clone)]
pub struct RoutePolicies {
    /// Builds the balancer for each backend set.
    pub balancer: Arc<dyn BalancerFactory>,
    /// Builds the session affinity for each backend set, if the port has one.
    pub affinity: Option<Arc<dyn AffinityFactory>>,
    /// The port's health policies, in configuration order.
    pub health: Vec<Arc<HealthChecker>>,
    /// Policies run beside the serving ones, their answers only compared.
    pub shadow: ShadowFactories,
}

/// A port's shadow policies, each with the calls it sees per million (see
/// [`crate::pool::ShadowPolicies`]).
#[derive(Clone, Default)]
pub struct ShadowFactories {
    /// Shadows the balancer.
    pub balancer: Option<(Arc<dyn BalancerFactory>, u32)>,
    /// Shadows the session affinity.
    pub affinity: Option<(Arc<dyn AffinityFactory>, u32)>,
}

/// Inputs to [`Route::build`] that come from outside the port's own model.
pub struct RouteContext<'a> {
    /// The listener's TLS state, for TLS ports.
    pub tls: Option<&'a TlsEndpoint>,
    /// The process-wide `runtime.access_log` switch.
    pub access_log: &'a Arc<AtomicBool>,
}

/// What a new route takes over from the one it replaces.
pub enum Carry<'a> {
    /// Nothing: a new port.
    Nothing,
    /// Backend state and metric handles (a port rebuilt whole, or rebound), but a new pool.
    State(&'a Route),
    /// Also the pool itself: neither the backends nor anything the pool is built from changed.
    Pool(&'a Route),
}

impl Route {
    /// Builds the route for `port` with `policies`, taking over from the route it replaces
    /// what `carry` says. Computes only.
    pub fn build(
        port: &Port,
        carry: Carry<'_>,
        policies: RoutePolicies,
        cx: &RouteContext<'_>,
    ) -> Result<Route, rustls::Error> {
        let previous = match carry {
            Carry::Nothing => None,
            Carry::State(previous) | Carry::Pool(previous) => Some(previous),
        };
        let metrics = previous.map_or_else(PortMetrics::new, |p| p.metrics.clone());
        let pool = match carry {
            Carry::Pool(previous) => previous.pool.clone(),
            Carry::Nothing | Carry::State(_) => Arc::new(BackendPool::build(
                &port.backends,
                Policies {
                    balancer: policies.balancer.as_ref(),
                    affinity: policies.affinity.as_deref(),
                    affinity_counters: metrics.affinity.clone(),
                    retries: port.settings.retries,
                    backoff: port.settings.backoff,
                    observers: policies
                        .health
                        .iter()
                        .map(|checker| checker.clone() as Arc<dyn TrafficObserver>)
                        .collect(),
                    shadow: ShadowPolicies {
                        balancer: (policies.shadow.balancer.as_ref())
                            .map(|(factory, rate)| (factory.as_ref(), *rate)),
                        affinity: (policies.shadow.affinity.as_ref())
                            .map(|(factory, rate)| (factory.as_ref(), *rate)),
                        counters: metrics.shadow.clone(),
                    },
                },
                previous.map(|p| p.pool.as_ref()),
            )),
        };
        let alpn = if port.protocol.is_http() {
            Alpn::Http
        } else {
            Alpn::None
        };
        let tls = match (port.protocol.terminates_tls(), cx.tls) {
            (true, Some(endpoint)) => Some(endpoint.acceptor(alpn)?),
            _ => None,
        };
        let shadows = &policies.shadow;
        let reads_headers = policies.balancer.reads_headers()
            || (policies.affinity.as_ref()).is_some_and(|a| a.reads_headers())
            || (shadows.balancer.as_ref()).is_some_and(|(b, _)| b.reads_headers())
            || (shadows.affinity.as_ref()).is_some_and(|(a, _)| a.reads_headers())
            || !matches!(port.balancer.hash_key, HashKey::ClientIp);
        Ok(Route {
            reads_headers,
            metrics,
            unrouted: previous.map_or_else(BackendMetrics::new, |p| p.unrouted.clone()),
            pool,
            policies,
            tls,
            access_log: cx.access_log.clone(),
            port: port.clone(),
        })
    }

    /// A route for `port` outside any listener, with Gantry's native balancer and no
    /// affinity, health checking, TLS or access log: for tests and fuzzing.
    pub fn standalone(port: &Port) -> Result<Route, rustls::Error> {
        let policies = RoutePolicies {
            balancer: Arc::new(lb_policy::RoundRobin),
            affinity: None,
            health: Vec::new(),
            shadow: ShadowFactories::default(),
        };
        let cx = RouteContext {
            tls: None,
            access_log: &Arc::new(AtomicBool::new(false)),
        };
        Route::build(port, Carry::Nothing, policies, &cx)
    }

    /// Makes this route live, just before it replaces `previous` (if any): the health
    /// checkers `previous` had and this route does not are retired, new checkers start and
    /// judge every backend afresh, all of them watch this route's backends, the pool's
    /// policies prepare, and the port's series are shown.
    pub fn activate(&self, previous: Option<&Route>, metrics: &Metrics) {
        if let Some(previous) = previous {
            previous.retire_health_not_in(Some(self));
        }
        let same_checkers = previous.is_some_and(|p| {
            p.policies.health.len() == self.policies.health.len()
                && p.policies
                    .health
                    .iter()
                    .zip(&self.policies.health)
                    .all(|(a, b)| Arc::ptr_eq(a, b))
        });
        if !same_checkers {
            // New policies judge afresh: earlier verdicts on carried-over backends are void.
            for state in self.pool.backends() {
                state.reset_health();
            }
        }
        let figures = self.pool.figures();
        for checker in &self.policies.health {
            checker.watch(&self.port.backends, self.pool.backends(), figures.clone());
            checker.start();
        }
        if !previous.is_some_and(|p| Arc::ptr_eq(&p.pool, &self.pool)) {
            self.pool.activate();
        }
        let shadow = &self.policies.shadow;
        let counters = &self.metrics.shadow;
        counters.set_shadowed(ShadowRole::Balancer, shadow.balancer.is_some());
        counters.set_shadowed(ShadowRole::Affinity, shadow.affinity.is_some());
        let key = &self.port.key;
        metrics.show_port(key, &self.metrics);
        metrics.show_unrouted(key, &self.unrouted);
        for backend in self.pool.backends() {
            metrics.show_backend(key, &backend.label, &backend.metrics);
        }
    }

    /// This route was replaced by `next`: the series of backends `next` no longer has are
    /// hidden.
    pub fn replaced_by(&self, next: &Route, metrics: &Metrics) {
        for old in self.pool.backends() {
            if !next.pool.contains(old.address) {
                metrics.hide_backend(&self.port.key, &old.label);
            }
        }
    }

    /// Retires the health checkers of this route that `next` does not carry on (all of them
    /// when the port is removed): a route kept alive by a long connection must not go on
    /// judging backends.
    pub fn retire_health_not_in(&self, next: Option<&Route>) {
        for checker in &self.policies.health {
            let kept =
                next.is_some_and(|n| n.policies.health.iter().any(|c| Arc::ptr_eq(c, checker)));
            if !kept {
                checker.retire();
            }
        }
    }

    /// Whether to emit access log lines now.
    pub fn logs_access(&self) -> bool {
        self.access_log.load(Ordering::Relaxed)
    }
}

/// Shared handle to a listener's current route.
pub type RouteCell = Arc<arc_swap::ArcSwap<Route>>;
