//! Who else holds an address and port. Gantry's sockets are bound with `SO_REUSEPORT` (a port
//! moved between a specific address and the wildcard binds while the old socket still
//! serves), and the kernel lets any socket of the same user with that option join them: a
//! second Gantry, say, with a control socket of its own. A port is shared only on purpose, so
//! every newly bound socket is checked against the others on its port, in this network
//! namespace (`/proc/net/{tcp,udp}{,6}`); one held by another process makes the apply fail
//! with that process's name, before the socket listens or serves.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A socket's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A TCP listening (or bound) socket.
    Tcp,
    /// A UDP socket.
    Udp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        })
    }
}

/// Another process's socket on a port this process binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The address it is bound to.
    pub address: SocketAddr,
    /// Its process id and command, when this process may see them.
    pub process: Option<(u32, String)>,
    /// Its owner's user id.
    pub uid: u32,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.process {
            Some((pid, command)) => write!(f, "{command} (pid {pid}) on {}", self.address),
            None => write!(f, "a process of user {} on {}", self.uid, self.address),
        }
    }
}

/// One socket as `/proc/net` lists it.
#[derive(Debug, PartialEq, Eq)]
struct Listed {
    address: SocketAddr,
    uid: u32,
    inode: u64,
}

/// The first socket of another process that shares a port with one of `bound` (the same
/// protocol and port, and the same address or the wildcard of its family on either side).
pub fn held_elsewhere(bound: &[(Transport, SocketAddr)]) -> Option<(Transport, Holder)> {
    if bound.is_empty() {
        return None;
    }
    let ours = own_sockets();
    // Each table read once, however many sockets a plan binds: a read walks every socket of
    // the host, so one read per bound socket made binding N ports cost N².
    let mut tables: HashMap<(Transport, bool), Vec<Listed>> = HashMap::new();
    for &(transport, address) in bound {
        let listed = tables
            .entry((transport, address.is_ipv4()))
            .or_insert_with(|| listed(transport, address.is_ipv4()));
        if let Some(other) = listed
            .iter()
            .find(|l| !ours.contains(&l.inode) && overlaps(l.address, address))
        {
            return Some((
                transport,
                Holder {
                    address: other.address,
                    process: process_holding(other.inode),
                    uid: other.uid,
                },
            ));
        }
    }
    None
}

/// Whether two bound addresses of one family share a port.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The socket inodes this process holds.
fn own_sockets() -> HashSet<u64> {
    sockets_of("/proc/self/fd")
}

fn sockets_of(fd_dir: &str) -> HashSet<u64> {
    let Ok(entries) = std::fs::read_dir(fd_dir) else {
        return HashSet::new();
    };
    entries
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| socket_inode(&target.to_string_lossy()))
        .collect()
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The process holding the socket `inode`, if this process may look into it.
fn process_holding(inode: u64) -> Option<(u32, String)> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if sockets_of(&format!("/proc/{pid}/fd")).contains(&inode) {
            let command = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_owned())
                .unwrap_or_else(|_| "?".into());
            return Some((pid, command));
        }
    }
    None
}

/// The bound sockets of one protocol and family: TCP sockets listening or bound, UDP sockets
/// not connected (a connected one takes only its peer's datagrams).
fn listed(transport: Transport, ipv4: bool) -> Vec<Listed> {
    let file = match (transport, ipv4) {
        (Transport::Tcp, true) => "/proc/net/tcp",
        (Transport::Tcp, false) => "/proc/net/tcp6",
        (Transport::Udp, true) => "/proc/net/udp",
        (Transport::Udp, false) => "/proc/net/udp6",
    };
    let text = std::fs::read_to_string(file).unwrap_or_default();
    // TCP_LISTEN is 0A, TCP_CLOSE (bound, not listening; an unconnected UDP socket) 07.
    let states: &[&str] = match transport {
        Transport::Tcp => &["0A", "07"],
        Transport::Udp => &["07"],
    };
    text.lines()
        .skip(1)
        .filter_map(|line| parse_line(line, states))
        .collect()
}

/// One line of `/proc/net/{tcp,udp}{,6}`: `sl local rem st queues tr retrnsmt uid timeout
/// inode ...`.
fn parse_line(line: &str, states: &[&str]) -> Option<Listed> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if !states.contains(fields.get(3)?) {
        return None;
    }
    Some(Listed {
        address: parse_address(fields.get(1)?)?,
        uid: fields.get(7)?.parse().ok()?,
        inode: fields.get(9)?.parse().ok()?,
    })
}

/// `0100007F:1F90` or 32 hex digits and a port: the address words as the kernel keeps them
/// (each 32-bit word printed in host order, which is little-endian here).
fn parse_address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_le_bytes(),
        )
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_lines_read_as_addresses() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000   994        0 232 1 0 100 0 0 10 0";
        assert_eq!(
            parse_line(v4, &["0A"]),
            Some(Listed {
                address: "127.0.0.1:8080".parse().expect("addr"),
                uid: 994,
                inode: 232,
            })
        );
        assert_eq!(parse_line(v4, &["07"]), None, "another state");
        let v6 = "  1: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4711 2 0 0";
        assert_eq!(
            parse_line(v6, &["07"]).map(|l| l.address),
            Some("[::1]:53".parse().expect("addr"))
        );
        assert_eq!(socket_inode("socket:[4711]"), Some(4711));
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn a_port_is_shared_with_the_same_address_or_a_wildcard() {
        let a = |s: &str| -> SocketAddr { s.parse().expect("addr") };
        assert!(overlaps(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(overlaps(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(overlaps(a("127.0.0.1:80"), a("0.0.0.0:80")));
        assert!(!overlaps(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!overlaps(a("127.0.0.1:80"), a("127.0.0.1:81")));
    }

    /// A socket of this process is never "held elsewhere" (another process's is: the
    /// `upgrade::a_second_gantry_with_a_control_socket_of_its_own_…` test).
    #[test]
    fn a_port_this_process_holds_is_not_held_elsewhere() {
        let ours = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let address = ours.local_addr().expect("addr");
        assert_eq!(held_elsewhere(&[(Transport::Udp, address)]), None);
        let wildcard = SocketAddr::from(([0, 0, 0, 0], address.port()));
        assert_eq!(held_elsewhere(&[(Transport::Udp, wildcard)]), None);
    }
}
