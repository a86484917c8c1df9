//! From a spec to the model the runtime uses: defaults applied, ranges checked, references
//! resolved, cross-field and cross-service conflicts found. Every problem is collected with its
//! field path; a model is produced only when there are none.
//!
//! One [`ModelBuilder`] serves every source: the file loader hands it the file's sections and
//! services, and another source (Kubernetes) hands it services it built from objects, with a
//! path rooted at the object ([`FieldPath::object`]). A source that must keep an object's last
//! good configuration checks it alone first with [`ModelBuilder::check_service`].

mod admitted;
mod backends;
mod conflicts;
mod kubernetes;
mod leader_election;
mod policy;
mod routing;
mod runtime;
mod service;
mod settings;
mod tls;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;

use crate::file::{FileConfig, ServiceFile};
use crate::lenient::Lenient;
use crate::model::{
    Admin, Kubernetes, Model, PluginLimits, PortSettings, Routing, Runtime, Service, ServiceSource,
};
use crate::problems::{FieldPath, Problems};

pub use admitted::Admitted;
pub use kubernetes::{
    parse_range, DEFAULT_BATCH_DELAY, DEFAULT_LOAD_BALANCER_CLASS, MAX_BATCH_DELAY, MAX_POOLS,
    MAX_POOL_ENTRIES,
};
pub use policy::{
    BUILTIN_AFFINITIES, BUILTIN_BALANCERS, BUILTIN_HEALTH, DEFAULT_AFFINITY_ENTRIES,
    DEFAULT_BALANCER,
};
pub use routing::{
    DEFAULT_BIRD_DIRECTORY, DEFAULT_BIRD_SOCKET, DEFAULT_KEEPALIVED_DIRECTORY, MAX_PEERS,
};
pub use runtime::DEFAULT_ADMIN_LISTEN;
pub use settings::{builtin_port_settings, MAX_WEIGHT};

use policy::Plugins;

/// Builds a [`Model`] from the appliance's settings and services from any source. A builder
/// holding the file's sections and services is kept as the starting point another source's
/// services are added to (it is cloned for each new model).
#[derive(Clone)]
pub struct ModelBuilder {
    admin: Admin,
    runtime: Runtime,
    plugin_limits: PluginLimits,
    defaults: PortSettings,
    plugins: Plugins,
    kubernetes: Option<Kubernetes>,
    routing: Option<Routing>,
    base_dir: PathBuf,
    /// Accepted services, in the order they were added, with where each came from.
    services: Vec<(FieldPath, Arc<Service>)>,
    problems: Problems,
}

/// What became of a candidate offered to [`ModelBuilder::admit`]: the one result every
/// source and the Kubernetes reporter share, so a clash is never lost on the way.
#[derive(Clone, Debug, PartialEq)]
pub enum Admission {
    /// Added with this alternative (0: the first), after the first was passed over for these
    /// clashes (none when it is the first): an object whose new configuration clashes keeps
    /// serving its old one, and the clash is still reported.
    Admitted {
        /// The index of the alternative added.
        alternative: usize,
        /// Why the first alternative was not added (empty when it was).
        passed_over: Problems,
    },
    /// Not added: every alternative clashes with what was added before (or, from a data
    /// plane, could not be set up).
    Refused(Problems),
}

impl Admission {
    /// The clashes to report: empty only for a first alternative added cleanly.
    pub fn clashes(&self) -> &Problems {
        match self {
            Admission::Admitted { passed_over, .. } => passed_over,
            Admission::Refused(problems) => problems,
        }
    }
}

impl ModelBuilder {
    /// A builder with the appliance-wide sections of `file` (admin, runtime, defaults,
    /// plugins, plugin limits) and its services; relative file names resolve against
    /// `base_dir`.
    pub fn from_file(file: FileConfig, base_dir: &Path) -> Self {
        let mut problems = Problems::default();
        let root = FieldPath::root();
        let admin = runtime::build_admin(file.admin, base_dir, &root.field("admin"), &mut problems);
        let runtime = runtime::build_runtime(
            file.runtime,
            base_dir,
            &root.field("runtime"),
            &mut problems,
        );
        let defaults_path = root.field("defaults");
        let defaults = match take(file.defaults, &defaults_path, &mut problems) {
            Some(overrides) => settings::apply_settings(
                &builtin_port_settings(),
                &overrides,
                &defaults_path,
                &mut problems,
            ),
            None => builtin_port_settings(),
        };
        let plugins = policy::build_plugins(
            file.plugins,
            base_dir,
            &root.field("plugins"),
            &mut problems,
        );
        let limits_path = root.field("plugin_limits");
        let plugin_limits = runtime::build_plugin_limits(
            take(file.plugin_limits, &limits_path, &mut problems),
            &limits_path,
            &mut problems,
        );
        let kubernetes = kubernetes::build_kubernetes(
            file.kubernetes,
            base_dir,
            &root.field("kubernetes"),
            &mut problems,
        );
        let routing = routing::build_routing(
            file.routing,
            kubernetes.as_ref(),
            base_dir,
            &root.field("routing"),
            &mut problems,
        );
        let mut builder = ModelBuilder {
            admin,
            runtime,
            plugin_limits,
            defaults,
            plugins,
            kubernetes,
            routing,
            base_dir: base_dir.to_owned(),
            services: Vec::new(),
            problems,
        };
        let services = root.field("services");
        for (i, item) in file.services.into_iter().enumerate() {
            let path = services.index(i);
            let mut problems = Problems::default();
            if let Some(spec) = take(Some(item), &path, &mut problems) {
                builder.add_service(path, spec);
            }
            builder.problems.extend(problems);
        }
        builder
    }

