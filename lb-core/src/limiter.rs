//! The cap on a listener's open connections: at the cap its accept loop waits; each open
//! connection holds a [`ConnPermit`]. HTTP/1 connections waiting for a request (a first one, or
//! the next on a keep-alive connection) hold an [`IdleMark`] meanwhile: when a client connects
//! while the listener is at its cap, the connection idle longest is closed to make room for it,
//! as nginx reuses keep-alive connections and Envoy's overload manager reclaims idle ones, so
//! clients that only hold connections open cannot keep others out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Caps open connections; at the cap the accept loop waits.
pub(crate) struct ConnLimiter {
    active: AtomicUsize,
    max: AtomicU32,
    released: Notify,
    /// Connections waiting for a request, by when they began to (oldest first).
    idle: Mutex<BTreeMap<u64, CancellationToken>>,
    next_idle: AtomicU64,
}

/// One open connection's place under the cap.
pub(crate) struct ConnPermit(Arc<ConnLimiter>);

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.released.notify_one();
    }
}

/// A connection waiting for a request, reclaimable while the mark lives: `reclaimed` is
/// cancelled when it must close to make room.
pub(crate) struct IdleMark {
    limiter: Arc<ConnLimiter>,
    since: u64,
    pub(crate) reclaimed: CancellationToken,
}

impl Drop for IdleMark {
    fn drop(&mut self) {
        self.limiter.idle_list().remove(&self.since);
    }
}

impl ConnLimiter {
    pub(crate) fn new(max: u32) -> Arc<Self> {
        Arc::new(ConnLimiter {
            active: AtomicUsize::new(0),
            max: AtomicU32::new(max),
            released: Notify::new(),
            idle: Mutex::default(),
            next_idle: AtomicU64::new(0),
        })
    }

    pub(crate) fn set_max(&self, max: u32) {
        self.max.store(max, Ordering::Release);
        // A raised cap may admit waiting connections now.
        self.released.notify_one();
    }

    fn idle_list(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, CancellationToken>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place under the cap if there is one now.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<ConnPermit> {
        let max = self.max.load(Ordering::Acquire) as usize;
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |active| {
                (active < max).then_some(active + 1)
            })
            .ok()
            .map(|_| ConnPermit(self.clone()))
    }

    /// Waits for a place under the cap.
    pub(crate) async fn acquire(self: &Arc<Self>) -> ConnPermit {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before trying, so a release in between still wakes us.
            released.as_mut().enable();
            if let Some(permit) = self.try_acquire() {
                return permit;
            }
            released.await;
        }
    }

    /// Marks a connection as waiting for a request until the mark is dropped.
    pub(crate) fn idle(self: &Arc<Self>) -> IdleMark {
        let since = self.next_idle.fetch_add(1, Ordering::Relaxed);
        let reclaimed = CancellationToken::new();
        self.idle_list().insert(since, reclaimed.clone());
        IdleMark {
            limiter: self.clone(),
            since,
            reclaimed,
        }
    }

    /// Closes the connection that has waited longest for a request, if any is waiting;
    /// whether one was.
    pub(crate) fn reclaim_oldest_idle(&self) -> bool {
        match self.idle_list().pop_first() {
            Some((_, reclaimed)) => {
                reclaimed.cancel();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_limiter_admits_up_to_its_cap_and_follows_a_new_cap() {
        let limiter = ConnLimiter::new(1);
        let first = limiter.acquire().await;
        let waiting = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        let second = waiting.await.expect("admitted after a release");
        let third = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire().await })
        };
        limiter.set_max(2);
        let _third = third.await.expect("admitted after the cap rose");
        drop(second);
    }

    #[test]
    fn the_connection_idle_longest_is_reclaimed_first() {
        let limiter = ConnLimiter::new(2);
        let (first, second) = (limiter.idle(), limiter.idle());
        assert!(limiter.reclaim_oldest_idle());
        assert!(first.reclaimed.is_cancelled() && !second.reclaimed.is_cancelled());
        drop(second);
        assert!(!limiter.reclaim_oldest_idle(), "no one else is idle");
        let _permits = (limiter.try_acquire(), limiter.try_acquire());
        assert!(limiter.try_acquire().is_none(), "at the cap");
    }
}
