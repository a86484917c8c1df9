//! One reconcile pass over the Services that changed: decide what each asks for (its
//! address, its service of the model, checked), publish every Kubernetes service to the data
//! plane at once, then tell the cluster: status, Events, and, for a Service Gantry lets go,
//! its address released and its finalizer removed only after its listeners are gone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use lb_config::model::ServiceSource;
use lb_config::{Admission, FieldPath};
use tokio::time::Instant;

use super::built::{requests_of, Built, Front};
use super::report::Tell;
use super::writer::Note;
use super::{status, Controller, Retry};
use crate::addresses::{Refusal, Request};
use crate::index::endpoints::Family;
use crate::index::service::{Role, ServiceView};
use crate::index::translate::PortOutcome;
use crate::index::{ObjectKey, Translation};
use crate::plane::{Candidate, Update};

/// Longest wait before a failed write is tried again.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// What the controller keeps of a Service it serves (or tries to).
#[derive(Default)]
pub(crate) struct Tracked {
    pub(super) role: Option<Role>,
    /// What is served for it: its last good configuration.
    pub(super) served: Option<Built>,
    /// What it asks for now, when that could be built.
    pub(super) wanted: Option<Built>,
    /// Why what it asks for cannot be built: a reason and a message.
    pub(super) problem: Option<(String, String)>,
    /// Why what it asks for is not served though it was built (it clashes).
    pub(super) clash: Option<(String, String)>,
    /// The trouble last reported with an Event, so each is reported once.
    pub(super) reported: Option<(String, String)>,
    /// What was last announced with `EnsuredLoadBalancer`.
    pub(super) ensured: Option<Front>,
    /// The ports last reported as not served (a Warning each time they change).
    pub(super) skipped_ports: Vec<PortOutcome>,
    /// It was a load balancer and is now served otherwise (a NodePort Service): once its
    /// listeners are gone, its address, status and finalizer are let go.
    pub(super) let_go: bool,
}

impl Tracked {
    pub(super) fn trouble(&self) -> Option<(String, String)> {
        self.problem.clone().or_else(|| self.clash.clone())
    }
}

/// Whether two configurations are served alike (see [`Built::serves_as`]).
fn same(a: &Option<Built>, b: &Option<Built>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.serves_as(b),
        (None, None) => true,
        _ => false,
    }
}

/// The root of the field paths of `key`'s problems.
fn origin(key: &ObjectKey) -> FieldPath {
    FieldPath::object("Service", &key.to_string())
}

