//! Which of several replicas writes to the cluster: the holder of a `coordination.k8s.io/v1`
//! Lease, elected as client-go's `leaderelection` does (the same record, the same rules), so
//! Gantry replicas can share a Lease's semantics with any tool that reads it.
//!
//! - A candidate takes the Lease when it is free, or when its holder has not renewed it for
//!   `lease_duration` **as this replica's own clock measures it**: the time a change of the
//!   record was last *seen*, never the server's `renewTime` against the local clock, so clock
//!   skew between machines does not matter.
//! - The holder renews every `retry_period`. Its right to write ([`Fence`]) runs until
//!   `renew_deadline` after the start of its last successful renewal: below `lease_duration`,
//!   so a holder that cannot renew has stopped writing before any other replica may take the
//!   Lease. A write is never started past that instant, and one in flight is abandoned at it.
//! - A replica that stops gracefully hands the Lease back (holder `""`, duration 1 s), so the
//!   next takes it at its next try instead of waiting out the duration.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use lb_config::LeaderElection;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::jitter::Jitter;
use crate::telemetry::{Leadership, Telemetry};

/// Whether this replica may write to the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lead {
    /// No election (one replica): always.
    Always,
    /// The first try has not ended yet.
    Electing,
    /// It holds the Lease: until this instant, unless renewed before.
    Leading {
        /// When the right to write ends.
        until: Instant,
    },
    /// Another replica holds it (named when known), or nobody yet.
    Following {
        /// The holder's identity.
        holder: Option<String>,
    },
}

/// A write refused because this replica does not (or no longer) hold the Lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fenced;

/// The right to write, as the elector grants it; cloned by every writer.
#[derive(Clone, Debug)]
pub struct Fence(watch::Receiver<Lead>);

impl Fence {
    /// A fence that is always open: leader election is off.
    pub fn always() -> Fence {
        Fence(watch::channel(Lead::Always).1)
    }

    /// What the elector says now.
    pub fn lead(&self) -> Lead {
        self.0.borrow().clone()
    }

    /// Whether a write started now may go out.
    pub fn leading_now(&self) -> bool {
        match *self.0.borrow() {
            Lead::Always => true,
            Lead::Leading { until } => Instant::now() < until,
            Lead::Electing | Lead::Following { .. } => false,
        }
    }

    /// Whether the first try has ended (or there is no election): until then the source does
    /// not reconcile, so a replica that is about to hold the Lease does not first decide as
    /// one that does not.
    pub fn decided(&self) -> bool {
        !matches!(*self.0.borrow(), Lead::Electing)
    }

    /// Runs `write` if this replica may write now, and abandons it (a dropped request) when
    /// that right ends before it completes. A refused write is never started.
    pub async fn guard<F: Future>(&self, write: F) -> Result<F::Output, Fenced> {
        let lead = self.lead();
        let until = match lead {
            Lead::Always => return Ok(write.await),
            Lead::Leading { until } if Instant::now() < until => until,
            _ => return Err(Fenced),
        };
        tokio::select! {
            output = write => Ok(output),
            () = tokio::time::sleep_until(until) => Err(Fenced),
        }
    }

    /// Waits for the next change of the lead.
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            // The elector is gone (the source is stopping): nothing changes any more.
            std::future::pending::<()>().await;
        }
    }
}

/// The outcome of one try to take or renew the Lease.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// This replica holds it now.
    Held,
    /// Another replica holds it (named when known).
    HeldBy(Option<String>),
}

/// The Lease record as last seen, and when this replica saw it change.
struct Observed {
    spec: LeaseSpec,
    at: Instant,
}

/// The candidate: tries, renews and releases the Lease.
struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaderElection,
    /// The Lease as last read or written (its resourceVersion guards the next update).
    cached: Option<Lease>,
    observed: Option<Observed>,
    /// Whether the last try took or renewed the Lease.
    holding: bool,
    telemetry: Arc<dyn Telemetry>,
}

/// Starts electing for the Lease `timing` names, as `identity`; the returned [`Fence`] follows
/// the outcome. On `stop` the Lease is handed back (within `renew_deadline`) before the task
/// ends.
pub fn spawn(
    client: Client,
    timing: &LeaderElection,
    identity: String,
    telemetry: Arc<dyn Telemetry>,
    stop: CancellationToken,
) -> (Fence, JoinHandle<()>) {
    let (lead, fence) = watch::channel(Lead::Electing);
    let elector = Elector {
        api: Api::namespaced(client, &timing.lease_namespace),
        name: timing.lease_name.clone(),
        identity,
        timing: timing.clone(),
        cached: None,
        observed: None,
        holding: false,
        telemetry,
    };
    let task = tokio::spawn(elector.run(lead, stop));
    (Fence(fence), task)
}

