//! The series of live ports, backends and plugins: a Prometheus collector over the handle sets
//! the runtime has shown, each under its labels. A set is shown when the reload that made it
//! commits and hidden when its port, backend or plugin is gone, so `/metrics` lists exactly
//! what is running (and does not grow without bound).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use lb_plugins::{FaultHandles, FaultKind};
use prometheus::core::{Collector, Desc, Metric};
use prometheus::proto::{LabelPair, MetricFamily, MetricType};

use super::handles::{
    AffinityOutcome, BackendMetrics, PortMetrics, Rejection, UdpDrop, STATUS_CLASSES,
};
use super::shadow::{ShadowResult, ShadowRole, ShadowSide};

/// `(service, port)`.
pub(super) type PortKey = (String, String);
/// `(service, port, backend)`.
pub(super) type BackendKey = (String, String, String);

/// One family this collector exposes.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    /// Labels besides the set's own (`service`, `port`, ...).
    extra: &'static [&'static str],
}

const fn family(
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    extra: &'static [&'static str],
) -> Family {
    Family {
        name,
        help,
        kind,
        extra,
    }
}

use MetricType::{COUNTER, GAUGE, HISTOGRAM};

const PORT_LABELS: &[&str] = &["service", "port"];
const BACKEND_LABELS: &[&str] = &["service", "port", "backend"];
const PLUGIN_LABELS: &[&str] = &["plugin"];

const PORT_FAMILIES: [Family; 12] = [
    family("gantry_connections_total", "Client connections accepted.", COUNTER, &[]),
    family("gantry_connections_active", "Client connections open now.", GAUGE, &[]),
    family("gantry_tls_handshakes_total", "TLS handshakes completed.", COUNTER, &[]),
    family(
        "gantry_tls_handshake_failures_total",
        "TLS handshakes that failed or timed out.",
        COUNTER,
        &[],
    ),
    family(
        "gantry_requests_rejected_total",
        "Requests refused before reaching a backend.",
        COUNTER,
        &["reason"],
    ),
    family(
        "gantry_affinity_total",
        "Session-affinity decisions: stuck to the remembered backend, new (nothing to stick to), or moved (the sticky backend was gone or unusable).",
        COUNTER,
        &["outcome"],
    ),
    family(
        "gantry_connections_refused_total",
        "Client connections closed on accept, by reason (source_range: the client is outside the port's source ranges).",
        COUNTER,
        &["reason"],
    ),
    family("gantry_udp_flows_active", "UDP flows open now.", GAUGE, &[]),
    family("gantry_udp_flows_created_total", "UDP flows started.", COUNTER, &[]),
    family(
        "gantry_udp_flows_expired_total",
        "UDP flows ended by their idle timeout.",
        COUNTER,
        &[],
    ),
    family(
        "gantry_udp_dropped_total",
        "UDP datagrams dropped, by reason: too_large, source_range, max_flows, no_backend, draining (new flows), send_failed (a full socket buffer).",
        COUNTER,
        &["reason"],
    ),
    family(
        "gantry_shadow_calls_total",
        "Calls a shadow policy saw beside the serving one (role: balancer or affinity), by result: agree, disagree, fault (the shadow's call faulted), quarantined (not called).",
        COUNTER,
        &["role", "result"],
    ),
];

