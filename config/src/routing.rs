//! The `routing:` section as the runtime uses it: which routing daemon announces the
//! addresses Gantry serves, to which peers, when, and with which attributes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::addresses::AddressRange;

/// `routing:`
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Routing {
    /// The daemon, and what it needs.
    pub daemon: Daemon,
    /// When an address is announced.
    pub announce: Announce,
    /// How long a stopping Gantry serves on after withdrawing.
    #[serde(with = "crate::model::duration_text")]
    pub withdraw_delay: Duration,
    /// Which served addresses are announced, with their attributes; an address takes those of
    /// the first pool it is in, and one in none is not announced.
    pub pools: Vec<RoutedPool>,
}

impl Routing {
    /// Gantry's folder: its part of the daemon's configuration, and its locks.
    pub fn directory(&self) -> &Path {
        match &self.daemon {
            Daemon::Bird(bgp) => &bgp.directory,
            Daemon::Keepalived(vrrp) => &vrrp.directory,
        }
    }

    /// The pool whose attributes `address` is announced with, if it is announced at all.
    pub fn pool_of(&self, address: IpAddr) -> Option<&RoutedPool> {
        self.pools
            .iter()
            .find(|pool| pool.ranges.iter().any(|range| range.contains(address)))
    }
}

/// The routing daemon Gantry announces through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Daemon {
    /// BIRD 2, BGP: Gantry writes `gantry.conf` in its folder, which BIRD's configuration
    /// includes, and asks BIRD to reconfigure through its control socket.
    Bird(Bgp),
    /// keepalived, VRRP: for networks without BGP. One appliance at a time holds the
    /// addresses, which keepalived's configuration includes from Gantry's folder.
    Keepalived(Vrrp),
}

/// BGP through BIRD.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Bgp {
    /// BIRD's control socket.
    pub control_socket: PathBuf,
    /// Where Gantry's part of the configuration and its locks live.
    pub directory: PathBuf,
    /// This appliance's AS number.
    pub asn: u32,
    /// The BGP router ID, when not BIRD's own.
    pub router_id: Option<Ipv4Addr>,
    /// The routers announced to.
    pub peers: Vec<Peer>,
    /// The BGP hold time (whole seconds).
    #[serde(with = "crate::model::duration_text")]
    pub hold_time: Duration,
    /// BFD timings.
    pub bfd: Bfd,
}

/// VRRP through keepalived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Vrrp {
    /// Where Gantry writes the addresses (`addresses.conf`) and whether it serves (`ready`,
    /// keepalived's track file), and keeps its locks.
    pub directory: PathBuf,
    /// keepalived's pid file: Gantry has it reload (SIGHUP) when the addresses change.
    /// Without one, something else must (the appliance's path unit).
    pub pid_file: Option<PathBuf>,
}

/// When an address is announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Announce {
    /// While it is served.
    Always,
    /// While at least one of its ports has a healthy backend.
    Healthy,
}

/// A BGP peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Peer {
    /// Its address.
    pub address: IpAddr,
    /// Its AS number.
    pub asn: u32,
    /// The session's TCP-MD5 password, read from a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Password>,
    /// Whether BFD tracks the session.
    pub bfd: bool,
}

/// A BGP session password: where it was read from; the secret never shows in `/config`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password {
    /// The file it was read from (watched like certificates).
    pub file: PathBuf,
    secret: String,
}

impl Password {
    /// The password `secret`, read from `file` (already checked: printable ASCII without
    /// `"` or `\`).
    pub fn new(file: PathBuf, secret: String) -> Self {
        Password { file, secret }
    }

    /// The password itself, for the daemon's configuration.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Password(file:{})", self.file.display())
    }
}

impl Serialize for Password {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("file:{}", self.file.display()))
    }
}

/// `routing.bfd:`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Bfd {
    /// The interval packets are sent and expected at.
    #[serde(with = "crate::model::duration_text")]
    pub interval: Duration,
    /// Packets missed before the session is down.
    pub multiplier: u8,
}

/// Addresses announced alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoutedPool {
    /// The Kubernetes pool's name, or `pools[i]` for addresses listed in the section.
    pub name: String,
    /// Its addresses.
    pub ranges: Vec<AddressRange>,
    /// Communities added to its routes.
    pub communities: Vec<Community>,
    /// `LOCAL_PREF` of its routes.
    pub local_preference: Option<u32>,
}

/// A BGP community.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Community {
    /// RFC 1997: `asn:value`, both 16 bits.
    Standard(u16, u16),
    /// RFC 8092: `asn:value:value`, each 32 bits.
    Large(u32, u32, u32),
}

impl Community {
    /// `65000:100` or `65000:1:2`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Community> {
        let parts: Vec<&str> = text.split(':').collect();
        match parts[..] {
            [a, b] => Some(Community::Standard(a.parse().ok()?, b.parse().ok()?)),
            [a, b, c] => Some(Community::Large(
                a.parse().ok()?,
                b.parse().ok()?,
                c.parse().ok()?,
            )),
            _ => None,
        }
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Community::Standard(a, b) => write!(f, "{a}:{b}"),
            Community::Large(a, b, c) => write!(f, "{a}:{b}:{c}"),
        }
    }
}

impl Serialize for Community {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
