//! What the Kubernetes source needs of the appliance it feeds: the same checks the file's
//! services get, and a way to serve a set of services beside the file's. `lb-core`
//! implements it; tests can implement it without sockets.

use std::sync::Arc;

use lb_config::file::ServiceFile;
use lb_config::model::Service;
use lb_config::{Admission, FieldPath, Problems};

/// A Kubernetes Service offered to the data plane: configurations to try, in order (what
/// the object asks for now, then what was served for it last), the first that clashes with
/// nothing served before it wins. A configuration is the services of the model the object
/// becomes: one, or one per address family for a dual-stack Service.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Where it comes from (`Service default/web`).
    pub origin: FieldPath,
    /// Its configurations, best first.
    pub alternatives: Vec<Vec<Arc<Service>>>,
}

/// The data plane as the Kubernetes source sees it.
#[async_trait::async_trait]
pub trait DataPlane: Send + Sync + 'static {
    /// Checks a service built from an object against the appliance's settings (defaults,
    /// plugins, limits), exactly as a service of the file is checked.
    fn check(&self, origin: &FieldPath, spec: ServiceFile) -> Result<Service, Problems>;

    /// Serves exactly these Kubernetes services beside the file's (whatever was served for
    /// objects not listed goes). One outcome per candidate, in order, as
    /// [`lb_config::ModelBuilder::admit`] gives it (a candidate whose listener cannot be set
    /// up is [`Admission::Refused`] with why); `Err` when nothing could be applied at all (the
    /// previous services keep serving).
    async fn publish(&self, candidates: Vec<Candidate>) -> Result<Vec<Admission>, String>;
}
