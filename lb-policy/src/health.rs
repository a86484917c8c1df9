//! The health seam: what a health policy is told (probe and traffic [`Outcome`]s), what it
//! answers ([`Verdict`]s), and what it asks the host to do for it ([`HealthSettings`]). A port's
//! health policy has one state for all threads; the runtime's health runner probes on its
//! plan, passes it outcomes, and applies its verdicts.

use std::sync::Arc;
use std::time::Duration;

use lb_config::Backend;

use crate::BackendFigures;

/// How one probe or one unit of traffic went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The TCP connection opened.
    Connected,
    /// An HTTP response arrived with this status.
    Responded(u16),
    /// The connection was refused or failed.
    ConnectFailed,
    /// No answer in time.
    TimedOut,
}

/// What a policy concluded about a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No change.
    Unchanged,
    /// Give it traffic (ends an ejection too).
    Healthy,
    /// Give it no traffic until a later `Healthy`.
    Unhealthy,
    /// Give it no traffic for this long.
    Eject(Duration),
}

/// What the host sends to probe a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// Open a TCP connection, then close it.
    TcpConnect,
    /// `GET path` (over TLS when `tls`), reading the status.
    Http {
        /// Request target.
        path: String,
        /// `Host` header; the backend's address when none.
        host: Option<String>,
        /// Speak TLS (certificates not verified).
        tls: bool,
    },
}

/// Active checking on a schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePlan {
    /// What to send.
    pub kind: ProbeKind,
    /// Between the starts of two probe rounds.
    pub interval: Duration,
    /// A probe not finished by then is `TimedOut`.
    pub timeout: Duration,
    /// The port to probe on each backend's address; `None`: the backend's own.
    pub port: Option<u16>,
}

/// What a health policy asks the host to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    /// Active probes, if any.
    pub probe: Option<ProbePlan>,
    /// Whether real traffic's outcomes are passed to [`HealthPolicy::observed`].
    pub observe_traffic: bool,
}

/// A health policy: one state for the port's backends, whatever thread asks.
pub trait HealthPolicy: Send + Sync {
    /// The policy's name.
    fn name(&self) -> &str;
    /// What it wants done.
    fn settings(&self) -> &HealthSettings;
    /// The backend set changed (indices below refer to it from now on). Called when the
    /// route serving the set is activated, never for a set that is only being built.
    fn set_backends(&self, backends: &[Backend], figures: Arc<dyn BackendFigures>);
    /// The outcome of a probe of the backend at `index`.
    fn probed(&self, index: usize, outcome: Outcome) -> Verdict;
    /// The outcome of real traffic to the backend at `index`.
    fn observed(&self, index: usize, outcome: Outcome) -> Verdict;
}
