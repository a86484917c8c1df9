//! The pure index of the Kubernetes source: plain objects in, services of the model out, no
//! server, in the style of linkerd2's policy index. Watches call [`Index::apply_service`],
//! [`Index::apply_slice`], [`Index::apply_node`] and the deletes; each returns which Services
//! may have changed, and [`Index::translate`] says what one of them now asks of Gantry.

pub mod annotations;
pub mod endpoints;
pub mod nodes;
pub mod secrets;
pub mod service;
pub mod translate;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use self::endpoints::SliceView;
use self::nodes::NodeView;
use self::secrets::SecretView;
use self::service::{Role, ServiceView};
use self::translate::{Inputs, Wanted};
use crate::settings::{BackendMode, Settings};

/// A namespaced object's identity: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ObjectKey {
    /// `namespace/name`.
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The key of a namespaced object; `None` when it lacks a namespace or a name.
    pub fn of<K: kube::Resource>(object: &K) -> Option<Self> {
        let meta = object.meta();
        Some(ObjectKey::new(
            meta.namespace.as_deref()?,
            meta.name.as_deref()?,
        ))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Service as the index keeps it.
struct Entry {
    role: Role,
    view: ServiceView,
    /// What is wrong with the object, with field paths.
    problems: Vec<String>,
}

/// What the index says of one Service.
#[derive(Debug)]
pub enum Translation {
    /// Not Gantry's (unknown, another type, another provider's class): nothing is served, and
    /// whatever Gantry served for it before is cleaned up.
    NotOurs,
    /// Gantry's, but being deleted: clean up, then let it go.
    Deleting,
    /// Gantry's load balancer, but it has no address (none could be given): nothing is
    /// served until it has one.
    NoAddress,
    /// Gantry's: serve this.
    Serve {
        /// The service and its port outcomes.
        wanted: Wanted,
        /// What is wrong with the object (each a Warning Event); the rest is served.
        problems: Vec<String>,
    },
}

/// Services, their EndpointSlices and the nodes, as last seen.
#[derive(Default)]
pub struct Index {
    settings: Settings,
    services: BTreeMap<ObjectKey, Entry>,
    /// By Service, then by slice name.
    slices: BTreeMap<ObjectKey, BTreeMap<String, SliceView>>,
    nodes: BTreeMap<String, NodeView>,
    /// TLS Secrets Services name, as read (or why they cannot be used).
    secrets: BTreeMap<ObjectKey, Result<SecretView, String>>,
    /// The Services naming each Secret: a Secret's change touches those without a walk over
    /// every Service.
    named_by: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
}

impl Index {
    /// An empty index working by `settings`.
    pub fn new(settings: Settings) -> Self {
        Index {
            settings,
            ..Index::default()
        }
    }

    /// A Service was added or changed; returns its key (`None` for an object without one).
    ///
    /// A version older than the one kept is ignored: Gantry applies the objects its own writes
    /// return at once, and the watch events of the versions before them may arrive after.
    /// (kube-apiserver's resourceVersions are etcd revisions and compare as numbers; one that
    /// does not parse is always applied.)
    pub fn apply_service(&mut self, service: &Service) -> Option<ObjectKey> {
        let key = ObjectKey::of(service)?;
        let version = |rv: Option<&str>| rv.and_then(|rv| rv.parse::<u64>().ok());
        if let (Some(new), Some(kept)) = (
            version(service.metadata.resource_version.as_deref()),
            self.services
                .get(&key)
                .and_then(|e| version(Some(&e.view.source.resource_version))),
        ) {
            if new < kept {
                return Some(key);
            }
        }
        let (view, problems) = service::read(service);
        let entry = Entry {
            role: service::role(service, &self.settings),
            view,
            problems,
        };
        self.remove_service(&key);
        if let Some(secret) = secret_named(&key, &entry) {
            self.named_by.entry(secret).or_default().insert(key.clone());
        }
        self.services.insert(key.clone(), entry);
        Some(key)
    }

    /// A Service is gone.
    pub fn delete_service(&mut self, key: &ObjectKey) -> ObjectKey {
        self.remove_service(key);
        key.clone()
    }

    /// Forgets the Service `key`, and that it names its Secret.
    fn remove_service(&mut self, key: &ObjectKey) {
        let Some(entry) = self.services.remove(key) else {
            return;
        };
        if let Some(secret) = secret_named(key, &entry) {
            if let Some(naming) = self.named_by.get_mut(&secret) {
                naming.remove(key);
                if naming.is_empty() {
                    self.named_by.remove(&secret);
                }
            }
        }
    }

    /// An EndpointSlice was added or changed; returns its Service's key.
    pub fn apply_slice(&mut self, slice: &EndpointSlice) -> Option<ObjectKey> {
        let (service, name) = endpoints::owner(slice)?;
        let slices = self.slices.entry(service.clone()).or_default();
        match endpoints::read(slice) {
            Some(view) => slices.insert(name, view),
            None => slices.remove(&name),
        };
        Some(service)
    }

    /// An EndpointSlice is gone; returns its Service's key.
    pub fn delete_slice(&mut self, slice: &EndpointSlice) -> Option<ObjectKey> {
        let (service, name) = endpoints::owner(slice)?;
        if let Some(slices) = self.slices.get_mut(&service) {
            slices.remove(&name);
            if slices.is_empty() {
                self.slices.remove(&service);
            }
        }
        Some(service)
    }

    /// A Node was added or changed; returns the Services whose backends may follow it.
    pub fn apply_node(&mut self, node: &Node) -> BTreeSet<ObjectKey> {
        let Some(name) = node.metadata.name.clone() else {
            return BTreeSet::new();
        };
        let view = nodes::read(node);
        if self.nodes.get(&name) == Some(&view) {
            return BTreeSet::new();
        }
        self.nodes.insert(name, view);
        self.node_mode_services()
    }

    /// A Node is gone; returns the Services whose backends may follow it.
    pub fn delete_node(&mut self, name: &str) -> BTreeSet<ObjectKey> {
        if self.nodes.remove(name).is_none() {
            return BTreeSet::new();
        }
        self.node_mode_services()
    }

    /// A Secret was added or changed; returns the Services that name it.
    pub fn apply_secret(&mut self, secret: &Secret) -> BTreeSet<ObjectKey> {
        let Some(key) = ObjectKey::of(secret) else {
            return BTreeSet::new();
        };
        self.secrets.insert(key.clone(), secrets::read(secret));
        self.naming(&key)
    }

    /// A Secret cannot be read (`error`); returns the Services that name it.
    pub fn secret_unreadable(&mut self, key: &ObjectKey, error: &str) -> BTreeSet<ObjectKey> {
        self.secrets
            .insert(key.clone(), Err(format!("cannot be read: {error}")));
        self.naming(key)
    }

    /// A Secret is gone; returns the Services that name it.
    pub fn delete_secret(&mut self, key: &ObjectKey) -> BTreeSet<ObjectKey> {
        self.secrets.remove(key);
        self.naming(key)
    }

    /// The Secrets Gantry's Services name: the only ones Gantry reads.
    pub fn referenced_secrets(&self) -> BTreeSet<ObjectKey> {
        self.named_by
            .iter()
            .filter(|(_, naming)| {
                naming
                    .iter()
                    .any(|key| self.services.get(key).is_some_and(|e| e.role != Role::None))
            })
            .map(|(secret, _)| secret.clone())
            .collect()
    }

    /// Forgets Secrets no Service names any more.
    pub fn retain_secrets(&mut self, referenced: &BTreeSet<ObjectKey>) {
        self.secrets.retain(|key, _| referenced.contains(key));
    }

    /// The Services that name the Secret `secret`.
    pub fn referencing(&self, secret: &ObjectKey) -> BTreeSet<ObjectKey> {
        self.naming(secret)
    }

    fn naming(&self, secret: &ObjectKey) -> BTreeSet<ObjectKey> {
        self.named_by.get(secret).cloned().unwrap_or_default()
    }

    /// The load balancers that may send traffic to nodes.
    fn node_mode_services(&self) -> BTreeSet<ObjectKey> {
        let default = self.settings.backend_mode;
        self.services
            .iter()
            .filter(|(_, entry)| entry.role == Role::LoadBalancer)
            .filter(|(_, entry)| {
                entry.view.annotations.backends.unwrap_or(default) == BackendMode::Nodes
            })
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Every Service the index knows, whatever Gantry's role for it.
    pub fn keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.services.keys()
    }

    /// The Services Gantry has a role for.
    pub fn ours(&self) -> impl Iterator<Item = &ObjectKey> {
        self.services
            .iter()
            .filter(|(_, entry)| entry.role != Role::None)
            .map(|(key, _)| key)
    }

    /// What the Service `key` asks of Gantry, given the address allocated to it (needed by a
    /// load balancer; a NodePort Service is served on the node-facing address).
    pub fn translate(&self, key: &ObjectKey, allocated: Option<IpAddr>) -> Translation {
        let Some(entry) = self.services.get(key) else {
            return Translation::NotOurs;
        };
        let address = match entry.role {
            Role::None => return Translation::NotOurs,
            _ if entry.view.deleting => return Translation::Deleting,
            Role::LoadBalancer => allocated,
            Role::NodePort => self.settings.node_ports,
        };
        let Some(address) = address else {
            return Translation::NoAddress;
        };
        let secret = entry
            .view
            .annotations
            .tls_secret
            .as_deref()
            .map(|name| self.secrets.get(&ObjectKey::new(&key.namespace, name)));
        let inputs = Inputs {
            key,
            role: entry.role,
            view: &entry.view,
            address,
            mode: entry
                .view
                .annotations
                .backends
                .unwrap_or(self.settings.backend_mode),
            secret,
            slices: self
                .slices
                .get(key)
                .into_iter()
                .flat_map(|s| s.values())
                .collect(),
            nodes: self.nodes.values().collect(),
        };
        let mut problems = entry.problems.clone();
        let wanted = translate::translate(&inputs, &mut problems);
        Translation::Serve { wanted, problems }
    }

    /// Gantry's role for the Service `key` and the Service as last read, if the index has it.
    pub fn service(&self, key: &ObjectKey) -> Option<(Role, &ServiceView)> {
        self.services
            .get(key)
            .map(|entry| (entry.role, &entry.view))
    }

    /// After a relist of Services: forgets those not in `seen`; returns them.
    pub fn retain_services(&mut self, seen: &BTreeSet<ObjectKey>) -> BTreeSet<ObjectKey> {
        let gone: BTreeSet<ObjectKey> = self
            .services
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in &gone {
            self.remove_service(key);
        }
        gone
    }

    /// After a relist of EndpointSlices: forgets those not in `seen` (by Service and slice
    /// name); returns their Services.
    pub fn retain_slices(&mut self, seen: &BTreeSet<(ObjectKey, String)>) -> BTreeSet<ObjectKey> {
        let mut touched = BTreeSet::new();
        for (service, slices) in &mut self.slices {
            let before = slices.len();
            slices.retain(|name, _| seen.contains(&(service.clone(), name.clone())));
            if slices.len() != before {
                touched.insert(service.clone());
            }
        }
        self.slices.retain(|_, slices| !slices.is_empty());
        touched
    }

    /// After a relist of Nodes: forgets those not in `seen`; returns the Services whose
    /// backends may follow.
    pub fn retain_nodes(&mut self, seen: &BTreeSet<String>) -> BTreeSet<ObjectKey> {
        let before = self.nodes.len();
        self.nodes.retain(|name, _| seen.contains(name));
        if self.nodes.len() == before {
            return BTreeSet::new();
        }
        self.node_mode_services()
    }

    /// The Service `key` as last read, if Gantry knows it.
    pub fn view(&self, key: &ObjectKey) -> Option<&ServiceView> {
        self.services.get(key).map(|entry| &entry.view)
    }
}

/// The Secret a Service names (in its own namespace), if any.
fn secret_named(key: &ObjectKey, entry: &Entry) -> Option<ObjectKey> {
    let name = entry.view.annotations.tls_secret.as_deref()?;
    Some(ObjectKey::new(&key.namespace, name))
}
