//! What the Kubernetes source needs of the appliance it feeds: the same checks the file's
//! services get, and a way to serve a set of services beside the file's. The appliance
//! (`gantry`) implements it; tests can implement it without sockets.

use std::collections::BTreeMap;
use std::sync::Arc;

use lb_config::file::ServiceFile;
use lb_config::model::Service;
use lb_config::{Admission, Admitted, FieldPath, Problems};

/// A Kubernetes Service offered to the data plane: configurations to try, in order (what
/// the object asks for now, then what was served for it last), the first that clashes with
/// nothing served wins. A configuration is the services of the model the object
/// becomes: one, or one per address family for a dual-stack Service.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Where it comes from (`Service default/web`).
    pub origin: FieldPath,
    /// Its configurations, best first.
    pub alternatives: Vec<Vec<Arc<Service>>>,
}

/// What changed among the Kubernetes services since the last publish.
#[derive(Clone, Debug, Default)]
pub struct Update {
    /// Objects to serve, in the order offered (those that serve first, so a new Service never
    /// takes what one that serves holds): the new and the changed, and those still waiting
    /// for what they ask (refused, or served by their last good configuration).
    pub offered: Vec<Candidate>,
    /// Objects whose services go.
    pub withdrawn: Vec<FieldPath>,
    /// Serve `offered` and nothing else of this source (the first publish of a run replaces
    /// whatever an earlier run served).
    pub replace: bool,
}

impl Candidate {
    /// Offers it to `admitted` (see [`Admitted::admit`]).
    pub fn offer(&self, admitted: &mut Admitted) -> Admission {
        admitted.admit(self.origin.clone(), self.alternatives.clone())
    }
}

/// What each origin an update names held before it, by origin.
pub type Held = BTreeMap<FieldPath, Option<Vec<Arc<Service>>>>;

impl Update {
    /// Takes every object the update names (withdrawn or offered) out of `admitted`, so the
    /// offered ones compete afresh; returns what each held.
    pub fn withdraw(&self, admitted: &mut Admitted) -> Held {
        let mut held = Held::new();
        for origin in self
            .withdrawn
            .iter()
            .chain(self.offered.iter().map(|c| &c.origin))
        {
            if !held.contains_key(origin) {
                let services = admitted.withdraw(origin);
                held.insert(origin.clone(), services);
            }
        }
        held
    }
}

/// The data plane as the Kubernetes source sees it.
#[async_trait::async_trait]
pub trait DataPlane: Send + Sync + 'static {
    /// Checks a service built from an object against the appliance's settings (defaults,
    /// plugins, limits), exactly as a service of the file is checked.
    fn check(&self, origin: &FieldPath, spec: ServiceFile) -> Result<Service, Problems>;

    /// Applies `update` to the Kubernetes services served beside the file's, at a cost that
    /// grows with the update, not with everything served. One outcome per offered candidate,
    /// in order, as [`lb_config::Admitted::admit`] gives it (a candidate whose listener cannot
    /// be set up is [`Admission::Refused`] with why); `Err` when nothing could be applied at
    /// all (the previous services keep serving).
    async fn publish(&self, update: Update) -> Result<Vec<Admission>, String>;
}
