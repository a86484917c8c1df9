//! Prometheus metrics. Label lookups happen once, when a route is built: the request path holds
//! pre-resolved handles ([`PortMetrics`], [`BackendMetrics`]) and only touches atomics. Label
//! sets of removed ports and backends are deleted so `/metrics` does not grow without bound.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets for request durations: a proxy's interesting range starts well under a millisecond.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Status classes counted per backend; `none` is a request that ended without a response.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// Why a request was refused before it reached a backend (`reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Request head larger than `limits.max_header_bytes` (431).
    HeaderTooLarge,
    /// More headers than `limits.max_headers` (431).
    TooManyHeaders,
    /// Request head not complete within `timeouts.header_read` (408).
    HeaderTimeout,
    /// Both `Content-Length` and `Transfer-Encoding`, or conflicting lengths (400).
    AmbiguousLength,
}

impl Rejection {
    const ALL: [Rejection; 4] = [
        Rejection::HeaderTooLarge,
        Rejection::TooManyHeaders,
        Rejection::HeaderTimeout,
        Rejection::AmbiguousLength,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::HeaderTooLarge => "header_too_large",
            Rejection::TooManyHeaders => "too_many_headers",
            Rejection::HeaderTimeout => "header_timeout",
            Rejection::AmbiguousLength => "ambiguous_length",
        }
    }
}

/// Every metric family of one Gantry instance, in its own registry (tests run several).
pub struct Metrics {
    registry: Registry,
    connections: IntCounterVec,
    active_connections: IntGaugeVec,
    tls_handshakes: IntCounterVec,
    tls_handshake_failures: IntCounterVec,
    rejected: IntCounterVec,
    backend_connections: IntCounterVec,
    requests: IntCounterVec,
    duration: HistogramVec,
    bytes_received: IntCounterVec,
    bytes_sent: IntCounterVec,
    connect_errors: IntCounterVec,
    in_flight: IntGaugeVec,
    backend_up: IntGaugeVec,
    reloads: IntCounterVec,
    changes: IntCounterVec,
    plugin_faults: IntCounterVec,
    plugin_quarantined: IntGaugeVec,
    affinity: IntCounterVec,
    backend_healthy: IntGaugeVec,
    ejections: IntCounterVec,
    observations_dropped: IntCounterVec,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(vec.clone()))
        .expect("metric names are unique");
    vec
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(vec.clone()))
        .expect("metric names are unique");
    vec
}

