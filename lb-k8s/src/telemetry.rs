//! What the Kubernetes source reports for metrics; `lb-core` turns it into Prometheus series.
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
}

/// Reports nothing.
pub struct NoTelemetry;

impl Telemetry for NoTelemetry {}
