//! How the Kubernetes source works: which Services are Gantry's, where their backends are,
//! and where NodePort Services are served, from the `kubernetes:` section of the model.

use std::net::IpAddr;

pub use lb_config::KubeBackends as BackendMode;
use lb_config::{Kubernetes, DEFAULT_LOAD_BALANCER_CLASS};

/// The class Gantry answers to when none is configured.
pub const DEFAULT_CLASS: &str = DEFAULT_LOAD_BALANCER_CLASS;

/// What the index needs of the source's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The `spec.loadBalancerClass` Gantry answers to.
    pub class: String,
    /// Whether Gantry also takes LoadBalancer Services with no class: the cluster's default
    /// load-balancer provider.
    pub default_class: bool,
    /// Backends of LoadBalancer Services unless a Service's annotation says otherwise.
    pub backend_mode: BackendMode,
    /// The address NodePort Services are served on, at their `nodePort`; `None`: NodePort
    /// Services are not served.
    pub node_ports: Option<IpAddr>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            class: DEFAULT_CLASS.to_owned(),
            default_class: false,
            backend_mode: BackendMode::Pods,
            node_ports: None,
        }
    }
}

impl Settings {
    /// The settings of the `kubernetes:` section.
    pub fn of(section: &Kubernetes) -> Self {
        Settings {
            class: section.load_balancer_class.clone(),
            default_class: section.default_provider,
            backend_mode: section.backends,
            node_ports: section.node_port_address,
        }
    }
}
