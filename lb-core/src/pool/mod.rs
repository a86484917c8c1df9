//! A port's backend set as the data path sees it: an immutable snapshot of backends (each a
//! [`BackendState`] shared with every other snapshot that lists its address), the balancer and
//! affinity built for exactly this set, the retry policy, and who hears how traffic went.
//!
//! Selection skips backends already tried for this unit of work and backends backing off
//! after failed connects, and fails open (tries the one that backs off the least) rather than
//! refuse when every backend is backing off. A port with session affinity sends a request to
//! its sticky backend while that one is usable, and otherwise balances it and moves the
//! affinity. How one unit of work goes from choice to connection is [`attempt`].
//!
//! Building a pool computes only: new backends get detached metric handles and nothing is
//! told about the set until [`BackendPool::activate`].

pub mod attempt;
mod backend;
mod explain;
mod shadow;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use lb_config::{Backend, Backoff};
use lb_policy::clock::now_ms;
use lb_policy::{
    Affinity, AffinityFactory, AffinityTable, BackendFigures, Balancer, BalancerFactory, Figures,
    Outcome, Peeked, PickContext, ResponseHeader, Stickiness,
};

pub use attempt::{Attempt, Attempts, NoBackend};
pub use backend::{BackendLease, BackendState, HealthView};
pub use explain::{
    AffinityStep, BackendSeen, BalancerStep, ExplainPolicies, Explanation, PickSeen,
};
pub use shadow::ShadowPolicies;

use shadow::{Sampling, ShadowAffinity, ShadowBalancer};

use crate::metrics::{AffinityCounters, AffinityOutcome};

/// Hears how real traffic to a backend went (a health policy that watches traffic).
pub trait TrafficObserver: Send + Sync {
    /// `backend` answered, or failed, this way.
    fn observe(&self, backend: &Arc<BackendState>, outcome: Outcome);
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

/// The live figures of a pool's backends, by index, for its policies.
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
    /// Who hears how traffic went (the port's health policies that watch traffic).
    pub observers: Vec<Arc<dyn TrafficObserver>>,
    /// Policies run beside the serving ones, their answers only compared.
    pub shadow: ShadowPolicies<'a>,
}

/// The port's session affinity over one backend set.
struct Sticky {
    affinity: Box<dyn Affinity>,
    table: Option<Arc<AffinityTable>>,
    by_address: HashMap<SocketAddr, usize>,
    counters: AffinityCounters,
}

/// Where an affinity sends a request before any balancing.
enum Placement {
    /// To the backend at this index.
    Stuck(usize),
    /// Nowhere yet: it is placed, and counted so.
    Place(AffinityOutcome),
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
    shadow_balancer: Option<ShadowBalancer>,
    shadow_affinity: Option<ShadowAffinity>,
    retries: u32,
    backoff: Backoff,
    observers: Vec<Arc<dyn TrafficObserver>>,
}

