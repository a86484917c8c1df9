//! The cap on a listener's open connections: at the cap its accept loop waits and the kernel
//! queues new connections; each open connection holds a [`ConnPermit`].

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Caps open connections; at the cap the accept loop waits and the kernel queues new ones.
pub(crate) struct ConnLimiter {
    active: AtomicUsize,
    max: AtomicU32,
    released: Notify,
}

/// One open connection's place under the cap.
pub(crate) struct ConnPermit(Arc<ConnLimiter>);

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.released.notify_one();
    }
}

impl ConnLimiter {
    pub(crate) fn new(max: u32) -> Arc<Self> {
        Arc::new(ConnLimiter {
            active: AtomicUsize::new(0),
            max: AtomicU32::new(max),
            released: Notify::new(),
        })
    }

    pub(crate) fn set_max(&self, max: u32) {
        self.max.store(max, Ordering::Release);
        // A raised cap may admit waiting connections now.
        self.released.notify_one();
    }

    pub(crate) async fn acquire(self: &Arc<Self>) -> ConnPermit {
        loop {
            let released = self.released.notified();
            let active = self.active.load(Ordering::Acquire);
            if active < self.max.load(Ordering::Acquire) as usize
                && self
                    .active
                    .compare_exchange(active, active + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return ConnPermit(self.clone());
            }
            if active >= self.max.load(Ordering::Acquire) as usize {
                released.await;
            }
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
}
