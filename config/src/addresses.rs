//! Sets of addresses in the model: a pool's ranges ([`AddressRange`]) and the networks a
//! client's address is matched against ([`Networks`]).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

/// A range of addresses of one family, first to last inclusive: what a CIDR or an
/// `a.b.c.d-e.f.g.h` range in an address pool stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AddressRange {
    /// The first address.
    pub first: IpAddr,
    /// The last address.
    pub last: IpAddr,
}

impl AddressRange {
    /// Every address of `net`; with `skip_reserved`, less those no host should be given when
    /// the network has more than two: an IPv4 network's own address and its broadcast address,
    /// an IPv6 network's subnet-router anycast address (the all-zeros interface identifier,
    /// RFC 4291 §2.6.1, which routers may answer).
    pub fn of_net(net: IpNet, skip_reserved: bool) -> Self {
        match net {
            IpNet::V4(v4) if skip_reserved && v4.prefix_len() < 31 => {
                let first = u32::from(v4.network()) + 1;
                let last = u32::from(v4.broadcast()) - 1;
                AddressRange {
                    first: IpAddr::from(first.to_be_bytes()),
                    last: IpAddr::from(last.to_be_bytes()),
                }
            }
            IpNet::V6(v6) if skip_reserved && v6.prefix_len() < 127 => AddressRange {
                first: IpAddr::from((u128::from(v6.network()) + 1).to_be_bytes()),
                last: IpAddr::V6(v6.broadcast()),
            },
            net => AddressRange {
                first: net.network(),
                last: net.broadcast(),
            },
        }
    }

    /// Whether the two ranges share an address.
    pub fn overlaps(&self, other: &AddressRange) -> bool {
        self.contains(other.first)
            || self.contains(other.last)
            || other.contains(self.first)
            || other.contains(self.last)
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.first, self.last, ip) {
            (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V4(x)) => a <= x && x <= b,
            (IpAddr::V6(a), IpAddr::V6(b), IpAddr::V6(x)) => a <= x && x <= b,
            _ => false,
        }
    }
}

/// Networks an address is matched against. A dual-stack listener sees IPv4 clients as
/// IPv4-mapped IPv6 addresses; they match as the IPv4 addresses they are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Networks(pub Vec<IpNet>);

impl Networks {
    /// Whether `ip` is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Whether there are no networks.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
