//! The watches: one kube-rs watcher per kind (Services, EndpointSlices, Nodes, and one per
//! TLS Secret a Service names), each forwarding its events into the controller's one queue,
//! so the index is only ever touched by one task. A watcher lists, then watches from the
//! list's resourceVersion; after a `410 Gone` it lists again (its events then arrive between
//! `Init` and `InitDone`), and errors back off (0.8 s doubling to 30 s) without ending it.

use std::fmt::Debug;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::index::ObjectKey;

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
            .default_backoff()
            // Managed fields are large and never read: drop them before they are kept.
            .modify(|object: &mut K| object.managed_fields_mut().clear());
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            let update = match item {
                Ok(event) => wrap(event),
                Err(error) => Update::Failed(kind, secret.clone(), error.to_string()),
            };
            if queue.send(update).await.is_err() {
                return;
            }
        }
    })
}
