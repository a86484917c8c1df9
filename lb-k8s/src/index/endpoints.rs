//! A Service's endpoints, from its EndpointSlices, chosen as kube-proxy chooses them for
//! external traffic (KEP-1669, KEP-1672): the ready ones; when none is ready, the ones still
//! serving while they terminate; never one that is not serving. A port's number comes from
//! each slice's port of the same name, so target ports named differently per pod resolve.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::ObjectKey;

/// The label that ties a slice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// `IPv4` or `IPv6`, as the API writes families.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointView {
    /// Its address (the first of its addresses, as kube-proxy uses).
    pub address: IpAddr,
    /// Ready for new work.
    pub ready: bool,
    /// Able to serve (possibly while terminating).
    pub serving: bool,
    /// Terminating.
    pub terminating: bool,
}

/// A slice's port: the Service port's name, its protocol, and the number on the endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    /// The Service port's name (`""` for an unnamed one).
    pub name: String,
    /// `TCP`, `UDP`, `SCTP`.
    pub protocol: String,
    /// The endpoints' port.
    pub port: u16,
}

/// The parts of an EndpointSlice Gantry reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceView {
    /// Its addresses' family; FQDN slices are not read at all.
    pub family: Family,
    /// Its ports.
    pub ports: Vec<SlicePort>,
    /// Its endpoints.
    pub endpoints: Vec<EndpointView>,
}

/// Where a slice belongs: its Service, and its own name.
pub fn owner(slice: &EndpointSlice) -> Option<(ObjectKey, String)> {
    let namespace = slice.metadata.namespace.clone()?;
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)?
        .clone();
    let name = slice.metadata.name.clone()?;
    Some((ObjectKey::new(&namespace, &service), name))
}

/// Reads `slice`; `None` for a slice Gantry does not use (FQDN addresses).
pub fn read(slice: &EndpointSlice) -> Option<SliceView> {
    let family = match slice.address_type.as_str() {
        "IPv4" => Family::V4,
        "IPv6" => Family::V6,
        _ => return None,
    };
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(SlicePort {
                name: p.name.clone().unwrap_or_default(),
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                port: u16::try_from(p.port?).ok().filter(|port| *port != 0)?,
            })
        })
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .filter_map(|e| {
            let address: IpAddr = e.addresses.first()?.parse().ok()?;
            if Family::of(address) != family {
                return None;
            }
            let conditions = e.conditions.clone().unwrap_or_default();
            // The API's meaning of an absent condition: ready, serving, not terminating.
            Some(EndpointView {
                address,
                ready: conditions.ready.unwrap_or(true),
                serving: conditions.serving.unwrap_or(true),
                terminating: conditions.terminating.unwrap_or(false),
            })
        })
        .collect();
    Some(SliceView {
        family,
        ports,
        endpoints,
    })
}

/// The backends of the Service port named `port_name` (`""` for an unnamed one) over
/// `protocol`, in `family`, from the Service's slices: the ready endpoints; when there are
/// none, the serving terminating ones. Each `address:port` once, in order.
pub fn backends<'a>(
    slices: impl Iterator<Item = &'a SliceView>,
    port_name: &str,
    protocol: &str,
    family: Family,
) -> Vec<SocketAddr> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices.filter(|s| s.family == family) {
        let Some(port) = slice
            .ports
            .iter()
            .find(|p| p.name == port_name && p.protocol == protocol)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let backend = SocketAddr::new(endpoint.address, port.port);
            if endpoint.ready {
                ready.insert(backend);
            } else if endpoint.serving && endpoint.terminating {
                terminating.insert(backend);
            }
        }
    }
    let chosen = if ready.is_empty() { terminating } else { ready };
    chosen.into_iter().collect()
}
