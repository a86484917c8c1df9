//! The Kubernetes source at work: watches feed the [`Index`] (one task owns it), and each
//! batch of changes is reconciled: addresses assigned, Services translated and checked, the
//! whole set of Kubernetes services handed to the data plane, then the cluster told
//! (finalizers, status, Events). Nothing is reconciled before the first complete list of
//! Services, EndpointSlices and Nodes, and every Service's address is re-adopted from its
//! status before any new one is handed out, so a restart changes no address and serves no
//! Service without its endpoints.

mod built;
pub mod lease;
mod reconcile;
mod relist;
mod report;
pub mod status;
pub mod watch;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher::Event;
use lb_config::Kubernetes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::lease::Fence;
use self::reconcile::Tracked;
use self::relist::Relist;
use self::watch::Update;
use self::writer::Writer;
use crate::addresses::{Addresses, Pool};
use crate::client::{connect, ConnectError, Credentials};
use crate::index::{Index, ObjectKey};
use crate::plane::DataPlane;
use crate::settings::Settings;
use crate::telemetry::{Leadership, Telemetry};

/// Most updates taken from the queue before a reconcile: a burst (a relist, a rollout)
/// becomes a few reconciles, not one per event.
const BATCH: usize = 1024;

/// Runs the Kubernetes source for `section` until `stop`: serves what the cluster asks of
/// Gantry through `plane`. Returns an error only when the cluster cannot be reached at all
/// (a bad kubeconfig); once running, API errors are retried.
pub async fn run(
    section: &Kubernetes,
    plane: Arc<dyn DataPlane>,
    telemetry: Arc<dyn Telemetry>,
    stop: CancellationToken,
) -> Result<(), ConnectError> {
    let credentials = match &section.credentials {
        lb_config::KubeCredentials::Kubeconfig { path, context } => Credentials::Kubeconfig {
            path: path.clone(),
            context: context.clone(),
        },
        lb_config::KubeCredentials::InCluster => Credentials::InCluster,
    };
    let client = connect(&credentials).await?;
    let election_stop = CancellationToken::new();
    let (mut fence, elector) = match &section.leader_election {
        Some(election) => {
            let namespace = &election.lease_namespace;
            let identity = lease::identity(&section.instance);
            tracing::info!(lease = %format!("{namespace}/{}", election.lease_name), %identity, "leader election: only the Lease's holder writes to the cluster");
            let (fence, task) = lease::spawn(
                client.clone(),
                election,
                identity,
                Arc::clone(&telemetry),
                election_stop.clone(),
            );
            (fence, Some(task))
        }
        None => {
            telemetry.leadership(&Leadership {
                lease: None,
                identity: section.instance.clone(),
                leading: true,
                holder: None,
            });
            (Fence::always(), None)
        }
    };
    let (queue, mut updates) = mpsc::channel(BATCH);
    let watches = watch::start_all(&client, &queue);
    let mut controller = Controller {
        settings: Settings::of(section),
        index: Index::new(Settings::of(section)),
        addresses: Addresses::new(pools(section)),
        writer: Writer::new(
            client.clone(),
            &section.instance,
            Arc::clone(&telemetry),
            fence.clone(),
        ),
        fence: fence.clone(),
        leading: false,
        client,
        queue,
        plane,
        telemetry,
        secret_watches: BTreeMap::new(),
        relists: Relists::new(),
        synced: Synced::default(),
        dirty: BTreeMap::new(),
        retry: BTreeMap::new(),
        tracked: BTreeMap::new(),
        waiting: BTreeSet::new(),
    };
    tracing::info!(class = %section.load_balancer_class, "Kubernetes source started");
    loop {
        let next_retry = controller.retry.values().map(|r| r.at).min();
        let wait = match next_retry {
            _ if !controller.dirty.is_empty()
                && controller.relists.all_synced()
                && fence.decided() =>
            {
                Duration::ZERO
            }
            Some(at) => at.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            () = stop.cancelled() => break,
            () = fence.changed() => controller.lead_changed(),
            update = updates.recv() => {
                let Some(update) = update else { break };
                controller.take(update);
                let mut taken = 1;
                while taken < BATCH {
                    match updates.try_recv() {
                        Ok(update) => controller.take(update),
                        Err(_) => break,
                    }
                    taken += 1;
                }
                // A burst (a relist, a rollout, many Services at once) is gathered for
                // `batch_delay` from its first change, so it makes one apply, not one each.
                // A lone change goes at once.
                if taken > 1 {
                    let linger = tokio::time::sleep(section.batch_delay);
                    tokio::pin!(linger);
                    while taken < BATCH {
                        tokio::select! {
                            update = updates.recv() => match update {
                                Some(update) => controller.take(update),
                                None => break,
                            },
                            () = &mut linger => break,
                        }
                        taken += 1;
                    }
                }
            }
            () = tokio::time::sleep(wait) => {}
        }
        if controller.relists.all_synced() && fence.decided() {
            controller.reconcile().await;
        }
    }
    for handle in watches
        .into_iter()
        .chain(controller.secret_watches.into_values())
    {
        handle.abort();
    }
    // The Lease is handed back only now, with no write of this source in flight.
    election_stop.cancel();
    if let Some(elector) = elector {
        let _ = elector.await;
    }
    tracing::info!("Kubernetes source stopped");
    Ok(())
}

fn pools(section: &Kubernetes) -> Vec<Pool> {
    section
        .address_pools
        .iter()
        .map(|pool| Pool {
            name: pool.name.clone(),
            ranges: pool.ranges.clone(),
        })
        .collect()
}