impl BackendPool {
    /// Builds the pool for `backends`, sharing the live state of addresses `previous` had;
    /// new addresses start with fresh state. Computes only.
    pub fn build(
        backends: &[Backend],
        policies: Policies<'_>,
        previous: Option<&BackendPool>,
    ) -> Self {
        let states: Vec<Arc<BackendState>> = backends
            .iter()
            .map(|b| {
                previous
                    .and_then(|p| p.backends.iter().find(|s| s.address == b.address))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(BackendState::new(b.address)))
            })
            .collect();
        let figures = Arc::new(PoolFigures(states.clone()));
        let sticky = |factory: &dyn AffinityFactory| Sticky {
            affinity: factory.build(backends, figures.clone()),
            table: factory.table().cloned(),
            by_address: backends
                .iter()
                .enumerate()
                .map(|(i, b)| (b.address, i))
                .collect(),
            counters: policies.affinity_counters.clone(),
        };
        let shadow = &policies.shadow;
        BackendPool {
            backends: states,
            weights: backends.iter().map(|b| b.weight).collect(),
            balancer: policies.balancer.build(backends, figures.clone()),
            sticky: policies.affinity.map(sticky),
            shadow_balancer: shadow.balancer.map(|(factory, rate)| ShadowBalancer {
                balancer: factory.build(backends, figures.clone()),
                sampling: Sampling::new(rate),
                counters: shadow.counters.clone(),
            }),
            shadow_affinity: shadow.affinity.map(|(factory, rate)| ShadowAffinity {
                sticky: sticky(factory),
                sampling: Sampling::new(rate),
                counters: shadow.counters.clone(),
            }),
            retries: policies.retries,
            backoff: policies.backoff,
            observers: policies.observers,
        }
    }

    /// The pool is about to serve: its policies prepare what runs them.
    pub fn activate(&self) {
        self.balancer.activate();
        if let Some(sticky) = &self.sticky {
            sticky.affinity.activate();
        }
        if let Some(shadow) = &self.shadow_balancer {
            shadow.balancer.activate();
        }
        if let Some(shadow) = &self.shadow_affinity {
            shadow.sticky.affinity.activate();
        }
    }

    /// The backends, in configuration order.
    pub fn backends(&self) -> &[Arc<BackendState>] {
        &self.backends
    }

    /// Whether `address` is in this set.
    pub fn contains(&self, address: SocketAddr) -> bool {
        self.backends.iter().any(|b| b.address == address)
    }

    /// The backends' live figures, by index, as policies read them.
    pub fn figures(&self) -> Arc<dyn BackendFigures> {
        Arc::new(PoolFigures(self.backends.clone()))
    }

    /// The name of the balancing policy.
    pub fn policy(&self) -> &str {
        self.balancer.name()
    }

    /// Tells every observer how traffic to `backend` went.
    pub fn observe(&self, backend: &Arc<BackendState>, outcome: Outcome) {
        for observer in &self.observers {
            observer.observe(backend, outcome);
        }
    }

    /// The backend to try next; `None` when no backend is left to try.
    pub fn select(&self, cx: &PickContext<'_>, tried: &Tried) -> Option<Selected> {
        let Some(sticky) = &self.sticky else {
            let (index, backend) = self.balance(cx, tried, &mut Serving(self))?;
            return Some(Selected {
                index,
                backend,
                response_header: None,
            });
        };
        let now = now_ms();
        let selected = self.select_sticky(sticky, cx, tried, now)?;
        if let Some(shadow) = &self.shadow_affinity {
            shadow.compare(self, cx, tried, now, selected.index);
        }
        Some(selected)
    }

    /// The backend for `cx` on a port with session affinity.
    fn select_sticky(
        &self,
        sticky: &Sticky,
        cx: &PickContext<'_>,
        tried: &Tried,
        now: u64,
    ) -> Option<Selected> {
        let stickiness = sticky.affinity.stick(cx);
        let outcome = match self.place(sticky, stickiness, tried, now, TableRead::Lookup) {
            Placement::Stuck(index) => {
                sticky.counters.count(AffinityOutcome::Stuck);
                return Some(Selected {
                    index,
                    backend: self.backends[index].clone(),
                    response_header: None,
                });
            }
            Placement::Place(outcome) => outcome,
        };
        let (index, backend) = match self.ranked(stickiness, tried, now) {
            Some(index) => (index, self.backends[index].clone()),
            None => self.balance(cx, tried, &mut Serving(self))?,
        };
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

    /// Why the backend at `index` may not take this unit of work now, if it may not: the one
    /// rule for a sticky backend and a balancer's pick alike.
    fn unusable(&self, index: usize, tried: &Tried, now: u64) -> Option<Unusable> {
        let Some(backend) = self.backends.get(index) else {
            return Some(Unusable::NotInSet);
        };
        if self.weights[index] == 0 {
            Some(Unusable::Drained)
        } else if tried.contains(index) {
            Some(Unusable::AlreadyTried)
        } else if backend.backing_off_until() > now {
            Some(Unusable::BackingOff)
        } else if !backend.is_healthy() {
            Some(Unusable::Unhealthy)
        } else {
            None
        }
    }

    /// Where `stickiness` sends a request under `sticky`: to its remembered or named backend
    /// while that one is usable, or to be placed (a key the table does not know is new; one
    /// whose backend is gone or cannot take it moves). A remembered key found restarts its
    /// idle timeout, unless the table is only peeked at (`read`).
    fn place(
        &self,
        sticky: &Sticky,
        stickiness: Stickiness,
        tried: &Tried,
        now: u64,
        read: TableRead,
    ) -> Placement {
        let target = match stickiness {
            Stickiness::None => None,
            Stickiness::Remembered(key) => (sticky.table.as_ref())
                .and_then(|table| match read {
                    TableRead::Lookup => table.lookup(key, now),
                    TableRead::Peek => match table.peek(key, now) {
                        Peeked::Hit(address) => Some(address),
                        Peeked::Expired(_) | Peeked::Miss => None,
                    },
                })
                .map(|address| sticky.by_address.get(&address).copied()),
            Stickiness::Named(index) => Some(Some(index)),
        };
        match target {
            Some(Some(index)) if self.unusable(index, tried, now).is_none() => {
                Placement::Stuck(index)
            }
            // Gone from the set, drained, already failed, backing off or unhealthy: move it.
            Some(_) => Placement::Place(AffinityOutcome::Moved),
            None => Placement::Place(AffinityOutcome::New),
        }
    }

    /// The backend a remembered key being placed goes to: the one every replica would give
    /// it. `None` for a request that sticks by no key: it is balanced.
    fn ranked(&self, stickiness: Stickiness, tried: &Tried, now: u64) -> Option<usize> {
        let Stickiness::Remembered(key) = stickiness else {
            return None;
        };
        lb_policy::rendezvous(
            key,
            (0..self.backends.len())
                .filter(|i| self.unusable(*i, tried, now).is_none())
                .map(|i| (i, self.backends[i].address, self.weights[i])),
        )
    }

    /// The balancer's choice among the backends not tried yet, each step told to `trace`.
    fn balance<T: BalanceTrace>(
        &self,
        cx: &PickContext<'_>,
        tried: &Tried,
        trace: &mut T,
    ) -> Option<(usize, Arc<BackendState>)> {
        let now = now_ms();
        let n = self.backends.len();
        for attempt in 0..n as u32 {
            let Some(i) = trace.pick(cx, attempt) else {
                break;
            };
            match self.unusable(i, tried, now) {
                None => return Some((i, self.backends[i].clone())),
                Some(why) => trace.skipped(why),
            }
        }
        // The policy kept naming backends we cannot use: take any healthy one that is not
        // backing off; failing that (every backend unhealthy: health checks cannot be right
        // about all of them at once, so traffic goes on, as Envoy's panic threshold does) any
        // one not backing off; else fail open with the one whose back-off ends first.
        let usable = |i: usize| self.weights[i] > 0 && !tried.contains(i);
        let ready = |i: usize| self.backends[i].backing_off_until() <= now;
        let candidates = (0..n).filter(|i| usable(*i));
        let (pick, scan) = candidates
            .clone()
            .find(|i| ready(*i) && self.backends[*i].is_healthy())
            .map(|i| (i, Scan::Healthy))
            .or_else(|| {
                let i = candidates.clone().find(|i| ready(*i))?;
                Some((i, Scan::AllUnhealthy))
            })
            .or_else(|| {
                let i = candidates.min_by_key(|i| self.backends[*i].backing_off_until())?;
                Some((i, Scan::FailOpen))
            })?;
        trace.scanned(scan);
        Some((pick, self.backends[pick].clone()))
    }
}

