//! Shadow policies on a pool: a balancer or an affinity that sees the calls the serving one
//! sees (a sampled share of them), with the same inputs at the same moment, and whose answers
//! are compared with serving's and counted, never used.
//!
//! Nothing a shadow does reaches serving: it is asked after serving has chosen, its plugin is
//! loaded apart (its own instances, faults and quarantine), a fault is counted as the
//! comparison's result and nothing else, and a shadow affinity remembers its keys in a table
//! of its own. What it costs a request is bounded by the sampling rate and the plugin's call
//! deadline, and after `quarantine_after` faults in a row it is no longer called.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lb_policy::{Balancer, BalancerFactory, PickContext, Stickiness, Unanswered};

use super::{BackendPool, BackendState, Placement, Sticky, TableRead, Tried};
use crate::metrics::{ShadowCounters, ShadowResult, ShadowRole, ShadowSide};

/// A million: sampling rates count calls per million.
const MILLION: u64 = 1_000_000;

/// Which calls a shadow sees: `per_million` of them, evenly spread (every call at a million).
pub(super) struct Sampling {
    per_million: u64,
    calls: AtomicU64,
}

impl Sampling {
    pub(super) fn new(per_million: u32) -> Self {
        Sampling {
            per_million: u64::from(per_million).min(MILLION),
            calls: AtomicU64::new(0),
        }
    }

    /// Whether this call is one the shadow sees: the call whose count crosses the next
    /// multiple of a million over the rate. Counted modulo a million, so it cannot overflow.
    fn take(&self) -> bool {
        if self.per_million >= MILLION {
            return true;
        }
        let n = self.calls.fetch_add(1, Ordering::Relaxed) % MILLION;
        (n + 1) * self.per_million / MILLION != n * self.per_million / MILLION
    }
}

/// The shadow policies a pool is built with.
#[derive(Default)]
pub struct ShadowPolicies<'a> {
    /// A shadow balancer, and the calls it sees per million.
    pub balancer: Option<(&'a dyn BalancerFactory, u32)>,
    /// A shadow affinity, and the requests it sees per million.
    pub affinity: Option<(&'a dyn lb_policy::AffinityFactory, u32)>,
    /// Where the comparisons are counted.
    pub counters: ShadowCounters,
}

/// A shadow balancer over one backend set.
pub(super) struct ShadowBalancer {
    pub(super) balancer: Box<dyn Balancer>,
    pub(super) sampling: Sampling,
    pub(super) counters: ShadowCounters,
}

impl ShadowBalancer {
    /// Serving answered `serving` to `pick(cx, attempt)`; asks the shadow the same, if this
    /// call is sampled, and counts how the two compare.
    pub(super) fn compare(
        &self,
        cx: &PickContext<'_>,
        attempt: u32,
        serving: Option<usize>,
        backends: &[Arc<BackendState>],
    ) {
        if !self.sampling.take() {
            return;
        }
        let shadow = self.balancer.answer(cx, attempt);
        tally(
            &self.counters,
            ShadowRole::Balancer,
            serving,
            shadow,
            backends,
        );
    }
}

/// A shadow affinity over one backend set, with its own table.
pub(super) struct ShadowAffinity {
    pub(super) sticky: Sticky,
    pub(super) sampling: Sampling,
    pub(super) counters: ShadowCounters,
}

impl ShadowAffinity {
    /// Serving sent the request to the backend at `serving`; works out where the shadow
    /// affinity would have sent it, as the pool does for serving (its remembered or named
    /// backend while usable, else the backend every replica would give the key, else serving's
    /// balanced choice), remembers that in the shadow's table, and counts the comparison.
    pub(super) fn compare(
        &self,
        pool: &BackendPool,
        cx: &PickContext<'_>,
        tried: &Tried,
        now: u64,
        serving: usize,
    ) {
        if !self.sampling.take() {
            return;
        }
        let shadow = self.sticky.affinity.stick_answer(cx).map(|stickiness| {
            let read = TableRead::Lookup;
            let index = match pool.place(&self.sticky, stickiness, tried, now, read) {
                Placement::Stuck(index) => index,
                Placement::Place(_) => {
                    let index = pool.ranked(stickiness, tried, now).unwrap_or(serving);
                    if let (Stickiness::Remembered(key), Some(table)) =
                        (stickiness, &self.sticky.table)
                    {
                        table.remember(key, pool.backends[index].address, now);
                    }
                    index
                }
            };
            Some(index)
        });
        tally(
            &self.counters,
            ShadowRole::Affinity,
            Some(serving),
            shadow,
            &pool.backends,
        );
    }
}

/// Counts one comparison and each side's pick.
fn tally(
    counters: &ShadowCounters,
    role: ShadowRole,
    serving: Option<usize>,
    shadow: Result<Option<usize>, Unanswered>,
    backends: &[Arc<BackendState>],
) {
    let count_pick = |index: Option<usize>, side| {
        if let Some(backend) = index.and_then(|i| backends.get(i)) {
            backend.metrics.shadow_picks.count(role, side);
        }
    };
    count_pick(serving, ShadowSide::Serving);
    let result = match shadow {
        Ok(answer) => {
            count_pick(answer, ShadowSide::Shadow);
            if answer == serving {
                ShadowResult::Agree
            } else {
                ShadowResult::Disagree
            }
        }
        Err(Unanswered::Fault) => ShadowResult::Fault,
        Err(Unanswered::Quarantined) => ShadowResult::Quarantined,
    };
    counters.count(role, result);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_takes_its_share_evenly_and_every_call_at_a_million() {
        let tenth = Sampling::new(100_000);
        let taken: Vec<bool> = (0..30).map(|_| tenth.take()).collect();
        assert_eq!(taken.iter().filter(|t| **t).count(), 3);
        assert!(taken[9] && taken[19] && taken[29], "{taken:?}");
        let rare = Sampling::new(100);
        assert_eq!((0..MILLION).filter(|_| rare.take()).count(), 100);
        let all = Sampling::new(1_000_000);
        assert!((0..1000).all(|_| all.take()));
    }

    #[test]
    fn sampling_wraps_without_losing_its_rate() {
        let half = Sampling::new(500_000);
        half.calls.store(u64::MAX - 3, Ordering::Relaxed);
        let taken = (0..8).filter(|_| half.take()).count();
        assert_eq!(taken, 4);
    }
}
