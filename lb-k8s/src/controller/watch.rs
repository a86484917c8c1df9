//! The watches: one kube-rs watcher per kind (Services, EndpointSlices, Nodes, and one per
//! TLS Secret a Service names), each forwarding its events into the controller's one queue,
//! so the index is only ever touched by one task. A watcher lists, then watches from the
//! list's resourceVersion; after a `410 Gone` it lists again (its events then arrive between
//! `Init` and `InitDone`), at once, and other errors back off without ending it
//! ([`WatchBackoff`]: 250 ms doubling to 3 s, so a watch is back within seconds of an API
//! server's return).

use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::index::ObjectKey;
use crate::jitter::Jitter;

/// The first wait after a watch fails.
const FIRST_WAIT: Duration = Duration::from_millis(250);

/// The longest wait between a watch's tries. client-go's (and kube-rs's default) is 30 s, so
/// a watch that failed through a 25 s API server outage may wait most of another 30 s after it
/// is back; a few seconds keep the load of retries small and the return quick.
const CEILING: Duration = Duration::from_secs(3);

/// How long a watch waits after an error before it tries again: [`FIRST_WAIT`] doubling to
/// [`CEILING`], each wait drawn between half and all of that (so watches do not retry in
/// step), and back to [`FIRST_WAIT`] as soon as the watch delivers again.
pub struct WatchBackoff {
    next: Duration,
    jitter: Jitter,
}

impl WatchBackoff {
    /// A backoff for the watch of `kind` (its jitter is seeded by it).
    pub fn new(kind: &str) -> WatchBackoff {
        WatchBackoff {
            next: FIRST_WAIT,
            jitter: Jitter::new(kind),
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next;
        self.next = (self.next * 2).min(CEILING);
        Some(wait.mul_f64(0.5 + 0.5 * self.jitter.next()))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = FIRST_WAIT;
    }
}

/// One event of one watch.
#[derive(Debug)]
pub enum Update {
    /// From the Services watch.
    Service(Box<Event<Service>>),
    /// From the EndpointSlices watch.
    Slice(Box<Event<EndpointSlice>>),
    /// From the Nodes watch.
    Node(Box<Event<Node>>),
    /// From the watch of one Secret.
    Secret(ObjectKey, Box<Event<Secret>>),
    /// A watch failed (it retries by itself): the kind, the Secret when it is a Secret's
    /// watch, and the error.
    Failed(&'static str, Option<ObjectKey>, String),
}

/// Starts the watches of Services, EndpointSlices and Nodes, feeding `queue`.
pub fn start_all(client: &Client, queue: &mpsc::Sender<Update>) -> Vec<JoinHandle<()>> {
    vec![
        spawn(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            queue.clone(),
            ("Service", None),
            |e| Update::Service(Box::new(e)),
        ),
        spawn(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
            queue.clone(),
            ("EndpointSlice", None),
            |e| Update::Slice(Box::new(e)),
        ),
        spawn(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            queue.clone(),
            ("Node", None),
            |e| Update::Node(Box::new(e)),
        ),
    ]
}

/// Starts the watch of the one Secret `key` (a field selector on its name, so Gantry reads no
/// other Secret).
pub fn start_secret(
    client: &Client,
    key: &ObjectKey,
    queue: &mpsc::Sender<Update>,
) -> JoinHandle<()> {
    let api = Api::<Secret>::namespaced(client.clone(), &key.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", key.name));
    let key = key.clone();
    spawn(
        api,
        config,
        queue.clone(),
        ("Secret", Some(key.clone())),
        move |event| Update::Secret(key.clone(), Box::new(event)),
    )
}

fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    queue: mpsc::Sender<Update>,
    (kind, secret): (&'static str, Option<ObjectKey>),
    wrap: impl Fn(Event<K>) -> Update + Send + 'static,
) -> JoinHandle<()>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
{
    tokio::spawn(async move {
        let stream = watcher::watcher(api, config)
            // Managed fields are large and never read: drop them before they are kept.
            .modify(|object: &mut K| object.managed_fields_mut().clear());
        let mut stream = std::pin::pin!(stream);
        let mut backoff = WatchBackoff::new(kind);
        while let Some(item) = stream.next().await {
            let (update, wait) = match item {
                Ok(event) => {
                    backoff.reset();
                    (wrap(event), None)
                }
                Err(error) => {
                    // The server no longer has the version the watch was at (`410 Gone`,
                    // after an etcd restart or a compaction): the watcher lists again, at once.
                    let expired =
                        matches!(&error, watcher::Error::WatchError(status) if status.code == 410);
                    let wait = (!expired).then(|| backoff.next()).flatten();
                    let update = Update::Failed(kind, secret.clone(), error.to_string());
                    (update, wait)
                }
            };
            if queue.send(update).await.is_err() {
                return;
            }
            if let Some(wait) = wait {
                tokio::time::sleep(wait).await;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_three_seconds_with_jitter_and_start_over_after_a_success() {
        let mut backoff = WatchBackoff::new("Service");
        let waits: Vec<Duration> = backoff.by_ref().take(8).collect();
        let ceilings = [250, 500, 1000, 2000, 3000, 3000, 3000, 3000];
        for (wait, ceiling) in waits.iter().zip(ceilings) {
            let ceiling = Duration::from_millis(ceiling);
            assert!(
                *wait <= ceiling && *wait >= ceiling / 2,
                "{wait:?} not within half of {ceiling:?}: {waits:?}"
            );
        }
        assert!(
            waits.windows(2).any(|w| w[0] != w[1]),
            "jittered: {waits:?}"
        );
        backoff.reset();
        assert!(backoff.next().is_some_and(|w| w <= FIRST_WAIT));
    }
}
