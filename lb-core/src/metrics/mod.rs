//! Prometheus metrics. The data path holds handle sets ([`PortMetrics`], [`BackendMetrics`])
//! and only touches atomics. Handle sets are made detached while a reload is built, and shown
//! under their labels only when it commits ([`Metrics::show_port`], [`Metrics::show_backend`]);
//! the sets of removed ports, backends and plugins are hidden, so `/metrics` shows what runs.

mod handles;
mod log;
mod routing;
mod shadow;
mod shown;

use lb_config::ListenerKey;
use lb_plugins::{FaultHandles, PluginTelemetry};
use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};

pub use handles::{
    AffinityCounters, AffinityOutcome, BackendMetrics, Counter, Gauge, PortMetrics, Rejection,
    UdpDrop,
};
pub use shadow::{ShadowCounters, ShadowPicks, ShadowResult, ShadowRole, ShadowSide};

use shown::{lock, Shown, ShownBackend};

/// How a reload ended (`result` label of `gantry_config_reloads_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadResult {
    /// Loaded and applied (with or without changes).
    Success,
    /// Refused: the running configuration keeps serving.
    Failure,
    /// Not loaded: its files were byte for byte what was last applied.
    Unchanged,
}

impl ReloadResult {
    const ALL: [ReloadResult; 3] = [
        ReloadResult::Success,
        ReloadResult::Failure,
        ReloadResult::Unchanged,
    ];

    fn label(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
            ReloadResult::Unchanged => "unchanged",
        }
    }
}

/// Every metric family of one Gantry instance, in its own registry (tests run several).
pub struct Metrics {
    registry: Registry,
    shown: std::sync::Arc<Shown>,
    reloads: IntCounterVec,
    changes: IntCounterVec,
    routing: routing::RoutingMetrics,
}

/// A counter family registered with `registry`.
pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(vec.clone()))
        .expect("metric names are unique");
    vec
}

/// A collector registered by its shared handle.
struct Registered(std::sync::Arc<Shown>);

impl prometheus::core::Collector for Registered {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every Gantry metric family.
    pub fn new() -> Self {
        let registry = Registry::new();
        let shown = std::sync::Arc::new(Shown::new());
        registry
            .register(Box::new(Registered(shown.clone())))
            .expect("metric names are unique");
        let reloads = counter_vec(
            &registry,
            "gantry_config_reloads_total",
            "Configuration reloads by result.",
            &["result"],
        );
        // Every result exists from the start, at zero, so that `increase()` over a first
        // failure sees it (a series that appears with the failure would not).
        for result in ReloadResult::ALL {
            reloads.with_label_values(&[result.label()]);
        }
        registry
            .register(Box::new(log::LogMetrics::new()))
            .expect("metric names are unique");
        Metrics {
            reloads,
            changes: counter_vec(
                &registry,
                "gantry_config_changes_total",
                "Changes applied by reloads, by kind.",
                &["kind"],
            ),
            routing: routing::RoutingMetrics::new(&registry),
            shown,
            registry,
        }
    }

    /// Shows `handles` as the series of port `key` (replacing what was shown for it).
    pub fn show_port(&self, key: &ListenerKey, handles: &PortMetrics) {
        let key = (key.service.clone(), key.port.clone());
        lock(&self.shown.ports).insert(key, handles.clone());
    }

    /// Stops showing port `key` and every backend shown under it.
    pub fn hide_port(&self, key: &ListenerKey) {
        lock(&self.shown.ports).remove(&(key.service.clone(), key.port.clone()));
        lock(&self.shown.backends)
            .retain(|(service, port, _), _| !(*service == key.service && *port == key.port));
    }

    /// Shows `handles` as the series of `backend` (its address, or `none`) of port `key`.
    pub fn show_backend(&self, key: &ListenerKey, backend: &str, handles: &BackendMetrics) {
        self.show_backend_set(key, backend, handles, true);
    }

