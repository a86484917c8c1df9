//! One backend of a port and its live state, shared by every backend set (and so every route)
//! that still lists its address: in-flight count, passive back-off after failed connects,
//! health verdicts, recent latency, metric handles.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lb_config::Backoff;
use lb_policy::clock::{deadline_ms, now_ms};
use lb_policy::Figures;

use crate::metrics::BackendMetrics;

/// One backend and its live state.
pub struct BackendState {
    /// Where to connect.
    pub address: SocketAddr,
    /// `address` as text, the `backend` metric label and log field.
    pub label: String,
    /// Metric handles.
    pub metrics: BackendMetrics,
    consecutive_failures: AtomicU32,
    /// Milliseconds on the policy clock until which the backend is skipped; 0 = usable.
    down_until_ms: AtomicU64,
    /// Moving average of connect-to-response time, microseconds; 0 until measured.
    latency_micros: AtomicU32,
    /// One bit per health policy of the port that holds the backend out.
    held_out: AtomicU8,
    /// Milliseconds on the policy clock until which the backend is ejected; 0 = not.
    ejected_until_ms: AtomicU64,
}

/// A backend's health as `/config` shows it.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct HealthView {
    /// Gets new work (not held out, not ejected).
    pub healthy: bool,
    /// Milliseconds left of an ejection; 0 when not ejected.
    pub ejected_for_ms: u64,
}

impl BackendState {
    /// A new backend with fresh (detached) metric handles: up and healthy.
    pub(crate) fn new(address: SocketAddr) -> Self {
        BackendState {
            label: address.to_string(),
            address,
            metrics: BackendMetrics::new(),
            consecutive_failures: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
            latency_micros: AtomicU32::new(0),
            held_out: AtomicU8::new(0),
            ejected_until_ms: AtomicU64::new(0),
        }
    }

    /// Whether the port's health policies let the backend take new work.
    pub fn is_healthy(&self) -> bool {
        self.held_out.load(Ordering::Relaxed) == 0
            && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms()
    }

    /// Health as `/config` shows it.
    pub fn health_view(&self) -> HealthView {
        HealthView {
            healthy: self.is_healthy(),
            ejected_for_ms: self
                .ejected_until_ms
                .load(Ordering::Relaxed)
                .saturating_sub(now_ms()),
        }
    }

    /// Records health policy `slot`'s verdict: held out, or not.
    pub(crate) fn set_held_out(&self, slot: u8, held_out: bool) {
        let bit = 1u8 << slot.min(7);
        if held_out {
            self.held_out.fetch_or(bit, Ordering::Relaxed);
        } else {
            self.held_out.fetch_and(!bit, Ordering::Relaxed);
        }
        self.show_health();
    }

    /// The slots (health policies, in the port's order) holding the backend out now.
    pub fn held_out_by(&self) -> impl Iterator<Item = usize> {
        let bits = self.held_out.load(Ordering::Relaxed);
        (0..8).filter(move |slot| bits & (1 << slot) != 0)
    }

    /// Takes the backend out for `duration` (passive outlier ejection).
    pub(crate) fn eject(self: &Arc<Self>, duration: Duration) {
        self.metrics.ejections.inc();
        self.ejected_until_ms
            .store(deadline_ms(now_ms(), duration), Ordering::Relaxed);
        self.show_health();
        // The gauge follows the ejection's end, which no event marks.
        let state = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            if let Some(state) = state.upgrade() {
                state.show_health();
            }
        });
    }

    /// Ends an ejection early.
    pub(crate) fn end_ejection(&self) {
        self.ejected_until_ms.store(0, Ordering::Relaxed);
        self.show_health();
    }

    /// Forgets every health verdict (the port's health policies changed).
    pub(crate) fn reset_health(&self) {
        self.held_out.store(0, Ordering::Relaxed);
        self.ejected_until_ms.store(0, Ordering::Relaxed);
        self.show_health();
    }

    fn show_health(&self) {
        self.metrics.healthy.set(i64::from(self.is_healthy()));
    }

    /// Folds one observed connect-to-response time into the moving average (weight 1/8, as
    /// TCP's SRTT): recent enough to follow a slowing backend, smooth enough not to jump.
    pub fn record_latency(&self, elapsed: Duration) {
        let sample = u32::try_from(elapsed.as_micros())
            .unwrap_or(u32::MAX)
            .max(1);
        let old = self.latency_micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        // A racing update may win; either value is a fair average.
        self.latency_micros.store(new, Ordering::Relaxed);
    }

    /// The figures policies read.
    pub fn figures(&self) -> Figures {
        Figures {
            in_flight: u32::try_from(self.metrics.in_flight.get().max(0)).unwrap_or(u32::MAX),
            latency_micros: self.latency_micros.load(Ordering::Relaxed),
            healthy: !self.is_backing_off() && self.is_healthy(),
        }
    }

    pub(super) fn backing_off_until(&self) -> u64 {
        self.down_until_ms.load(Ordering::Relaxed)
    }

    /// True while the backend is skipped after failed connects.
    pub fn is_backing_off(&self) -> bool {
        self.backing_off_until() > now_ms()
    }

    /// Records a failed connect: the backend backs off, longer for each consecutive failure.
    pub(super) fn connect_failed(&self, backoff: &Backoff) {
        self.metrics.connect_errors.inc();
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        let wait = backoff.initial.saturating_mul(factor).min(backoff.max);
        self.down_until_ms
            .store(deadline_ms(now_ms(), wait), Ordering::Relaxed);
        self.metrics.up.set(0);
    }

    /// Records a successful connect: the backend is usable again at once.
    pub(super) fn connect_succeeded(&self) {
        if self.consecutive_failures.swap(0, Ordering::Relaxed) != 0 {
            self.down_until_ms.store(0, Ordering::Relaxed);
            self.metrics.up.set(1);
        }
    }

    /// Marks the backend busy until the returned guard is dropped.
    pub fn lease(self: &Arc<Self>) -> BackendLease {
        self.metrics.in_flight.inc();
        self.metrics.connections.inc();
        BackendLease(self.clone())
    }
}

/// A backend in use by one connection or request; counts as in flight while alive.
pub struct BackendLease(Arc<BackendState>);

impl BackendLease {
    /// The backend.
    pub fn backend(&self) -> &Arc<BackendState> {
        &self.0
    }
}

impl Drop for BackendLease {
    fn drop(&mut self) {
        self.0.metrics.in_flight.dec();
    }
}
