//! Plugin faults: what can go wrong in a call, and the record that counts faults per loaded
//! plugin and quarantines it after too many in a row (until its file changes, which makes it a
//! new plugin with a fresh record).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};

/// What went wrong in one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The plugin trapped (a panic, an out-of-memory, an invalid operation).
    Trap,
    /// The call ran past its deadline and was interrupted.
    Deadline,
    /// The plugin answered an id that is not in the set.
    InvalidAnswer,
    /// No instance could be made (instantiation, `configure` or `set-backends` failed).
    Instantiate,
}

impl FaultKind {
    /// All kinds, in metric order.
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Trap,
        FaultKind::Deadline,
        FaultKind::InvalidAnswer,
        FaultKind::Instantiate,
    ];

    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            FaultKind::Trap => "trap",
            FaultKind::Deadline => "deadline",
            FaultKind::InvalidAnswer => "invalid_answer",
            FaultKind::Instantiate => "instantiate",
        }
    }
}

/// The fault record of one loaded policy, shared by every port and thread using it.
pub struct Faults {
    plugin: Arc<str>,
    consecutive: AtomicU32,
    quarantined: AtomicBool,
    quarantine_after: AtomicU32,
    counters: [IntCounter; 4],
    gauge: IntGauge,
}

impl Faults {
    pub(crate) fn new(
        plugin: Arc<str>,
        counters: [IntCounter; 4],
        gauge: IntGauge,
        after: u32,
    ) -> Self {
        gauge.set(0);
        Faults {
            plugin,
            consecutive: AtomicU32::new(0),
            quarantined: AtomicBool::new(false),
            quarantine_after: AtomicU32::new(after),
            counters,
            gauge,
        }
    }

    /// True once the policy is no longer called.
    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Relaxed)
    }

    pub(crate) fn success(&self) {
        // Read first: writing on every call would bounce the cache line between threads.
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn record(&self, kind: FaultKind) {
        let index = FaultKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.counters[index].inc();
        let in_a_row = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if in_a_row == 1 {
            tracing::warn!(plugin = %self.plugin, fault = kind.label(), "plugin fault; the host answered this call without the plugin");
        }
        if in_a_row >= self.quarantine_after.load(Ordering::Relaxed)
            && !self.quarantined.swap(true, Ordering::Relaxed)
        {
            self.gauge.set(1);
            tracing::error!(
                plugin = %self.plugin,
                faults_in_a_row = in_a_row,
                "plugin quarantined: the host serves its ports without it until the plugin changes"
            );
        }
    }
}
