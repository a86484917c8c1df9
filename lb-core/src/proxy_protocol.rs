//! PROXY protocol headers (HAProxy's spec, v1 and v2) sent to a backend before any client byte,
//! so the backend sees the client's address; over UDP, a v2 header (`DGRAM`) before each
//! datagram. Mixed address families (an IPv4 client on an IPv6
//! listener) are written as IPv6, with the IPv4 address mapped.

use std::net::{IpAddr, SocketAddr};

use lb_config::ProxyProtocol;

/// The v2 signature, the first 12 bytes of every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// v2 TLV type carrying the server name the client asked for (TLS SNI).
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;

/// The header announcing a connection from `client` to `local` (the address it reached).
/// `authority` (the TLS server name) is included in v2 when known.
pub fn header(
    version: ProxyProtocol,
    client: SocketAddr,
    local: SocketAddr,
    authority: Option<&str>,
) -> Vec<u8> {
    let (client, local) = same_family(client, local);
    match version {
        ProxyProtocol::V1 => v1(client, local),
        ProxyProtocol::V2 => v2(client, local, authority, STREAM),
    }
}

/// The v2 header a UDP datagram from `client` to `local` carries (`DGRAM`).
pub fn datagram_header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = same_family(client, local);
    v2(client, local, None, DGRAM)
}

/// The v2 transport nibble: a stream (TCP) or datagrams (UDP).
const STREAM: u8 = 0x1;
const DGRAM: u8 = 0x2;

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    match (a.ip(), b.ip()) {
        (IpAddr::V4(_), IpAddr::V6(_)) | (IpAddr::V6(_), IpAddr::V4(_)) => (as_v6(a), as_v6(b)),
        _ => (a, b),
    }
}

fn as_v6(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), addr.port()),
        IpAddr::V6(_) => addr,
    }
}

fn v1(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        client.ip(),
        local.ip(),
        client.port(),
        local.port()
    )
    .into_bytes()
}

fn v2(client: SocketAddr, local: SocketAddr, authority: Option<&str>, transport: u8) -> Vec<u8> {
    let mut addresses = Vec::with_capacity(36);
    let family = match (client.ip(), local.ip()) {
        (IpAddr::V4(c), IpAddr::V4(l)) => {
            addresses.extend_from_slice(&c.octets());
            addresses.extend_from_slice(&l.octets());
            0x10 | transport // AF_INET
        }
        (c, l) => {
            addresses.extend_from_slice(&to_v6_octets(c));
            addresses.extend_from_slice(&to_v6_octets(l));
            0x20 | transport // AF_INET6
        }
    };
    addresses.extend_from_slice(&client.port().to_be_bytes());
    addresses.extend_from_slice(&local.port().to_be_bytes());
    // A server name longer than the header can hold (its length field counts the addresses
    // and every TLV in 16 bits) is left out rather than truncated.
    let room = usize::from(u16::MAX) - addresses.len() - 3;
    if let Some(name) = authority.filter(|n| !n.is_empty() && n.len() <= room) {
        addresses.push(PP2_TYPE_AUTHORITY);
        addresses.extend_from_slice(&(name.len() as u16).to_be_bytes());
        addresses.extend_from_slice(name.as_bytes());
    }
    let mut out = Vec::with_capacity(16 + addresses.len());
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    out.push(family);
    out.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    out.extend_from_slice(&addresses);
    out
}

fn to_v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn v1_is_one_text_line() {
        let h = header(
            ProxyProtocol::V1,
            addr("192.0.2.1:5000"),
            addr("198.51.100.2:443"),
            None,
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 443\r\n");
    }

    #[test]
    fn v2_ipv4_layout() {
        let h = header(
            ProxyProtocol::V2,
            addr("192.0.2.1:5000"),
            addr("198.51.100.2:443"),
            None,
        );
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[192, 0, 2, 1]);
        assert_eq!(&h[20..24], &[198, 51, 100, 2]);
        assert_eq!(&h[24..28], &[0x13, 0x88, 0x01, 0xbb]);
    }

    #[test]
    fn v2_mixed_families_become_ipv6_and_carry_the_server_name() {
        let h = header(
            ProxyProtocol::V2,
            addr("192.0.2.1:5000"),
            addr("[2001:db8::1]:443"),
            Some("a.test"),
        );
        assert_eq!(h[13], 0x21);
        let len = u16::from_be_bytes([h[14], h[15]]) as usize;
        assert_eq!(len, 36 + 3 + 6);
        assert_eq!(
            &h[16..32],
            &"::ffff:192.0.2.1"
                .parse::<std::net::Ipv6Addr>()
                .expect("v6")
                .octets()
        );
        assert_eq!(&h[52..55], &[PP2_TYPE_AUTHORITY, 0, 6]);
        assert_eq!(&h[55..], b"a.test");
    }

    #[test]
    fn v1_mixed_families_use_tcp6() {
        let h = header(
            ProxyProtocol::V1,
            addr("192.0.2.1:1"),
            addr("[::1]:2"),
            None,
        );
        assert_eq!(h, b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n");
    }
}