const BACKEND_FAMILIES: [Family; 14] = [
    family(
        "gantry_backend_connections_total",
        "Connections opened to a backend (TCP) or requests sent to it (HTTP).",
        COUNTER,
        &[],
    ),
    family(
        "gantry_requests_total",
        "HTTP requests by backend and response status class.",
        COUNTER,
        &["class"],
    ),
    family(
        "gantry_request_duration_seconds",
        "Time from request head to the end of the response, per backend.",
        HISTOGRAM,
        &[],
    ),
    family(
        "gantry_bytes_received_total",
        "Bytes received from clients.",
        COUNTER,
        &[],
    ),
    family(
        "gantry_bytes_sent_total",
        "Bytes sent to clients.",
        COUNTER,
        &[],
    ),
    family(
        "gantry_upstream_connect_errors_total",
        "Failed connects to a backend.",
        COUNTER,
        &[],
    ),
    family(
        "gantry_backend_in_flight",
        "Connections or requests in progress on a backend.",
        GAUGE,
        &[],
    ),
    family(
        "gantry_backend_up",
        "1 unless the backend is skipped after failed connects.",
        GAUGE,
        &[],
    ),
    family(
        "gantry_backend_healthy",
        "1 while the port's health policies let the backend take new work.",
        GAUGE,
        &[],
    ),
    family(
        "gantry_backend_ejections_total",
        "Passive outlier ejections of the backend.",
        COUNTER,
        &[],
    ),
    family(
        "gantry_health_observations_dropped_total",
        "Traffic outcomes not passed to a health policy because it fell behind.",
        COUNTER,
        &[],
    ),
    family(
        "gantry_udp_datagrams_received_total",
        "UDP datagrams relayed from clients to the backend.",
        COUNTER,
        &[],
    ),
    family(
        "gantry_udp_datagrams_sent_total",
        "UDP datagrams relayed from the backend to clients.",
        COUNTER,
        &[],
    ),
    family(
        "gantry_shadow_picks_total",
        "Picks of a backend on calls a shadow policy saw, by role and side (serving or shadow): each side's share of picks per backend.",
        COUNTER,
        &["role", "side"],
    ),
];

const PLUGIN_FAMILIES: [Family; 2] = [
    family(
        "gantry_plugin_faults_total",
        "Plugin calls answered by the native fallback, by fault.",
        COUNTER,
        &["kind"],
    ),
    family(
        "gantry_plugin_quarantined",
        "1 while a plugin is no longer called after repeated faults.",
        GAUGE,
        &[],
    ),
];

/// A backend's handle set, or the set of a port's work that found no backend
/// (`backend="none"`).
#[derive(Clone)]
pub(super) struct ShownBackend {
    pub(super) handles: BackendMetrics,
    /// False for `backend="none"`: it counts traffic but is no backend, so it has no state
    /// series (up, healthy, in flight, ejections), which would count one backend too many in
    /// every `sum by (service, port)` over them.
    pub(super) is_backend: bool,
}

/// The handle sets shown now.
#[derive(Default)]
pub(super) struct Shown {
    descs: Vec<Desc>,
    pub(super) ports: Mutex<BTreeMap<PortKey, PortMetrics>>,
    pub(super) backends: Mutex<BTreeMap<BackendKey, ShownBackend>>,
    pub(super) plugins: Mutex<BTreeMap<String, FaultHandles>>,
}

impl Shown {
    pub(super) fn new() -> Self {
        let descs = [
            (&PORT_FAMILIES[..], PORT_LABELS),
            (&BACKEND_FAMILIES[..], BACKEND_LABELS),
            (&PLUGIN_FAMILIES[..], PLUGIN_LABELS),
        ]
        .into_iter()
        .flat_map(|(families, labels)| {
            families.iter().map(move |f| {
                let variable = labels.iter().chain(f.extra).map(|l| l.to_string());
                Desc::new(
                    f.name.into(),
                    f.help.into(),
                    variable.collect(),
                    HashMap::new(),
                )
                .expect("static metric definition")
            })
        })
        .collect();
        Shown {
            descs,
            ..Shown::default()
        }
    }
}

/// A lock that a panicking holder cannot make unusable: the maps stay consistent whatever
/// happened to the holder.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A family under construction.
struct Out(MetricFamily);

impl Out {
    fn new(family: &Family) -> Self {
        let mut out = MetricFamily::default();
        out.set_name(family.name.into());
        out.set_help(family.help.into());
        out.set_field_type(family.kind);
        Out(out)
    }

    /// Adds `metric`'s sample under `labels` (sorted by name, as Prometheus' own vectors do).
    fn add(&mut self, labels: &[(&str, &str)], metric: &impl Metric) {
        let mut sample = metric.metric();
        let mut pairs: Vec<LabelPair> = labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name((*name).into());
                pair.set_value((*value).into());
                pair
            })
            .collect();
        pairs.sort_by(|a, b| a.name().cmp(b.name()));
        sample.set_label(pairs);
        self.0.mut_metric().push(sample);
    }
}

