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
    AffinityFile, BackendFile, BackendProtocolFile, BalancerFile, CertificateFile, HealthFile,
    PemMaterial, PortFile, PortSettingsFile, ProtocolFile, ProxyProtocolFile, ServiceFile, TlsFile,
};
use lb_config::{Backend, Lenient};

use super::annotations::{PolicyChoice, PortProtocol, PREFIX};
use super::endpoints::{self, Family, SliceView};
use super::nodes::NodeView;
use super::secrets::SecretView;
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
    /// The TLS Secret it names: `Some(None)` when it names one Gantry has not seen.
    pub secret: Option<Option<&'a Result<SecretView, String>>>,
}

/// The Service of `inputs` as a service of the model; what cannot be built is added to
/// `problems`.
pub fn translate(inputs: &Inputs<'_>, problems: &mut Vec<String>) -> Wanted {
    let family = Family::of(inputs.address);
    let tls = tls_material(inputs, problems);
    let mut ports = Vec::new();
    let mut outcomes = Vec::new();
    for port in &inputs.view.ports {
        let mut outcome = PortOutcome {
            port: port.port,
            protocol: port.transport.as_str().to_owned(),
            error: None,
        };
        if let Transport::Other(_) = port.transport {
            outcome.error = Some(UNSUPPORTED_PROTOCOL);
        } else {
            match translate_port(inputs, port, family, tls.as_ref()) {
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

/// The certificate of the Service's `tls`/`https` ports, when it has any.
fn tls_material(inputs: &Inputs<'_>, problems: &mut Vec<String>) -> Option<PemMaterial> {
    let view = inputs.view;
    let terminates = view.ports.iter().any(|p| {
        p.transport == Transport::Tcp
            && view
                .annotations
                .protocol_of(&p.name, p.port)
                .terminates_tls()
    });
    let name = view.annotations.tls_secret.as_deref();
    let annotation = format!("metadata.annotations[{PREFIX}tls-secret]");
    match (terminates, inputs.secret, name) {
        (false, _, _) => None,
        (true, None, _) | (true, _, None) => {
            problems.push(format!(
                "{annotation}: required by the ports whose protocol is `tls` or `https`"
            ));
            None
        }
        (true, Some(None), Some(name)) => {
            problems.push(format!(
                "{annotation}: Secret {}/{name} not found",
                inputs.key.namespace
            ));
            None
        }
        (true, Some(Some(Err(why))), Some(name)) => {
            problems.push(format!(
                "{annotation}: Secret {}/{name} {why}",
                inputs.key.namespace
            ));
            None
        }
        (true, Some(Some(Ok(secret))), Some(name)) => Some(PemMaterial {
            from: format!("secret {}/{name}", inputs.key.namespace),
            cert: secret.cert.clone(),
            key: secret.key.clone(),
        }),
    }
}

/// One TCP port; `None` for a NodePort Service's port that has no node port.
fn translate_port(
    inputs: &Inputs<'_>,
    port: &PortView,
    family: Family,
    tls: Option<&PemMaterial>,
) -> Option<PortFile> {
    let view = inputs.view;
    let annotations = &view.annotations;
    // The protocol annotation is about TCP ports; a UDP port is relayed as datagrams.
    let udp = port.transport == Transport::Udp;
    let protocol = annotations.protocol_of(&port.name, port.port);
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
            vec![Lenient::Parsed(node_health(view))],
        ),
        _ => (
            endpoints::backends(
                inputs.slices.iter().copied(),
                &port.slice_name,
                port.transport.as_str(),
                family,
            ),
            Vec::new(),
        ),
    };
    let mut health = health;
    health.extend(annotations.health.as_ref().map(|c| {
        Lenient::Parsed(HealthFile {
            policy: Some(c.policy.clone()),
            params: Some(c.params.clone()),
        })
    }));
    let source_ranges = (inputs.role == Role::LoadBalancer && !view.source_ranges.is_empty())
        .then(|| view.source_ranges.clone());
    // The annotation's affinity wins over `sessionAffinity`.
    let affinity = match (&annotations.affinity, view.affinity_seconds) {
        (Some(choice), _) => Some(affinity_file(choice)),
        (None, Some(seconds)) => Some(affinity_file(&PolicyChoice {
            policy: "builtin:client-ip".into(),
            params: params(&[("timeout_seconds", seconds.to_string())]),
        })),
        (None, None) => None,
    };
    Some(PortFile {
        name: Some(port.name.clone()),
        port: Some(listen),
        protocol: Some(match protocol {
            _ if udp => ProtocolFile::Udp,
            PortProtocol::Tcp => ProtocolFile::Tcp,
            PortProtocol::Tls => ProtocolFile::Tls,
            PortProtocol::Http => ProtocolFile::Http,
            PortProtocol::Https => ProtocolFile::Https,
        }),
        tls: (!udp && protocol.terminates_tls())
            .then(|| tls.cloned())
            .flatten()
            .map(|pem| {
                Lenient::Parsed(TlsFile {
                    certificates: vec![Lenient::Parsed(CertificateFile {
                        pem: Some(pem),
                        ..CertificateFile::default()
                    })],
                })
            }),
        // UDP has only v2 (a header per datagram): v1 is for TCP ports.
        proxy_protocol: match annotations.proxy_protocol.as_deref() {
            Some("v1") if !udp => Some(ProxyProtocolFile::V1),
            Some("v2") => Some(ProxyProtocolFile::V2),
            _ => None,
        },
        // How HTTP ports talk to backends; the others have nothing to choose.
        backend_protocol: match annotations.backend_protocol.as_deref() {
            Some("h2c") if !udp && protocol.is_http() => Some(BackendProtocolFile::H2c),
            _ => None,
        },
        balancer: annotations.balancer.as_ref().map(|c| {
            Lenient::Parsed(BalancerFile {
                policy: Some(c.policy.clone()),
                params: Some(c.params.clone()),
                hash_key: None,
                shadow: None,
            })
        }),
        backends: backends
            .into_iter()
            .map(|address| Lenient::Parsed(BackendFile::Resolved(Backend { address, weight: 1 })))
            .collect(),
        affinity,
        health: (!health.is_empty()).then_some(health),
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

fn affinity_file(choice: &PolicyChoice) -> Lenient<AffinityFile> {
    Lenient::Parsed(AffinityFile {
        policy: Some(choice.policy.clone()),
        params: Some(choice.params.clone()),
        max_entries: None,
        shadow: None,
    })
}

fn params(pairs: &[(&str, String)]) -> BTreeMap<String, serde_yaml::Value> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), serde_yaml::Value::String(value.clone())))
        .collect()
}
