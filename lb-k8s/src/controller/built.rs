//! What the controller builds for a Service: the addresses it asks of the pools, and the
//! services of the model it becomes (one per address: two for a dual-stack load balancer),
//! with what clients see of them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use lb_config::model::Service;

use crate::addresses::Request;
use crate::index::endpoints::Family;
use crate::index::service::{DualStack, ServiceView};
use crate::index::translate::PortOutcome;

/// The services of the model built for a Service, with its ports' outcomes (the same for
/// each address).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Built {
    pub(crate) services: Vec<Arc<Service>>,
    pub(crate) ports: Vec<PortOutcome>,
}

/// What clients see of a load balancer: where it listens, with which protocols, and which
/// ports it leaves out. Events announce changes to this, never to the backends alone (an
/// endpoint rollout is no news about the load balancer).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Front {
    listeners: Vec<(SocketAddr, &'static str)>,
    ports: Vec<PortOutcome>,
}

impl Built {
    /// Whether the data plane serves `self` and `other` alike: the same services but for
    /// where they came from (a newer version of the object that asks for nothing new).
    pub(crate) fn serves_as(&self, other: &Built) -> bool {
        self.services.len() == other.services.len()
            && self.services.iter().zip(&other.services).all(|(a, b)| {
                Arc::ptr_eq(a, b)
                    || (a.name == b.name && a.address == b.address && a.ports == b.ports)
            })
    }

    pub(crate) fn front(&self) -> Front {
        Front {
            listeners: self
                .services
                .iter()
                .flat_map(|s| s.ports.values())
                .map(|p| (p.bind, p.protocol.as_str()))
                .collect(),
            ports: self.ports.clone(),
        }
    }

    /// Its addresses, as the status shows them.
    pub(crate) fn ingress(&self) -> Vec<(IpAddr, Vec<PortOutcome>)> {
        self.services
            .iter()
            .map(|s| (s.address, self.ports.clone()))
            .collect()
    }

    /// Where it listens, for people.
    pub(crate) fn listeners(&self) -> String {
        self.front()
            .listeners
            .iter()
            .map(|(bind, _)| bind.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What a Service asks of the address pools: a request per address it wants, in order, and
/// how many of them it must get (the others only when a pool has an address of their
/// family). Addresses named by the annotation (else `spec.loadBalancerIP`) are all required;
/// otherwise the first of `spec.ipFamilies` (IPv4 when unset), and the second too for a
/// dual-stack policy.
pub(crate) fn requests_of(view: &ServiceView) -> (Vec<Request>, usize) {
    let base = Request {
        address: None,
        pool: view.annotations.pool.clone(),
        family: None,
        sharing_key: view.annotations.sharing_key.clone(),
        ports: view
            .ports
            .iter()
            .map(|p| (p.port, p.transport.as_str().to_owned()))
            .collect(),
    };
    let named: Vec<IpAddr> = if view.annotations.addresses.is_empty() {
        view.requested_ip.into_iter().collect()
    } else {
        view.annotations.addresses.clone()
    };
    if !named.is_empty() {
        let requests: Vec<Request> = named
            .iter()
            .map(|ip| Request {
                address: Some(*ip),
                family: Some(Family::of(*ip)),
                ..base.clone()
            })
            .collect();
        let required = requests.len();
        return (requests, required);
    }
    let mut families = view.families.clone();
    if families.is_empty() {
        families.push(Family::V4);
    }
    let (wanted, required) = match view.dual_stack {
        DualStack::Single => (1, 1),
        DualStack::Prefer => (2, 1),
        DualStack::Require => (2, 2),
    };
    families.truncate(wanted);
    let required = required.min(families.len());
    let requests = families
        .into_iter()
        .map(|family| Request {
            family: Some(family),
            ..base.clone()
        })
        .collect();
    (requests, required)
}