impl Collector for Shown {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out: Vec<Out> = PORT_FAMILIES
            .iter()
            .chain(&BACKEND_FAMILIES)
            .chain(&PLUGIN_FAMILIES)
            .map(Out::new)
            .collect();
        let (ports, rest) = out.split_at_mut(PORT_FAMILIES.len());
        let (backends, plugins) = rest.split_at_mut(BACKEND_FAMILIES.len());
        // The shadowed roles of each port, for its backends' pick series.
        let mut shadowed: BTreeMap<PortKey, Vec<ShadowRole>> = BTreeMap::new();
        for ((service, port), m) in lock(&self.ports).iter() {
            let l = [("service", service.as_str()), ("port", port.as_str())];
            ports[0].add(&l, &m.connections);
            ports[1].add(&l, &m.active);
            ports[2].add(&l, &m.tls_handshakes);
            ports[3].add(&l, &m.tls_handshake_failures);
            for (why, counter) in Rejection::ALL.iter().zip(&m.rejected) {
                ports[4].add(&[l[0], l[1], ("reason", why.label())], counter);
            }
            for (outcome, counter) in AffinityOutcome::ALL.iter().zip(&m.affinity.0) {
                ports[5].add(&[l[0], l[1], ("outcome", outcome.label())], counter);
            }
            ports[6].add(
                &[l[0], l[1], ("reason", "source_range")],
                &m.refused_by_source,
            );
            ports[7].add(&l, &m.flows_active);
            ports[8].add(&l, &m.flows_created);
            ports[9].add(&l, &m.flows_expired);
            for (why, counter) in UdpDrop::ALL.iter().zip(&m.udp_dropped) {
                ports[10].add(&[l[0], l[1], ("reason", why.label())], counter);
            }
            let roles: Vec<ShadowRole> = ShadowRole::ALL
                .into_iter()
                .filter(|role| m.shadow.is_shadowed(*role))
                .collect();
            for role in &roles {
                let calls = &m.shadow.calls[*role as usize];
                for (result, counter) in ShadowResult::ALL.iter().zip(calls) {
                    let l = [
                        l[0],
                        l[1],
                        ("role", role.label()),
                        ("result", result.label()),
                    ];
                    ports[11].add(&l, counter);
                }
            }
            if !roles.is_empty() {
                shadowed.insert((service.clone(), port.clone()), roles);
            }
        }
        for ((service, port, backend), shown) in lock(&self.backends).iter() {
            let (m, is_backend) = (&shown.handles, shown.is_backend);
            let l = [
                ("service", service.as_str()),
                ("port", port.as_str()),
                ("backend", backend.as_str()),
            ];
            backends[0].add(&l, &m.connections);
            for (class, counter) in STATUS_CLASSES.iter().zip(&m.requests) {
                backends[1].add(&[l[0], l[1], l[2], ("class", class)], counter);
            }
            backends[2].add(&l, &m.duration);
            backends[3].add(&l, &m.bytes_received);
            backends[4].add(&l, &m.bytes_sent);
            if is_backend {
                backends[5].add(&l, &m.connect_errors);
                backends[6].add(&l, &m.in_flight);
                backends[7].add(&l, &m.up);
                backends[8].add(&l, &m.healthy);
                backends[9].add(&l, &m.ejections);
                backends[10].add(&l, &m.health_observations_dropped);
            }
            backends[11].add(&l, &m.datagrams_received);
            backends[12].add(&l, &m.datagrams_sent);
            if shadowed.is_empty() || !is_backend {
                continue;
            }
            let roles = shadowed.get(&(service.clone(), port.clone()));
            for role in roles.into_iter().flatten() {
                let picks = &m.shadow_picks.0[*role as usize];
                for (side, counter) in ShadowSide::ALL.iter().zip(picks) {
                    let l = [
                        l[0],
                        l[1],
                        l[2],
                        ("role", role.label()),
                        ("side", side.label()),
                    ];
                    backends[13].add(&l, counter);
                }
            }
        }
        for (plugin, handles) in lock(&self.plugins).iter() {
            let l = ("plugin", plugin.as_str());
            for (kind, counter) in FaultKind::ALL.iter().zip(&handles.counters) {
                plugins[0].add(&[l, ("kind", kind.label())], counter);
            }
            plugins[1].add(&[l], &handles.quarantined);
        }
        out.into_iter().map(|o| o.0).collect()
    }
}
