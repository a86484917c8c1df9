//! `X-Forwarded-For` and `X-Forwarded-Proto`, one policy for every path that forwards HTTP (the
//! pingora gateway and the upgrade tunnel): from a client inside `trusted_proxies` the prior
//! values are kept and the client's address appended; from anyone else they are replaced, as
//! they would let a client claim any address or scheme.

use std::net::IpAddr;

use crate::route::Route;

/// The forwarding headers to send upstream.
#[derive(Debug, PartialEq, Eq)]
pub struct Forwarded {
    /// `X-Forwarded-For`, when there is anything to say.
    pub forwarded_for: Option<String>,
    /// `X-Forwarded-Proto`.
    pub forwarded_proto: String,
}

/// Computes the headers for a request from `client` carrying `prior_for`/`prior_proto`.
pub fn forwarded<'a>(
    route: &Route,
    client: Option<IpAddr>,
    prior_for: impl Iterator<Item = &'a str>,
    prior_proto: Option<&str>,
) -> Forwarded {
    let trusted = client.is_some_and(|ip| is_trusted(route, ip));
    let mut parts: Vec<&str> = if trusted {
        prior_for.collect()
    } else {
        Vec::new()
    };
    let client = client.map(|ip| ip.to_string());
    if let Some(client) = &client {
        parts.push(client);
    }
    let own_proto = if route.port.protocol.terminates_tls() {
        "https"
    } else {
        "http"
    };
    Forwarded {
        forwarded_for: (!parts.is_empty()).then(|| parts.join(", ")),
        forwarded_proto: match prior_proto {
            Some(proto) if trusted => proto.to_owned(),
            _ => own_proto.to_owned(),
        },
    }
}

fn is_trusted(route: &Route, ip: IpAddr) -> bool {
    route.port.settings.trusted_proxies.contains(ip)
}
