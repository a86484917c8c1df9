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
mod report;
pub mod status;
pub mod watch;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher::Event;
use lb_config::Kubernetes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::lease::Fence;
use self::reconcile::Tracked;
use self::watch::Update;
use self::writer::Writer;
use crate::addresses::{Addresses, Pool};
use crate::client::{connect, ConnectError, Credentials};
use crate::index::{endpoints, Index, ObjectKey};
use crate::plane::DataPlane;
use crate::settings::Settings;
use crate::telemetry::{Leadership, Telemetry};

/// Most updates taken from the queue before a reconcile: a burst (a relist, a rollout)
/// becomes a few reconciles, not one per event.
const BATCH: usize = 1024;

/// Longest a burst is gathered before it is reconciled.
const MAX_LINGER: Duration = Duration::from_millis(250);

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
        relists: Relists::default(),
        synced: Synced::default(),
        dirty: BTreeMap::new(),
        retry: BTreeMap::new(),
        tracked: BTreeMap::new(),
        last_publish: Duration::ZERO,
    };
    tracing::info!(class = %section.load_balancer_class, "Kubernetes source started");
    loop {
        let next_retry = controller.retry.values().map(|r| r.at).min();
        let wait = match next_retry {
            _ if !controller.dirty.is_empty() && controller.synced.all() && fence.decided() => {
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
                // In a burst (a relist, a rollout, many Services at once), gather for as long
                // as the last publish took, so publishing, which costs with the number of
                // Services, stays a bounded share of the time. A lone change goes at once.
                if taken > 1 {
                    let linger = tokio::time::sleep(controller.last_publish.min(MAX_LINGER));
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
        if controller.synced.all() && fence.decided() {
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

/// The first complete list of each kind has arrived.
#[derive(Default)]
struct Synced {
    services: bool,
    slices: bool,
    nodes: bool,
    /// Addresses were re-adopted from the Services' status.
    adopted: bool,
    /// The data plane has been given this run's Kubernetes services once.
    published: bool,
}

impl Synced {
    fn all(&self) -> bool {
        self.services && self.slices && self.nodes
    }
}

/// What a relist has seen so far, per kind (between `Init` and `InitDone`).
#[derive(Default)]
struct Relists {
    services: Option<BTreeSet<ObjectKey>>,
    slices: Option<BTreeSet<(ObjectKey, String)>>,
    nodes: Option<BTreeSet<String>>,
    /// Secrets whose watch has not completed its first list, or is relisting: whether the
    /// Secret was seen.
    secrets: BTreeMap<ObjectKey, bool>,
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
    /// How long the last publish to the data plane took.
    last_publish: Duration,
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
        match update {
            Update::Service(event) => self.take_services(*event),
            Update::Slice(event) => {
                let outcome = outcome(&event);
                let touched: Vec<ObjectKey> = match *event {
                    Event::Init => {
                        self.relists.slices = Some(BTreeSet::new());
                        Vec::new()
                    }
                    Event::InitApply(slice) | Event::Apply(slice) => {
                        if let (Some(seen), Some(owner)) =
                            (self.relists.slices.as_mut(), endpoints::owner(&slice))
                        {
                            seen.insert(owner);
                        }
                        self.index.apply_slice(&slice).into_iter().collect()
                    }
                    Event::Delete(slice) => self.index.delete_slice(&slice).into_iter().collect(),
                    Event::InitDone => {
                        self.synced.slices = true;
                        let seen = self.relists.slices.take().unwrap_or_default();
                        self.index.retain_slices(&seen).into_iter().collect()
                    }
                };
                self.telemetry.watch_event("EndpointSlice", outcome);
                self.touch(touched);
            }
            Update::Node(event) => {
                let outcome = outcome(&event);
                let touched = match *event {
                    Event::Init => {
                        self.relists.nodes = Some(BTreeSet::new());
                        BTreeSet::new()
                    }
                    Event::InitApply(node) | Event::Apply(node) => {
                        if let (Some(seen), Some(name)) =
                            (self.relists.nodes.as_mut(), node.metadata.name.clone())
                        {
                            seen.insert(name);
                        }
                        self.index.apply_node(&node)
                    }
                    Event::Delete(node) => self
                        .index
                        .delete_node(node.metadata.name.as_deref().unwrap_or_default()),
                    Event::InitDone => {
                        self.synced.nodes = true;
                        let seen = self.relists.nodes.take().unwrap_or_default();
                        self.index.retain_nodes(&seen)
                    }
                };
                self.telemetry.watch_event("Node", outcome);
                self.touch(touched);
            }
            Update::Secret(key, event) => self.take_secret(key, *event),
            Update::Failed(kind, secret, error) => {
                self.telemetry.watch_event(kind, "error");
                tracing::warn!(kind, %error, "watch failed; retrying");
                if let Some(key) = secret {
                    // A Secret that cannot be read (forbidden, say) is not waited for: the
                    // Services that name it are told why, and retried when the watch recovers.
                    if self.relists.secrets.remove(&key).is_some() {
                        let touched = self.index.secret_unreadable(&key, &error);
                        self.touch(touched);
                    }
                }
            }
        }
    }

    fn take_services(&mut self, event: Event<k8s_openapi::api::core::v1::Service>) {
        let outcome = outcome(&event);
        let touched: Vec<ObjectKey> = match event {
            Event::Init => {
                self.relists.services = Some(BTreeSet::new());
                Vec::new()
            }
            Event::InitApply(service) | Event::Apply(service) => {
                let key = self.index.apply_service(&service);
                if let (Some(seen), Some(key)) = (self.relists.services.as_mut(), key.clone()) {
                    seen.insert(key);
                }
                key.into_iter().collect()
            }
            Event::Delete(service) => ObjectKey::of(&service)
                .map(|key| self.index.delete_service(&key))
                .into_iter()
                .collect(),
            Event::InitDone => {
                self.synced.services = true;
                let seen = self.relists.services.take().unwrap_or_default();
                self.index.retain_services(&seen).into_iter().collect()
            }
        };
        self.telemetry.watch_event("Service", outcome);
        self.touch(touched);
    }

    fn take_secret(&mut self, key: ObjectKey, event: Event<Secret>) {
        let outcome = outcome(&event);
        let touched = match event {
            Event::Init => {
                self.relists.secrets.insert(key, false);
                BTreeSet::new()
            }
            Event::InitApply(secret) | Event::Apply(secret) => {
                if let Some(seen) = self.relists.secrets.get_mut(&key) {
                    *seen = true;
                }
                self.index.apply_secret(&secret)
            }
            Event::Delete(_) => self.index.delete_secret(&key),
            Event::InitDone => match self.relists.secrets.remove(&key) {
                Some(false) => self.index.delete_secret(&key),
                _ => self.index.referencing(&key),
            },
        };
        self.telemetry.watch_event("Secret", outcome);
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
                self.relists.secrets.insert(key.clone(), false);
                let handle = watch::start_secret(&self.client, key, &self.queue);
                self.secret_watches.insert(key.clone(), handle);
            }
        }
        self.index.retain_secrets(&referenced);
    }

    /// Whether the Secret `key` is still being listed for the first time.
    fn secret_pending(&self, key: &ObjectKey) -> bool {
        self.relists.secrets.contains_key(key)
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