/// What this run has done once.
#[derive(Default)]
struct Synced {
    /// Addresses were re-adopted from the Services' status.
    adopted: bool,
    /// The data plane has been given this run's Kubernetes services once.
    published: bool,
}

/// The list state of every watch.
struct Relists {
    services: Relist<k8s_openapi::api::core::v1::Service>,
    slices: Relist<k8s_openapi::api::discovery::v1::EndpointSlice>,
    nodes: Relist<k8s_openapi::api::core::v1::Node>,
    /// One per Secret watched.
    secrets: BTreeMap<ObjectKey, Relist<Secret>>,
}

impl Relists {
    fn new() -> Self {
        Relists {
            services: Relist::new(()),
            slices: Relist::new(()),
            nodes: Relist::new(()),
            secrets: BTreeMap::new(),
        }
    }

    /// The first complete list of Services, EndpointSlices and Nodes has arrived.
    fn all_synced(&self) -> bool {
        self.services.synced() && self.slices.synced() && self.nodes.synced()
    }
}

/// When a key is tried again after a failed write.
struct Retry {
    at: Instant,
    attempt: u32,
}

/// The controller's state; only its own task touches it.
pub(crate) struct Controller {
    settings: Settings,
    index: Index,
    addresses: Addresses,
    writer: Writer,
    /// Whether this replica holds the Lease (and so writes and hands out addresses).
    fence: Fence,
    /// What the fence said when the reconcile pass under way began.
    leading: bool,
    client: kube::Client,
    queue: mpsc::Sender<Update>,
    plane: Arc<dyn DataPlane>,
    telemetry: Arc<dyn Telemetry>,
    secret_watches: BTreeMap<ObjectKey, JoinHandle<()>>,
    relists: Relists,
    synced: Synced,
    /// Services to reconcile, with when the first change to them arrived.
    dirty: BTreeMap<ObjectKey, Instant>,
    retry: BTreeMap<ObjectKey, Retry>,
    tracked: BTreeMap<ObjectKey, Tracked>,
    /// Services not served as they ask (refused, or served by their last good
    /// configuration): offered again with every publish, as what blocks them may have gone.
    waiting: BTreeSet<ObjectKey>,
}

impl Controller {
    /// The Lease changed hands. A replica that takes it looks at everything again as a
    /// restart does: addresses re-adopted from the statuses, what they already say not said
    /// again, so nothing right is rewritten. One that loses it decides every Service again
    /// from its status.
    fn lead_changed(&mut self) {
        if self.fence.leading_now() {
            self.synced.adopted = false;
        } else {
            let all: Vec<ObjectKey> = self.index.keys().cloned().collect();
            self.touch(all);
        }
    }

    fn touch(&mut self, keys: impl IntoIterator<Item = ObjectKey>) {
        let now = Instant::now();
        for key in keys {
            self.dirty.entry(key).or_insert(now);
        }
    }

    /// Applies one watch update to the index and marks what it touches.
    fn take(&mut self, update: Update) {
        let (kind, outcome, touched) = match update {
            Update::Service(event) => (
                "Service",
                outcome(&event),
                self.relists.services.fold(&mut self.index, *event),
            ),
            Update::Slice(event) => (
                "EndpointSlice",
                outcome(&event),
                self.relists.slices.fold(&mut self.index, *event),
            ),
            Update::Node(event) => (
                "Node",
                outcome(&event),
                self.relists.nodes.fold(&mut self.index, *event),
            ),
            Update::Secret(key, event) => {
                let outcome = outcome(&event);
                // A watch stopped since (its Secret is no longer named) has nothing to say.
                let Some(relist) = self.relists.secrets.get_mut(&key) else {
                    return;
                };
                ("Secret", outcome, relist.fold(&mut self.index, *event))
            }
            Update::Failed(kind, secret, error) => {
                tracing::warn!(kind, %error, "watch failed; retrying");
                // A Secret that cannot be read (forbidden, say) is not waited for: the
                // Services that name it are told why, and retried when the watch recovers.
                let touched = match secret {
                    Some(key)
                        if self
                            .relists
                            .secrets
                            .get_mut(&key)
                            .is_some_and(Relist::give_up) =>
                    {
                        self.index.secret_unreadable(&key, &error)
                    }
                    _ => Default::default(),
                };
                (kind, "error", touched)
            }
        };
        self.telemetry.watch_event(kind, outcome);
        self.touch(touched);
    }

    /// Starts a watch for every Secret a Service names and stops those no longer named.
    fn follow_secrets(&mut self) {
        let referenced = self.index.referenced_secrets();
        self.secret_watches.retain(|key, handle| {
            let keep = referenced.contains(key);
            if !keep {
                handle.abort();
            }
            keep
        });
        self.relists
            .secrets
            .retain(|key, _| referenced.contains(key));
        for key in &referenced {
            if !self.secret_watches.contains_key(key) {
                // Until its first list completes, the Secret is neither there nor missing.
                self.relists
                    .secrets
                    .insert(key.clone(), Relist::new(key.clone()));
                let handle = watch::start_secret(&self.client, key, &self.queue);
                self.secret_watches.insert(key.clone(), handle);
            }
        }
        self.index.retain_secrets(&referenced);
    }

    /// Whether the Secret `key` is still being listed for the first time.
    fn secret_pending(&self, key: &ObjectKey) -> bool {
        self.relists.secrets.get(key).is_some_and(Relist::listing)
            && !self
                .secret_watches
                .get(key)
                .is_none_or(JoinHandle::is_finished)
    }
}

fn outcome<K>(event: &Event<K>) -> &'static str {
    match event {
        Event::Apply(_) | Event::InitApply(_) => "applied",
        Event::Delete(_) => "deleted",
        Event::Init | Event::InitDone => "relisted",
    }
}
