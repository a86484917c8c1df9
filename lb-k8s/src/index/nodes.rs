//! The nodes a node-mode load balancer sends traffic to: every node but those labelled
//! `node.kubernetes.io/exclude-from-external-load-balancers` (unless the value reads as
//! false), those tainted `ToBeDeletedByClusterAutoscaler`, and those being deleted. A node's
//! readiness does not take it out (KEP-3458): its health check does.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

use super::endpoints::Family;

/// The label that keeps a node out of external load balancers.
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The taint the cluster autoscaler sets on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// The parts of a Node Gantry reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// Its `InternalIP` addresses.
    pub internal: Vec<IpAddr>,
    /// Whether it may take load-balancer traffic.
    pub eligible: bool,
}

impl NodeView {
    /// Its internal address of `family`, if it has one.
    pub fn address(&self, family: Family) -> Option<IpAddr> {
        self.internal
            .iter()
            .copied()
            .find(|ip| Family::of(*ip) == family)
    }
}

/// Reads `node`.
pub fn read(node: &Node) -> NodeView {
    let excluded = node
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(EXCLUDE_LABEL))
        // Any value but one that reads as false excludes, an empty one included.
        .is_some_and(|value| !matches!(value.parse::<bool>(), Ok(false)));
    let going = node
        .spec
        .as_ref()
        .and_then(|spec| spec.taints.as_ref())
        .is_some_and(|taints| taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
    let internal = node
        .status
        .as_ref()
        .and_then(|status| status.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    NodeView {
        internal,
        eligible: !excluded && !going && node.metadata.deletion_timestamp.is_none(),
    }
}
