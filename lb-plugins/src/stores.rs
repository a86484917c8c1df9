//! Stores for plugin instances, and the deadlines their calls run under.
//!
//! Every store caps its instance's linear memory and counts each call's deadline in the
//! plugin's own CPU time ([`crate::cpu`]): an epoch ticker moves wall-clock ticks, and when a
//! call's ticks run out the store's callback asks the CPU clock whether to go on. The
//! deadlines are shared by every instance and change in place when `plugin_limits:` changes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lb_config::PluginLimits;
use wasmtime::{Engine, Store, UpdateDeadline};

use super::cpu::{self, Expiry};
use super::host::HostState;
use super::ticker::{CallActivity, CallGuard};

/// How often the engine's epoch advances: the granularity of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The deadlines plugin calls run under now.
pub(crate) struct Deadlines {
    call_nanos: AtomicU64,
    setup_nanos: AtomicU64,
}

impl Deadlines {
    fn new(limits: &PluginLimits) -> Self {
        let deadlines = Deadlines {
            call_nanos: AtomicU64::new(0),
            setup_nanos: AtomicU64::new(0),
        };
        deadlines.set(limits);
        deadlines
    }

    /// Takes `limits`' deadlines from now on.
    pub(crate) fn set(&self, limits: &PluginLimits) {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.call_nanos
            .store(nanos(limits.call_deadline), Ordering::Relaxed);
        self.setup_nanos
            .store(nanos(limits.setup_deadline), Ordering::Relaxed);
    }

    /// CPU budget of one per-request call.
    pub(crate) fn call(&self) -> Duration {
        Duration::from_nanos(self.call_nanos.load(Ordering::Relaxed))
    }

    /// CPU budget of `configure`, `set-backends` and dropping a policy.
    pub(crate) fn setup(&self) -> Duration {
        Duration::from_nanos(self.setup_nanos.load(Ordering::Relaxed))
    }
}

/// Makes stores for one engine's instances; cheap to clone.
#[derive(Clone)]
pub(crate) struct Stores {
    engine: Engine,
    /// Calls in flight, for the epoch ticker.
    activity: Arc<CallActivity>,
    deadlines: Arc<Deadlines>,
    memory_bytes: u64,
}

impl Stores {
    pub(crate) fn new(engine: Engine, limits: &PluginLimits, activity: Arc<CallActivity>) -> Self {
        Stores {
            engine,
            activity,
            deadlines: Arc::new(Deadlines::new(limits)),
            memory_bytes: limits.memory_bytes,
        }
    }

    /// The deadlines calls run under now.
    pub(crate) fn deadlines(&self) -> &Deadlines {
        &self.deadlines
    }

    /// A store for an instance of `plugin`: its memory capped, its calls' deadlines counted
    /// in the plugin's own CPU time.
    pub(crate) fn new_store(&self, plugin: Arc<str>) -> Store<HostState> {
        let mut store = Store::new(
            &self.engine,
            HostState::new(plugin, self.memory_bytes, self.activity.clone()),
        );
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_callback(|mut cx| {
            let state = cx.data_mut();
            // Without a CPU clock, the wall clock it is.
            let Some(now) = cpu::thread_time() else {
                return Ok(UpdateDeadline::Interrupt);
            };
            let (mark, expiry) = cpu::on_expiry(state.budget, state.cpu_mark, now);
            state.cpu_mark = mark;
            Ok(match expiry {
                Expiry::Interrupt => UpdateDeadline::Interrupt,
                Expiry::Extend(more) => UpdateDeadline::Continue(ticks_for(more)),
            })
        });
        store
    }
}

/// Starts a call on `store` that may use `budget` of CPU time; it is in flight (the epoch
/// ticks for it) until the guard is dropped.
pub(crate) fn begin_call(store: &mut Store<HostState>, budget: Duration) -> CallGuard {
    let state = store.data_mut();
    state.budget = budget;
    state.cpu_mark = None;
    let guard = state.activity.begin();
    store.set_epoch_deadline(ticks_for(budget));
    guard
}

/// Epoch ticks a call may run for, given its deadline: one more than the deadline covers, as
/// the first tick may come at any moment after the call starts.
pub fn ticks_for(deadline: Duration) -> u64 {
    let ticks = deadline.as_nanos().div_ceil(EPOCH_TICK.as_nanos());
    u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
}
