//! The metric handles the data path holds: one set per port ([`PortMetrics`]) and one per
//! backend of a port ([`BackendMetrics`]). They are made detached, while a reload is being
//! built, and touch only atomics; the registry shows them once the reload commits (see
//! [`super::Metrics::show_port`]), so a refused reload leaves no series behind.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::core::Metric;
use prometheus::proto;
use prometheus::{Histogram, HistogramOpts};

use super::shadow::{ShadowCounters, ShadowPicks};

/// A counter the data path bumps: one shared atomic and nothing else. A prometheus
/// `IntCounter` carries its own descriptor (name, help, labels: some 350 bytes); these are
/// shown under a family that has them (see `super::shown`), and a cluster's 100,000 backends,
/// 18 handles each, would spend hundreds of megabytes on descriptors never read.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Metric for Counter {
    fn metric(&self) -> proto::Metric {
        let mut counter = proto::Counter::default();
        counter.set_value(self.get() as f64);
        let mut metric = proto::Metric::default();
        metric.set_counter(counter);
        metric
    }
}

/// A gauge the data path sets: one shared atomic, as [`Counter`].
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// Sets it.
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// Its value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Metric for Gauge {
    fn metric(&self) -> proto::Metric {
        let mut gauge = proto::Gauge::default();
        gauge.set_value(self.get() as f64);
        let mut metric = proto::Metric::default();
        metric.set_gauge(gauge);
        metric
    }
}

/// Buckets for request durations: a proxy's interesting range starts well under a millisecond.
pub(super) const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Status classes counted per backend; `none` is a request that ended without a response.
pub(super) const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

fn counter() -> Counter {
    Counter::default()
}

fn gauge() -> Gauge {
    Gauge::default()
}

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
    /// A request HTTP/1 forbids forwarding: a missing, repeated or invalid `Host`, an invalid
    /// length or transfer coding, malformed chunked framing (400).
    Malformed,
    /// `CONNECT`, which a reverse proxy does not tunnel (405).
    MethodNotAllowed,
    /// A request body that stalled longer than `timeouts.client_idle` before any answer (408).
    BodyTimeout,
}

impl Rejection {
    pub(super) const ALL: [Rejection; 7] = [
        Rejection::HeaderTooLarge,
        Rejection::TooManyHeaders,
        Rejection::HeaderTimeout,
        Rejection::AmbiguousLength,
        Rejection::Malformed,
        Rejection::MethodNotAllowed,
        Rejection::BodyTimeout,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::HeaderTooLarge => "header_too_large",
            Rejection::TooManyHeaders => "too_many_headers",
            Rejection::HeaderTimeout => "header_timeout",
            Rejection::AmbiguousLength => "ambiguous_length",
            Rejection::Malformed => "malformed",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::BodyTimeout => "body_timeout",
        }
    }
}

/// What happened to a UDP datagram or flow that went nowhere (`reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpDrop {
    /// A datagram larger than `limits.max_datagram_bytes`.
    TooLarge,
    /// A new flow from outside the port's source ranges.
    SourceRange,
    /// A new flow while the port holds `limits.max_flows`.
    MaxFlows,
    /// A new flow with no backend to go to.
    NoBackend,
    /// A new flow on a port being removed.
    Draining,
    /// A datagram the socket could not take at once (its buffer was full).
    SendFailed,
}

impl UdpDrop {
    pub(super) const ALL: [UdpDrop; 6] = [
        UdpDrop::TooLarge,
        UdpDrop::SourceRange,
        UdpDrop::MaxFlows,
        UdpDrop::NoBackend,
        UdpDrop::Draining,
        UdpDrop::SendFailed,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            UdpDrop::TooLarge => "too_large",
            UdpDrop::SourceRange => "source_range",
            UdpDrop::MaxFlows => "max_flows",
            UdpDrop::NoBackend => "no_backend",
            UdpDrop::Draining => "draining",
            UdpDrop::SendFailed => "send_failed",
        }
    }
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
    pub(super) const ALL: [AffinityOutcome; 3] = [
        AffinityOutcome::Stuck,
        AffinityOutcome::New,
        AffinityOutcome::Moved,
    ];

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            AffinityOutcome::Stuck => "stuck",
            AffinityOutcome::New => "new",
            AffinityOutcome::Moved => "moved",
        }
    }
}

