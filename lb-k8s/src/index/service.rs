//! Reading a Service: whether it is Gantry's, and the parts of its spec and status that
//! Gantry acts on, each checked, with what is wrong described by its field path.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceStatus};
use lb_config::ObjectSource;

use super::annotations::{self, Annotations};
use super::endpoints::Family;
use crate::settings::Settings;

/// The annotation older clients use for source ranges; `spec.loadBalancerSourceRanges` wins.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// Session affinity's idle timeout when the Service asks for ClientIP without one (the API
/// server's default).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// What Gantry is asked to be for a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Its load balancer: type `LoadBalancer` of Gantry's class (or of none, when Gantry is
    /// the default provider).
    LoadBalancer,
    /// Its node ports' server: type `NodePort`, when NodePort Services are served.
    NodePort,
    /// Nothing: another type, or another provider's class.
    None,
}

/// The role `settings` give Gantry for `service`.
pub fn role(service: &Service, settings: &Settings) -> Role {
    let Some(spec) = &service.spec else {
        return Role::None;
    };
    match spec.type_.as_deref() {
        Some("LoadBalancer") => match spec.load_balancer_class.as_deref() {
            Some(class) if class == settings.class => Role::LoadBalancer,
            None if settings.default_class => Role::LoadBalancer,
            _ => Role::None,
        },
        Some("NodePort") if settings.node_ports.is_some() => Role::NodePort,
        _ => Role::None,
    }
}

/// A transport protocol of a Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP: served.
    Tcp,
    /// UDP: served by flow.
    Udp,
    /// SCTP or anything else: reported and skipped.
    Other(String),
}

impl Transport {
    /// As the API writes it.
    pub fn as_str(&self) -> &str {
        match self {
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
            Transport::Other(name) => name,
        }
    }
}

/// `spec.ipFamilyPolicy`, as it bears on the addresses of a load balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DualStack {
    /// One address, of the first family.
    Single,
    /// An address of each family, the second only when a pool has one.
    Prefer,
    /// An address of each family.
    Require,
}

/// One port of a Service. (Its target port is resolved per endpoint by the EndpointSlices,
/// which name each port as the Service does; Gantry reads the numbers there.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortView {
    /// The port's name; the number as text when the port has none (single-port Services).
    pub name: String,
    /// The name EndpointSlices use for it (`""` when the port has none).
    pub slice_name: String,
    /// The Service's port.
    pub port: u16,
    /// Its transport.
    pub transport: Transport,
    /// The node port, when one is allocated.
    pub node_port: Option<u16>,
}

/// The parts of a Service Gantry acts on.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceView {
    /// Its ports, in order.
    pub ports: Vec<PortView>,
    /// `externalTrafficPolicy: Local`.
    pub local_traffic: bool,
    /// `healthCheckNodePort`, for a Local LoadBalancer Service.
    pub health_check_node_port: Option<u16>,
    /// `allocateLoadBalancerNodePorts` (default true).
    pub allocates_node_ports: bool,
    /// ClientIP affinity's idle timeout, seconds, when asked for.
    pub affinity_seconds: Option<u32>,
    /// The clients allowed (CIDRs as written); empty: everyone.
    pub source_ranges: Vec<String>,
    /// `spec.loadBalancerIP`, when set.
    pub requested_ip: Option<IpAddr>,
    /// The addresses its status already shows (re-adopted after a restart).
    pub status_ips: Vec<IpAddr>,
    /// It is being deleted.
    pub deleting: bool,
    /// What its Gantry annotations ask for.
    pub annotations: Annotations,
    /// Its IP families (`spec.ipFamilies`), in order.
    pub families: Vec<Family>,
    /// Whether a load balancer must, may or must not have an address of its second family
    /// (`spec.ipFamilyPolicy`).
    pub dual_stack: DualStack,
    /// The object, for `/config` and the model's service source.
    pub source: ObjectSource,
    /// Its finalizers.
    pub finalizers: Vec<String>,
    /// Its status as last read (what a status write is compared with).
    pub status: Option<ServiceStatus>,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `spec.loadBalancerClass`.
    pub class: Option<String>,
    /// `spec.type` is `LoadBalancer`.
    pub is_load_balancer: bool,
}

