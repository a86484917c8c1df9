//! Backend health: which backends get new work.
//!
//! A port's health policies (plugins, see [`HealthPolicy`]) decide; a [`HealthChecker`] per
//! policy does the work the plugin cannot: it probes every backend on the plugin's schedule
//! ([`probe`]), passes it the outcomes of real traffic when it asks for them, and writes its
//! verdicts into each backend's shared state, where the pool reads them. A backend is healthy
//! when no policy holds it out and it is not ejected. The checker lives as long as the port's
//! health settings are unchanged; backend changes hand it the new set.
//!
//! Build, then activate: a new checker does nothing until [`HealthChecker::start`], and a kept
//! one is pointed at a new set only by [`HealthChecker::watch`]; the runtime calls both when a
//! reload commits, so a refused reload leaves every checker as it was.

pub mod probe;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use lb_config::Backend;
use lb_policy::{BackendFigures, HealthPolicy, Outcome, ProbePlan, Verdict};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use crate::pool::{BackendState, TrafficObserver};

type Observation = (Arc<BackendState>, Outcome);

/// Observations waiting for the policy; beyond this they are dropped (and counted).
const OBSERVATION_QUEUE: usize = 4096;

/// Runs one health policy of one port. Retiring or dropping it stops its tasks.
pub struct HealthChecker {
    shared: Arc<Shared>,
    observations: Option<mpsc::Sender<Observation>>,
    /// The receiving end, until [`HealthChecker::start`] hands it to the judging task.
    pending: Mutex<Option<mpsc::Receiver<Observation>>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// What the checker's tasks share.
struct Shared {
    policy: Arc<dyn HealthPolicy>,
    /// This policy's bit in each backend's hold-out mask.
    slot: u8,
    backends: ArcSwap<Vec<Arc<BackendState>>>,
    /// Set once the port no longer uses this policy: verdicts are no longer applied, even
    /// by a round already under way.
    retired: AtomicBool,
}

impl HealthChecker {
    /// A checker for `policy`, the port's `slot`-th health policy (0 to 7). It does nothing
    /// until started.
    pub fn new(policy: Arc<dyn HealthPolicy>, slot: u8) -> Self {
        let (observations, pending) = if policy.settings().observe_traffic {
            let (sender, receiver) = mpsc::channel(OBSERVATION_QUEUE);
            (Some(sender), Some(receiver))
        } else {
            (None, None)
        };
        HealthChecker {
            shared: Arc::new(Shared {
                policy,
                slot: slot.min(7),
                backends: ArcSwap::from_pointee(Vec::new()),
                retired: AtomicBool::new(false),
            }),
            observations,
            pending: Mutex::new(pending),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Starts probing and judging traffic on the current tokio runtime; a second call does
    /// nothing.
    pub fn start(&self) {
        let Ok(mut tasks) = self.tasks.lock() else {
            return;
        };
        if !tasks.is_empty() || self.shared.retired.load(Ordering::Relaxed) {
            return;
        }
        if let Some(plan) = self.shared.policy.settings().probe.clone() {
            let task = tokio::spawn(probe_rounds(Arc::downgrade(&self.shared), plan));
            tasks.push(task.abort_handle());
        }
        let receiver = self.pending.lock().ok().and_then(|mut p| p.take());
        if let Some(receiver) = receiver {
            let task = tokio::spawn(judge_traffic(Arc::downgrade(&self.shared), receiver));
            tasks.push(task.abort_handle());
        }
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        self.shared.policy.name()
    }

    /// Checks `states` (the port's backends, as configured in `backends`) from now on.
    pub fn watch(
        &self,
        backends: &[Backend],
        states: &[Arc<BackendState>],
        figures: Arc<dyn BackendFigures>,
    ) {
        self.shared.backends.store(Arc::new(states.to_vec()));
        self.shared.policy.set_backends(backends, figures);
    }

    /// Stops checking: the port no longer uses this policy. Routes still held by open
    /// connections keep the checker alive, but it no longer judges anything.
    pub fn retire(&self) {
        self.shared.retired.store(true, Ordering::Relaxed);
        if let Ok(tasks) = self.tasks.lock() {
            for task in tasks.iter() {
                task.abort();
            }
        }
    }
}

impl TrafficObserver for HealthChecker {
    /// Reports real traffic to `backend`, if this policy observes traffic. Never waits: when
    /// the policy falls behind, the observation is dropped (and counted).
    fn observe(&self, backend: &Arc<BackendState>, outcome: Outcome) {
        if let Some(sender) = &self.observations {
            if sender.try_send((backend.clone(), outcome)).is_err() {
                backend.metrics.health_observations_dropped.inc();
            }
        }
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.retire();
    }
}

impl Shared {
    /// Applies `verdict` on the backend `state`.
    fn apply(&self, state: &Arc<BackendState>, verdict: Verdict) {
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        match verdict {
            Verdict::Unchanged => {}
            Verdict::Healthy => {
                state.set_held_out(self.slot, false);
                state.end_ejection();
            }
            Verdict::Unhealthy => state.set_held_out(self.slot, true),
            Verdict::Eject(duration) => state.eject(duration),
        }
        if verdict != Verdict::Unchanged {
            tracing::info!(
                backend = %state.label,
                policy = self.policy.name(),
                ?verdict,
                healthy = state.is_healthy(),
                "health verdict"
            );
        }
    }

    fn index_of(&self, state: &Arc<BackendState>) -> Option<usize> {
        self.backends
            .load()
            .iter()
            .position(|s| Arc::ptr_eq(s, state))
    }
}

/// Probes every backend each interval, all at once, and hands the outcomes to the policy.
async fn probe_rounds(shared: Weak<Shared>, plan: ProbePlan) {
    let mut ticks = tokio::time::interval(plan.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(current) = shared.upgrade() else {
            return;
        };
        let backends = current.backends.load_full();
        drop(current);
        let mut round = JoinSet::new();
        for state in backends.iter() {
            let (state, kind, timeout) = (state.clone(), plan.kind.clone(), plan.timeout);
            // A backend whose health is told on another port is probed there.
            let target = plan.port.map_or(state.address, |port| {
                SocketAddr::new(state.address.ip(), port)
            });
            round.spawn(async move {
                let outcome = probe::probe(target, &kind, timeout).await;
                (state, outcome)
            });
        }
        while let Some(done) = round.join_next().await {
            let Ok((state, outcome)) = done else {
                continue;
            };
            let Some(current) = shared.upgrade() else {
                return;
            };
            // The set may have changed during the round: judge only backends still in it.
            if let Some(index) = current.index_of(&state) {
                let verdict = current.policy.probed(index, outcome);
                current.apply(&state, verdict);
            }
        }
    }
}

/// Hands observed traffic to the policy, one at a time.
async fn judge_traffic(shared: Weak<Shared>, mut observations: mpsc::Receiver<Observation>) {
    while let Some((state, outcome)) = observations.recv().await {
        let Some(current) = shared.upgrade() else {
            return;
        };
        if let Some(index) = current.index_of(&state) {
            let verdict = current.policy.observed(index, outcome);
            current.apply(&state, verdict);
        }
    }
}