const PORT: &[&str] = &["service", "port"];
const BACKEND: &[&str] = &["service", "port", "backend"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every Gantry metric family.
    pub fn new() -> Self {
        let r = Registry::new();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "gantry_request_duration_seconds",
                "Time from request head to the end of the response, per backend.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            BACKEND,
        )
        .expect("static metric definition");
        r.register(Box::new(duration.clone()))
            .expect("metric names are unique");
        let mut status_labels = BACKEND.to_vec();
        status_labels.push("class");
        let mut reject_labels = PORT.to_vec();
        reject_labels.push("reason");
        Metrics {
            connections: counter_vec(
                &r,
                "gantry_connections_total",
                "Client connections accepted.",
                PORT,
            ),
            active_connections: gauge_vec(
                &r,
                "gantry_connections_active",
                "Client connections open now.",
                PORT,
            ),
            tls_handshakes: counter_vec(
                &r,
                "gantry_tls_handshakes_total",
                "TLS handshakes completed.",
                PORT,
            ),
            tls_handshake_failures: counter_vec(
                &r,
                "gantry_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out.",
                PORT,
            ),
            rejected: counter_vec(
                &r,
                "gantry_requests_rejected_total",
                "Requests refused before reaching a backend.",
                &reject_labels,
            ),
            backend_connections: counter_vec(
                &r,
                "gantry_backend_connections_total",
                "Connections opened to a backend (TCP) or requests sent to it (HTTP).",
                BACKEND,
            ),
            requests: counter_vec(
                &r,
                "gantry_requests_total",
                "HTTP requests by backend and response status class.",
                &status_labels,
            ),
            duration,
            bytes_received: counter_vec(
                &r,
                "gantry_bytes_received_total",
                "Bytes received from clients.",
                BACKEND,
            ),
            bytes_sent: counter_vec(
                &r,
                "gantry_bytes_sent_total",
                "Bytes sent to clients.",
                BACKEND,
            ),
            connect_errors: counter_vec(
                &r,
                "gantry_upstream_connect_errors_total",
                "Failed connects to a backend.",
                BACKEND,
            ),
            in_flight: gauge_vec(
                &r,
                "gantry_backend_in_flight",
                "Connections or requests in progress on a backend.",
                BACKEND,
            ),
            backend_up: gauge_vec(
                &r,
                "gantry_backend_up",
                "1 unless the backend is skipped after failed connects.",
                BACKEND,
            ),
            reloads: counter_vec(
                &r,
                "gantry_config_reloads_total",
                "Configuration reloads by result.",
                &["result"],
            ),
            changes: counter_vec(
                &r,
                "gantry_config_changes_total",
                "Changes applied by reloads, by kind.",
                &["kind"],
            ),
            plugin_faults: counter_vec(
                &r,
                "gantry_plugin_faults_total",
                "Plugin calls answered by the native fallback, by fault.",
                &["plugin", "kind"],
            ),
            plugin_quarantined: gauge_vec(
                &r,
                "gantry_plugin_quarantined",
                "1 while a plugin is no longer called after repeated faults.",
                &["plugin"],
            ),
            affinity: counter_vec(
                &r,
                "gantry_affinity_total",
                "Session-affinity decisions: stuck to the remembered backend, new (nothing to stick to), or moved (the sticky backend was gone or unusable).",
                &["service", "port", "outcome"],
            ),
            backend_healthy: gauge_vec(
                &r,
                "gantry_backend_healthy",
                "1 while the port's health policies let the backend take new work.",
                BACKEND,
            ),
            ejections: counter_vec(
                &r,
                "gantry_backend_ejections_total",
                "Passive outlier ejections of the backend.",
                BACKEND,
            ),
            observations_dropped: counter_vec(
                &r,
                "gantry_health_observations_dropped_total",
                "Traffic outcomes not passed to a health policy because it fell behind.",
                BACKEND,
            ),
            registry: r,
        }
    }

    /// Handles for one port.
    pub fn port(&self, service: &str, port: &str) -> PortMetrics {
        let l = [service, port];
        PortMetrics {
            connections: self.connections.with_label_values(&l),
            active: self.active_connections.with_label_values(&l),
            tls_handshakes: self.tls_handshakes.with_label_values(&l),
            tls_handshake_failures: self.tls_handshake_failures.with_label_values(&l),
            rejected: Rejection::ALL
                .map(|r| self.rejected.with_label_values(&[service, port, r.label()])),
            affinity: AffinityCounters(
                AffinityOutcome::ALL
                    .map(|o| self.affinity.with_label_values(&[service, port, o.label()])),
            ),
        }
    }

    /// Handles for one backend of one port; `backend` is its address, or `none` for work
    /// that found no backend.
    pub fn backend(&self, service: &str, port: &str, backend: &str) -> BackendMetrics {
        let l = [service, port, backend];
        BackendMetrics {
            connections: self.backend_connections.with_label_values(&l),
            requests: STATUS_CLASSES.map(|class| {
                self.requests
                    .with_label_values(&[service, port, backend, class])
            }),
            duration: self.duration.with_label_values(&l),
            bytes_received: self.bytes_received.with_label_values(&l),
            bytes_sent: self.bytes_sent.with_label_values(&l),
            connect_errors: self.connect_errors.with_label_values(&l),
            in_flight: self.in_flight.with_label_values(&l),
            up: self.backend_up.with_label_values(&l),
            healthy: self.backend_healthy.with_label_values(&l),
            ejections: self.ejections.with_label_values(&l),
            health_observations_dropped: self.observations_dropped.with_label_values(&l),
        }
    }

    /// Deletes a port's label sets (after the port is removed).
    pub fn forget_port(&self, service: &str, port: &str) {
        let l = [service, port];
        for vec in [
            &self.connections,
            &self.tls_handshakes,
            &self.tls_handshake_failures,
        ] {
            let _ = vec.remove_label_values(&l);
        }
        let _ = self.active_connections.remove_label_values(&l);
        for r in Rejection::ALL {
            let _ = self
                .rejected
                .remove_label_values(&[service, port, r.label()]);
        }
        for o in AffinityOutcome::ALL {
            let _ = self
                .affinity
                .remove_label_values(&[service, port, o.label()]);
        }
    }

    /// Deletes a backend's label sets (after it left its port).
    pub fn forget_backend(&self, service: &str, port: &str, backend: &str) {
        let l = [service, port, backend];
        for vec in [
            &self.backend_connections,
            &self.bytes_received,
            &self.bytes_sent,
            &self.connect_errors,
            &self.ejections,
            &self.observations_dropped,
        ] {
            let _ = vec.remove_label_values(&l);
        }
        for vec in [&self.in_flight, &self.backend_up, &self.backend_healthy] {
            let _ = vec.remove_label_values(&l);
        }
        let _ = self.duration.remove_label_values(&l);
        for class in STATUS_CLASSES {
            let _ = self
                .requests
                .remove_label_values(&[service, port, backend, class]);
        }
    }

    /// Handles for one loaded plugin: fault counters (in [`crate::plugins::faults::FaultKind`]
    /// order) and its quarantine gauge.
    pub fn plugin(&self, plugin: &str) -> ([IntCounter; 4], IntGauge) {
        let counters = crate::plugins::faults::FaultKind::ALL.map(|kind| {
            self.plugin_faults
                .with_label_values(&[plugin, kind.label()])
        });
        (
            counters,
            self.plugin_quarantined.with_label_values(&[plugin]),
        )
    }

    /// Deletes a plugin's label sets (after it was unloaded).
    pub fn forget_plugin(&self, plugin: &str) {
        for kind in crate::plugins::faults::FaultKind::ALL {
            let _ = self
                .plugin_faults
                .remove_label_values(&[plugin, kind.label()]);
        }
        let _ = self.plugin_quarantined.remove_label_values(&[plugin]);
    }

    /// Counts one reload attempt.
    pub fn reload(&self, succeeded: bool) {
        let result = if succeeded { "success" } else { "failure" };
        self.reloads.with_label_values(&[result]).inc();
    }

    /// Counts one applied change.
    pub fn change(&self, kind: &str) {
        self.changes.with_label_values(&[kind]).inc();
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format's own metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Pre-resolved handles of one port.
#[derive(Clone)]
pub struct PortMetrics {
    /// Accepted connections.
    pub connections: IntCounter,
    /// Open connections.
    pub active: IntGauge,
    /// Completed TLS handshakes.
    pub tls_handshakes: IntCounter,
    /// Failed TLS handshakes.
    pub tls_handshake_failures: IntCounter,
    rejected: [IntCounter; 4],
    /// Session-affinity decisions.
    pub affinity: AffinityCounters,
}

/// How a session-affinity decision went (`outcome` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AffinityOutcome {
    /// The request went to its sticky backend.
    Stuck,
    /// The request had nothing to stick to and was balanced.
    New,
    /// Its sticky backend was gone or unusable; it was balanced and the affinity moved.
    Moved,
}