/// Counters of one port's affinity decisions.
#[derive(Clone)]
pub struct AffinityCounters(pub(super) [Counter; 3]);

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

/// Handles of one port.
#[derive(Clone)]
pub struct PortMetrics {
    /// Accepted connections.
    pub connections: Counter,
    /// Connections closed at once: the client is outside the port's source ranges.
    pub refused_by_source: Counter,
    /// Open connections.
    pub active: Gauge,
    /// Completed TLS handshakes.
    pub tls_handshakes: Counter,
    /// Failed TLS handshakes.
    pub tls_handshake_failures: Counter,
    pub(super) rejected: [Counter; Rejection::ALL.len()],
    /// Session-affinity decisions.
    pub affinity: AffinityCounters,
    /// Comparisons of the port's shadow policies with its serving ones.
    pub shadow: ShadowCounters,
    /// UDP flows open now.
    pub flows_active: Gauge,
    /// UDP flows started.
    pub flows_created: Counter,
    /// UDP flows ended after their idle timeout.
    pub flows_expired: Counter,
    pub(super) udp_dropped: [Counter; 6],
}

impl PortMetrics {
    /// Fresh, detached handles.
    pub fn new() -> Self {
        PortMetrics {
            connections: counter(),
            refused_by_source: counter(),
            active: gauge(),
            tls_handshakes: counter(),
            tls_handshake_failures: counter(),
            rejected: std::array::from_fn(|_| counter()),
            affinity: AffinityCounters([counter(), counter(), counter()]),
            shadow: ShadowCounters::default(),
            flows_active: gauge(),
            flows_created: counter(),
            flows_expired: counter(),
            udp_dropped: std::array::from_fn(|_| counter()),
        }
    }

    /// Counts a UDP datagram (or the flow it would have started) that went nowhere.
    pub fn udp_dropped(&self, why: UdpDrop) {
        let index = UdpDrop::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.udp_dropped[index].inc();
    }

    /// Counts a refused request.
    pub fn rejected(&self, why: Rejection) {
        let index = Rejection::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.rejected[index].inc();
    }
}

impl Default for PortMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Handles of one backend of one port (or of `none`: work that found no backend).
#[derive(Clone)]
pub struct BackendMetrics {
    /// Connections (TCP) or requests (HTTP) sent.
    pub connections: Counter,
    pub(super) requests: [Counter; 6],
    pub(super) duration: Histogram,
    /// Bytes from clients.
    pub bytes_received: Counter,
    /// Bytes to clients.
    pub bytes_sent: Counter,
    /// Failed connects.
    pub connect_errors: Counter,
    /// Work in progress.
    pub in_flight: Gauge,
    /// 0 while skipped after failed connects.
    pub up: Gauge,
    /// 0 while the port's health policies hold the backend out.
    pub healthy: Gauge,
    /// Passive ejections.
    pub ejections: Counter,
    /// Traffic outcomes a health policy could not keep up with.
    pub health_observations_dropped: Counter,
    /// UDP datagrams relayed from clients to the backend.
    pub datagrams_received: Counter,
    /// UDP datagrams relayed from the backend to clients.
    pub datagrams_sent: Counter,
    /// Picks of this backend on calls a shadow policy compared, by role and side.
    pub shadow_picks: ShadowPicks,
}

impl BackendMetrics {
    /// Fresh, detached handles; the backend starts up and healthy.
    pub fn new() -> Self {
        let duration = Histogram::with_opts(
            HistogramOpts::new("detached", "detached").buckets(DURATION_BUCKETS.to_vec()),
        )
        .expect("static buckets");
        let metrics = BackendMetrics {
            connections: counter(),
            requests: [
                counter(),
                counter(),
                counter(),
                counter(),
                counter(),
                counter(),
            ],
            duration,
            bytes_received: counter(),
            bytes_sent: counter(),
            connect_errors: counter(),
            in_flight: gauge(),
            up: gauge(),
            healthy: gauge(),
            ejections: counter(),
            health_observations_dropped: counter(),
            datagrams_received: counter(),
            datagrams_sent: counter(),
            shadow_picks: ShadowPicks::default(),
        };
        metrics.up.set(1);
        metrics.healthy.set(1);
        metrics
    }

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

impl Default for BackendMetrics {
    fn default() -> Self {
        Self::new()
    }
}
