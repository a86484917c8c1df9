//! How one watch's events fold into the index, the same for every watched kind: an object
//! applied or deleted touches the Services that use it, and a list (`Init` … `InitDone`, the
//! first one or one after a `410 Gone`) remembers what it saw so that, once complete, whatever
//! it did not see is forgotten: an object deleted while the watch was away goes too.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;

use crate::index::{endpoints, Index, ObjectKey};

/// A kind of object the controller watches, as the index takes it.
pub(super) trait Watched: Sized {
    /// What one watch covers: every object of the kind (`()`), or one named object.
    type Scope;
    /// What a list remembers of an object it saw.
    type Seen: Ord;

    /// Puts the object in the index: what a list remembers of it (`None` when the index
    /// does not keep it), and the Services it touches.
    fn apply(&self, index: &mut Index) -> (Option<Self::Seen>, BTreeSet<ObjectKey>);

    /// Takes the object out of the index: the Services it touched.
    fn delete(&self, scope: &Self::Scope, index: &mut Index) -> BTreeSet<ObjectKey>;

    /// A list of `scope` is complete and saw `seen`: forgets the rest, returns the Services
    /// that touches.
    fn listed(
        scope: &Self::Scope,
        index: &mut Index,
        seen: &BTreeSet<Self::Seen>,
    ) -> BTreeSet<ObjectKey>;
}

/// The list state of one watch.
pub(super) struct Relist<K: Watched> {
    scope: K::Scope,
    /// What the list under way has seen; `None` between lists.
    seen: Option<BTreeSet<K::Seen>>,
    /// A list has completed once.
    synced: bool,
}

impl<K: Watched> Relist<K> {
    /// A watch just started: its first list is under way (nothing of it is known yet).
    pub(super) fn new(scope: K::Scope) -> Self {
        Relist {
            scope,
            seen: Some(BTreeSet::new()),
            synced: false,
        }
    }

    /// Folds one event into `index`: the Services it touches.
    pub(super) fn fold(&mut self, index: &mut Index, event: Event<K>) -> BTreeSet<ObjectKey> {
        match event {
            Event::Init => {
                self.seen = Some(BTreeSet::new());
                BTreeSet::new()
            }
            Event::InitApply(object) | Event::Apply(object) => {
                let (seen, touched) = object.apply(index);
                if let (Some(list), Some(seen)) = (self.seen.as_mut(), seen) {
                    list.insert(seen);
                }
                touched
            }
            Event::Delete(object) => object.delete(&self.scope, index),
            Event::InitDone => {
                self.synced = true;
                match self.seen.take() {
                    Some(seen) => K::listed(&self.scope, index, &seen),
                    // The list was given up ([`Relist::give_up`]): nothing to forget by it.
                    None => BTreeSet::new(),
                }
            }
        }
    }

    /// Whether a list is under way.
    pub(super) fn listing(&self) -> bool {
        self.seen.is_some()
    }

    /// Whether a list has completed once.
    pub(super) fn synced(&self) -> bool {
        self.synced
    }

    /// Stops waiting for the list under way (its watch failed); `true` if one was.
    pub(super) fn give_up(&mut self) -> bool {
        self.seen.take().is_some()
    }
}

impl Watched for Service {
    type Scope = ();
    type Seen = ObjectKey;

    fn apply(&self, index: &mut Index) -> (Option<ObjectKey>, BTreeSet<ObjectKey>) {
        let key = index.apply_service(self);
        (key.clone(), key.into_iter().collect())
    }

    fn delete(&self, (): &(), index: &mut Index) -> BTreeSet<ObjectKey> {
        ObjectKey::of(self)
            .map(|key| index.delete_service(&key))
            .into_iter()
            .collect()
    }

    fn listed((): &(), index: &mut Index, seen: &BTreeSet<ObjectKey>) -> BTreeSet<ObjectKey> {
        index.retain_services(seen)
    }
}

impl Watched for EndpointSlice {
    type Scope = ();
    /// The Service a slice belongs to, and the slice's name.
    type Seen = (ObjectKey, String);

    fn apply(&self, index: &mut Index) -> (Option<Self::Seen>, BTreeSet<ObjectKey>) {
        let touched = index.apply_slice(self).into_iter().collect();
        (endpoints::owner(self), touched)
    }

    fn delete(&self, (): &(), index: &mut Index) -> BTreeSet<ObjectKey> {
        index.delete_slice(self).into_iter().collect()
    }

    fn listed((): &(), index: &mut Index, seen: &BTreeSet<Self::Seen>) -> BTreeSet<ObjectKey> {
        index.retain_slices(seen)
    }
}

impl Watched for Node {
    type Scope = ();
    /// Its name.
    type Seen = String;

    fn apply(&self, index: &mut Index) -> (Option<String>, BTreeSet<ObjectKey>) {
        (self.metadata.name.clone(), index.apply_node(self))
    }

    fn delete(&self, (): &(), index: &mut Index) -> BTreeSet<ObjectKey> {
        index.delete_node(self.metadata.name.as_deref().unwrap_or_default())
    }

    fn listed((): &(), index: &mut Index, seen: &BTreeSet<String>) -> BTreeSet<ObjectKey> {
        index.retain_nodes(seen)
    }
}

/// A Secret's watch covers the one Secret a Service names.
impl Watched for Secret {
    type Scope = ObjectKey;
    type Seen = ObjectKey;

    fn apply(&self, index: &mut Index) -> (Option<ObjectKey>, BTreeSet<ObjectKey>) {
        (ObjectKey::of(self), index.apply_secret(self))
    }

    fn delete(&self, key: &ObjectKey, index: &mut Index) -> BTreeSet<ObjectKey> {
        index.delete_secret(key)
    }

    fn listed(
        key: &ObjectKey,
        index: &mut Index,
        seen: &BTreeSet<ObjectKey>,
    ) -> BTreeSet<ObjectKey> {
        if seen.contains(key) {
            index.referencing(key)
        } else {
            index.delete_secret(key)
        }
    }
}
