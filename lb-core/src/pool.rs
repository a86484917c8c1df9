//! A port's backend set as the data path sees it: an immutable snapshot of backends, each with
//! live state shared across reloads (in-flight count, passive back-off, metric handles), plus
//! the balancer built for exactly this set. Selection skips backends already tried for this
//! unit of work and backends backing off after failed connects, and fails open (tries the one
//! that backs off the least) rather than refuse when every backend is backing off.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lb_config::{Backend, Backoff};
use tokio::time::Instant;

use crate::balancer::{BackendFigures, Balancer, BalancerFactory, Figures, PickContext};
use crate::metrics::BackendMetrics;

/// One backend and its live state. Shared by every snapshot that still lists its address.
pub struct BackendState {
    /// Where to connect.
    pub address: SocketAddr,
    /// `address` as text, the `backend` metric label and log field.
    pub label: String,
    /// Metric handles.
    pub metrics: BackendMetrics,
    consecutive_failures: AtomicU32,
    /// Milliseconds since [`clock_origin`] until which the backend is skipped; 0 = usable.
    down_until_ms: AtomicU64,
    /// Moving average of connect-to-response time, microseconds; 0 until measured.
    latency_micros: AtomicU32,
}

impl BackendState {
    fn new(address: SocketAddr, metrics: BackendMetrics) -> Self {
        metrics.up.set(1);
        BackendState {
            label: address.to_string(),
            address,
            metrics,
            consecutive_failures: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
            latency_micros: AtomicU32::new(0),
        }
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
            healthy: !self.is_backing_off(),
        }
    }

    fn backing_off_until(&self) -> u64 {
        self.down_until_ms.load(Ordering::Relaxed)
    }

    /// True while the backend is skipped after failed connects.
    pub fn is_backing_off(&self) -> bool {
        self.backing_off_until() > now_ms()
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

/// Backends a unit of work already tried; tiny, so a linear scan beats hashing.
#[derive(Debug, Default)]
pub struct Tried(Vec<usize>);

impl Tried {
    /// Records a failed backend.
    pub fn push(&mut self, index: usize) {
        self.0.push(index);
    }

    /// How many backends failed so far.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Nothing failed yet.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn contains(&self, index: usize) -> bool {
        self.0.contains(&index)
    }
}

/// The live figures of a pool's backends, by index, for its balancer.
struct PoolFigures(Vec<Arc<BackendState>>);

impl BackendFigures for PoolFigures {
    fn figures(&self, index: usize) -> Option<Figures> {
        self.0.get(index).map(|b| b.figures())
    }
}

/// An immutable backend set with its balancer and retry policy.
pub struct BackendPool {
    backends: Vec<Arc<BackendState>>,
    weights: Vec<u32>,
    balancer: Box<dyn Balancer>,
    retries: u32,
    backoff: Backoff,
}

impl BackendPool {
    /// Builds the pool for `backends`, reusing the live state of addresses `previous` had.
    pub fn build(
        backends: &[Backend],
        factory: &dyn BalancerFactory,
        retries: u32,
        backoff: Backoff,
        previous: Option<&BackendPool>,
        make_metrics: impl Fn(&str) -> BackendMetrics,
    ) -> Self {
        let states: Vec<Arc<BackendState>> = backends
            .iter()
            .map(|b| {
                previous
                    .and_then(|p| p.backends.iter().find(|s| s.address == b.address))
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(BackendState::new(
                            b.address,
                            make_metrics(&b.address.to_string()),
                        ))
                    })
            })
            .collect();
        let figures = Arc::new(PoolFigures(states.clone()));
        BackendPool {
            backends: states,
            weights: backends.iter().map(|b| b.weight).collect(),
            balancer: factory.build(backends, figures),
            retries,
            backoff,
        }
    }

    /// The backends, in configuration order.
    pub fn backends(&self) -> &[Arc<BackendState>] {
        &self.backends
    }

    /// How many further backends a unit of work may try after a failed connect.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The name of the balancing policy.
    pub fn policy(&self) -> &str {
        self.balancer.name()
    }

    /// The backend to try next, with its index; `None` when no backend is left to try.
    pub fn select(
        &self,
        cx: &PickContext<'_>,
        tried: &Tried,
    ) -> Option<(usize, Arc<BackendState>)> {
        let usable = |i: usize| self.weights[i] > 0 && !tried.contains(i);
        let now = now_ms();
        let n = self.backends.len();
        for attempt in 0..n as u32 {
            let Some(i) = self.balancer.pick(cx, attempt) else {
                break;
            };
            if i < n && usable(i) && self.backends[i].backing_off_until() <= now {
                return Some((i, self.backends[i].clone()));
            }
        }
        // The policy kept naming backends we cannot use: take any usable one that is not
        // backing off, else fail open with the one whose back-off ends first.
        let candidates = (0..n).filter(|i| usable(*i));
        let pick = candidates
            .clone()
            .find(|i| self.backends[*i].backing_off_until() <= now)
            .or_else(|| candidates.min_by_key(|i| self.backends[*i].backing_off_until()))?;
        Some((pick, self.backends[pick].clone()))
    }

    /// Records a failed connect: the backend backs off, longer for each consecutive failure.
    pub fn connect_failed(&self, backend: &BackendState) {
        backend.metrics.connect_errors.inc();
        let failures = backend.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        let wait = self
            .backoff
            .initial
            .saturating_mul(factor)
            .min(self.backoff.max);
        backend
            .down_until_ms
            .store(now_ms() + duration_ms(wait), Ordering::Relaxed);
        backend.metrics.up.set(0);
    }

    /// Records a successful connect: the backend is usable again at once.
    pub fn connect_succeeded(&self, backend: &BackendState) {
        if backend.consecutive_failures.swap(0, Ordering::Relaxed) != 0 {
            backend.down_until_ms.store(0, Ordering::Relaxed);
            backend.metrics.up.set(1);
        }
    }
}