    /// Checks one service against the appliance's settings, alone: the service it becomes, or
    /// every problem with it (paths under `origin`). Nothing is added.
    pub fn check_service(
        &self,
        origin: &FieldPath,
        spec: ServiceFile,
    ) -> Result<Service, Problems> {
        let mut problems = Problems::default();
        match self.build_service(origin, spec, &mut problems) {
            Some(service) if problems.is_empty() => Ok(service),
            _ => Err(problems),
        }
    }

    /// Adds a service, or keeps its problems for [`ModelBuilder::finish`]. A service with
    /// problems in some of its ports still takes part in the checks between services, so
    /// one pass reports everything.
    pub fn add_service(&mut self, origin: FieldPath, spec: ServiceFile) {
        let mut problems = Problems::default();
        if let Some(service) = self.build_service(&origin, spec, &mut problems) {
            self.insert(origin, service);
        }
        self.problems.extend(problems);
    }

    fn build_service(
        &self,
        origin: &FieldPath,
        spec: ServiceFile,
        problems: &mut Problems,
    ) -> Option<Service> {
        let shared = service::Shared {
            defaults: &self.defaults,
            base_dir: &self.base_dir,
            plugins: &self.plugins,
        };
        service::build_service(spec, &shared, origin, problems)
    }

    /// Adds an already checked service, such as one kept from an earlier model.
    pub fn insert(&mut self, origin: FieldPath, service: Service) {
        self.services.push((origin, Arc::new(service)));
    }

    /// What the builder's services and the admin listener hold, as the starting point of
    /// another source's services kept beside them ([`Admitted`]).
    pub fn admitted(&self) -> Admitted {
        let mut taken = conflicts::Taken::new(&self.admin);
        let mut ignored = Problems::default();
        for (origin, service) in &self.services {
            taken.claim(origin, service, &mut ignored);
        }
        Admitted::new(taken)
    }

    /// Adds services of another source, each candidate given as alternatives tried in order
    /// (see [`Admitted::admit`]). Returns what became of each candidate, in order.
    pub fn admit(
        &mut self,
        candidates: Vec<(FieldPath, Vec<Vec<Arc<Service>>>)>,
    ) -> Vec<Admission> {
        let mut admitted = self.admitted();
        let outcomes = candidates
            .into_iter()
            .map(|(origin, alternatives)| admitted.admit(origin, alternatives))
            .collect();
        self.add_admitted(&admitted);
        outcomes
    }

    /// Adds the services `admitted` holds (admitted beside this builder's).
    pub fn add_admitted(&mut self, admitted: &Admitted) {
        for (origin, services) in admitted.iter() {
            for service in services {
                self.services.push((origin.clone(), Arc::clone(service)));
            }
        }
    }

    /// `runtime.workers`, read before the runtime starts.
    pub fn workers(&self) -> Option<usize> {
        self.runtime.workers
    }

    /// The `kubernetes:` section, when there is one.
    pub fn kubernetes(&self) -> Option<&Kubernetes> {
        self.kubernetes.as_ref()
    }

    /// Every problem found so far (in the sections and the services added).
    pub fn problems(&self) -> &Problems {
        &self.problems
    }

    /// The model, or every problem found: in the sections, in each service, and between
    /// services (a name used twice, a port bound twice).
    pub fn finish(self) -> Result<Model, Problems> {
        let ModelBuilder {
            admin,
            runtime,
            plugin_limits,
            services,
            kubernetes,
            routing,
            mut problems,
            ..
        } = self;
        let services = conflicts::check_services(&admin, services, &mut problems);
        if let Some(kubernetes) = &kubernetes {
            let statics = services
                .iter()
                .filter(|(_, service)| service.source == ServiceSource::File)
                .map(|(origin, service)| (origin.field("address"), service.address));
            let admin_ip = (
                FieldPath::root().field("admin").field("listen"),
                admin.listen.ip(),
            );
            kubernetes::check_outside_pools(kubernetes, statics.chain([admin_ip]), &mut problems);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Model {
            admin,
            runtime,
            plugin_limits,
            services: services
                .into_iter()
                .map(|(_, service)| (service.name.clone(), service))
                .collect::<BTreeMap<_, _>>(),
            kubernetes,
            routing,
        })
    }
}

/// Unwraps a lenient section, reporting its parse error at its path.
fn take<T>(item: Option<Lenient<T>>, path: &FieldPath, problems: &mut Problems) -> Option<T> {
    match item? {
        Lenient::Parsed(value) => Some(value),
        Lenient::Invalid {
            path: inner,
            message,
        } => {
            problems.push_nested(path, &inner, &message);
            None
        }
    }
}

/// A lenient section borrowed: `Some` when present and parsed.
fn lenient_ref<'a, T>(
    item: &'a Option<Lenient<T>>,
    path: &FieldPath,
    p: &mut Problems,
) -> Option<&'a T> {
    match item.as_ref()? {
        Lenient::Parsed(value) => Some(value),
        Lenient::Invalid {
            path: inner,
            message,
        } => {
            p.push_nested(path, inner, message);
            None
        }
    }
}

fn parse_socket_addr(text: &str, path: &FieldPath, p: &mut Problems) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            p.push(
                path,
                format!("`{text}` is not ip:port (e.g. 10.0.0.7:8080 or [fd00::7]:8080; host names are not resolved)"),
            );
            None
        }
    }
}

fn parse_net(text: &str, path: &FieldPath, p: &mut Problems) -> Option<IpNet> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net.trunc());
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    p.push(
        path,
        format!("`{text}` is not an IP address or CIDR (e.g. 10.0.0.0/8)"),
    );
    None
}

fn is_valid_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}
