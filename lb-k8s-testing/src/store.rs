//! The test API server's storage: objects by kind, namespace and name as JSON, one
//! resourceVersion counter for all of them (as etcd's revision), and a log of changes that
//! watches replay from a resourceVersion and then follow. Compacting the log makes an older
//! resourceVersion expire, so a watch from it gets `410 Gone` and the client must list again.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

/// A kind of object the server keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1` Service.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// `v1` Node.
    Node,
    /// `v1` Secret.
    Secret,
    /// `events.k8s.io/v1` Event.
    Event,
    /// `coordination.k8s.io/v1` Lease.
    Lease,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 6] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::Secret,
        Kind::Event,
        Kind::Lease,
    ];

    /// `apiVersion`.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node | Kind::Secret => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::Event => "events.k8s.io/v1",
            Kind::Lease => "coordination.k8s.io/v1",
        }
    }

    /// `kind`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::Secret => "Secret",
            Kind::Event => "Event",
            Kind::Lease => "Lease",
        }
    }

    /// The kind with its API group, as the API server names it in errors
    /// (`Lease.coordination.k8s.io`; core kinds without a group).
    pub fn qualified_name(self) -> String {
        match self.api_version().split_once('/') {
            Some((group, _)) => format!("{}.{group}", self.name()),
            None => self.name().to_owned(),
        }
    }

    /// The resource's plural, as in paths.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
            Kind::Secret => "secrets",
            Kind::Event => "events",
            Kind::Lease => "leases",
        }
    }

    /// The path prefix of its API group: `/api/v1` or `/apis/GROUP/VERSION`.
    pub fn prefix(self) -> String {
        match self.api_version() {
            "v1" => "/api/v1".to_owned(),
            group => format!("/apis/{group}"),
        }
    }

    /// Whether its objects live in namespaces.
    pub fn namespaced(self) -> bool {
        self != Kind::Node
    }
}

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Gone.
    Deleted,
}

impl ChangeType {
    /// As watch events name it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }
}

/// One change, at one resourceVersion.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    /// The resourceVersion it made.
    pub revision: u64,
    /// The object's kind.
    pub kind: Kind,
    /// The object's namespace (`""` for cluster-scoped).
    pub namespace: String,
    /// What happened.
    pub change: ChangeType,
    /// The object after it, as JSON; for a deletion, the object as it was last with the
    /// resourceVersion of its deletion (as a real API server's `DELETED` event carries it).
    pub object: Value,
    /// The object before a modification or a deletion: a watch with a selector turns a
    /// modification that moves an object into or out of it into an addition or a deletion,
    /// and a list at an older resourceVersion puts it back.
    pub previous: Option<Value>,
}

/// Which part of a list to answer.
pub(crate) struct Page<'a> {
    /// Only objects after this (namespace, name).
    pub after: Option<(&'a str, &'a str)>,
    /// Only objects this keeps (a selector).
    pub keep: &'a dyn Fn(&Value) -> bool,
    /// At most this many.
    pub limit: usize,
}

/// `(kind, namespace, name)`.
pub type ObjectId = (Kind, String, String);

/// Every object, by id.
pub(crate) type Objects = BTreeMap<ObjectId, Value>;

/// An API error: its HTTP status, its reason and message, as a `Status` object carries them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status and `Status.code`.
    pub code: u16,
    /// `Status.reason`: `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
}

impl ApiError {
    /// 404.
    pub fn not_found(id: &ObjectId) -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{}\" not found", id.0.plural(), id.2),
        }
    }

    /// 422 with `message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError {
            code: 422,
            reason: "Invalid",
            message: message.into(),
        }
    }

    /// 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
        }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

struct Inner {
    revision: u64,
    objects: Objects,
    log: VecDeque<Change>,
    /// Watches from a resourceVersion below this get `410 Gone`.
    oldest: u64,
    uid: u64,
}

impl Inner {
    /// The objects of `kind` (in `namespace`, when given).
    fn of_kind(&self, kind: Kind, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((k, ns, _), _)| *k == kind && namespace.is_none_or(|n| n == ns))
            .map(|(_, object)| object.clone())
            .collect()
    }
}

