//! One unit of work's way to a backend, the same for every protocol (TCP, TLS, HTTP requests,
//! upgrades; UDP flows next): choose a backend not tried yet, lease it, connect, report how it
//! went to the pool's back-off, the health observers and the metrics, and decide whether to
//! try another.
//!
//! **The retry budget.** A unit of work tries another backend while no more than `retries`
//! backends have failed for it and an untried backend remains. What counts as a failure that
//! may be retried: for TCP and UDP, a failed connect (refused, reset, timed out); for HTTP, the
//! exchange's rule ([`crate::http::exchange`]), which adds a backend that closed before
//! answering an idempotent request read whole.

use std::sync::Arc;
use std::time::Duration;

use lb_policy::{Outcome, PickContext, ResponseHeader};

use super::{BackendLease, BackendPool, BackendState, Tried};

/// Why no backend was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoBackend {
    /// Nothing to try: the port has no usable backend (503 for HTTP).
    Unavailable,
    /// Every backend tried failed, or the retry budget is spent (502 for HTTP).
    Exhausted,
}

/// A backend chosen and leased for one try.
pub struct Attempt {
    index: usize,
    lease: BackendLease,
    /// A header for the response that keeps the client on this backend (HTTP only).
    pub response_header: Option<ResponseHeader>,
}

impl Attempt {
    /// The backend tried.
    pub fn backend(&self) -> &Arc<BackendState> {
        self.lease.backend()
    }

    /// The lease, which counts the work as in flight on the backend while held.
    pub fn into_lease(self) -> BackendLease {
        self.lease
    }
}

/// The tries of one unit of work.
#[derive(Default)]
pub struct Attempts {
    tried: Tried,
}

impl Attempts {
    /// A unit of work that has tried nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next backend to try, leased.
    pub fn next(&self, pool: &BackendPool, cx: &PickContext<'_>) -> Result<Attempt, NoBackend> {
        match pool.select(cx, &self.tried) {
            Some(selected) => Ok(Attempt {
                index: selected.index,
                lease: selected.backend.lease(),
                response_header: selected.response_header,
            }),
            None if self.tried.is_empty() => Err(NoBackend::Unavailable),
            None => Err(NoBackend::Exhausted),
        }
    }

    /// The connection to `attempt`'s backend is up: it is usable again at once if it was
    /// backing off.
    pub fn connected(&self, attempt: &Attempt) {
        attempt.backend().connect_succeeded();
    }

    /// The connect to `attempt`'s backend failed this way (`ConnectFailed` or `TimedOut`):
    /// the backend backs off, observers hear it, and the answer says whether to try another
    /// backend (the retry rule above).
    pub fn failed(&mut self, pool: &BackendPool, attempt: Attempt, outcome: Outcome) -> bool {
        let backend = attempt.backend();
        backend.connect_failed(&pool.backoff);
        pool.observe(backend, outcome);
        self.tried.push(attempt.index);
        let failures = self.tried.len();
        failures <= pool.retries as usize && failures < pool.backends.len()
    }

    /// How many backends failed so far.
    pub fn failures(&self) -> usize {
        self.tried.len()
    }
}

/// How a unit of work that reached `backend` went, once it is known (a TCP connection up, an
/// HTTP response head read, an error after connecting): observers hear it, and `elapsed`
/// (connect or response time) feeds the backend's latency when it answered.
pub fn finished(
    pool: &BackendPool,
    backend: &Arc<BackendState>,
    outcome: Outcome,
    elapsed: Duration,
) {
    if matches!(outcome, Outcome::Connected | Outcome::Responded(_)) {
        backend.record_latency(elapsed);
    }
    pool.observe(backend, outcome);
}