impl AffinityOutcome {
    const ALL: [AffinityOutcome; 3] = [
        AffinityOutcome::Stuck,
        AffinityOutcome::New,
        AffinityOutcome::Moved,
    ];

    fn label(self) -> &'static str {
        match self {
            AffinityOutcome::Stuck => "stuck",
            AffinityOutcome::New => "new",
            AffinityOutcome::Moved => "moved",
        }
    }
}

/// Pre-resolved counters of one port's affinity decisions.
#[derive(Clone)]
pub struct AffinityCounters([IntCounter; 3]);

impl AffinityCounters {
    /// Counts one decision.
    pub fn count(&self, outcome: AffinityOutcome) {
        let index = AffinityOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.0[index].inc();
    }
}

impl PortMetrics {
    /// Counts a refused request.
    pub fn rejected(&self, why: Rejection) {
        let index = Rejection::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.rejected[index].inc();
    }
}

/// Pre-resolved handles of one backend.
#[derive(Clone)]
pub struct BackendMetrics {
    /// Connections (TCP) or requests (HTTP) sent.
    pub connections: IntCounter,
    requests: [IntCounter; 6],
    duration: Histogram,
    /// Bytes from clients.
    pub bytes_received: IntCounter,
    /// Bytes to clients.
    pub bytes_sent: IntCounter,
    /// Failed connects.
    pub connect_errors: IntCounter,
    /// Work in progress.
    pub in_flight: IntGauge,
    /// 0 while skipped after failed connects.
    pub up: IntGauge,
    /// 0 while the port's health policies hold the backend out.
    pub healthy: IntGauge,
    /// Passive ejections.
    pub ejections: IntCounter,
    /// Traffic outcomes a health policy could not keep up with.
    pub health_observations_dropped: IntCounter,
}

impl BackendMetrics {
    /// Counts a finished HTTP request by status (`None`: no response was sent).
    pub fn request(&self, status: Option<u16>, elapsed: Duration) {
        let class = match status {
            Some(code @ 100..=599) => usize::from(code / 100 - 1),
            _ => 5,
        };
        self.requests[class].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}
