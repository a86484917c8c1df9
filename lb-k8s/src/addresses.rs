//! Load-balancer addresses: which Service holds which address of the configured pools.
//!
//! A Service keeps the address it holds for as long as it asks for nothing else, and after a
//! restart it is given back the address its status shows ([`Addresses::adopt`], called for
//! every Service before any new address is handed out), so addresses never churn. A Service
//! may ask for one address itself (`spec.loadBalancerIP` or an annotation); two Services share
//! one only when both carry the same sharing key and their ports do not collide. A request
//! that cannot be met is an error the caller reports on the Service: it is never solved by
//! taking another Service's address or by handing out a different one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use lb_config::AddressRange;

use crate::index::endpoints::Family;
use crate::index::ObjectKey;

/// A named pool of addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Its name, for requests and metrics.
    pub name: String,
    /// Its addresses, in the order they are handed out.
    pub ranges: Vec<AddressRange>,
}

impl Pool {
    fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|range| range.contains(ip))
    }
}

/// A (port, protocol) a Service listens on: what must not collide on a shared address.
pub type Listen = (u16, String);

/// What a Service asks of the addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// This address and no other.
    pub address: Option<IpAddr>,
    /// From this pool (by name); any pool of the family otherwise.
    pub pool: Option<String>,
    /// The family wanted when no address is named.
    pub family: Option<Family>,
    /// Services with the same key may share an address.
    pub sharing_key: Option<String>,
    /// What it listens on.
    pub ports: Vec<Listen>,
}

/// Why a Service has no address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The address asked for is in no pool.
    NotInPool(IpAddr),
    /// The address asked for is another Service's, and they may not share it.
    Taken {
        /// The address.
        address: IpAddr,
        /// Who holds it.
        by: ObjectKey,
    },
    /// The pool named does not exist.
    UnknownPool(String),
    /// No free address of the family is left in the pools it may take from.
    Exhausted,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotInPool(ip) => write!(f, "address {ip} is in no address pool of Gantry's"),
            Refusal::Taken { address, by } => write!(
                f,
                "address {address} is held by Service {by}; sharing needs the same sharing key on both and no common port"
            ),
            Refusal::UnknownPool(pool) => write!(f, "no address pool named `{pool}`"),
            Refusal::Exhausted => f.write_str("no free address left in the address pools"),
        }
    }
}

impl Refusal {
    /// The `reason` of the Event and the condition that report it.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotInPool(_) => "AddressNotInPool",
            Refusal::Taken { .. } => "AddressInUse",
            Refusal::UnknownPool(_) => "UnknownAddressPool",
            Refusal::Exhausted => "AddressPoolExhausted",
        }
    }
}

/// One Service's hold on an address.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Hold {
    address: IpAddr,
    sharing_key: Option<String>,
    ports: Vec<Listen>,
}

/// Who holds: a Service, for one address family.
type Holder = (ObjectKey, Family);

/// The pools and who holds what: a Service holds at most one address per family (two for a
/// dual-stack Service). Holds are indexed by address too, so a check, an assignment or a
/// release costs what the address's holders cost, not what every Service's does.
#[derive(Debug, Default)]
pub struct Addresses {
    pools: Vec<Pool>,
    holds: BTreeMap<Holder, Hold>,
    /// The holders of each address held, in address order.
    by_address: BTreeMap<IpAddr, BTreeSet<Holder>>,
}

impl Request {
    /// The family this request is for: its address's, else the one asked for, else IPv4.
    pub fn family(&self) -> Family {
        self.address
            .map(Family::of)
            .or(self.family)
            .unwrap_or(Family::V4)
    }
}

impl Addresses {
    /// Nothing handed out yet.
    pub fn new(pools: Vec<Pool>) -> Self {
        Addresses {
            pools,
            holds: BTreeMap::new(),
            by_address: BTreeMap::new(),
        }
    }

    /// Gives `key` back the address its status shows, when it is in a pool and its holders
    /// may share it. Called for every known Service before [`Addresses::assign`] hands out
    /// new addresses, so a restart changes no Service's address.
    pub fn adopt(&mut self, key: &ObjectKey, shown: IpAddr, request: &Request) -> bool {
        if Family::of(shown) != request.family()
            || !self.in_a_pool(shown)
            || self.conflict(key, shown, request).is_some()
        {
            return false;
        }
        self.hold(key, shown, request);
        true
    }

    /// The address of `key` for `request`: the one it holds while that still meets the
    /// request, else the one asked for, else the first free one of the pools it may use.
    pub fn assign(&mut self, key: &ObjectKey, request: &Request) -> Result<IpAddr, Refusal> {
        let holder = (key.clone(), request.family());
        if let Some(held) = self.holds.get(&holder).map(|h| h.address) {
            if self.meets(held, request) && self.conflict(key, held, request).is_none() {
                self.hold(key, held, request);
                return Ok(held);
            }
        }
        let address = match request.address {
            Some(address) => {
                if !self.in_a_pool(address) {
                    return Err(Refusal::NotInPool(address));
                }
                if let Some(by) = self.conflict(key, address, request) {
                    return Err(Refusal::Taken { address, by });
                }
                address
            }
            None => self.free(key, request)?,
        };
        self.hold(key, address, request);
        Ok(address)
    }

    /// Records that `key` holds `shown` (each address with the request it serves), as the
    /// holder of the Lease decided: a replica that does not hold it hands out nothing and
    /// checks nothing, it only keeps count of what the pools have in use.
    pub fn follow(&mut self, key: &ObjectKey, shown: &[(IpAddr, &Request)]) {
        self.release(key);
        for (address, request) in shown {
            self.hold(key, *address, request);
        }
    }