impl Controller {
    /// Reconciles the Services that changed, and those whose retry is due.
    pub(super) async fn reconcile(&mut self) {
        // Decided once per pass; should the right to write end within it, the writer's fence
        // stops what is left, and the pass that follows decides as a follower.
        self.leading = self.fence.leading_now();
        if !self.synced.adopted {
            self.adopt();
            self.synced.adopted = true;
            let all: Vec<ObjectKey> = self.index.keys().cloned().collect();
            self.touch(all);
        }
        self.follow_secrets();
        let now = Instant::now();
        let mut batch: BTreeMap<ObjectKey, Option<Instant>> = std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|(key, at)| (key, Some(at)))
            .collect();
        for (key, retry) in &self.retry {
            if retry.at <= now {
                batch.entry(key.clone()).or_insert(None);
            }
        }
        // A Service whose Secret is still being listed waits for it (the list's end marks
        // it again; the retry is only a fallback).
        let waiting: Vec<ObjectKey> = batch
            .keys()
            .filter(|k| self.waits_for_secret(k))
            .cloned()
            .collect();
        for key in waiting {
            batch.remove(&key);
            self.retry.insert(
                key,
                Retry {
                    at: now + Duration::from_secs(1),
                    attempt: 0,
                },
            );
        }
        if batch.is_empty() && self.synced.published {
            return;
        }
        // Only the holder of the Lease writes; the others serve what the statuses say.
        let unfinalized = if self.leading {
            self.add_finalizers(batch.keys()).await
        } else {
            Vec::new()
        };
        for key in &unfinalized {
            batch.remove(key);
        }
        let mut tell = Tell::default();
        let mut releasing = Vec::new();
        // What the data plane must hear of: the Services whose configuration, wanted or
        // served, changed, and those it no longer serves. Most events change nothing served
        // (a cluster's other Services, the echo of Gantry's own status writes) and cost no
        // publish. The first publish of a run replaces whatever an earlier run served.
        let mut touched = Vec::new();
        let mut withdrawn = Vec::new();
        for key in batch.keys() {
            let before = self
                .tracked
                .get(key)
                .map(|t| (t.wanted.clone(), t.served.clone()));
            if self.decide(key, &mut tell) {
                let after = self.tracked.get(key);
                let differs = match (&before, after) {
                    (Some((wanted, served)), Some(now)) => {
                        !same(wanted, &now.wanted) || !same(served, &now.served)
                    }
                    _ => true,
                };
                if differs {
                    touched.push(key.clone());
                }
            } else {
                let had = self.tracked.remove(key).is_some_and(|t| t.served.is_some());
                self.waiting.remove(key);
                if before.is_some() {
                    withdrawn.push(key.clone());
                }
                releasing.push((key.clone(), had));
            }
        }
        let replace = !self.synced.published;
        if replace || !touched.is_empty() || !withdrawn.is_empty() {
            if !self.publish(touched, withdrawn, replace).await {
                // The next publish starts over from everything tracked.
                self.synced.published = false;
                for key in batch.keys() {
                    self.later(key);
                }
                return;
            }
            self.synced.published = true;
        }
        // The data plane serves what the batch asked for from here on: that is what the
        // programming latency measures (the cluster is told after).
        for (key, at) in &batch {
            let programmed = self.tracked.contains_key(key)
                || releasing.iter().any(|(gone, had)| gone == key && *had);
            if let (Some(at), true) = (at, programmed) {
                self.telemetry.programmed(at.elapsed().as_secs_f64());
            }
        }
        self.show_pools();
        let mut freed = false;
        for key in batch.keys() {
            // A load balancer that became a NodePort Service: its old listeners are gone now.
            if let Some(tracked) = self.tracked.get_mut(key).filter(|t| t.let_go) {
                tracked.let_go = false;
                let had = true;
                freed |= self.release(key, had).await;
            }
            if self.leading {
                self.report(key, &mut tell);
            }
        }
        if self.leading {
            self.tell(tell).await;
        }
        for (key, had) in releasing {
            freed |= self.release(&key, had).await;
        }
        if freed {
            self.show_pools();
            // Services waiting for an address may get the one just freed.
            let waiting: Vec<ObjectKey> = self
                .tracked
                .iter()
                .filter(|(_, t)| {
                    t.problem
                        .as_ref()
                        .is_some_and(|(reason, _)| reason.starts_with("Address"))
                })
                .map(|(key, _)| key.clone())
                .collect();
            self.touch(waiting);
        }
    }

    fn show_pools(&self) {
        for (pool, in_use) in self.addresses.in_use() {
            self.telemetry.pool_in_use(pool, in_use);
        }
    }

    /// Gives every load balancer back the address its status shows, before any is handed
    /// out, and remembers what its status already reports, so that a restart or a takeover
    /// of the Lease neither moves an address nor repeats an Event.
    fn adopt(&mut self) {
        self.addresses.reset();
        let ours: Vec<ObjectKey> = self.index.ours().cloned().collect();
        let mut adopted = 0_usize;
        for key in ours {
            let Some((Role::LoadBalancer, view)) = self.index.service(&key) else {
                continue;
            };
            let (requests, _) = requests_of(view);
            for request in &requests {
                for ip in view.status_ips.clone() {
                    if self.addresses.adopt(&key, ip, request) {
                        tracing::debug!(service = %key, address = %ip, "address re-adopted from status");
                        adopted += 1;
                        break;
                    }
                }
            }
            let said = status::said(view.status.as_ref());
            let tracked = self.tracked.entry(key).or_default();
            tracked.reported = said.trouble;
            tracked.skipped_ports = said.skipped;
            // Announced again only if what is served differs from what the status shows.
            tracked.ensured = None;
        }
        tracing::info!(adopted, "addresses re-adopted from the Services' status");
    }

    fn waits_for_secret(&self, key: &ObjectKey) -> bool {
        let Some((_, view)) = self.index.service(key) else {
            return false;
        };
        view.annotations
            .tls_secret
            .as_deref()
            .is_some_and(|name| self.secret_pending(&ObjectKey::new(&key.namespace, name)))
    }

    /// Tries `key` again later, backing off.
    pub(super) fn later(&mut self, key: &ObjectKey) {
        let attempt = self
            .retry
            .get(key)
            .map_or(0, |r| r.attempt.saturating_add(1));
        let delay = Duration::from_millis(500)
            .saturating_mul(1 << attempt.min(6))
            .min(MAX_RETRY);
        self.retry.insert(
            key.clone(),
            Retry {
                at: Instant::now() + delay,
                attempt,
            },
        );
    }

    /// Works out what `key` asks for; `false` when Gantry has nothing to serve for it.
    fn decide(&mut self, key: &ObjectKey, tell: &mut Tell) -> bool {
        self.retry.remove(key);
        let Some((role, view)) = self.index.service(key) else {
            return false;
        };
        let view = view.clone();
        match role {
            Role::None => return false,
            _ if view.deleting => return false,
            Role::LoadBalancer | Role::NodePort => {}
        }
        let tracked = self.tracked.entry(key.clone()).or_default();
        if tracked.role == Some(Role::LoadBalancer) && role != Role::LoadBalancer {
            // Its load balancer goes; the last good configuration was one.
            tracked.served = None;
            tracked.wanted = None;
            tracked.ensured = None;
            tracked.let_go = true;
        }
        tracked.role = Some(role);
        // A load balancer has its cleanup finalizer by now (`add_finalizers`), when this
        // replica writes.
        let addresses = match role {
            Role::LoadBalancer if self.leading => match self.assign(key, &view) {
                Ok(addresses) => addresses.into_iter().map(Some).collect(),
                Err(refusal) => {
                    self.refuse(key, refusal.reason(), refusal.to_string());
                    return true;
                }
            },
            Role::LoadBalancer => {
                let shown = self.follow(key, &view);
                if shown.is_empty() {
                    // The holder of the Lease has not given it an address yet (or cannot):
                    // nothing to serve it on. Not a problem of this replica's to report.
                    let tracked = self.tracked.entry(key.clone()).or_default();
                    tracked.wanted = None;
                    tracked.served = None;
                    tracked.problem = None;
                    return true;
                }
                shown.into_iter().map(Some).collect()
            }
            _ => vec![None],
        };
        self.build(key, &addresses, &view);
        let tracked = self.tracked.entry(key.clone()).or_default();
        // After a restart a Service that already shows its address is taken over quietly;
        // a new one, or a change to one served, is announced.
        let announce = tracked.served.is_some() || view.status_ips.is_empty();
        let front = |b: &Option<Built>| b.as_ref().map(Built::front);
        if tracked.wanted.is_some() && front(&tracked.wanted) != front(&tracked.served) && announce
        {
            let note = Note {
                warning: false,
                reason: "EnsuringLoadBalancer",
                message: "provisioning the load balancer".into(),
            };
            tell.event(key, &view.source, note);
        }
        true
    }

    /// Records that what `key` asks for cannot be built; its last good configuration stays.
    /// (Logged and counted once per distinct problem, not at every reconcile.)
    fn refuse(&mut self, key: &ObjectKey, reason: &str, message: String) {
        let tracked = self.tracked.entry(key.clone()).or_default();
        tracked.wanted = None;
        let problem = Some((reason.to_owned(), message));
        if tracked.problem != problem {
            if let Some((_, message)) = &problem {
                tracing::warn!(service = %key, reason, "{message}");
            }
            self.telemetry.object_invalid("Service");
            tracked.problem = problem;
        }
    }

    /// The addresses of the load balancer `key`: one per family it asks for, those it must
    /// have first. A family only preferred (`PreferDualStack`) is left out when no pool has
    /// an address of it.
    fn assign(&mut self, key: &ObjectKey, view: &ServiceView) -> Result<Vec<IpAddr>, Refusal> {
        let (requests, required) = requests_of(view);
        let families: Vec<Family> = requests.iter().map(Request::family).collect();
        self.addresses.keep_families(key, &families);
        let mut addresses = Vec::with_capacity(requests.len());
        for (i, request) in requests.iter().enumerate() {
            match self.addresses.assign(key, request) {
                Ok(ip) => addresses.push(ip),
                Err(Refusal::Exhausted) if i >= required => {}
                Err(refusal) => return Err(refusal),
            }
        }
        Ok(addresses)
    }

    /// The addresses of the load balancer `key` on a replica that does not hold the Lease:
    /// those its status shows, one per family it asks for, from Gantry's pools. The holder
    /// chose them; this replica serves them and keeps count, and checks nothing.
    fn follow(&mut self, key: &ObjectKey, view: &ServiceView) -> Vec<IpAddr> {
        let (requests, _) = requests_of(view);
        let mut shown: Vec<(IpAddr, &Request)> = Vec::with_capacity(requests.len());
        for request in &requests {
            let ip = view.status_ips.iter().copied().find(|ip| {
                Family::of(*ip) == request.family()
                    && self.addresses.in_a_pool(*ip)
                    && !shown.iter().any(|(taken, _)| taken == ip)
            });
            if let Some(ip) = ip {
                shown.push((ip, request));
            }
        }
        self.addresses.follow(key, &shown);
        shown.into_iter().map(|(ip, _)| ip).collect()
    }

    /// Builds and checks the services of the model `key` becomes, one per address (`None`:
    /// the node-facing address of a NodePort Service).
    fn build(&mut self, key: &ObjectKey, addresses: &[Option<IpAddr>], view: &ServiceView) {
        let mut services = Vec::with_capacity(addresses.len());
        let mut outcomes = Vec::new();
        for (i, address) in addresses.iter().enumerate() {
            let (mut wanted, problems) = match self.index.translate(key, *address) {
                Translation::Serve { wanted, problems } => (wanted, problems),
                Translation::NoAddress => {
                    return self.refuse(key, "NoAddress", "no address to serve on".into());
                }
                Translation::NotOurs | Translation::Deleting => return,
            };
            if !problems.is_empty() {
                return self.refuse(key, "InvalidConfiguration", problems.join("; "));
            }
            if let (true, Some(ip)) = (i > 0, address) {
                // The address of the second family is a service of its own in the model,
                // `namespace/name.ipv6` (no Service's name has a dot).
                let family = Family::of(*ip).as_str().to_ascii_lowercase();
                wanted.spec.name = Some(format!("{key}.{family}"));
            }
            match self.plane.check(&origin(key), wanted.spec) {
                Ok(mut service) => {
                    service.source = ServiceSource::Kubernetes(view.source.clone());
                    services.push(Arc::new(service));
                    outcomes = wanted.ports;
                }
                Err(problems) => {
                    return self.refuse(key, "InvalidConfiguration", problems.to_string())
                }
            }
        }
        let tracked = self.tracked.entry(key.clone()).or_default();
        tracked.problem = None;
        tracked.wanted = Some(Built {
            services,
            ports: outcomes,
        });
    }

    /// Tells the data plane what changed: the Services `touched` and those still waiting for
    /// what they ask (everything tracked, when `replace`), those served already first (a new
    /// Service never takes what one that serves holds), each with what it asks for, then its
    /// last good configuration; and the Services `withdrawn`. `false` when nothing could be
    /// applied.
    async fn publish(
        &mut self,
        touched: Vec<ObjectKey>,
        withdrawn: Vec<ObjectKey>,
        replace: bool,
    ) -> bool {
        let mut offer: BTreeSet<ObjectKey> = if replace {
            self.tracked.keys().cloned().collect()
        } else {
            touched
                .into_iter()
                .chain(self.waiting.iter().cloned())
                .collect()
        };
        let mut withdrawn: Vec<FieldPath> = withdrawn.iter().map(origin).collect();
        // A Service with nothing to serve (its configuration cannot be built and none was
        // served) is not offered: whatever it had goes.
        let nothing: Vec<ObjectKey> = offer
            .iter()
            .filter(|key| {
                !self
                    .tracked
                    .get(*key)
                    .is_some_and(|t| t.served.is_some() || t.wanted.is_some())
            })
            .cloned()
            .collect();
        for key in nothing {
            offer.remove(&key);
            self.waiting.remove(&key);
            withdrawn.push(origin(&key));
        }
        let serves = |key: &ObjectKey| self.tracked.get(key).is_some_and(|t| t.served.is_some());
        let (mut order, new): (Vec<ObjectKey>, Vec<ObjectKey>) =
            offer.into_iter().partition(|key| serves(key));
        order.extend(new);
        let mut offered: Vec<Vec<Built>> = Vec::with_capacity(order.len());
        let mut candidates = Vec::with_capacity(order.len());
        for key in &order {
            let tracked = &self.tracked[key];
            let mut alternatives: Vec<Built> = tracked.wanted.iter().cloned().collect();
            if let Some(served) = &tracked.served {
                if tracked.wanted.as_ref() != Some(served) {
                    alternatives.push(served.clone());
                }
            }
            candidates.push(Candidate {
                origin: origin(key),
                alternatives: alternatives.iter().map(|b| b.services.clone()).collect(),
            });
            offered.push(alternatives);
        }
        let update = Update {
            offered: candidates,
            withdrawn,
            replace,
        };
        let outcomes = match self.plane.publish(update).await {
            Ok(outcomes) => outcomes,
            Err(error) => {
                tracing::error!(%error, "Kubernetes services could not be applied; the previous ones keep serving");
                return false;
            }
        };
        if replace {
            self.waiting.clear();
        }
        for ((key, alternatives), outcome) in order.iter().zip(offered).zip(outcomes) {
            let Some(tracked) = self.tracked.get_mut(key) else {
                continue;
            };
            let refused = matches!(outcome, Admission::Refused(_));
            let clashes = outcome.clashes();
            tracked.clash = (refused || !clashes.is_empty())
                .then(|| ("Conflict".to_owned(), clashes.to_string()));
            let first = matches!(outcome, Admission::Admitted { alternative: 0, .. });
            tracked.served = match outcome {
                Admission::Admitted { alternative, .. } => {
                    alternatives.into_iter().nth(alternative)
                }
                Admission::Refused(_) => None,
            };
            // Not served as it asks: offered again with every publish until it is.
            if first {
                self.waiting.remove(key);
            } else {
                self.waiting.insert(key.clone());
            }
        }
        true
    }
}

/// Event reasons are static in the writer; the few that come as text map back here.
pub(super) fn static_reason(reason: &str) -> &'static str {
    match reason {
        "AddressNotInPool" => "AddressNotInPool",
        "AddressInUse" => "AddressInUse",
        "UnknownAddressPool" => "UnknownAddressPool",
        "AddressPoolExhausted" => "AddressPoolExhausted",
        "Conflict" => "Conflict",
        "NoAddress" => "NoAddress",
        _ => "InvalidConfiguration",
    }
}

pub(super) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
