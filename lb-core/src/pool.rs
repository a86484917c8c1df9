//! A port's backend set as the data path sees it: an immutable snapshot of backends, each with
//! live state shared across reloads (in-flight count, passive back-off, metric handles), plus
//! the balancer built for exactly this set. Selection skips backends already tried for this
//! unit of work and backends backing off after failed connects, and fails open (tries the one
//! that backs off the least) rather than refuse when every backend is backing off. A port
//! with session affinity sends a request to its sticky backend while that one is usable, and
//! otherwise balances it and moves the affinity (see [`crate::affinity`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lb_config::{Backend, Backoff};
use tokio::time::Instant;

use crate::affinity::{Affinity, AffinityFactory, AffinityTable, ResponseHeader, Stickiness};
use crate::balancer::{BackendFigures, Balancer, BalancerFactory, Figures, PickContext};
use crate::health::HealthView;
use crate::metrics::{AffinityCounters, AffinityOutcome, BackendMetrics};

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
    /// One bit per health policy of the port that holds the backend out.
    held_out: AtomicU8,
    /// Milliseconds since [`clock_origin`] until which the backend is ejected; 0 = not.
    ejected_until_ms: AtomicU64,
}

impl BackendState {
    fn new(address: SocketAddr, metrics: BackendMetrics) -> Self {
        metrics.up.set(1);
        metrics.healthy.set(1);
        BackendState {
            label: address.to_string(),
            address,
            metrics,
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

    /// Takes the backend out for `duration` (passive outlier ejection).
    pub(crate) fn eject(self: &Arc<Self>, duration: Duration) {
        self.metrics.ejections.inc();
        self.ejected_until_ms
            .store(now_ms() + duration_ms(duration), Ordering::Relaxed);
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

/// The policies a pool is built with.
pub struct Policies<'a> {
    /// Builds the balancer.
    pub balancer: &'a dyn BalancerFactory,
    /// Builds the session affinity, if the port has one.
    pub affinity: Option<&'a dyn AffinityFactory>,
    /// Where affinity decisions are counted.
    pub affinity_counters: AffinityCounters,
    /// Further backends a unit of work may try after a failed connect.
    pub retries: u32,
    /// How long a backend whose connect failed is skipped.
    pub backoff: Backoff,
}

/// The port's session affinity over one backend set.
struct Sticky {
    affinity: Box<dyn Affinity>,
    table: Option<Arc<AffinityTable>>,
    by_address: HashMap<SocketAddr, usize>,
    counters: AffinityCounters,
}

/// The backend chosen for a unit of work.
pub struct Selected {
    /// Its index in the pool.
    pub index: usize,
    /// The backend.
    pub backend: Arc<BackendState>,
    /// A header for the response that keeps the client on this backend (HTTP only).
    pub response_header: Option<ResponseHeader>,
}

/// An immutable backend set with its balancer, affinity and retry policy.
pub struct BackendPool {
    backends: Vec<Arc<BackendState>>,
    weights: Vec<u32>,
    balancer: Box<dyn Balancer>,
    sticky: Option<Sticky>,
    retries: u32,
    backoff: Backoff,
}

impl BackendPool {
    /// Builds the pool for `backends`, reusing the live state of addresses `previous` had.
    pub fn build(
        backends: &[Backend],
        policies: Policies<'_>,
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
        let sticky = policies.affinity.map(|factory| Sticky {
            affinity: factory.build(backends, figures.clone()),
            table: factory.table().cloned(),
            by_address: backends
                .iter()
                .enumerate()
                .map(|(i, b)| (b.address, i))
                .collect(),
            counters: policies.affinity_counters,
        });
        BackendPool {
            backends: states,
            weights: backends.iter().map(|b| b.weight).collect(),
            balancer: policies.balancer.build(backends, figures),
            sticky,
            retries: policies.retries,
            backoff: policies.backoff,
        }
    }

    /// The backends, in configuration order.
    pub fn backends(&self) -> &[Arc<BackendState>] {
        &self.backends
    }

    /// The backends' live figures, by index, as policies read them.
    pub fn figures(&self) -> Arc<dyn BackendFigures> {
        Arc::new(PoolFigures(self.backends.clone()))
    }

    /// How many further backends a unit of work may try after a failed connect.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The name of the balancing policy.
    pub fn policy(&self) -> &str {
        self.balancer.name()
    }

    /// The backend to try next; `None` when no backend is left to try.
    pub fn select(&self, cx: &PickContext<'_>, tried: &Tried) -> Option<Selected> {
        let Some(sticky) = &self.sticky else {
            let (index, backend) = self.balance(cx, tried)?;
            return Some(Selected {
                index,
                backend,
                response_header: None,
            });
        };
        let now = now_ms();
        let stickiness = sticky.affinity.stick(cx);
        let target = match stickiness {
            Stickiness::None => None,
            Stickiness::Remembered(key) => sticky
                .table
                .as_ref()
                .and_then(|table| table.lookup(key, now))
                .map(|address| sticky.by_address.get(&address).copied()),
            Stickiness::Named(index) => Some(Some(index)),
        };
        let usable = |i: usize| {
            i < self.backends.len()
                && self.weights[i] > 0
                && !tried.contains(i)
                && self.backends[i].backing_off_until() <= now
                && self.backends[i].is_healthy()
        };
        let outcome = match target {
            Some(Some(index)) if usable(index) => {
                sticky.counters.count(AffinityOutcome::Stuck);
                return Some(Selected {
                    index,
                    backend: self.backends[index].clone(),
                    response_header: None,
                });
            }
            // Gone from the set, drained, already failed, backing off or unhealthy: move it.
            Some(_) => AffinityOutcome::Moved,
            None => AffinityOutcome::New,
        };
        let (index, backend) = self.balance(cx, tried)?;
        sticky.counters.count(outcome);
        let response_header = match stickiness {
            Stickiness::Remembered(key) => {
                if let Some(table) = &sticky.table {
                    table.remember(key, backend.address, now);
                }
                None
            }
            Stickiness::None | Stickiness::Named(_) => sticky.affinity.assigned(cx, index),
        };
        Some(Selected {
            index,
            backend,
            response_header,
        })
    }

    /// The balancer's choice among the backends not tried yet.
    fn balance(&self, cx: &PickContext<'_>, tried: &Tried) -> Option<(usize, Arc<BackendState>)> {
        let usable = |i: usize| self.weights[i] > 0 && !tried.contains(i);
        let now = now_ms();
        let ready = |i: usize| self.backends[i].backing_off_until() <= now;
        let n = self.backends.len();
        for attempt in 0..n as u32 {
            let Some(i) = self.balancer.pick(cx, attempt) else {
                break;
            };
            if i < n && usable(i) && ready(i) && self.backends[i].is_healthy() {
                return Some((i, self.backends[i].clone()));
            }
        }
        // The policy kept naming backends we cannot use: take any healthy one that is not
        // backing off; failing that (every backend unhealthy: health checks cannot be right
        // about all of them at once, so traffic goes on, as Envoy's panic threshold does) any
        // one not backing off; else fail open with the one whose back-off ends first.
        let candidates = (0..n).filter(|i| usable(*i));
        let pick = candidates
            .clone()
            .find(|i| ready(*i) && self.backends[*i].is_healthy())
            .or_else(|| candidates.clone().find(|i| ready(*i)))
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

pub(crate) fn now_ms() -> u64 {
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

    fn policies(backoff: Backoff, metrics: &Metrics) -> Policies<'static> {
        Policies {
            balancer: &RoundRobin,
            affinity: None,
            affinity_counters: metrics.port("s", "p").affinity,
            retries: 2,
            backoff,
        }
    }

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
        BackendPool::build(&backends, policies(backoff, metrics), None, |b| {
            metrics.backend("s", "p", b)
        })
    }

    #[test]
    fn tried_backends_are_skipped() {
        let metrics = Metrics::new();
        let pool = pool(&[1, 1, 1], &metrics);
        let mut tried = Tried::default();
        let first = pool
            .select(&CX, &tried)
            .map(|s| s.index)
            .expect("a backend");
        tried.push(first);
        let second = pool
            .select(&CX, &tried)
            .map(|s| s.index)
            .expect("another backend");
        assert_ne!(first, second);
        tried.push(second);
        let third = pool
            .select(&CX, &tried)
            .map(|s| s.index)
            .expect("the last backend");
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
            let i = pool
                .select(&CX, &Tried::default())
                .map(|s| s.index)
                .expect("a backend");
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
        let i = pool
            .select(&CX, &Tried::default())
            .map(|s| s.index)
            .expect("fail open");
        assert_eq!(i, 1);
    }

    #[test]
    fn weight_zero_takes_no_new_work() {
        let metrics = Metrics::new();
        let pool = pool(&[0, 1], &metrics);
        for _ in 0..3 {
            assert_eq!(
                pool.select(&CX, &Tried::default()).map(|s| s.index),
                Some(1)
            );
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
        let new = BackendPool::build(&kept, policies(old.backoff, &metrics), Some(&old), |b| {
            metrics.backend("s", "p", b)
        });
        assert!(Arc::ptr_eq(&new.backends()[0], &old.backends()[1]));
        assert!(new.backends()[0].is_backing_off());
    }
}