    /// Nobody holds anything: the statuses are about to be adopted again (a replica that
    /// takes the Lease over starts from what the cluster shows, as a restart does).
    pub fn reset(&mut self) {
        self.holds.clear();
        self.by_address.clear();
    }

    /// Whether `ip` is in one of the pools.
    pub fn in_a_pool(&self, ip: IpAddr) -> bool {
        self.pools.iter().any(|p| p.contains(ip))
    }

    /// `key` no longer holds an address.
    pub fn release(&mut self, key: &ObjectKey) {
        self.keep_families(key, &[]);
    }

    /// `key` holds addresses of `families` only (a Service that stops being dual-stack).
    pub fn keep_families(&mut self, key: &ObjectKey, families: &[Family]) {
        for family in [Family::V4, Family::V6] {
            if !families.contains(&family) {
                self.unhold(&(key.clone(), family));
            }
        }
    }

    /// The addresses `key` holds.
    pub fn held(&self, key: &ObjectKey) -> Vec<IpAddr> {
        [Family::V4, Family::V6]
            .into_iter()
            .filter_map(|family| self.holds.get(&(key.clone(), family)))
            .map(|hold| hold.address)
            .collect()
    }

    /// Addresses in use in each pool, by pool name.
    pub fn in_use(&self) -> BTreeMap<&str, usize> {
        self.pools
            .iter()
            .map(|pool| {
                let used = self
                    .by_address
                    .keys()
                    .filter(|ip| pool.contains(**ip))
                    .count();
                (pool.name.as_str(), used)
            })
            .collect()
    }

    fn hold(&mut self, key: &ObjectKey, address: IpAddr, request: &Request) {
        let holder = (key.clone(), Family::of(address));
        self.unhold(&holder);
        self.by_address
            .entry(address)
            .or_default()
            .insert(holder.clone());
        self.holds.insert(
            holder,
            Hold {
                address,
                sharing_key: request.sharing_key.clone(),
                ports: request.ports.clone(),
            },
        );
    }

    fn unhold(&mut self, holder: &Holder) {
        let Some(hold) = self.holds.remove(holder) else {
            return;
        };
        if let Some(holders) = self.by_address.get_mut(&hold.address) {
            holders.remove(holder);
            if holders.is_empty() {
                self.by_address.remove(&hold.address);
            }
        }
    }

    /// Whether `address` is what `request` asks for.
    fn meets(&self, address: IpAddr, request: &Request) -> bool {
        match (request.address, &request.pool, request.family) {
            (Some(wanted), _, _) => wanted == address,
            (None, Some(pool), _) => self
                .pools
                .iter()
                .any(|p| &p.name == pool && p.contains(address)),
            (None, None, Some(family)) => Family::of(address) == family,
            (None, None, None) => true,
        }
    }

    /// Another Service holding `address` that `key` may not share it with.
    fn conflict(&self, key: &ObjectKey, address: IpAddr, request: &Request) -> Option<ObjectKey> {
        self.by_address
            .get(&address)?
            .iter()
            .filter(|(other, _)| other != key)
            .filter_map(|holder| Some((holder, self.holds.get(holder)?)))
            .find(|(_, hold)| {
                let same_key =
                    request.sharing_key.is_some() && hold.sharing_key == request.sharing_key;
                let collide = hold.ports.iter().any(|p| request.ports.contains(p));
                !same_key || collide
            })
            .map(|((other, _), _)| other.clone())
    }

    /// The first address of the pools `request` may use that nobody holds, or that a Service
    /// it may share with holds.
    fn free(&self, key: &ObjectKey, request: &Request) -> Result<IpAddr, Refusal> {
        let pools: Vec<&Pool> = match &request.pool {
            Some(name) => vec![self
                .pools
                .iter()
                .find(|p| &p.name == name)
                .ok_or_else(|| Refusal::UnknownPool(name.clone()))?],
            None => self.pools.iter().collect(),
        };
        let family = request.family();
        // Sharing first: an address a Service with the same key already holds.
        if request.sharing_key.is_some() {
            let shared = self.by_address.keys().copied().find(|ip| {
                Family::of(*ip) == family
                    && pools.iter().any(|p| p.contains(*ip))
                    && self.conflict(key, *ip, request).is_none()
            });
            if let Some(address) = shared {
                return Ok(address);
            }
        }
        for range in pools.iter().flat_map(|p| p.ranges.iter()) {
            if Family::of(range.first) != family {
                continue;
            }
            if let Some(ip) = self.first_free(key, range) {
                return Ok(ip);
            }
        }
        Err(Refusal::Exhausted)
    }

    /// The first address of `range` no other Service holds. Walks the held addresses of the
    /// range in order beside the candidate, so a huge IPv6 range costs as little as a small
    /// one, and each step is a step of an ordered walk, not a lookup.
    fn first_free(&self, key: &ObjectKey, range: &AddressRange) -> Option<IpAddr> {
        let (first, last) = (as_u128(range.first), as_u128(range.last));
        let mut candidate = first;
        // The held addresses come in order from `first`, each at or past the candidate.
        for (held, holders) in self.by_address.range(range.first..=range.last) {
            if as_u128(*held) > candidate || holders.iter().all(|(other, _)| other == key) {
                break;
            }
            candidate = candidate.checked_add(1)?;
        }
        (candidate <= last).then(|| from_u128(candidate, range.first))
    }
}

fn as_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(value: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::from(u32::try_from(value).unwrap_or(u32::MAX).to_be_bytes()),
        IpAddr::V6(_) => IpAddr::from(value.to_be_bytes()),
    }
}

#[cfg(test)]
mod tests;
