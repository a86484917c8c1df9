//! The `kubernetes:` section: how to reach the cluster, which Services are Gantry's, where
//! their traffic goes, and the address pools load balancers are given addresses from.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

use crate::file::{AddressPoolFile, KubernetesFile};
use crate::lenient::Lenient;
use crate::model::{AddressPool, AddressRange, KubeBackends, KubeCredentials, Kubernetes};
use crate::names::{is_dns_label, is_qualified_name};
use crate::problems::{FieldPath, Problems};

use super::leader_election::build_leader_election;
use super::settings::{set_duration, DurationRange};
use super::take;

/// The class Gantry answers to unless configured otherwise.
pub const DEFAULT_LOAD_BALANCER_CLASS: &str = "gantry.io/lb";

/// How long a burst of Kubernetes changes is gathered by default: long enough that a
/// rollout's thousand endpoint updates, arriving within milliseconds, make one apply.
pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_millis(10);

/// The longest a burst may be gathered: beyond, a change waits longer than it takes to apply.
pub const MAX_BATCH_DELAY: Duration = Duration::from_secs(1);

/// Pools one appliance may have.
pub const MAX_POOLS: usize = 64;

/// Entries one pool may list.
pub const MAX_POOL_ENTRIES: usize = 256;

pub(super) fn build_kubernetes(
    file: Option<Lenient<KubernetesFile>>,
    base_dir: &Path,
    path: &FieldPath,
    p: &mut Problems,
) -> Option<Kubernetes> {
    let file = take(file, path, p)?;
    let credentials = match file.kubeconfig {
        Some(kubeconfig) if kubeconfig.trim().is_empty() => {
            p.push(
                &path.field("kubeconfig"),
                "must be a file name; leave it out for the pod's credentials",
            );
            KubeCredentials::InCluster
        }
        Some(kubeconfig) => KubeCredentials::Kubeconfig {
            path: base_dir.join(kubeconfig),
            context: file.context,
        },
        None => {
            if file.context.is_some() {
                p.push(&path.field("context"), "needs `kubeconfig`");
            }
            KubeCredentials::InCluster
        }
    };
    let class = file
        .load_balancer_class
        .unwrap_or_else(|| DEFAULT_LOAD_BALANCER_CLASS.to_owned());
    if !is_qualified_name(&class) {
        p.push(
            &path.field("load_balancer_class"),
            format!("`{class}` is not a class: a label-style name with a domain prefix, such as `gantry.io/lb`"),
        );
    }
    let backends = match file.backends.as_deref() {
        None | Some("pods") => KubeBackends::Pods,
        Some("nodes") => KubeBackends::Nodes,
        Some(other) => {
            p.push(
                &path.field("backends"),
                format!("`{other}`: expected `pods` or `nodes`"),
            );
            KubeBackends::Pods
        }
    };
    let node_port_address = file
        .node_port_address
        .and_then(|text| match text.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                p.push(
                    &path.field("node_port_address"),
                    format!("`{text}` is not an IP address"),
                );
                None
            }
        });
    let address_pools = build_pools(file.address_pools, &path.field("address_pools"), p);
    let instance = file
        .instance
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "gantry".to_owned());
    if instance.len() > 128 {
        p.push(&path.field("instance"), "at most 128 characters");
    }
    let leader_election =
        build_leader_election(file.leader_election, &path.field("leader_election"), p);
    let mut batch_delay = DEFAULT_BATCH_DELAY;
    set_duration(
        file.batch_delay,
        &mut batch_delay,
        DurationRange {
            min: Duration::ZERO,
            max: MAX_BATCH_DELAY,
        },
        &path.field("batch_delay"),
        p,
    );
    Some(Kubernetes {
        credentials,
        load_balancer_class: class,
        default_provider: file.default_provider.unwrap_or(false),
        backends,
        node_port_address,
        address_pools,
        instance,
        leader_election,
        batch_delay,
    })
}

fn build_pools(
    items: Vec<Lenient<AddressPoolFile>>,
    path: &FieldPath,
    p: &mut Problems,
) -> Vec<AddressPool> {
    if items.len() > MAX_POOLS {
        p.push(path, format!("{} pools; at most {MAX_POOLS}", items.len()));
    }
    let mut names = BTreeSet::new();
    let mut pools: Vec<AddressPool> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let path = path.index(i);
        let Some(file) = take(Some(item), &path, p) else {
            continue;
        };
        let name = file.name.unwrap_or_default();
        if !is_dns_label(&name) {
            p.push(
                &path.field("name"),
                format!("`{name}` is not a name: lowercase letters, digits and `-`, at most 63"),
            );
        } else if !names.insert(name.clone()) {
            p.push(&path.field("name"), format!("duplicate pool name `{name}`"));
        }
        let entries = path.field("addresses");
        if file.addresses.is_empty() || file.addresses.len() > MAX_POOL_ENTRIES {
            p.push(
                &entries,
                format!(
                    "{} entries; between 1 and {MAX_POOL_ENTRIES}",
                    file.addresses.len()
                ),
            );
        }
        let skip_reserved = file.skip_reserved.unwrap_or(true);
        let mut ranges = Vec::new();
        for (j, text) in file.addresses.iter().enumerate() {
            let Some(range) = parse_range(text, skip_reserved) else {
                p.push(
                    &entries.index(j),
                    format!(
                        "`{text}` is not a CIDR, an address, or a `first-last` range of one family"
                    ),
                );
                continue;
            };
            let earlier = pools
                .iter()
                .flat_map(|pool| pool.ranges.iter().map(move |r| (&pool.name, r)))
                .chain(ranges.iter().map(|r| (&name, r)))
                .find(|(_, r)| r.overlaps(&range));
            if let Some((other, _)) = earlier {
                p.push(
                    &entries.index(j),
                    format!("`{text}` overlaps addresses of pool `{other}`"),
                );
                continue;
            }
            ranges.push(range);
        }
        pools.push(AddressPool {
            name,
            skip_reserved,
            ranges,
        });
    }
    pools
}

/// `192.0.2.0/28`, `192.0.2.10-192.0.2.20` or `192.0.2.7`; a CIDR leaves out its reserved
/// addresses when `skip_reserved` ([`AddressRange::of_net`]).
pub fn parse_range(text: &str, skip_reserved: bool) -> Option<AddressRange> {
    let text = text.trim();
    if let Some((first, last)) = text.split_once('-') {
        let (first, last): (IpAddr, IpAddr) =
            (first.trim().parse().ok()?, last.trim().parse().ok()?);
        let range = AddressRange { first, last };
        return (first.is_ipv4() == last.is_ipv4()
            && range.contains(first)
            && range.contains(last))
        .then_some(range);
    }
    if let Ok(net) = text.parse::<IpNet>() {
        return (net.trunc() == net).then(|| AddressRange::of_net(net, skip_reserved));
    }
    let ip: IpAddr = text.parse().ok()?;
    Some(AddressRange {
        first: ip,
        last: ip,
    })
}

/// Static services and the admin listener must stay out of the pools, or an address handed
/// to a Service could clash with them.
pub(super) fn check_outside_pools(
    kubernetes: &Kubernetes,
    addresses: impl Iterator<Item = (FieldPath, IpAddr)>,
    p: &mut Problems,
) {
    for (path, ip) in addresses {
        let pool = kubernetes
            .address_pools
            .iter()
            .find(|pool| pool.ranges.iter().any(|r| r.contains(ip)));
        if let Some(pool) = pool {
            p.push(&path, format!("{ip} is in the Kubernetes address pool `{}`; keep static addresses out of the pools", pool.name));
        }
    }
}