/// The instant all back-off deadlines count from; tokio's clock, so paused-time tests work.
pub(crate) fn clock_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    // +1 keeps every real deadline above 0, which means "not backing off".
    duration_ms(Instant::now().saturating_duration_since(clock_origin())) + 1
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::RoundRobin;
    use crate::metrics::Metrics;
    use lb_config::Protocol;

    const CX: PickContext<'static> = PickContext {
        client: None,
        authority: None,
        protocol: Protocol::Tcp,
        hash_key: 0,
        headers: None,
    };

    fn pool(weights: &[u32], metrics: &Metrics) -> BackendPool {
        let backends: Vec<Backend> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Backend {
                address: SocketAddr::from(([192, 0, 2, 1], 8000 + i as u16)),
                weight: *w,
            })
            .collect();
        let backoff = Backoff {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(30),
        };
        BackendPool::build(&backends, &RoundRobin, 2, backoff, None, |b| {
            metrics.backend("s", "p", b)
        })
    }

    #[test]
    fn tried_backends_are_skipped() {
        let metrics = Metrics::new();
        let pool = pool(&[1, 1, 1], &metrics);
        let mut tried = Tried::default();
        let (first, _) = pool.select(&CX, &tried).expect("a backend");
        tried.push(first);
        let (second, _) = pool.select(&CX, &tried).expect("another backend");
        assert_ne!(first, second);
        tried.push(second);
        let (third, _) = pool.select(&CX, &tried).expect("the last backend");
        tried.push(third);
        assert!(pool.select(&CX, &tried).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_backend_backs_off_then_returns() {
        let metrics = Metrics::new();
        let pool = pool(&[1, 1], &metrics);
        let failed = pool.backends()[0].clone();
        pool.connect_failed(&failed);
        assert!(failed.is_backing_off());
        for _ in 0..4 {
            let (i, _) = pool.select(&CX, &Tried::default()).expect("a backend");
            assert_eq!(i, 1, "the backing-off backend is skipped");
        }
        tokio::time::advance(Duration::from_millis(2001)).await;
        assert!(!failed.is_backing_off());
        pool.connect_failed(&failed);
        tokio::time::advance(Duration::from_millis(2001)).await;
        assert!(
            failed.is_backing_off(),
            "the second failure backs off twice as long"
        );
        pool.connect_succeeded(&failed);
        assert!(!failed.is_backing_off());
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_backend_backs_off_the_soonest_back_is_tried() {
        let metrics = Metrics::new();
        let pool = pool(&[1, 1], &metrics);
        pool.connect_failed(&pool.backends()[1]);
        tokio::time::advance(Duration::from_millis(500)).await;
        pool.connect_failed(&pool.backends()[0]);
        let (i, _) = pool.select(&CX, &Tried::default()).expect("fail open");
        assert_eq!(i, 1);
    }

    #[test]
    fn weight_zero_takes_no_new_work() {
        let metrics = Metrics::new();
        let pool = pool(&[0, 1], &metrics);
        for _ in 0..3 {
            assert_eq!(pool.select(&CX, &Tried::default()).map(|(i, _)| i), Some(1));
        }
        assert!(pool
            .select(&CX, &{
                let mut t = Tried::default();
                t.push(1);
                t
            })
            .is_none());
    }

    #[test]
    fn state_survives_a_rebuild_for_addresses_that_remain() {
        let metrics = Metrics::new();
        let old = pool(&[1, 1], &metrics);
        old.connect_failed(&old.backends()[1]);
        let kept = [Backend {
            address: old.backends()[1].address,
            weight: 1,
        }];
        let new = BackendPool::build(&kept, &RoundRobin, 2, old.backoff, Some(&old), |b| {
            metrics.backend("s", "p", b)
        });
        assert!(Arc::ptr_eq(&new.backends()[0], &old.backends()[1]));
        assert!(new.backends()[0].is_backing_off());
    }
}
