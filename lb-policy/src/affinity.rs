//! Session affinity: keeping a client on the backend it was given.
//!
//! An [`Affinity`] (a plugin, built per backend set like a balancer) says what a request
//! sticks by; the [`AffinityTable`] (one per port policy, shared by every worker thread and
//! every backend set, so entries survive backend changes and reloads that keep the policy)
//! remembers keys with an idle timeout. The pool uses a sticky backend only while it is usable
//! and otherwise balances and moves the affinity, so affinity never fails a request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb_config::Backend;

use crate::{BackendFigures, PickContext, Unanswered};

/// What a request sticks by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stickiness {
    /// Nothing: balance it, remember nothing.
    None,
    /// A key of the port's [`AffinityTable`].
    Remembered(u64),
    /// The backend at this index, named by the request itself (a cookie).
    Named(usize),
}

/// The backend a remembered key is given when the table does not know it yet: of the
/// `candidates` (index, address, weight), the one rendezvous hashing ranks first for `key`
/// (weighted, as Ceph's straw2 does). It depends on nothing but the key and the candidates, so
/// every replica of a load balancer gives a new client the same backend, and a client whose
/// appliance failed keeps its backend through another one that never saw it. A candidate
/// that leaves moves only the keys it had.
pub fn rendezvous(
    key: u64,
    candidates: impl Iterator<Item = (usize, SocketAddr, u32)>,
) -> Option<usize> {
    let mut best: Option<(f64, usize)> = None;
    for (index, address, weight) in candidates {
        if weight == 0 {
            continue;
        }
        let mut bytes = [0_u8; 18];
        match address.ip() {
            std::net::IpAddr::V4(ip) => bytes[12..16].copy_from_slice(&ip.octets()),
            std::net::IpAddr::V6(ip) => bytes[..16].copy_from_slice(&ip.octets()),
        }
        bytes[16..].copy_from_slice(&address.port().to_be_bytes());
        let hash = xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, key);
        // A uniform draw in (0, 1] from the top 53 bits; the smallest -ln(u) / weight wins,
        // which gives each candidate keys in proportion to its weight.
        let draw = ((hash >> 11) as f64 + 1.0) / (1_u64 << 53) as f64;
        let score = -draw.ln() / f64::from(weight);
        if best.is_none_or(|(lowest, _)| score < lowest) {
            best = Some((score, index));
        }
    }
    best.map(|(_, index)| index)
}

/// A header to add to the response so the client comes back (`set-cookie`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHeader {
    /// Header name.
    pub name: http::HeaderName,
    /// Header value.
    pub value: http::HeaderValue,
}

/// A session-affinity policy for one backend set.
pub trait Affinity: Send + Sync {
    /// What `cx` sticks by.
    fn stick(&self, cx: &PickContext<'_>) -> Stickiness;

    /// The policy's own answer to [`Affinity::stick`], for a shadow's comparison (see
    /// [`crate::Balancer::answer`]).
    fn stick_answer(&self, cx: &PickContext<'_>) -> Result<Stickiness, Unanswered> {
        Ok(self.stick(cx))
    }

    /// `cx` was balanced to the backend at `index`; the header that brings the client back.
    fn assigned(&self, cx: &PickContext<'_>, index: usize) -> Option<ResponseHeader>;

    /// The affinity is about to serve (see [`crate::Balancer::activate`]). Nothing by default.
    fn activate(&self) {}
}

/// Builds an [`Affinity`] for each backend set of a port, and owns the port's table.
pub trait AffinityFactory: Send + Sync {
    /// The policy's name.
    fn name(&self) -> &str;

    /// An affinity for exactly these backends, in this order. Computes only.
    fn build(&self, backends: &[Backend], figures: Arc<dyn BackendFigures>) -> Box<dyn Affinity>;

    /// The table of remembered keys, when the policy uses one.
    fn table(&self) -> Option<&Arc<AffinityTable>>;

    /// Whether it may read [`PickContext::headers`] (see
    /// [`crate::BalancerFactory::reads_headers`]). True unless a policy knows better.
    fn reads_headers(&self) -> bool {
        true
    }

    /// Whether the policy is quarantined after repeated faults, so that no request sticks.
    /// Never, unless a policy can fault.
    fn quarantined(&self) -> bool {
        false
    }
}

/// What [`AffinityTable::peek`] found for a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peeked {
    /// A live entry, remembered with this backend.
    Hit(SocketAddr),
    /// An entry past its idle timeout (a lookup would drop it), last with this backend.
    Expired(SocketAddr),
    /// No entry.
    Miss,
}

/// Shards of the table: enough that worker threads rarely meet on one lock.
const SHARDS: usize = 16;

/// Remembered keys and the backend each went to, forgotten after an idle timeout. Bounded:
/// when full, expired entries are swept (at most once a second per shard); when still full,
/// a new key is not remembered (its request is still served).
pub struct AffinityTable {
    shards: Box<[Mutex<Shard>]>,
    idle_ms: u64,
    per_shard: usize,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<u64, Entry>,
    last_sweep_ms: u64,
}

#[derive(Clone, Copy)]
struct Entry {
    backend: SocketAddr,
    last_used_ms: u64,
}

impl AffinityTable {
    /// A table forgetting keys unused for `idle`, holding at most about `max_entries`.
    pub fn new(idle: Duration, max_entries: u32) -> Self {
        AffinityTable {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            idle_ms: u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
            per_shard: (max_entries as usize).div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: u64) -> &Mutex<Shard> {
        // Keys are hashes already; the top bits pick the shard, the map hashes the rest.
        &self.shards[(key >> 60) as usize % SHARDS]
    }

    /// The backend `key` was remembered with, if the entry is live at `now_ms`; a hit
    /// restarts its idle timeout.
    pub fn lookup(&self, key: u64, now_ms: u64) -> Option<SocketAddr> {
        let mut shard = self.shard(key).lock().ok()?;
        let entry = shard.entries.get_mut(&key)?;
        if now_ms.saturating_sub(entry.last_used_ms) > self.idle_ms {
            shard.entries.remove(&key);
            return None;
        }
        entry.last_used_ms = now_ms;
        Some(entry.backend)
    }

    /// What the table holds for `key` at `now_ms`, changing nothing: an entry found is
    /// neither refreshed nor dropped (for `gantry explain`).
    pub fn peek(&self, key: u64, now_ms: u64) -> Peeked {
        let Ok(shard) = self.shard(key).lock() else {
            return Peeked::Miss;
        };
        match shard.entries.get(&key) {
            None => Peeked::Miss,
            Some(entry) if now_ms.saturating_sub(entry.last_used_ms) > self.idle_ms => {
                Peeked::Expired(entry.backend)
            }
            Some(entry) => Peeked::Hit(entry.backend),
        }
    }

    /// Remembers `key` with `backend` from `now_ms`; false when the table is full.
    pub fn remember(&self, key: u64, backend: SocketAddr, now_ms: u64) -> bool {
        let Ok(mut shard) = self.shard(key).lock() else {
            return false;
        };
        if shard.entries.len() >= self.per_shard && !shard.entries.contains_key(&key) {
            if now_ms.saturating_sub(shard.last_sweep_ms) < 1000 {
                return false;
            }
            shard.last_sweep_ms = now_ms;
            let idle = self.idle_ms;
            shard
                .entries
                .retain(|_, e| now_ms.saturating_sub(e.last_used_ms) <= idle);
            if shard.entries.len() >= self.per_shard {
                return false;
            }
        }
        shard.entries.insert(
            key,
            Entry {
                backend,
                last_used_ms: now_ms,
            },
        );
        true
    }

    /// Entries held now (live or not yet swept).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok().map(|s| s.entries.len()))
            .sum()
    }