/// Reads `service`; the problems found are described with their field paths.
pub fn read(service: &Service) -> (ServiceView, Vec<String>) {
    let mut problems = Vec::new();
    let spec = service.spec.clone().unwrap_or_default();
    let ports = spec
        .ports
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, port)| read_port(port, i, &mut problems))
        .collect();
    let local_traffic = spec.external_traffic_policy.as_deref() == Some("Local");
    let health_check_node_port = spec
        .health_check_node_port
        .and_then(|p| u16::try_from(p).ok());
    let affinity_seconds = match spec.session_affinity.as_deref() {
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Some(DEFAULT_AFFINITY_SECONDS),
                Some(seconds @ 1..=86_400) => u32::try_from(seconds).ok(),
                Some(seconds) => {
                    problems.push(format!(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds: {seconds} is out of range 1..=86400"
                    ));
                    Some(DEFAULT_AFFINITY_SECONDS)
                }
            }
        }
        _ => None,
    };
    let source_ranges = match spec.load_balancer_source_ranges.as_deref() {
        Some(ranges) if !ranges.is_empty() => ranges.iter().map(|r| r.trim().to_owned()).collect(),
        _ => service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SOURCE_RANGES_ANNOTATION))
            .map(|ranges| {
                ranges
                    .split(',')
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    };
    let requested_ip = match spec.load_balancer_ip.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => match text.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                problems.push(format!(
                    "spec.loadBalancerIP: `{text}` is not an IP address"
                ));
                None
            }
        },
    };
    let annotations = annotations::read(
        service
            .metadata
            .annotations
            .as_ref()
            .unwrap_or(&Default::default()),
        &mut problems,
    );
    let families = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        })
        .collect();
    let dual_stack = match spec.ip_family_policy.as_deref() {
        Some("RequireDualStack") => DualStack::Require,
        Some("PreferDualStack") => DualStack::Prefer,
        _ => DualStack::Single,
    };
    let meta = &service.metadata;
    let source = ObjectSource {
        kind: "Service".to_owned(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone().unwrap_or_default(),
    };
    let status_ips = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ingress| ingress.ip.as_deref()?.parse().ok())
        .collect();
    let view = ServiceView {
        ports,
        local_traffic,
        health_check_node_port,
        allocates_node_ports: spec.allocate_load_balancer_node_ports.unwrap_or(true),
        affinity_seconds,
        source_ranges,
        requested_ip,
        status_ips,
        deleting: service.metadata.deletion_timestamp.is_some(),
        annotations,
        families,
        dual_stack,
        source,
        finalizers: meta.finalizers.clone().unwrap_or_default(),
        status: service.status.clone(),
        generation: meta.generation,
        class: spec.load_balancer_class.clone(),
        is_load_balancer: spec.type_.as_deref() == Some("LoadBalancer"),
    };
    (view, problems)
}

fn read_port(port: &ServicePort, index: usize, problems: &mut Vec<String>) -> Option<PortView> {
    let Ok(number) = u16::try_from(port.port) else {
        problems.push(format!(
            "spec.ports[{index}].port: {} is not a port",
            port.port
        ));
        return None;
    };
    let slice_name = port.name.clone().unwrap_or_default();
    let name = if slice_name.is_empty() {
        number.to_string()
    } else {
        slice_name.clone()
    };
    let transport = match port.protocol.as_deref() {
        None | Some("TCP") => Transport::Tcp,
        Some("UDP") => Transport::Udp,
        Some(other) => Transport::Other(other.to_owned()),
    };
    // The API server allocates node ports; a port of a Service that has none says 0.
    let node_port = port
        .node_port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0);
    Some(PortView {
        name,
        slice_name,
        port: number,
        transport,
        node_port,
    })
}
