//! `X-Forwarded-For` and `X-Forwarded-Proto`, one policy for every path that forwards HTTP (the
//! HTTP/1 relay, the HTTP/2 server, the upgrade tunnel and requests to h2c backends): from a client inside
//! `trusted_proxies` the prior values are kept and the client's address appended; from anyone
//! else they are replaced, as they would let a client claim any address or scheme.

use std::io::Write as _;
use std::net::IpAddr;

use crate::route::Route;

/// The longest text of an IP address (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`).
const MAX_IP_TEXT: usize = 45;

/// A client's IP address with its text, written once per connection: writing an address out
/// costs more than the rest of a request's forwarding headers together.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp {
    ip: IpAddr,
    text: [u8; MAX_IP_TEXT],
    len: u8,
}

impl ClientIp {
    /// `ip` and its text.
    pub fn new(ip: IpAddr) -> Self {
        let mut text = [0; MAX_IP_TEXT];
        let mut rest = &mut text[..];
        // Cannot fail: no address is longer than MAX_IP_TEXT.
        let _ = write!(rest, "{ip}");
        let len = (MAX_IP_TEXT - rest.len()) as u8;
        ClientIp { ip, text, len }
    }

    /// The address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The address as text.
    fn text(&self) -> &[u8] {
        &self.text[..usize::from(self.len)]
    }
}

/// The forwarding headers to send upstream.
#[derive(Debug, PartialEq, Eq)]
pub struct Forwarded {
    /// `X-Forwarded-For`, when there is anything to say.
    pub forwarded_for: Option<String>,
    /// `X-Forwarded-Proto`.
    pub forwarded_proto: String,
}

/// Whether the prior values of a request from `client` are kept, and the scheme the port
/// itself speaks.
fn policy(route: &Route, client: Option<&ClientIp>) -> (bool, &'static str) {
    let trusted =
        client.is_some_and(|client| route.port.settings.trusted_proxies.contains(client.ip));
    let own_proto = if route.port.protocol.terminates_tls() {
        "https"
    } else {
        "http"
    };
    (trusted, own_proto)
}

/// Computes the headers for a request from `client` carrying `prior_for`/`prior_proto`.
pub fn forwarded<'a>(
    route: &Route,
    client: Option<IpAddr>,
    prior_for: impl Iterator<Item = &'a str>,
    prior_proto: Option<&str>,
) -> Forwarded {
    let mut lines = Vec::new();
    append_forwarded(
        &mut lines,
        route,
        client.map(ClientIp::new).as_ref(),
        prior_for.map(str::as_bytes),
        prior_proto.map(str::as_bytes),
    );
    let mut forwarded = Forwarded {
        forwarded_for: None,
        forwarded_proto: String::new(),
    };
    for line in String::from_utf8_lossy(&lines).split_terminator("\r\n") {
        match line.split_once(": ") {
            Some((FORWARDED_FOR, value)) => forwarded.forwarded_for = Some(value.to_owned()),
            Some((_, value)) => forwarded.forwarded_proto = value.to_owned(),
            None => {}
        }
    }
    forwarded
}

/// The name of `X-Forwarded-For`, as written.
pub const FORWARDED_FOR: &str = "x-forwarded-for";
/// The name of `X-Forwarded-Proto`, as written.
pub const FORWARDED_PROTO: &str = "x-forwarded-proto";

/// Appends the forwarding header lines (`name: value\r\n`) for a request from `client`
/// carrying `prior_for`/`prior_proto` to `head`: the policy itself, written without
/// allocating beyond `head`.
pub fn append_forwarded<'a>(
    head: &mut Vec<u8>,
    route: &Route,
    client: Option<&ClientIp>,
    prior_for: impl Iterator<Item = &'a [u8]>,
    prior_proto: Option<&[u8]>,
) {
    let (trusted, own_proto) = policy(route, client);
    let start = head.len();
    head.extend_from_slice(FORWARDED_FOR.as_bytes());
    head.extend_from_slice(b": ");
    let value_start = head.len();
    if trusted {
        for prior in prior_for {
            if head.len() > value_start {
                head.extend_from_slice(b", ");
            }
            head.extend_from_slice(prior);
        }
    }
    if let Some(client) = client {
        if head.len() > value_start {
            head.extend_from_slice(b", ");
        }
        head.extend_from_slice(client.text());
    }
    if head.len() == value_start {
        head.truncate(start); // nothing to say
    } else {
        head.extend_from_slice(b"\r\n");
    }
    let proto = match prior_proto {
        Some(proto) if trusted => proto,
        _ => own_proto.as_bytes(),
    };
    head.extend_from_slice(FORWARDED_PROTO.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(proto);
    head.extend_from_slice(b"\r\n");
}
