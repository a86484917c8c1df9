//! The announcer's metrics: the addresses announced through the routing daemon, by family,
//! its attempts to have the daemon take them, by outcome, and whether the daemon has the
//! routes Gantry wants now (`gantry_routing_synced`, which an alert watches).

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::counter_vec;

/// The families, registered with the instance's registry.
pub(super) struct RoutingMetrics {
    announced: IntGaugeVec,
    updates: IntCounterVec,
    synced: IntGauge,
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
        let synced = IntGauge::new(
            "gantry_routing_synced",
            "1 while the routing daemon has the routes Gantry wants (or there is no routing section), 0 while it refuses them or cannot be reached.",
        )
        .expect("static metric definition");
        synced.set(1);
        registry
            .register(Box::new(synced.clone()))
            .expect("metric names are unique");
        RoutingMetrics {
            announced,
            updates,
            synced,
        }
    }
}

impl super::Metrics {
    /// The routing daemon now announces `ipv4` and `ipv6` addresses for this Gantry.
    pub fn routing_announced(&self, ipv4: usize, ipv6: usize) {
        for (family, count) in [("ipv4", ipv4), ("ipv6", ipv6)] {
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            self.routing
                .announced
                .with_label_values(&[family])
                .set(count);
        }
    }

    /// One attempt to have the routing daemon take the routes: whether it did.
    pub fn routing_update(&self, taken: bool) {
        let outcome = if taken { "ok" } else { "error" };
        self.routing.updates.with_label_values(&[outcome]).inc();
        self.routing.synced.set(i64::from(taken));
    }

    /// There is no routing section: nothing to announce, nothing out of date.
    pub fn routing_off(&self) {
        self.routing_announced(0, 0);
        self.routing.synced.set(1);
    }
}
