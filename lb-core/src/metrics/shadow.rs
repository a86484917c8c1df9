//! The handles that count a port's shadow policies (`gantry_shadow_calls_total`,
//! `gantry_shadow_picks_total`): how each comparison with the serving policy went, and which
//! backend each side chose. A port's series are shown only while a role of it is shadowed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::handles::Counter;

/// What a shadow stands beside (`role` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowRole {
    /// The port's balancer.
    Balancer,
    /// The port's session affinity.
    Affinity,
}

impl ShadowRole {
    pub(super) const ALL: [ShadowRole; 2] = [ShadowRole::Balancer, ShadowRole::Affinity];

    pub(super) fn label(self) -> &'static str {
        match self {
            ShadowRole::Balancer => "balancer",
            ShadowRole::Affinity => "affinity",
        }
    }
}

/// How one comparison went (`result` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowResult {
    /// The shadow chose what serving chose.
    Agree,
    /// The shadow chose another backend, or none where serving chose one.
    Disagree,
    /// The shadow's call faulted (trap, deadline, invalid answer).
    Fault,
    /// The shadow is quarantined and was not called.
    Quarantined,
}

impl ShadowResult {
    pub(super) const ALL: [ShadowResult; 4] = [
        ShadowResult::Agree,
        ShadowResult::Disagree,
        ShadowResult::Fault,
        ShadowResult::Quarantined,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            ShadowResult::Agree => "agree",
            ShadowResult::Disagree => "disagree",
            ShadowResult::Fault => "fault",
            ShadowResult::Quarantined => "quarantined",
        }
    }
}

/// Whose choice a pick was (`side` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowSide {
    /// The serving policy's, on a call the shadow also saw.
    Serving,
    /// The shadow's.
    Shadow,
}

impl ShadowSide {
    pub(super) const ALL: [ShadowSide; 2] = [ShadowSide::Serving, ShadowSide::Shadow];

    pub(super) fn label(self) -> &'static str {
        match self {
            ShadowSide::Serving => "serving",
            ShadowSide::Shadow => "shadow",
        }
    }
}

/// One port's comparisons, by role and result, and which roles are shadowed now.
#[derive(Clone, Default)]
pub struct ShadowCounters {
    pub(super) calls: [[Counter; ShadowResult::ALL.len()]; ShadowRole::ALL.len()],
    pub(super) shadowed: Arc<[AtomicBool; ShadowRole::ALL.len()]>,
}

impl ShadowCounters {
    /// Counts one comparison.
    pub fn count(&self, role: ShadowRole, result: ShadowResult) {
        self.calls[role as usize][result as usize].inc();
    }

    /// Whether `role` is shadowed from now on: its series are shown only while it is.
    pub fn set_shadowed(&self, role: ShadowRole, shadowed: bool) {
        self.shadowed[role as usize].store(shadowed, Ordering::Relaxed);
    }

    pub(super) fn is_shadowed(&self, role: ShadowRole) -> bool {
        self.shadowed[role as usize].load(Ordering::Relaxed)
    }
}

/// One backend's picks on compared calls, by role and side.
#[derive(Clone, Default)]
pub struct ShadowPicks(pub(super) [[Counter; ShadowSide::ALL.len()]; ShadowRole::ALL.len()]);

impl ShadowPicks {
    /// Counts a pick of this backend by `side` on a compared call of `role`.
    pub fn count(&self, role: ShadowRole, side: ShadowSide) {
        self.0[role as usize][side as usize].inc();
    }
}
