//! Backend health: which backends get new work.
//!
//! A port's health policies (plugins, see [`HealthPolicy`]) decide; a [`HealthChecker`] per
//! policy does the work the plugin cannot: it probes every backend on the plugin's schedule
//! ([`probe`]), passes it the outcomes of real traffic when it asks for them, and writes its
//! verdicts into each backend's shared state, where the pool reads them. A backend is healthy
//! when no policy holds it out and it is not ejected. The checker lives as long as the port's
//! health settings are unchanged; backend changes hand it the new set.

pub mod probe;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use lb_config::Backend;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use crate::balancer::BackendFigures;
use crate::pool::BackendState;

/// How one probe or one unit of traffic went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The TCP connection opened.
    Connected,
    /// An HTTP response arrived with this status.
    Responded(u16),
    /// The connection was refused or failed.
    ConnectFailed,
    /// No answer in time.
    TimedOut,
}

/// What a policy concluded about a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No change.
    Unchanged,
    /// Give it traffic (ends an ejection too).
    Healthy,
    /// Give it no traffic until a later `Healthy`.
    Unhealthy,
    /// Give it no traffic for this long.
    Eject(Duration),
}

/// What the host sends to probe a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// Open a TCP connection, then close it.
    TcpConnect,
    /// `GET path` (over TLS when `tls`), reading the status.
    Http {
        /// Request target.
        path: String,
        /// `Host` header; the backend's address when none.
        host: Option<String>,
        /// Speak TLS (certificates not verified).
        tls: bool,
    },
}

/// Active checking on a schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePlan {
    /// What to send.
    pub kind: ProbeKind,
    /// Between the starts of two probe rounds.
    pub interval: Duration,
    /// A probe not finished by then is `TimedOut`.
    pub timeout: Duration,
}

/// What a health policy asks the host to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    /// Active probes, if any.
    pub probe: Option<ProbePlan>,
    /// Whether real traffic's outcomes are passed to [`HealthPolicy::observed`].
    pub observe_traffic: bool,
}

/// A health policy: one state for the port's backends, whatever thread asks.
pub trait HealthPolicy: Send + Sync {
    /// The policy's name.
    fn name(&self) -> &str;
    /// What it wants done.
    fn settings(&self) -> &HealthSettings;
    /// The backend set changed (indices below refer to it from now on).
    fn set_backends(&self, backends: &[Backend], figures: Arc<dyn BackendFigures>);
    /// The outcome of a probe of the backend at `index`.
    fn probed(&self, index: usize, outcome: Outcome) -> Verdict;
    /// The outcome of real traffic to the backend at `index`.
    fn observed(&self, index: usize, outcome: Outcome) -> Verdict;
}

/// Observations waiting for the policy; beyond this they are dropped (and counted).
const OBSERVATION_QUEUE: usize = 4096;

/// Runs one health policy of one port. Retiring or dropping it stops its tasks.
pub struct HealthChecker {
    shared: Arc<Shared>,
    observations: Option<mpsc::Sender<(Arc<BackendState>, Outcome)>>,
    tasks: Vec<AbortHandle>,
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
    /// Starts checking with `policy`, the port's `slot`-th health policy (0 to 7), on the
    /// current tokio runtime.
    pub fn start(policy: Arc<dyn HealthPolicy>, slot: u8) -> Self {
        let shared = Arc::new(Shared {
            policy,
            slot: slot.min(7),
            backends: ArcSwap::from_pointee(Vec::new()),
            retired: AtomicBool::new(false),
        });
        let settings = shared.policy.settings().clone();
        let mut tasks = Vec::new();
        if let Some(plan) = settings.probe {
            let task = tokio::spawn(probe_rounds(Arc::downgrade(&shared), plan));
            tasks.push(task.abort_handle());
        }
        let observations = settings.observe_traffic.then(|| {
            let (sender, receiver) = mpsc::channel(OBSERVATION_QUEUE);
            let task = tokio::spawn(judge_traffic(Arc::downgrade(&shared), receiver));
            tasks.push(task.abort_handle());
            sender
        });
        HealthChecker {
            shared,
            observations,
            tasks,
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

    /// Reports real traffic to `backend`, if this policy observes traffic. Never waits: when
    /// the policy falls behind, the observation is dropped.
    pub fn observe(&self, backend: &Arc<BackendState>, outcome: Outcome) {
        if let Some(sender) = &self.observations {
            if sender.try_send((backend.clone(), outcome)).is_err() {
                backend.metrics.health_observations_dropped.inc();
            }
        }
    }
}

impl HealthChecker {
    /// Stops checking: the port no longer uses this policy. Routes still held by open
    /// connections keep the checker alive, but it no longer judges anything.
    pub fn retire(&self) {
        self.shared.retired.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
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
            round.spawn(async move {
                let outcome = probe::probe(state.address, &kind, timeout).await;
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
async fn judge_traffic(
    shared: Weak<Shared>,
    mut observations: mpsc::Receiver<(Arc<BackendState>, Outcome)>,
) {
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

/// A backend's health as `/config` shows it.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct HealthView {
    /// Gets new work (not held out, not ejected).
    pub healthy: bool,
    /// Milliseconds left of an ejection; 0 when not ejected.
    pub ejected_for_ms: u64,
}
