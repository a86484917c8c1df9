//! The Kubernetes source's metrics: watch events, objects skipped as invalid, API writes,
//! addresses in use per pool, and the time from a watch event to the data plane serving it
//! (like kube-proxy's `network_programming_duration_seconds`), and whether this replica writes
//! to the cluster (`gantry_kubernetes_leader`, with the holder shown in `/config`).

use std::sync::Mutex;

use lb_k8s::telemetry::Leadership;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use lb_core::metrics::counter_vec;

/// Buckets of the programming-duration histogram, in seconds: from a millisecond to a minute.
const PROGRAMMING_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The families, registered with the instance's registry (`lb_core::metrics::Metrics::registry`).
pub struct KubeMetrics {
    watch_events: IntCounterVec,
    invalid: IntCounterVec,
    writes: IntCounterVec,
    pool_in_use: IntGaugeVec,
    programming: Histogram,
    leader: IntGauge,
    /// The last leadership the source reported, for `/config`.
    leadership: Mutex<Option<Leadership>>,
}

impl KubeMetrics {
    /// The families, registered with `registry`.
    pub fn new(registry: &Registry) -> Self {
        let pool_in_use = IntGaugeVec::new(
            Opts::new(
                "gantry_kubernetes_pool_addresses_in_use",
                "Load-balancer addresses handed out, by address pool.",
            ),
            &["pool"],
        )
        .expect("static metric definition");
        let programming = Histogram::with_opts(
            HistogramOpts::new(
                "gantry_kubernetes_programming_duration_seconds",
                "Time from a watch event to the data plane serving what it changed.",
            )
            .buckets(PROGRAMMING_BUCKETS.to_vec()),
        )
        .expect("static metric definition");
        let leader = IntGauge::new(
            "gantry_kubernetes_leader",
            "1 while this replica writes to the cluster (it holds the Lease, or election is off).",
        )
        .expect("static metric definition");
        for collector in [
            Box::new(pool_in_use.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(programming.clone()),
            Box::new(leader.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        KubeMetrics {
            watch_events: counter_vec(
                registry,
                "gantry_kubernetes_watch_events_total",
                "Watch events by kind (Service, EndpointSlice, Node, Secret) and outcome (applied, deleted, relisted, error).",
                &["kind", "outcome"],
            ),
            invalid: counter_vec(
                registry,
                "gantry_kubernetes_objects_invalid_total",
                "Objects skipped (or kept at their last good configuration) because they are invalid or unsupported, by kind.",
                &["kind"],
            ),
            writes: counter_vec(
                registry,
                "gantry_kubernetes_api_writes_total",
                "Writes to the API server by what (status, finalizer, event) and outcome (ok, error, fenced).",
                &["what", "outcome"],
            ),
            pool_in_use,
            programming,
            leader,
            leadership: Mutex::new(None),
        }
    }

    /// The last leadership the source reported; `None` before any (or without a cluster).
    pub fn leadership(&self) -> Option<Leadership> {
        self.leadership
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl lb_k8s::telemetry::Telemetry for KubeMetrics {
    fn watch_event(&self, kind: &str, outcome: &str) {
        self.watch_events.with_label_values(&[kind, outcome]).inc();
    }

    fn object_invalid(&self, kind: &str) {
        self.invalid.with_label_values(&[kind]).inc();
    }

    fn pool_in_use(&self, pool: &str, in_use: usize) {
        let in_use = i64::try_from(in_use).unwrap_or(i64::MAX);
        self.pool_in_use.with_label_values(&[pool]).set(in_use);
    }

    fn programmed(&self, seconds: f64) {
        self.programming.observe(seconds);
    }

    fn api_write(&self, what: &str, outcome: &str) {
        self.writes.with_label_values(&[what, outcome]).inc();
    }

    fn leadership(&self, leadership: &Leadership) {
        self.leader.set(i64::from(leadership.leading));
        *self.leadership.lock().unwrap_or_else(|p| p.into_inner()) = Some(leadership.clone());
    }
}