    /// Whether the table holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(last: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, last], 80))
    }

    #[test]
    fn an_entry_lives_while_used_within_its_idle_timeout() {
        let table = AffinityTable::new(Duration::from_secs(10), 100);
        assert!(table.remember(7, at(1), 1_000));
        assert_eq!(table.lookup(7, 10_999), Some(at(1)));
        // The hit at 10.999 s restarted the timeout.
        assert_eq!(table.lookup(7, 20_999), Some(at(1)));
        assert_eq!(table.peek(7, 20_999), Peeked::Hit(at(1)));
        assert_eq!(
            table.peek(7, 31_000),
            Peeked::Expired(at(1)),
            "a peek neither refreshed the entry nor drops it"
        );
        assert_eq!(table.lookup(7, 31_000), None, "idle for more than 10 s");
        assert_eq!(table.peek(7, 31_000), Peeked::Miss);
        assert!(table.is_empty(), "an expired entry found is dropped");
    }

    #[test]
    fn rendezvous_is_the_same_everywhere_spreads_by_weight_and_moves_only_what_it_must() {
        let backends: Vec<SocketAddr> = (1..=4)
            .map(|i| format!("10.0.0.{i}:8080").parse().expect("addr"))
            .collect();
        let all = |weights: [u32; 4]| {
            let backends = backends.clone();
            move |key: u64| {
                rendezvous(
                    key,
                    backends
                        .iter()
                        .enumerate()
                        .map(|(i, a)| (i, *a, weights[i])),
                )
                .expect("a candidate")
            }
        };
        let even = all([1, 1, 1, 1]);
        let mut counts = [0_usize; 4];
        for key in 0..4000_u64 {
            counts[even(key)] += 1;
        }
        for count in counts {
            assert!((800..1200).contains(&count), "{counts:?}");
        }
        let weighted = all([3, 1, 0, 0]);
        let mut counts = [0_usize; 4];
        for key in 0..4000_u64 {
            counts[weighted(key)] += 1;
        }
        assert_eq!(counts[2] + counts[3], 0, "weight 0 takes nothing");
        assert!((2700..3300).contains(&counts[0]), "{counts:?}");
        // The same key, the same backend, from a list in another order.
        let reversed = |key: u64| {
            rendezvous(
                key,
                backends.iter().enumerate().rev().map(|(i, a)| (i, *a, 1)),
            )
            .expect("a candidate")
        };
        // Backend 3 leaves: only its keys move.
        let without_last = all([1, 1, 1, 0]);
        for key in 0..4000_u64 {
            assert_eq!(even(key), reversed(key));
            if even(key) != 3 {
                assert_eq!(without_last(key), even(key));
            }
        }
        assert_eq!(rendezvous(7, std::iter::empty()), None);
    }

    #[test]
    fn a_full_table_sweeps_expired_entries_and_otherwise_refuses_new_keys() {
        // One entry per shard; keys 0 and 1 share shard 0.
        let table = AffinityTable::new(Duration::from_secs(1), SHARDS as u32);
        assert!(table.remember(0, at(1), 5_000));
        assert!(!table.remember(1, at(2), 5_500), "full, nothing expired");
        assert!(table.remember(0, at(3), 5_600), "a known key is updated");
        assert!(table.remember(1, at(2), 7_000), "the expired key was swept");
        assert_eq!(table.lookup(0, 7_000), None);
        assert_eq!(table.lookup(1, 7_000), Some(at(2)));
    }
}
