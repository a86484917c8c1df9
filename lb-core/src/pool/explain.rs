//! Why a request would go where it goes (`gantry explain`): the pool's own selection, run with
//! policies of the explanation's own and every step noted, changing nothing live.
//!
//! The selection is the one serving makes ([`BackendPool::select`]), through the same rules
//! (`place`, `ranked`, `balance`, `unusable`), with three differences that keep it free of
//! side effects: the affinity table is peeked at (no entry made, refreshed or dropped), no
//! backend is leased (no in-flight count) and nothing is counted, and the plugins are asked on
//! instances of their own (built by a plugin host apart, so a fault is not recorded against
//! the serving plugin). Where the serving plugin is quarantined, the explanation answers as
//! serving does: with the native round-robin, and no affinity.
//!
//! What it cannot foresee: a policy with state of its own (a rotation) answers from its own
//! copy, so "the next request" of a rotating balancer is one of its turns, not necessarily the
//! next; hashing and affinity are exact.

use lb_config::Backend;
use lb_policy::clock::now_ms;
use lb_policy::{
    AffinityFactory, Balancer, BalancerFactory, Peeked, PickContext, RoundRobin, Stickiness,
    Unanswered,
};
use serde::Serialize;

use super::{BackendPool, BalanceTrace, Placement, Scan, Sticky, TableRead, Tried, Unusable};
use crate::metrics::{AffinityOutcome, PortMetrics};

/// The port's policies as an explanation runs them.
pub struct ExplainPolicies<'a> {
    /// The port's balancer, loaded apart from the serving one.
    pub balancer: &'a dyn BalancerFactory,
    /// Whether the serving balancer is quarantined (its picks are the native round-robin's).
    pub balancer_quarantined: bool,
    /// The port's affinity, loaded apart, if it has one.
    pub affinity: Option<&'a dyn AffinityFactory>,
    /// Whether the serving affinity is quarantined (no request sticks).
    pub affinity_quarantined: bool,
    /// The names of the port's health policies, in order.
    pub health: Vec<String>,
}

/// Why a request would go where it goes.
#[derive(Debug, Serialize)]
pub struct Explanation {
    /// The backend it would go to (`ip:port`); none when the port has none to give.
    pub backend: Option<String>,
    /// What decided it: `affinity` (its sticky backend), `rendezvous` (a new or moved key's
    /// backend), `balancer`, `scan` (the balancer's picks were unusable), or `none`.
    pub decided_by: &'static str,
    /// The backend set as the policies see it now.
    pub backends: Vec<BackendSeen>,
    /// The affinity's part, if the port has one.
    pub affinity: Option<AffinityStep>,
    /// The balancer's part, if it was asked.
    pub balancer: Option<BalancerStep>,
}

/// One backend as the policies see it.
#[derive(Debug, Serialize)]
pub struct BackendSeen {
    /// `ip:port`.
    pub address: String,
    /// Its weight (0: drained).
    pub weight: u32,
    /// Whether the health policies let it take new work.
    pub healthy: bool,
    /// The health policies holding it out now.
    pub held_out_by: Vec<String>,
    /// Milliseconds left of a passive ejection; 0 when not ejected.
    pub ejected_ms: u64,
    /// Milliseconds left of its back-off after failed connects; 0 when none.
    pub backing_off_ms: u64,
    /// Work in progress on it.
    pub in_flight: u32,
    /// Recent connect-to-response time, microseconds (0: not measured yet).
    pub latency_micros: u32,
    /// Why it may not take this request, if it may not.
    pub unusable: Option<Unusable>,
}

/// What the affinity did.
#[derive(Debug, Default, Serialize)]
pub struct AffinityStep {
    /// The policy.
    pub policy: String,
    /// The serving affinity is quarantined: nothing sticks.
    pub quarantined: bool,
    /// What the request sticks by: `none`, `remembered` (a key of the table), `named` (a
    /// backend the request names, by cookie), or `fault` (the plugin's call faulted).
    pub sticks_by: &'static str,
    /// The key, in hex, for `remembered`.
    pub key: Option<String>,
    /// What the table holds for the key: `hit`, `expired` or `miss`.
    pub table: Option<&'static str>,
    /// The backend remembered or named.
    pub sticky_backend: Option<String>,
    /// `stuck` (to the sticky backend), `new` (nothing to stick to) or `moved`.
    pub outcome: Option<&'static str>,
    /// Why the sticky backend could not take it, for `moved`.
    pub moved_because: Option<Unusable>,
}