/// This process's identity as a Lease holder: the instance name, the process and the time it
/// started electing, so that a successor taking over by handover (same instance name) or two
/// sources in one process never take each other for the holder.
pub fn identity(instance: &str) -> String {
    let started = Timestamp::now().as_nanosecond();
    format!("{instance}_{}_{:x}", std::process::id(), started)
}

impl Elector {
    async fn run(mut self, lead: watch::Sender<Lead>, stop: CancellationToken) {
        let timing = self.timing.clone();
        let mut jitter = Jitter::new(&self.identity);
        loop {
            let leading_until = match *lead.borrow() {
                Lead::Leading { until } => Some(until),
                _ => None,
            };
            // A renewal may take until the right to write ends; a try to take the Lease, one
            // renew deadline.
            let bound = leading_until.map_or(timing.renew_deadline, |until| {
                until.saturating_duration_since(Instant::now())
            });
            let started = Instant::now();
            let attempt = tokio::select! {
                () = stop.cancelled() => break,
                attempt = tokio::time::timeout(bound, self.try_acquire_or_renew()) => attempt,
            };
            let next = match attempt {
                Ok(Ok(Attempt::Held)) => Lead::Leading {
                    until: started + timing.renew_deadline,
                },
                Ok(Ok(Attempt::HeldBy(holder))) => Lead::Following { holder },
                failed => {
                    let why = match &failed {
                        Ok(Err(err)) => err.to_string(),
                        _ => "no answer in time".to_owned(),
                    };
                    if let Ok(Err(kube::Error::Api(status))) = &failed {
                        if matches!(status.code, 403 | 404) {
                            // Not a passing fault: this replica will never write until the
                            // cluster or the configuration changes.
                            tracing::error!(lease = %format!("{}/{}", timing.lease_namespace, self.name), %why, "the Lease cannot be held, so this replica writes nothing to the cluster: apply deploy/rbac.yaml (the Role and the gantry-system namespace), set kubernetes.leader_election.lease_namespace, or `enabled: false` for a single replica");
                        }
                    }
                    match leading_until {
                        // Still within the last renewal's deadline: keep writing, try again.
                        Some(until) if Instant::now() < until => {
                            tracing::warn!(lease = %self.name, %why, "could not renew the Lease; trying again");
                            Lead::Leading { until }
                        }
                        _ => {
                            if leading_until.is_some() {
                                tracing::error!(lease = %self.name, %why, "lost the Lease: not renewed within the renew deadline; writes stop");
                            } else {
                                tracing::warn!(lease = %self.name, %why, "could not try the Lease");
                            }
                            self.holding = false;
                            Lead::Following {
                                holder: self.holder(),
                            }
                        }
                    }
                }
            };
            self.announce(&lead, next);
            let pause = if self.holding {
                timing.retry_period
            } else {
                // As client-go: a jittered retry, so candidates do not try in step.
                timing.retry_period.mul_f64(1.0 + 1.2 * jitter.next())
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        let was_holding = self.holding;
        self.announce(&lead, Lead::Following { holder: None });
        if was_holding {
            match tokio::time::timeout(timing.renew_deadline, self.release()).await {
                Ok(Ok(())) => tracing::info!(lease = %self.name, "Lease handed back"),
                Ok(Err(err)) => {
                    tracing::warn!(lease = %self.name, %err, "could not hand the Lease back; it expires on its own")
                }
                Err(_) => {
                    tracing::warn!(lease = %self.name, "no answer handing the Lease back; it expires on its own")
                }
            }
        }
    }

    /// Publishes `next` and logs a change of hands.
    fn announce(&mut self, lead: &watch::Sender<Lead>, next: Lead) {
        let leading = matches!(next, Lead::Leading { .. });
        let was = matches!(*lead.borrow(), Lead::Leading { .. });
        if leading && !was {
            tracing::info!(lease = %self.name, identity = %self.identity, "took the Lease: this replica writes");
        } else if !leading && was {
            tracing::info!(lease = %self.name, holder = ?self.holder(), "follows: another replica writes");
        }
        let holder = if leading {
            Some(self.identity.clone())
        } else {
            match &next {
                Lead::Following { holder } => holder.clone(),
                _ => None,
            }
        };
        self.telemetry.leadership(&Leadership {
            lease: Some(format!("{}/{}", self.timing.lease_namespace, self.name)),
            identity: self.identity.clone(),
            leading,
            holder,
        });
        lead.send_if_modified(|current| {
            // A renewal moves `until` on: a change for the fence, not worth a wake-up of the
            // controller unless the kind of lead changed.
            let changed_kind =
                std::mem::discriminant(current) != std::mem::discriminant(&next) || {
                    matches!((&*current, &next), (Lead::Following { holder: a }, Lead::Following { holder: b }) if a != b)
                };
            *current = next;
            changed_kind
        });
    }

    /// The holder the last read named, when not empty.
    fn holder(&self) -> Option<String> {
        self.observed
            .as_ref()
            .and_then(|o| o.spec.holder_identity.clone())
            .filter(|h| !h.is_empty())
    }

    /// client-go's `tryAcquireOrRenew`.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let seconds = i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX);
        // The fast path: the holder renews the Lease as it last wrote it.
        if self.holding {
            if let Some(mut lease) = self.cached.clone() {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.renew_time = Some(now.clone());
                    spec.lease_duration_seconds = Some(seconds);
                }
                if let Ok(written) = self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    self.remember(written);
                    return Ok(Attempt::Held);
                }
            }
        }
        let mine = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        };
        let Some(current) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(mine),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(written) => {
                    self.remember(written);
                    Ok(Attempt::Held)
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    self.holding = false;
                    Ok(Attempt::HeldBy(None))
                }
                Err(err) => Err(err),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        self.observe(&spec);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        if !ours && holder.is_some() && self.observed_valid() {
            self.holding = false;
            self.cached = Some(current);
            return Ok(Attempt::HeldBy(holder));
        }
        let mut next = mine;
        if ours {
            next.acquire_time = spec.acquire_time.clone();
            next.lease_transitions = spec.lease_transitions;
        } else {
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        let mut lease = current;
        lease.spec = Some(next);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.remember(written);
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                // Another candidate wrote first.
                self.holding = false;
                Ok(Attempt::HeldBy(holder.filter(|_| !ours)))
            }
            Err(err) => Err(err),
        }
    }

    /// Hands the Lease back, if this replica still holds it: client-go's `release`.
    async fn release(&mut self) -> Result<(), kube::Error> {
        loop {
            let Some(mut lease) = self.api.get_opt(&self.name).await? else {
                return Ok(());
            };
            let Some(spec) = lease.spec.as_mut() else {
                return Ok(());
            };
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            let now = MicroTime(Timestamp::now());
            spec.holder_identity = Some(String::new());
            spec.lease_duration_seconds = Some(1);
            spec.acquire_time = Some(now.clone());
            spec.renew_time = Some(now);
            match self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(err) => return Err(err),
            }
        }
    }

    /// Keeps what this replica wrote as the record it holds.
    fn remember(&mut self, written: Lease) {
        let spec = written.spec.clone().unwrap_or_default();
        self.observed = Some(Observed {
            spec,
            at: Instant::now(),
        });
        self.cached = Some(written);
        self.holding = true;
    }

    /// Notes the record read, and the local time it was first seen in this state.
    fn observe(&mut self, spec: &LeaseSpec) {
        if self.observed.as_ref().is_some_and(|o| &o.spec == spec) {
            return;
        }
        self.observed = Some(Observed {
            spec: spec.clone(),
            at: Instant::now(),
        });
    }

    /// Whether the holder last seen still holds the Lease by this replica's clock.
    fn observed_valid(&self) -> bool {
        self.observed.as_ref().is_some_and(|o| {
            let seconds = o.spec.lease_duration_seconds.unwrap_or(0).max(0);
            o.at.elapsed() < Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The right to write runs on tokio's clock: on a paused clock it ends at its deadline
    /// with no real wait (on the system clock it would still be open here).
    #[tokio::test(start_paused = true)]
    async fn the_right_to_write_ends_at_its_deadline_by_tokios_clock() {
        let started = Instant::now();
        let until = started + Duration::from_secs(10);
        let (_elector, lead) = watch::channel(Lead::Leading { until });
        let fence = Fence(lead);
        assert!(fence.leading_now());
        // A write in flight is abandoned when the right ends, and none starts after.
        let in_flight = fence.guard(std::future::pending::<()>()).await;
        assert_eq!(in_flight, Err(Fenced));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(!fence.leading_now());
        assert_eq!(fence.guard(async {}).await, Err(Fenced));
    }
}
