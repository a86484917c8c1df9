//! What one listener serves, as an immutable snapshot: the port's model, its backend pool, its
//! TLS acceptor and pre-resolved metric handles. A reload builds a new [`Route`] off the data
//! path and swaps it in; each new connection (and each HTTP request) loads the current one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lb_config::Port;
use pingora::listeners::tls::Acceptor;

use crate::affinity::AffinityFactory;
use crate::balancer::BalancerFactory;
use crate::health::{HealthChecker, Outcome};
use crate::metrics::{BackendMetrics, Metrics, PortMetrics};
use crate::pool::BackendState;
use crate::pool::{BackendPool, Policies};
use crate::tls::{Alpn, TlsEndpoint};

/// A listener's serving state.
pub struct Route {
    /// The port as configured.
    pub port: Port,
    /// Port-level metric handles.
    pub metrics: PortMetrics,
    /// Metrics for work that found no backend (`backend="none"`).
    pub unrouted: BackendMetrics,
    /// Backends and the balancer.
    pub pool: BackendPool,
    /// What built the balancer and the affinity; reused while the port's policies stay the
    /// same (which also keeps the affinity table).
    pub policies: RoutePolicies,
    /// Handshakes for `tls` and `https` ports.
    pub tls: Option<Acceptor>,
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
    /// The port's health policies at work, in configuration order.
    pub health: Vec<Arc<HealthChecker>>,
}

/// Inputs to [`Route::build`] that come from outside the port's own model.
pub struct RouteContext<'a> {
    /// Metric registry.
    pub metrics: &'a Metrics,
    /// The listener's TLS state, for TLS ports.
    pub tls: Option<&'a TlsEndpoint>,
    /// The process-wide `runtime.access_log` switch.
    pub access_log: &'a Arc<AtomicBool>,
}

impl Route {
    /// Builds the route for `port` with `policies`, carrying backend state over from
    /// `previous`.
    pub fn build(
        port: &Port,
        previous: Option<&Route>,
        policies: RoutePolicies,
        cx: &RouteContext<'_>,
    ) -> Result<Route, rustls::Error> {
        let (service, name) = (port.key.service.as_str(), port.key.port.as_str());
        let metrics = cx.metrics.port(service, name);
        let pool = BackendPool::build(
            &port.backends,
            Policies {
                balancer: policies.balancer.as_ref(),
                affinity: policies.affinity.as_deref(),
                affinity_counters: metrics.affinity.clone(),
                retries: port.settings.retries,
                backoff: port.settings.backoff,
            },
            previous.map(|r| &r.pool),
            |backend| cx.metrics.backend(service, name, backend),
        );
        let same_checkers = previous.is_some_and(|p| {
            p.policies.health.len() == policies.health.len()
                && p.policies
                    .health
                    .iter()
                    .zip(&policies.health)
                    .all(|(a, b)| Arc::ptr_eq(a, b))
        });
        if !same_checkers {
            // New policies judge afresh: earlier verdicts on carried-over backends are void.
            for state in pool.backends() {
                state.reset_health();
            }
        }
        for checker in &policies.health {
            checker.watch(&port.backends, pool.backends(), pool.figures());
        }
        let alpn = if port.protocol.is_http() {
            Alpn::Http
        } else {
            Alpn::None
        };
        let tls = match (port.protocol.terminates_tls(), cx.tls) {
            (true, Some(endpoint)) => Some(endpoint.acceptor(alpn)?),
            _ => None,
        };
        Ok(Route {
            metrics,
            unrouted: cx.metrics.backend(service, name, "none"),
            pool,
            policies,
            tls,
            access_log: cx.access_log.clone(),
            port: port.clone(),
        })
    }

    /// Reports how real traffic to `backend` went, to the health policies that watch traffic.
    pub fn observe(&self, backend: &Arc<BackendState>, outcome: Outcome) {
        for checker in &self.policies.health {
            checker.observe(backend, outcome);
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

    /// Backends `self` had that `next` no longer has (their metrics can be forgotten).
    pub fn departed_backends<'a>(&'a self, next: &'a Route) -> impl Iterator<Item = &'a str> {
        self.pool
            .backends()
            .iter()
            .filter(|old| {
                !next
                    .pool
                    .backends()
                    .iter()
                    .any(|new| new.address == old.address)
            })
            .map(|old| old.label.as_str())
    }
}

/// Shared handle to a listener's current route.
pub type RouteCell = Arc<arc_swap::ArcSwap<Route>>;
