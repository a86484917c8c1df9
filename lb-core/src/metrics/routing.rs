//! The announcer's metrics: the addresses announced through the routing daemon, by family,
//! and its attempts to have the daemon take them, by outcome.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::counter_vec;

/// The families, registered with the instance's registry.
pub(super) struct RoutingMetrics {
    announced: IntGaugeVec,
    updates: IntCounterVec,
}

impl RoutingMetrics {
    pub(super) fn new(registry: &Registry) -> Self {
        let announced = IntGaugeVec::new(
            Opts::new(
                "gantry_routing_announced_addresses",
                "Addresses the routing daemon announces for this Gantry, by family (ipv4, ipv6).",
            ),
            &["family"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(announced.clone()))
            .expect("metric names are unique");
        let updates = counter_vec(
            registry,
            "gantry_routing_updates_total",
            "Attempts to have the routing daemon take this Gantry's routes, by outcome (ok, error).",
            &["outcome"],
        );
        for outcome in ["ok", "error"] {
            updates.with_label_values(&[outcome]);
        }
        RoutingMetrics { announced, updates }
    }
}

impl super::Metrics {
    /// The routing daemon now announces `ipv4` and `ipv6` addresses for this Gantry.
    pub(crate) fn routing_announced(&self, ipv4: usize, ipv6: usize) {
        for (family, count) in [("ipv4", ipv4), ("ipv6", ipv6)] {
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            self.routing
                .announced
                .with_label_values(&[family])
                .set(count);
        }
    }

    /// One attempt to have the routing daemon take the routes, `ok` or `error`.
    pub(crate) fn routing_update(&self, outcome: &str) {
        self.routing.updates.with_label_values(&[outcome]).inc();
    }
}
