//! The epoch ticker: a thread that advances the engine's epoch every [`EPOCH_TICK`], which is
//! what lets a call's deadline fire, but only while calls are being made. Ticking a thousand
//! times a second forever would wake an idle appliance for nothing, so the thread parks once
//! no call has run for [`IDLE_AFTER`], and the next call wakes it.
//!
//! Every call holds a [`CallGuard`] from before it starts until it ends. The thread parks only
//! when no call is in flight and none started during the idle spell; a call that starts while
//! it is parked (or deciding to park) unparks it. Both sides use sequentially consistent
//! operations on `in_flight` and `parked`, so either the thread sees the call or the call sees
//! the thread parked: a running call is never left without ticks. A busy host pays two atomic
//! additions and a load per call, and no system call.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use wasmtime::Engine;

use super::stores::EPOCH_TICK;

/// How long without calls before the ticker parks.
pub(crate) const IDLE_AFTER: Duration = Duration::from_secs(1);

/// What the calls tell the ticker.
#[derive(Default)]
pub(crate) struct CallActivity {
    in_flight: AtomicUsize,
    started: AtomicU64,
    parked: AtomicBool,
    ticker: OnceLock<Thread>,
}

impl CallActivity {
    /// A call is starting; it counts as in flight until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> CallGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::Relaxed);
        if self.parked.load(Ordering::SeqCst) {
            if let Some(ticker) = self.ticker.get() {
                ticker.unpark();
            }
        }
        CallGuard(self.clone())
    }
}

/// A call in flight: the ticker keeps ticking while any exists.
#[must_use = "the call counts as in flight only while the guard lives"]
pub(crate) struct CallGuard(Arc<CallActivity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The ticker thread; stopped and joined when dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    activity: Arc<CallActivity>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts ticking `engine`'s epoch while `activity` shows calls.
    pub(crate) fn start(engine: Engine, activity: Arc<CallActivity>) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let (stopping, calls) = (stop.clone(), activity.clone());
        let idle_ticks = IDLE_AFTER.as_nanos() / EPOCH_TICK.as_nanos();
        let thread = std::thread::Builder::new()
            .name("gantry-plugin-epoch".into())
            .spawn(move || {
                let mut seen = calls.started.load(Ordering::Relaxed);
                let mut quiet: u128 = 0;
                while !stopping.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                    let started = calls.started.load(Ordering::Relaxed);
                    if started != seen || calls.in_flight.load(Ordering::SeqCst) > 0 {
                        seen = started;
                        quiet = 0;
                        continue;
                    }
                    quiet += 1;
                    if quiet < idle_ticks {
                        continue;
                    }
                    calls.parked.store(true, Ordering::SeqCst);
                    if calls.in_flight.load(Ordering::SeqCst) == 0
                        && !stopping.load(Ordering::SeqCst)
                    {
                        std::thread::park();
                    }
                    calls.parked.store(false, Ordering::SeqCst);
                    quiet = 0;
                }
            })
            .ok();
        if let Some(thread) = &thread {
            let _ = activity.ticker.set(thread.thread().clone());
        }
        EpochTicker {
            stop,
            activity,
            thread,
        }
    }

    /// Whether the thread is parked (no call for a while).
    pub(crate) fn idle(&self) -> bool {
        self.activity.parked.load(Ordering::SeqCst)
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