/// What the balancer did.
#[derive(Debug, Default, Serialize)]
pub struct BalancerStep {
    /// The policy.
    pub policy: String,
    /// The serving balancer is quarantined: the native round-robin answered.
    pub quarantined: bool,
    /// Its answers, attempt by attempt, until one was usable.
    pub picks: Vec<PickSeen>,
    /// How the scan chose, when no pick was usable.
    pub scan: Option<Scan>,
}

/// One answer of the balancer.
#[derive(Debug, Serialize)]
pub struct PickSeen {
    /// Attempt number (0: the first pick).
    pub attempt: u32,
    /// The backend it named (`ip:port`, or the index when outside the set); none: it had no
    /// answer.
    pub backend: Option<String>,
    /// The plugin's call faulted and the native round-robin answered in its place.
    pub fallback: bool,
    /// Why it could not be used, if it could not.
    pub unusable: Option<Unusable>,
}

impl BackendPool {
    /// Where a request with `cx` would go now, and why; changes nothing live.
    pub fn explain(&self, cx: &PickContext<'_>, policies: &ExplainPolicies<'_>) -> Explanation {
        let now = now_ms();
        let tried = Tried::default();
        let backends: Vec<Backend> = (self.backends.iter().zip(&self.weights))
            .map(|(state, weight)| Backend {
                address: state.address,
                weight: *weight,
            })
            .collect();
        let seen = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, state)| {
                let figures = state.figures();
                let held_out_by = state.held_out_by();
                BackendSeen {
                    address: state.label.clone(),
                    weight: self.weights[i],
                    healthy: state.is_healthy(),
                    held_out_by: held_out_by
                        .map(|slot| {
                            let name = policies.health.get(slot);
                            name.cloned().unwrap_or_else(|| format!("health[{slot}]"))
                        })
                        .collect(),
                    ejected_ms: state.health_view().ejected_for_ms,
                    backing_off_ms: state.backing_off_until().saturating_sub(now),
                    in_flight: figures.in_flight,
                    latency_micros: figures.latency_micros,
                    unusable: self.unusable(i, &tried, now),
                }
            })
            .collect();
        let mut explanation = Explanation {
            backend: None,
            decided_by: "none",
            backends: seen,
            affinity: None,
            balancer: None,
        };
        let figures = self.figures();
        let sticky = self.sticky.as_ref().zip(policies.affinity);
        let sticky = sticky.map(|(live, factory)| Sticky {
            affinity: factory.build(&backends, figures.clone()),
            table: live.table.clone(),
            by_address: live.by_address.clone(),
            counters: PortMetrics::new().affinity,
        });
        if let Some(sticky) = &sticky {
            sticky.affinity.activate();
            let (step, stickiness) = self.explain_stickiness(sticky, cx, policies, now);
            let placement = self.place(sticky, stickiness, &tried, now, TableRead::Peek);
            let mut step = step;
            match placement {
                Placement::Stuck(index) => {
                    step.outcome = Some(AffinityOutcome::Stuck.label());
                    explanation.affinity = Some(step);
                    explanation.backend = Some(self.backends[index].label.clone());
                    explanation.decided_by = "affinity";
                    return explanation;
                }
                Placement::Place(outcome) => {
                    step.outcome = Some(outcome.label());
                    if outcome == AffinityOutcome::Moved {
                        step.moved_because = self.moved_because(sticky, stickiness, now);
                    }
                }
            }
            explanation.affinity = Some(step);
            if let Some(index) = self.ranked(stickiness, &tried, now) {
                explanation.backend = Some(self.backends[index].label.clone());
                explanation.decided_by = "rendezvous";
                return explanation;
            }
        }
        let balancer = if policies.balancer_quarantined {
            RoundRobin.build(&backends, figures.clone())
        } else {
            policies.balancer.build(&backends, figures.clone())
        };
        balancer.activate();
        let mut trace = Explaining {
            pool: self,
            balancer: balancer.as_ref(),
            fallback: RoundRobin.build(&backends, figures),
            step: BalancerStep {
                policy: policies.balancer.name().to_owned(),
                quarantined: policies.balancer_quarantined,
                ..BalancerStep::default()
            },
        };
        let chosen = self.balance(cx, &tried, &mut trace);
        let scanned = trace.step.scan.is_some();
        explanation.balancer = Some(trace.step);
        if let Some((_, backend)) = chosen {
            explanation.backend = Some(backend.label.clone());
            explanation.decided_by = if scanned { "scan" } else { "balancer" };
        }
        explanation
    }

    /// What the explanation's affinity says `cx` sticks by, and the step so far.
    fn explain_stickiness(
        &self,
        sticky: &Sticky,
        cx: &PickContext<'_>,
        policies: &ExplainPolicies<'_>,
        now: u64,
    ) -> (AffinityStep, Stickiness) {
        let mut step = AffinityStep {
            policy: policies
                .affinity
                .map(|a| a.name().to_owned())
                .unwrap_or_default(),
            quarantined: policies.affinity_quarantined,
            sticks_by: "none",
            ..AffinityStep::default()
        };
        if policies.affinity_quarantined {
            return (step, Stickiness::None);
        }
        let stickiness = match sticky.affinity.stick_answer(cx) {
            Ok(stickiness) => stickiness,
            Err(Unanswered::Fault | Unanswered::Quarantined) => {
                step.sticks_by = "fault";
                return (step, Stickiness::None);
            }
        };
        match stickiness {
            Stickiness::None => {}
            Stickiness::Remembered(key) => {
                step.sticks_by = "remembered";
                step.key = Some(format!("{key:016x}"));
                let peeked = sticky.table.as_ref().map(|t| t.peek(key, now));
                let (table, backend) = match peeked {
                    Some(Peeked::Hit(address)) => (Some("hit"), Some(address)),
                    Some(Peeked::Expired(address)) => (Some("expired"), Some(address)),
                    Some(Peeked::Miss) | None => (Some("miss"), None),
                };
                step.table = table;
                step.sticky_backend = backend.map(|a| a.to_string());
            }
            Stickiness::Named(index) => {
                step.sticks_by = "named";
                step.sticky_backend = Some(
                    self.backends
                        .get(index)
                        .map_or_else(|| format!("#{index}"), |b| b.label.clone()),
                );
            }
        }
        (step, stickiness)
    }

    /// Why the sticky backend of a key that moves could not take it (none when the entry had
    /// expired: the key is placed anew).
    fn moved_because(&self, sticky: &Sticky, stickiness: Stickiness, now: u64) -> Option<Unusable> {
        let index = match stickiness {
            Stickiness::Named(index) => index,
            Stickiness::Remembered(key) => {
                let table = sticky.table.as_ref()?;
                let Peeked::Hit(address) = table.peek(key, now) else {
                    return None;
                };
                match sticky.by_address.get(&address) {
                    Some(index) => *index,
                    None => return Some(Unusable::NotInSet),
                }
            }
            Stickiness::None => return None,
        };
        self.unusable(index, &Tried::default(), now)
    }
}

/// An explanation's balancing: the plugin's own answers, with the fallback's where it faults,
/// every step noted.
struct Explaining<'a> {
    pool: &'a BackendPool,
    balancer: &'a dyn Balancer,
    fallback: Box<dyn Balancer>,
    step: BalancerStep,
}

impl BalanceTrace for Explaining<'_> {
    fn pick(&mut self, cx: &PickContext<'_>, attempt: u32) -> Option<usize> {
        let (pick, fallback) = match self.balancer.answer(cx, attempt) {
            Ok(pick) => (pick, false),
            Err(_) => (self.fallback.pick(cx, attempt), true),
        };
        self.step.picks.push(PickSeen {
            attempt,
            backend: pick.map(|i| {
                self.pool
                    .backends
                    .get(i)
                    .map_or_else(|| format!("#{i}"), |b| b.label.clone())
            }),
            fallback,
            unusable: None,
        });
        pick
    }

    fn skipped(&mut self, why: Unusable) {
        if let Some(last) = self.step.picks.last_mut() {
            last.unusable = Some(why);
        }
    }

    fn scanned(&mut self, how: Scan) {
        self.step.scan = Some(how);
    }
}
