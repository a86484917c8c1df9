//! How the Kubernetes source works: which Services are Gantry's, where their backends are,
//! and where NodePort Services are served. (The address pools are the allocator's.)

use std::net::IpAddr;

/// The class Gantry answers to when none is configured.
pub const DEFAULT_CLASS: &str = "gantry.io/lb";

/// Where a LoadBalancer Service's traffic goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendMode {
    /// Straight to the Service's pods, from its EndpointSlices.
    Pods,
    /// To every eligible node's `nodePort`, kube-proxy forwarding on.
    Nodes,
}

/// The Kubernetes source's settings.
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
