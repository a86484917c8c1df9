//! Health plugins: the [`Health`] trait, [`export_health!`](crate::export_health), and
//! [`Thresholds`], the consecutive-results rule active checks share.

use std::collections::HashMap;

use crate::health_bindings::exports::gantry::plugins::health_checks as generated;
pub use crate::health_bindings::exports::gantry::plugins::health_checks::{
    HealthSettings, HttpProbe, Outcome, ProbeKind, ProbePlan, Verdict,
};
use crate::PolicyCell;
use crate::{backend_key, Backend, Params};

/// A health policy. Unlike balancers it has a single instance per port: Gantry serialises the
/// calls, off the request path, so state kept here is the backend's one state.
pub trait Health: Sized + 'static {
    /// Builds the policy from the operator's parameters, with what Gantry should do for it
    /// (probe, observe traffic); an `Err` message is shown to the operator.
    fn configure(params: &Params) -> Result<(Self, HealthSettings), String>;

    /// The full backend set, at start and on every change (ids are renumbered: key state by
    /// [`backend_key`], as [`Thresholds`] does).
    fn set_backends(&mut self, backends: Vec<Backend>);

    /// The outcome of an active probe of `backend`.
    fn probed(&mut self, _backend: u32, _outcome: Outcome) -> Verdict {
        Verdict::Unchanged
    }

    /// The outcome of real traffic to `backend` (when `observe_traffic` was asked for).
    fn observed(&mut self, _backend: u32, _outcome: Outcome) -> Verdict {
        Verdict::Unchanged
    }
}

/// Healthy/unhealthy thresholds over consecutive probe results, per backend, kept by address
/// so that a backend keeps its counts when the set changes around it. A backend starts
/// healthy; `unhealthy` failures in a row take it out, `healthy` passes in a row bring it back.
#[derive(Debug, Default)]
pub struct Thresholds {
    healthy: u32,
    unhealthy: u32,
    keys: Vec<String>,
    state: HashMap<String, Streak>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Streak {
    down: bool,
    passes: u32,
    failures: u32,
}

impl Thresholds {
    /// Reads `healthy_threshold` (default 2) and `unhealthy_threshold` (default 3), 1 to 100.
    pub fn from_params(params: &Params) -> Result<Self, String> {
        let mut thresholds = Thresholds::default();
        for (name, slot, default) in [
            ("healthy_threshold", &mut thresholds.healthy, 2),
            ("unhealthy_threshold", &mut thresholds.unhealthy, 3),
        ] {
            *slot = params.parse_or(name, default)?;
            if !(1..=100).contains(slot) {
                return Err(format!(
                    "parameter `{name}`: {slot} is out of range 1..=100"
                ));
            }
        }
        Ok(thresholds)
    }

    /// The new set: ids map to these backends; departed backends are forgotten.
    pub fn set_backends(&mut self, backends: &[Backend]) {
        let mut keys = vec![String::new(); backends.len()];
        for backend in backends {
            if let Some(slot) = keys.get_mut(backend.id as usize) {
                *slot = backend_key(backend);
            }
        }
        self.state.retain(|key, _| keys.contains(key));
        self.keys = keys;
    }

    /// Counts one result for `backend`; the verdict when it crosses a threshold.
    pub fn record(&mut self, backend: u32, passed: bool) -> Verdict {
        let Some(key) = self.keys.get(backend as usize) else {
            return Verdict::Unchanged;
        };
        let streak = self.state.entry(key.clone()).or_default();
        if passed {
            streak.failures = 0;
            streak.passes = streak.passes.saturating_add(1);
            if streak.down && streak.passes >= self.healthy {
                streak.down = false;
                return Verdict::Healthy;
            }
        } else {
            streak.passes = 0;
            streak.failures = streak.failures.saturating_add(1);
            if !streak.down && streak.failures >= self.unhealthy {
                streak.down = true;
                return Verdict::Unhealthy;
            }
        }
        Verdict::Unchanged
    }
}

/// The probe schedule from `interval` (default 5s, 100ms to 1h) and `timeout` (default 2s,
/// at most the interval), and the port to probe from `port` (1 to 65535; default: the
/// backend's own).
pub fn probe_plan(params: &Params, kind: ProbeKind) -> Result<ProbePlan, String> {
    let interval_ms = params.duration_ms_or("interval", 5_000, 100..=3_600_000)?;
    let timeout_ms = params.duration_ms_or("timeout", 2_000.min(interval_ms), 1..=interval_ms)?;
    let port = match params.get("port") {
        None => None,
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port > 0 => Some(port),
            _ => {
                return Err(format!(
                    "parameter `port`: `{text}` is not a port (1 to 65535)"
                ))
            }
        },
    };
    Ok(ProbePlan {
        kind,
        interval_ms,
        timeout_ms,
        port,
    })
}

impl<H: Health> generated::GuestChecker for PolicyCell<H> {
    fn set_backends(&self, backends: Vec<Backend>) {
        self.0.borrow_mut().set_backends(backends);
    }

    fn probed(&self, backend: u32, outcome: Outcome) -> Verdict {
        self.0.borrow_mut().probed(backend, outcome)
    }

    fn observed(&self, backend: u32, outcome: Outcome) -> Verdict {
        self.0.borrow_mut().observed(backend, outcome)
    }
}

/// The generated export interface of the `health` world.
#[doc(hidden)]
pub use crate::health_bindings::exports::gantry::plugins::health_checks as __health_checks;

/// Exports a [`Health`] implementation as the plugin's `health` world: each port's health
/// policy gets its own value of the type, made by its `configure`.
#[macro_export]
macro_rules! export_health {
    ($health:ty) => {
        #[doc(hidden)]
        struct __GantryHealth;

        impl $crate::health::__health_checks::Guest for __GantryHealth {
            type Checker = $crate::PolicyCell<$health>;

            fn configure(
                parameters: ::std::vec::Vec<
                    $crate::balancer_bindings::gantry::plugins::types::Parameter,
                >,
            ) -> ::std::result::Result<
                (
                    $crate::health::__health_checks::Checker,
                    $crate::health::HealthSettings,
                ),
                ::std::string::String,
            > {
                let params = $crate::Params::from_pairs(
                    parameters.into_iter().map(|p| (p.name, p.value)).collect(),
                );
                let (policy, settings) = <$health as $crate::health::Health>::configure(&params)?;
                ::std::result::Result::Ok((
                    $crate::health::__health_checks::Checker::new($crate::PolicyCell::new(policy)),
                    settings,
                ))
            }
        }

        $crate::health_bindings::__export_health_world!(__GantryHealth);
    };
}
