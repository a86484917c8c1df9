//! The `routing:` section: the daemon, the BGP session's numbers, the peers, and which
//! served addresses are announced with which attributes, every value checked against its
//! range.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use crate::file::{BfdFile, PeerFile, RoutedPoolFile, RoutingFile};
use crate::lenient::{DurationText, Lenient};
use crate::model::{
    Announce, Bfd, Bgp, Community, Daemon, Kubernetes, Password, Peer, RoutedPool, Routing, Vrrp,
};
use crate::problems::{FieldPath, Problems};

use super::kubernetes::{parse_range, MAX_POOLS, MAX_POOL_ENTRIES};
use super::settings::{set_duration, DurationRange};
use super::take;

/// Where BIRD's control socket is unless configured otherwise (Debian's `bird2`).
pub const DEFAULT_BIRD_SOCKET: &str = "/run/bird/bird.ctl";

/// Where Gantry writes its part of BIRD's configuration unless configured otherwise.
pub const DEFAULT_BIRD_DIRECTORY: &str = "/run/gantry/bird";

/// Where Gantry writes what keepalived includes unless configured otherwise.
pub const DEFAULT_KEEPALIVED_DIRECTORY: &str = "/run/gantry/keepalived";

/// Peers one appliance may have.
pub const MAX_PEERS: usize = 32;

/// Communities one pool may add.
const MAX_COMMUNITIES: usize = 32;

/// The longest TCP-MD5 key (RFC 2385 as Linux implements it).
const MAX_PASSWORD: usize = 80;

/// AS 0 is reserved (RFC 7607), 4294967295 too (RFC 7300).
const ASN_RANGE: std::ops::RangeInclusive<u64> = 1..=4_294_967_294;

pub(super) fn build_routing(
    file: Option<Lenient<RoutingFile>>,
    kubernetes: Option<&Kubernetes>,
    base_dir: &Path,
    path: &FieldPath,
    p: &mut Problems,
) -> Option<Routing> {
    let RoutingFile {
        daemon,
        control_socket,
        directory,
        pid_file,
        asn,
        router_id,
        peers,
        announce,
        withdraw_delay: delay,
        hold_time,
        bfd,
        pools,
    } = take(file, path, p)?;
    if let Some(directory) = &directory {
        if directory
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control())
        {
            p.push(
                &path.field("directory"),
                "the daemon's configuration names this folder in quotes: no `\"`, `\\` or control characters",
            );
        }
    }
    let daemon = match daemon.as_deref() {
        Some("bird") => {
            if pid_file.is_some() {
                p.push(
                    &path.field("pid_file"),
                    "keepalived only: BIRD is reconfigured through `control_socket`",
                );
            }
            Daemon::Bird(Bgp {
                control_socket: base_dir
                    .join(control_socket.as_deref().unwrap_or(DEFAULT_BIRD_SOCKET)),
                directory: base_dir.join(directory.as_deref().unwrap_or(DEFAULT_BIRD_DIRECTORY)),
                asn: self::asn(asn, &path.field("asn"), p).unwrap_or(1),
                router_id: self::router_id(router_id, &path.field("router_id"), p),
                peers: self::peers(peers, base_dir, &path.field("peers"), p),
                hold_time: self::hold_time(hold_time, &path.field("hold_time"), p),
                bfd: {
                    let at = path.field("bfd");
                    self::bfd(take(bfd, &at, p).unwrap_or_default(), &at, p)
                },
            })
        }
        Some("keepalived") => {
            let given = [
                ("control_socket", control_socket.is_some()),
                ("asn", asn.is_some()),
                ("router_id", router_id.is_some()),
                ("peers", !peers.is_empty()),
                ("hold_time", hold_time.is_some()),
                ("bfd", bfd.is_some()),
            ];
            for (field, _) in given.iter().filter(|(_, given)| *given) {
                p.push(
                    &path.field(field),
                    "BGP only (`daemon: bird`): keepalived announces the addresses by VRRP on its own interface",
                );
            }
            Daemon::Keepalived(Vrrp {
                directory: base_dir
                    .join(directory.as_deref().unwrap_or(DEFAULT_KEEPALIVED_DIRECTORY)),
                pid_file: pid_file.map(|file| base_dir.join(file)),
            })
        }
        Some(other) => {
            p.push(
                &path.field("daemon"),
                format!("`{other}` is not supported: `bird` (BGP through BIRD 2) or `keepalived` (VRRP)"),
            );
            return None;
        }
        None => {
            p.push(&path.field("daemon"), "required: `bird` or `keepalived`");
            return None;
        }
    };
    let announce = match announce.as_deref() {
        None | Some("always") => Announce::Always,
        Some("healthy") => Announce::Healthy,
        Some(other) => {
            p.push(
                &path.field("announce"),
                format!("`{other}`: expected `always` or `healthy`"),
            );
            Announce::Always
        }
    };
    let mut withdraw_delay = Duration::from_secs(2);
    set_duration(
        delay,
        &mut withdraw_delay,
        DurationRange {
            min: Duration::ZERO,
            max: Duration::from_secs(300),
        },
        &path.field("withdraw_delay"),
        p,
    );
    let bgp = matches!(daemon, Daemon::Bird(_));
    let pools = self::pools(pools, kubernetes, bgp, &path.field("pools"), p);
    Some(Routing {
        daemon,
        announce,
        withdraw_delay,
        pools,
    })
}

