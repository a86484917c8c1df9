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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use lb_config::{Backend, Backoff};
use lb_policy::clock::now_ms;
use lb_policy::{
    Affinity, AffinityFactory, AffinityTable, BackendFigures, Balancer, BalancerFactory, Figures,
    Outcome, PickContext, ResponseHeader, Stickiness,
};

pub use attempt::{Attempt, Attempts, NoBackend};
pub use backend::{BackendLease, BackendState, HealthView};

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
            observers: policies.observers,
        }
    }

    /// The pool is about to serve: its policies prepare what runs them.
    pub fn activate(&self) {
        self.balancer.activate();
        if let Some(sticky) = &self.sticky {
            sticky.affinity.activate();
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
        // A key the table does not know (or whose backend cannot take it) gets the backend
        // every replica would give it; a request that sticks by nothing is balanced.
        let ranked = match stickiness {
            Stickiness::Remembered(key) => lb_policy::rendezvous(
                key,
                (0..self.backends.len())
                    .filter(|i| usable(*i))
                    .map(|i| (i, self.backends[i].address, self.weights[i])),
            )
            .map(|i| (i, self.backends[i].clone())),
            Stickiness::None | Stickiness::Named(_) => None,
        };
        let (index, backend) = match ranked {
            Some(chosen) => chosen,
            None => self.balance(cx, tried)?,
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
}

#[cfg(test)]
mod tests;
