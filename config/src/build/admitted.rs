//! Another source's services beside a builder's, kept from one update to the next. What each
//! of them holds (its name, its addresses and ports) stays indexed with what the builder's
//! services hold, so an update admits and withdraws only the services it names, at a cost that
//! does not grow with the others: ten thousand Kubernetes Services, one of which changed, cost
//! one admission.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::conflicts::Taken;
use super::Admission;
use crate::model::Service;
use crate::problems::{FieldPath, Problems};

/// The services admitted beside a builder's, by origin, with everything they hold.
#[derive(Clone)]
pub struct Admitted {
    taken: Taken,
    services: BTreeMap<FieldPath, Vec<Arc<Service>>>,
}

impl Admitted {
    /// None yet, beside what `taken` holds (the builder's services and the admin listener).
    pub(super) fn new(taken: Taken) -> Self {
        Admitted {
            taken,
            services: BTreeMap::new(),
        }
    }

    /// Offers `origin`'s alternatives, tried in order (say its wanted configuration, then its
    /// last good one). An alternative is a group of services admitted together or not at all
    /// (a dual-stack Service is one per address family): the first whose services clash with
    /// nothing held is admitted. What `origin` held before is withdrawn first.
    pub fn admit(&mut self, origin: FieldPath, alternatives: Vec<Vec<Arc<Service>>>) -> Admission {
        self.withdraw(&origin);
        // What the object asks for is what its owner must fix: the first alternative's
        // clashes are the ones told.
        let mut first_clashes = None;
        for (alternative, group) in alternatives.into_iter().enumerate() {
            let mut clashes = Problems::default();
            for service in &group {
                clashes.extend(self.taken.clashes(&origin, service));
            }
            if clashes.is_empty() {
                let mut none = Problems::default();
                for service in &group {
                    self.taken.claim(&origin, service, &mut none);
                }
                self.services.insert(origin, group);
                return Admission::Admitted {
                    alternative,
                    passed_over: first_clashes.unwrap_or_default(),
                };
            }
            first_clashes.get_or_insert(clashes);
        }
        Admission::Refused(first_clashes.unwrap_or_default())
    }

    /// Takes `origin`'s services out and gives back what they held; returns them.
    pub fn withdraw(&mut self, origin: &FieldPath) -> Option<Vec<Arc<Service>>> {
        let services = self.services.remove(origin)?;
        for service in &services {
            self.taken.release(origin, service);
        }
        Some(services)
    }

    /// The services admitted for `origin`.
    pub fn get(&self, origin: &FieldPath) -> Option<&[Arc<Service>]> {
        self.services.get(origin).map(Vec::as_slice)
    }

    /// Every origin admitted, with its services, by origin.
    pub fn iter(&self) -> impl Iterator<Item = (&FieldPath, &[Arc<Service>])> {
        self.services
            .iter()
            .map(|(origin, services)| (origin, services.as_slice()))
    }

    /// How many origins are admitted.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}