/// All objects and their history.
pub(crate) struct Store {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch with `410 Gone`.
    expiry: watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            inner: Mutex::new(Inner {
                revision: 1,
                objects: BTreeMap::new(),
                log: VecDeque::new(),
                oldest: 1,
                uid: 0,
            }),
            changes: broadcast::channel(4096).0,
            expiry: watch::channel(0).0,
        }
    }
}

/// What a write does to an object.
pub(crate) enum Write {
    /// Store this (create or replace).
    Put(Value),
    /// Remove it.
    Remove,
    /// Nothing: no new resourceVersion, no event.
    Keep,
}

/// What a write did.
#[derive(Debug)]
pub(crate) enum Written {
    /// The object as stored.
    Stored(Value),
    /// The object removed, as it was last.
    Removed(Value),
    /// Nothing changed; the object as it is.
    Unchanged(Value),
}

impl Written {
    /// The object the write answers with.
    pub(crate) fn into_object(self) -> Value {
        match self {
            Written::Stored(v) | Written::Removed(v) | Written::Unchanged(v) => v,
        }
    }
}

/// Where a watch starts: the changes after a resourceVersion, then the live ones.
pub(crate) struct WatchStart {
    /// Changes already made after the watch's resourceVersion, in order.
    pub backlog: Vec<Change>,
    /// Changes to come.
    pub live: broadcast::Receiver<Change>,
}

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The oldest resourceVersion a watch may still start from.
    pub(crate) fn oldest(&self) -> u64 {
        self.lock().oldest
    }

    /// The object `id`.
    pub(crate) fn get(&self, id: &ObjectId) -> Option<Value> {
        self.lock().objects.get(id).cloned()
    }

    /// The objects of `kind` (in `namespace`, when given), with the resourceVersion they are
    /// current at.
    pub(crate) fn list(&self, kind: Kind, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        (inner.of_kind(kind, namespace), inner.revision)
    }

    /// One page of the objects of `kind` (in `namespace`, when given) as they were at
    /// `revision` (now, when `None`): those after `page.after` (namespace, name) that `page`
    /// keeps, by namespace and name, at most `page.limit`; with that resourceVersion and
    /// whether more follow. What etcd answers for a read at a revision, so every page of one
    /// paged list is cut from one snapshot; only the page is copied. `Err` with the oldest
    /// resourceVersion still known when the history no longer reaches back.
    pub(crate) fn list_at(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        revision: Option<u64>,
        page: &Page<'_>,
    ) -> Result<(Vec<Value>, u64, bool), u64> {
        let inner = self.lock();
        let revision = revision.unwrap_or(inner.revision);
        if revision < inner.oldest {
            return Err(inner.oldest);
        }
        let wanted = |k: Kind, ns: &str, name: &str| {
            k == kind
                && namespace.is_none_or(|n| n == ns)
                && page
                    .after
                    .is_none_or(|(a_ns, a_name)| (ns, name) > (a_ns, a_name))
        };
        let mut objects: BTreeMap<(&str, &str), &Value> = inner
            .objects
            .iter()
            .filter(|((k, ns, name), _)| wanted(*k, ns, name))
            .map(|((_, ns, name), object)| ((ns.as_str(), name.as_str()), object))
            .collect();
        // Undo what came after `revision`, newest first.
        for change in inner.log.iter().rev() {
            if change.revision <= revision {
                break;
            }
            let name = change.object["metadata"]["name"]
                .as_str()
                .unwrap_or_default();
            if !wanted(change.kind, &change.namespace, name) {
                continue;
            }
            let key = (change.namespace.as_str(), name);
            match (&change.change, &change.previous) {
                (ChangeType::Added, _) => {
                    objects.remove(&key);
                }
                (ChangeType::Modified | ChangeType::Deleted, Some(previous)) => {
                    objects.insert(key, previous);
                }
                (_, None) => {}
            }
        }
        let mut kept = objects.into_values().filter(|object| (page.keep)(object));
        let items: Vec<Value> = kept.by_ref().take(page.limit).cloned().collect();
        let more = kept.next().is_some();
        Ok((items, revision, more))
    }

    /// Runs `change` on the object `id` under the store's lock and records what it did.
    /// `change` gets the current object (`None` if there is none) and every object, and says
    /// what to do; a new or changed object gets its resourceVersion (and, when created, a uid
    /// and creationTimestamp) here.
    pub(crate) fn write(
        &self,
        id: &ObjectId,
        change: impl FnOnce(Option<&Value>, &Objects) -> Result<Write, ApiError>,
    ) -> Result<Written, ApiError> {
        let mut inner = self.lock();
        let current = inner.objects.get(id).cloned();
        let previous = current.clone();
        let (change_type, mut object) = match (change(current.as_ref(), &inner.objects)?, current) {
            (Write::Keep, Some(old)) => return Ok(Written::Unchanged(old)),
            (Write::Keep | Write::Remove, None) => return Err(ApiError::not_found(id)),
            (Write::Remove, Some(old)) => {
                inner.objects.remove(id);
                (ChangeType::Deleted, old)
            }
            (Write::Put(object), Some(_)) => (ChangeType::Modified, object),
            (Write::Put(mut object), None) => {
                inner.uid += 1;
                let uid = format!("00000000-0000-4000-8000-{:012x}", inner.uid);
                object["metadata"]["uid"] = json!(uid);
                object["metadata"]["creationTimestamp"] = json!(crate::now_rfc3339());
                (ChangeType::Added, object)
            }
        };
        object["apiVersion"] = json!(id.0.api_version());
        object["kind"] = json!(id.0.name());
        inner.revision += 1;
        let revision = inner.revision;
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        if change_type != ChangeType::Deleted {
            inner.objects.insert(id.clone(), object.clone());
        }
        let change = Change {
            revision,
            kind: id.0,
            namespace: id.1.clone(),
            change: change_type,
            object: object.clone(),
            previous,
        };
        inner.log.push_back(change.clone());
        // Under the lock, so a watch replaying the log and then following sees each change
        // exactly once.
        let _ = self.changes.send(change);
        Ok(match change_type {
            ChangeType::Deleted => Written::Removed(object),
            _ => Written::Stored(object),
        })
    }

    /// Where a watch of `kind` from `revision` starts; `Err` when that resourceVersion has
    /// expired (the client must list again).
    pub(crate) fn watch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        revision: u64,
    ) -> Result<WatchStart, u64> {
        let inner = self.lock();
        if revision < inner.oldest {
            return Err(inner.oldest);
        }
        let live = self.changes.subscribe();
        let backlog = inner
            .log
            .iter()
            .filter(|c| {
                c.revision > revision
                    && c.kind == kind
                    && namespace.is_none_or(|n| n == c.namespace)
            })
            .cloned()
            .collect();
        Ok(WatchStart { backlog, live })
    }

    /// A watch from now: the objects of `kind` as they are (a watch without a resourceVersion
    /// starts with each as added), the resourceVersion they are current at, and what follows.
    pub(crate) fn watch_from_now(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> (Vec<Value>, u64, broadcast::Receiver<Change>) {
        let inner = self.lock();
        let live = self.changes.subscribe();
        (inner.of_kind(kind, namespace), inner.revision, live)
    }

    /// Ends every open watch with a `410 Gone` error event, as a real API server does when a
    /// watcher falls too far behind; clients must list again.
    pub(crate) fn expire_watches(&self) {
        self.compact();
        self.expiry.send_modify(|n| *n += 1);
    }

    /// Changes when open watches must end with `410 Gone`.
    pub(crate) fn expiry(&self) -> watch::Receiver<u64> {
        self.expiry.subscribe()
    }

    /// Forgets the history: a watch from any resourceVersion before now gets `410 Gone`.
    pub(crate) fn compact(&self) {
        let mut inner = self.lock();
        inner.log.clear();
        inner.oldest = inner.revision;
    }
}