/// How a selection reads the affinity table: serving looks a key up (a hit restarts its idle
/// timeout, an expired entry is dropped); an explanation only peeks.
#[derive(Clone, Copy)]
enum TableRead {
    Lookup,
    Peek,
}

/// Why a backend may not take a unit of work now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unusable {
    /// The policy named an index outside the set (or a sticky backend that left it).
    NotInSet,
    /// Its weight is 0.
    Drained,
    /// It already failed for this unit of work.
    AlreadyTried,
    /// It is skipped after failed connects.
    BackingOff,
    /// The port's health policies hold it out.
    Unhealthy,
}

/// How the scan after the balancer's picks found a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scan {
    /// The first healthy backend not backing off.
    Healthy,
    /// Every backend is unhealthy: the first not backing off (traffic goes on).
    AllUnhealthy,
    /// Every backend is backing off: the one whose back-off ends first.
    FailOpen,
}

/// Hears each step of a balancing: serving's asks the balancer (and its shadow) and notes
/// nothing else; an explanation notes everything.
trait BalanceTrace {
    /// The balancer's pick for `attempt`.
    fn pick(&mut self, cx: &PickContext<'_>, attempt: u32) -> Option<usize>;
    /// That pick could not be used.
    fn skipped(&mut self, _why: Unusable) {}
    /// The picks gave nothing usable; the scan chose.
    fn scanned(&mut self, _how: Scan) {}
}

/// Serving's balancing: the pool's balancer, compared with its shadow.
struct Serving<'p>(&'p BackendPool);

impl BalanceTrace for Serving<'_> {
    fn pick(&mut self, cx: &PickContext<'_>, attempt: u32) -> Option<usize> {
        let pool = self.0;
        let pick = pool.balancer.pick(cx, attempt);
        if let Some(shadow) = &pool.shadow_balancer {
            shadow.compare(cx, attempt, pick, &pool.backends);
        }
        pick
    }
}

#[cfg(test)]
mod tests;