fn router_id(text: Option<String>, path: &FieldPath, p: &mut Problems) -> Option<Ipv4Addr> {
    let text = text?;
    match text.parse::<Ipv4Addr>() {
        Ok(id) if !id.is_unspecified() => Some(id),
        _ => {
            p.push(
                path,
                format!("`{text}` is not a router ID: an IPv4 address other than 0.0.0.0"),
            );
            None
        }
    }
}

fn hold_time(text: Option<DurationText>, path: &FieldPath, p: &mut Problems) -> Duration {
    let mut hold_time = Duration::from_secs(9);
    if text.as_ref().is_some_and(|t| t.0.subsec_nanos() != 0) {
        p.push(path, "must be a whole number of seconds");
    }
    set_duration(
        text,
        &mut hold_time,
        DurationRange {
            min: Duration::from_secs(3),
            max: Duration::from_secs(65_535),
        },
        path,
        p,
    );
    hold_time
}

fn asn(value: Option<u64>, path: &FieldPath, p: &mut Problems) -> Option<u32> {
    match value {
        Some(asn) if ASN_RANGE.contains(&asn) => u32::try_from(asn).ok(),
        Some(asn) => {
            p.push(path, format!("{asn} is not an AS number: 1 to 4294967294"));
            None
        }
        None => {
            p.push(path, "required");
            None
        }
    }
}

fn peers(
    items: Vec<Lenient<PeerFile>>,
    base_dir: &Path,
    path: &FieldPath,
    p: &mut Problems,
) -> Vec<Peer> {
    if items.is_empty() {
        p.push(
            path,
            "at least one peer: the router the addresses are announced to",
        );
    }
    if items.len() > MAX_PEERS {
        p.push(path, format!("{} peers: at most {MAX_PEERS}", items.len()));
    }
    let mut seen = BTreeSet::new();
    let mut peers = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let at = path.index(i);
        let Some(file) = take(Some(item), &at, p) else {
            continue;
        };
        let address = match file.address.as_deref().map(str::parse::<IpAddr>) {
            Some(Ok(ip)) if !ip.is_unspecified() && !ip.is_multicast() => Some(ip),
            Some(_) => {
                p.push(
                    &at.field("address"),
                    format!(
                        "`{}` is not a peer's address (an IPv4 or IPv6 unicast address)",
                        file.address.as_deref().unwrap_or_default()
                    ),
                );
                None
            }
            None => {
                p.push(&at.field("address"), "required");
                None
            }
        };
        if let Some(ip) = address {
            if !seen.insert(ip) {
                p.push(&at.field("address"), format!("{ip} is listed twice"));
            }
        }
        let asn = asn(file.asn, &at.field("asn"), p);
        let password = file
            .password_file
            .and_then(|name| password(&base_dir.join(name), &at.field("password_file"), p));
        if let (Some(address), Some(asn)) = (address, asn) {
            peers.push(Peer {
                address,
                asn,
                password,
                bfd: file.bfd.unwrap_or(false),
            });
        }
    }
    peers
}

fn password(file: &Path, path: &FieldPath, p: &mut Problems) -> Option<Password> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(err) => {
            p.push(path, format!("cannot read {}: {err}", file.display()));
            return None;
        }
    };
    let secret = text.trim();
    if secret.is_empty() || secret.len() > MAX_PASSWORD {
        p.push(
            path,
            format!(
                "{} holds {} characters: a password has 1 to {MAX_PASSWORD}",
                file.display(),
                secret.len()
            ),
        );
        return None;
    }
    // It is written into the daemon's configuration as a quoted string.
    if !secret
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        p.push(
            path,
            format!(
                "{}: a password is printable ASCII without spaces, `\"` or `\\`",
                file.display()
            ),
        );
        return None;
    }
    Some(Password::new(file.to_owned(), secret.to_owned()))
}