    /// Shows `handles` as port `key`'s work that found no backend (`backend="none"`): its
    /// traffic series only, none of a backend's state.
    pub fn show_unrouted(&self, key: &ListenerKey, handles: &BackendMetrics) {
        self.show_backend_set(key, "none", handles, false);
    }

    fn show_backend_set(
        &self,
        key: &ListenerKey,
        backend: &str,
        handles: &BackendMetrics,
        is_backend: bool,
    ) {
        let key = (key.service.clone(), key.port.clone(), backend.to_owned());
        let shown = ShownBackend {
            handles: handles.clone(),
            is_backend,
        };
        lock(&self.shown.backends).insert(key, shown);
    }

    /// Stops showing `backend` of port `key` (it left the port).
    pub fn hide_backend(&self, key: &ListenerKey, backend: &str) {
        let key = (key.service.clone(), key.port.clone(), backend.to_owned());
        lock(&self.shown.backends).remove(&key);
    }

    /// Counts one reload attempt.
    pub fn reload(&self, result: ReloadResult) {
        self.reloads.with_label_values(&[result.label()]).inc();
    }

    /// Counts one applied change.
    pub fn change(&self, kind: &str) {
        self.changes.with_label_values(&[kind]).inc();
    }

    /// The registry, for families the appliance adds (its sources' own).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format's own metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The plugin host shows the fault metrics of the plugins in use here.
impl PluginTelemetry for Metrics {
    fn show(&self, plugin: &str, handles: &FaultHandles) {
        lock(&self.shown.plugins).insert(plugin.to_owned(), handles.clone());
    }

    fn hide(&self, plugin: &str) {
        lock(&self.shown.plugins).remove(plugin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ListenerKey {
        ListenerKey {
            service: "s".into(),
            port: "p".into(),
        }
    }

    #[test]
    fn handles_appear_only_while_shown_and_keep_counting_across_shows() {
        let metrics = Metrics::new();
        let port = PortMetrics::new();
        let backend = BackendMetrics::new();
        port.connections.inc();
        backend.request(Some(204), std::time::Duration::from_millis(3));
        assert!(!metrics.render().contains("gantry_connections_total"));

        metrics.show_port(&key(), &port);
        metrics.show_backend(&key(), "192.0.2.1:80", &backend);
        let text = metrics.render();
        assert!(
            text.contains("gantry_connections_total{port=\"p\",service=\"s\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "gantry_requests_total{backend=\"192.0.2.1:80\",class=\"2xx\",port=\"p\",service=\"s\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("gantry_backend_up{backend=\"192.0.2.1:80\",port=\"p\",service=\"s\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gantry_request_duration_seconds_count{backend=\"192.0.2.1:80\",port=\"p\",service=\"s\"} 1"),
            "{text}"
        );

        metrics.hide_backend(&key(), "192.0.2.1:80");
        assert!(!metrics.render().contains("192.0.2.1:80"));
        metrics.hide_port(&key());
        assert!(!metrics.render().contains("service=\"s\""));
    }

    #[test]
    fn work_that_found_no_backend_has_traffic_series_but_no_backend_state() {
        let metrics = Metrics::new();
        let unrouted = BackendMetrics::new();
        unrouted.request(Some(503), std::time::Duration::from_millis(1));
        metrics.show_unrouted(&key(), &unrouted);
        let text = metrics.render();
        let none = "backend=\"none\"";
        assert!(
            text.contains(&format!(
                "gantry_requests_total{{{none},class=\"5xx\",port=\"p\",service=\"s\"}} 1"
            )),
            "{text}"
        );
        for state in [
            "gantry_backend_up",
            "gantry_backend_healthy",
            "gantry_backend_in_flight",
            "gantry_backend_ejections_total",
            "gantry_upstream_connect_errors_total",
        ] {
            assert!(
                !text.contains(&format!("{state}{{{none}")),
                "{state} has a backend=\"none\" series: {text}"
            );
        }
    }
}
