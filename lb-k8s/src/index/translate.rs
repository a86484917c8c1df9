//! A Service Gantry serves, as a service of the model: a `ServiceFile` spec the same
//! `ModelBuilder` checks as the file's, rooted at the object (`Service default/shop`).
//!
//! - Its address is the one allocated to it (a LoadBalancer), or the node-facing address (a
//!   NodePort Service, served at each port's `nodePort`).
//! - A TCP port becomes a `tcp` port; a port Gantry cannot serve yet (UDP, SCTP) is reported
//!   with a port error and left out.
//! - Backends are the pods of the port ([`super::endpoints`]), or, in node mode, every
//!   eligible node at the port's `nodePort`, health-checked where kube-proxy tells it:
//!   `healthCheckNodePort` for `externalTrafficPolicy: Local` (only nodes with local ready
//!   endpoints answer 200), kube-proxy's own port 10256 otherwise. A port without a node port
//!   (`allocateLoadBalancerNodePorts: false`) goes to its pods.
//! - `sessionAffinity: ClientIP` becomes the client-IP affinity plugin with the Service's
//!   timeout; source ranges become the port's `source_ranges`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use lb_config::file::{
    AffinityFile, BackendFile, HealthFile, PortFile, PortSettingsFile, ProtocolFile, ServiceFile,
};
use lb_config::{Backend, Lenient};

use super::endpoints::{self, Family, SliceView};
use super::nodes::NodeView;
use super::service::{PortView, Role, ServiceView, Transport};
use super::ObjectKey;
use crate::settings::BackendMode;

/// kube-proxy's health port on every node (`/healthz`), for `externalTrafficPolicy: Cluster`.
pub const KUBE_PROXY_HEALTH_PORT: u16 = 10256;

/// The error a port's status carries when Gantry does not serve it.
pub const UNSUPPORTED_PROTOCOL: &str = "gantry.io/UnsupportedProtocol";

/// The error of a NodePort Service port that has no node port.
pub const NO_NODE_PORT: &str = "gantry.io/NoNodePort";

/// What a Service port became.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortOutcome {
    /// The Service's port.
    pub port: u16,
    /// Its protocol, as the API writes it.
    pub protocol: String,
    /// Why it is not served; `None` when it is.
    pub error: Option<&'static str>,
}

/// A Service as Gantry serves it.
#[derive(Debug)]
pub struct Wanted {
    /// Load balancer or node ports.
    pub role: Role,
    /// The service for the model.
    pub spec: ServiceFile,
    /// Each Service port, served or with its error, in order.
    pub ports: Vec<PortOutcome>,
}

/// What the translation needs besides the Service.
pub struct Inputs<'a> {
    /// The Service.
    pub key: &'a ObjectKey,
    /// Gantry's role for it.
    pub role: Role,
    /// Its spec and status, as read.
    pub view: &'a ServiceView,
    /// Its address: allocated, or the node-facing one.
    pub address: IpAddr,
    /// Where its traffic goes when it is a load balancer.
    pub mode: BackendMode,
    /// Its EndpointSlices.
    pub slices: Vec<&'a SliceView>,
    /// Every node.
    pub nodes: Vec<&'a NodeView>,
}

/// The Service of `inputs` as a service of the model.
pub fn translate(inputs: &Inputs<'_>) -> Wanted {
    let family = Family::of(inputs.address);
    let mut ports = Vec::new();
    let mut outcomes = Vec::new();
    for port in &inputs.view.ports {
        let mut outcome = PortOutcome {
            port: port.port,
            protocol: port.transport.as_str().to_owned(),
            error: None,
        };
        if port.transport != Transport::Tcp {
            outcome.error = Some(UNSUPPORTED_PROTOCOL);
        } else {
            match translate_port(inputs, port, family) {
                Some(file) => ports.push(Lenient::Parsed(file)),
                None => outcome.error = Some(NO_NODE_PORT),
            }
        }
        outcomes.push(outcome);
    }
    Wanted {
        role: inputs.role,
        spec: ServiceFile {
            name: Some(inputs.key.to_string()),
            address: Some(inputs.address.to_string()),
            ports,
        },
        ports: outcomes,
    }
}

/// One TCP port; `None` for a NodePort Service's port that has no node port.
fn translate_port(inputs: &Inputs<'_>, port: &PortView, family: Family) -> Option<PortFile> {
    let view = inputs.view;
    let listen = match inputs.role {
        Role::NodePort => port.node_port?,
        Role::LoadBalancer | Role::None => port.port,
    };
    // Node mode needs a node port; without one (not allocated) the port goes to its pods.
    let to_nodes = inputs.role == Role::LoadBalancer
        && inputs.mode == BackendMode::Nodes
        && port.node_port.is_some();
    let (backends, health) = match (to_nodes, port.node_port) {
        (true, Some(node_port)) => (
            node_backends(&inputs.nodes, node_port, family),
            Some(vec![Lenient::Parsed(node_health(view))]),
        ),
        _ => (
            endpoints::backends(
                inputs.slices.iter().copied(),
                &port.slice_name,
                "TCP",
                family,
            ),
            None,
        ),
    };
    let source_ranges = (inputs.role == Role::LoadBalancer && !view.source_ranges.is_empty())
        .then(|| view.source_ranges.clone());
    Some(PortFile {
        name: Some(port.name.clone()),
        port: Some(listen),
        protocol: Some(ProtocolFile::Tcp),
        backends: backends
            .into_iter()
            .map(|address| Lenient::Parsed(BackendFile::Resolved(Backend { address, weight: 1 })))
            .collect(),
        affinity: view.affinity_seconds.map(|seconds| {
            Lenient::Parsed(AffinityFile {
                policy: Some("builtin:client-ip".into()),
                params: Some(params(&[("timeout_seconds", seconds.to_string())])),
                max_entries: None,
            })
        }),
        health,
        settings: PortSettingsFile {
            source_ranges,
            ..PortSettingsFile::default()
        },
        ..PortFile::default()
    })
}

/// Every eligible node with an address of `family`, at `node_port`.
fn node_backends(nodes: &[&NodeView], node_port: u16, family: Family) -> Vec<SocketAddr> {
    let mut backends: Vec<SocketAddr> = nodes
        .iter()
        .filter(|node| node.eligible)
        .filter_map(|node| node.address(family))
        .map(|ip| SocketAddr::new(ip, node_port))
        .collect();
    backends.sort();
    backends.dedup();
    backends
}

/// How a node tells whether it should get the Service's traffic: `healthCheckNodePort`
/// answers 200 only on nodes with local ready endpoints (Local); kube-proxy's own port
/// answers whether it is fit to forward at all (Cluster).
fn node_health(view: &ServiceView) -> HealthFile {
    let port = match (view.local_traffic, view.health_check_node_port) {
        (true, Some(port)) => port,
        _ => KUBE_PROXY_HEALTH_PORT,
    };
    HealthFile {
        policy: Some("builtin:http-check".into()),
        params: Some(params(&[
            ("port", port.to_string()),
            ("path", "/healthz".into()),
            ("expected_statuses", "200".into()),
            ("interval", "2s".into()),
            ("timeout", "2s".into()),
            ("healthy_threshold", "1".into()),
            ("unhealthy_threshold", "2".into()),
        ])),
    }
}

fn params(pairs: &[(&str, String)]) -> BTreeMap<String, serde_yaml::Value> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), serde_yaml::Value::String(value.clone())))
        .collect()
}
