//! What the Kubernetes source reports for metrics; the appliance (`gantry`) turns it into
//! Prometheus series.
//! Every method has a no-op default, so tests and tools can ignore what they do not need.

/// The source's metrics.
pub trait Telemetry: Send + Sync + 'static {
    /// A watch event of `kind` (`Service`, `EndpointSlice`, `Node`, `Secret`) with `outcome`:
    /// `applied`, `deleted`, `relisted` or `error`.
    fn watch_event(&self, _kind: &str, _outcome: &str) {}

    /// An object of `kind` was skipped (or kept its last good configuration) because it is
    /// invalid or unsupported.
    fn object_invalid(&self, _kind: &str) {}

    /// `pool` now has `in_use` addresses handed out.
    fn pool_in_use(&self, _pool: &str, _in_use: usize) {}

    /// A change seen on a watch was served `seconds` after it arrived.
    fn programmed(&self, _seconds: f64) {}

    /// A write to the API server (`status`, `finalizer`, `event`) with `outcome`: `ok`,
    /// `error`, or `fenced` (not made: another replica holds the Lease).
    fn api_write(&self, _what: &str, _outcome: &str) {}

    /// Whether this replica writes to the cluster, and who does.
    fn leadership(&self, _leadership: &Leadership) {}
}

/// Which replica writes to the cluster, as this one sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Leadership {
    /// The Lease (`namespace/name`); `None` when election is off.
    pub lease: Option<String>,
    /// This replica's identity as a candidate.
    pub identity: String,
    /// Whether this replica writes now.
    pub leading: bool,
    /// The Lease's holder as last read, when known.
    pub holder: Option<String>,
}

/// Reports nothing.
pub struct NoTelemetry;

impl Telemetry for NoTelemetry {}