fn bfd(file: BfdFile, path: &FieldPath, p: &mut Problems) -> Bfd {
    let mut bfd = Bfd {
        interval: Duration::from_millis(100),
        multiplier: 3,
    };
    set_duration(
        file.interval,
        &mut bfd.interval,
        DurationRange {
            min: Duration::from_millis(10),
            max: Duration::from_secs(10),
        },
        &path.field("interval"),
        p,
    );
    if let Some(multiplier) = file.multiplier {
        match u8::try_from(multiplier) {
            Ok(m) if m >= 1 => bfd.multiplier = m,
            _ => p.push(
                &path.field("multiplier"),
                format!("{multiplier}: expected 1 to 255"),
            ),
        }
    }
    bfd
}

fn pools(
    items: Vec<Lenient<RoutedPoolFile>>,
    kubernetes: Option<&Kubernetes>,
    bgp: bool,
    path: &FieldPath,
    p: &mut Problems,
) -> Vec<RoutedPool> {
    let known = kubernetes
        .map(|k| k.address_pools.as_slice())
        .unwrap_or_default();
    if items.is_empty() {
        if known.is_empty() {
            p.push(
                path,
                "nothing to announce: list the addresses of the file's services here (`addresses:`), or add `kubernetes.address_pools`",
            );
        }
        return known
            .iter()
            .map(|pool| RoutedPool {
                name: pool.name.clone(),
                ranges: pool.ranges.clone(),
                communities: Vec::new(),
                local_preference: None,
            })
            .collect();
    }
    if items.len() > MAX_POOLS {
        p.push(path, format!("{} pools: at most {MAX_POOLS}", items.len()));
    }
    let mut pools = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let at = path.index(i);
        let Some(file) = take(Some(item), &at, p) else {
            continue;
        };
        let (name, ranges) = match (file.name, file.addresses.is_empty()) {
            (Some(name), true) => match known.iter().find(|pool| pool.name == name) {
                Some(pool) => (name, pool.ranges.clone()),
                None => {
                    p.push(
                        &at.field("name"),
                        format!("no pool `{name}` in `kubernetes.address_pools`"),
                    );
                    continue;
                }
            },
            (None, false) => {
                let list = at.field("addresses");
                if file.addresses.len() > MAX_POOL_ENTRIES {
                    p.push(
                        &list,
                        format!(
                            "{} entries: at most {MAX_POOL_ENTRIES}",
                            file.addresses.len()
                        ),
                    );
                }
                let ranges = file
                    .addresses
                    .iter()
                    .enumerate()
                    .filter_map(|(j, text)| {
                        let range = parse_range(text, false);
                        if range.is_none() {
                            p.push(
                                &list.index(j),
                                format!(
                                    "`{text}` is not an address, a CIDR or a range `first-last`"
                                ),
                            );
                        }
                        range
                    })
                    .collect();
                (format!("pools[{i}]"), ranges)
            }
            (Some(_), false) => {
                p.push(&at, "`name` and `addresses` both given: choose one");
                continue;
            }
            (None, true) => {
                p.push(&at, "`name` (a Kubernetes pool) or `addresses` required");
                continue;
            }
        };
        if !bgp && (!file.communities.is_empty() || file.local_preference.is_some()) {
            p.push(
                &at,
                "`communities` and `local_preference` are BGP attributes (`daemon: bird`)",
            );
        }
        let communities = communities(&file.communities, &at.field("communities"), p);
        let local_preference = file.local_preference.and_then(|value| {
            let parsed = u32::try_from(value).ok();
            if parsed.is_none() {
                p.push(
                    &at.field("local_preference"),
                    format!("{value}: expected 0 to 4294967295"),
                );
            }
            parsed
        });
        pools.push(RoutedPool {
            name,
            ranges,
            communities,
            local_preference,
        });
    }
    pools
}

fn communities(texts: &[String], path: &FieldPath, p: &mut Problems) -> Vec<Community> {
    if texts.len() > MAX_COMMUNITIES {
        p.push(
            path,
            format!("{} communities: at most {MAX_COMMUNITIES}", texts.len()),
        );
    }
    texts
        .iter()
        .enumerate()
        .filter_map(|(i, text)| {
            let community = Community::parse(text);
            if community.is_none() {
                p.push(
                    &path.index(i),
                    format!("`{text}` is not a community: `65000:100` (each 0 to 65535) or a large one, `65000:1:2` (each 0 to 4294967295)"),
                );
            }
            community
        })
        .collect()
}
