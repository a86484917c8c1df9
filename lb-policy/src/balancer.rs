//! The balancing seam. A [`BalancerFactory`] sees the backend set when it changes and builds a
//! [`Balancer`] for it off the data path (where a table-based policy builds its table); the
//! balancer then answers one cheap [`Balancer::pick`] per connection or request. Wasm policy
//! plugins implement this same pair; the native [`crate::RoundRobin`] is the fallback when a
//! plugin faults, and the baseline a plugin's cost is measured against.
//!
//! Building computes only: a balancer may be built for a reload that is then refused, and is
//! dropped unused. What must happen once it serves (preparing per-thread instances, say) is
//! done by [`Balancer::activate`], which the runtime calls when it commits.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use lb_config::{Backend, HashKey, Protocol};
use xxhash_rust::xxh3::xxh3_64;

/// What a balancer may know about the connection or request it places.
#[derive(Clone, Copy, Debug)]
pub struct PickContext<'a> {
    /// The client's address.
    pub client: Option<SocketAddr>,
    /// TLS server name or HTTP `Host`, when known.
    pub authority: Option<&'a str>,
    /// What the port speaks.
    pub protocol: Protocol,
    /// The request's hash key (see [`hash_key`]).
    pub hash_key: u64,
    /// The HTTP request's headers, for policies that ask for one.
    pub headers: Option<&'a http::HeaderMap>,
}

/// Live figures of one backend, as policies see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Figures {
    /// Work in progress.
    pub in_flight: u32,
    /// Recent connect-to-response time, microseconds; 0 when unknown.
    pub latency_micros: u32,
    /// False while backing off or failing health checks.
    pub healthy: bool,
}

/// Live figures of the backends a balancer was built for, by index.
pub trait BackendFigures: Send + Sync {
    /// Figures of the backend at `index`, if there is one.
    fn figures(&self, index: usize) -> Option<Figures>;
}

/// The request's hash key, as the `gantry:plugins` contract specifies it: XXH3-64 (seed 0)
/// of the configured header's or cookie's value, or of the client IP's bytes (IPv4-mapped IPv6
/// counts as IPv4, so a dual-stack listener hashes a client as a v4 one does). Stable across
/// replicas and versions, which is what makes consistent hashing consistent.
pub fn hash_key(spec: &HashKey, client: Option<IpAddr>, headers: Option<&http::HeaderMap>) -> u64 {
    let chosen = match (spec, headers) {
        (HashKey::Header(name), Some(headers)) => headers.get(name).map(|v| v.as_bytes()),
        (HashKey::Cookie(name), Some(headers)) => cookie(headers, name),
        _ => None,
    };
    if let Some(value) = chosen {
        return xxh3_64(value);
    }
    match client {
        Some(IpAddr::V4(v4)) => xxh3_64(&v4.octets()),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => xxh3_64(&v4.octets()),
            None => xxh3_64(&v6.octets()),
        },
        None => 0,
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|header| header.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (key, value) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
            (key == name.as_bytes()).then_some(&value[1..])
        })
}

/// Why a policy has no answer of its own for a call (see [`Balancer::answer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unanswered {
    /// The call faulted: a trap, a missed deadline, an answer outside the set.
    Fault,
    /// The policy is quarantined after repeated faults and is not called.
    Quarantined,
}

/// Chooses a backend for each connection or request.
pub trait Balancer: Send + Sync {
    /// The policy's name, for logs and `/config`.
    fn name(&self) -> &str;

    /// Index (into the backend set this balancer was built for) of the backend to try.
    /// `attempt` counts the picks already made for this unit of work: a pick the host cannot
    /// use (a backend already tried, or backing off) is asked again with the next attempt.
    /// `None` means the policy has no answer; the host then scans for any usable backend.
    fn pick(&self, cx: &PickContext<'_>, attempt: u32) -> Option<usize>;

    /// The policy's own answer to [`Balancer::pick`], for a shadow's comparison: where `pick`
    /// would answer a fault with the fallback's choice, this says why the policy gave none.
    /// A policy that cannot fault answers as `pick` does.
    fn answer(&self, cx: &PickContext<'_>, attempt: u32) -> Result<Option<usize>, Unanswered> {
        Ok(self.pick(cx, attempt))
    }

    /// The balancer is about to serve: do what building must not (prepare what runs it).
    /// Called once, when the reload that built it commits. Nothing by default.
    fn activate(&self) {}
}

/// Builds a [`Balancer`] for a backend set; called whenever the set changes.
pub trait BalancerFactory: Send + Sync {
    /// The policy's name.
    fn name(&self) -> &str;

    /// A balancer for exactly these backends, in this order; `figures` reads their live state
    /// by the same indices. Computes only (see the module documentation).
    fn build(&self, backends: &[Backend], figures: Arc<dyn BackendFigures>) -> Box<dyn Balancer>;

    /// Whether its picks may read [`PickContext::headers`]. Where no policy of a port does
    /// (and its hash key is not a header or cookie), the HTTP path hands none over and saves
    /// building them. True unless a policy knows better.
    fn reads_headers(&self) -> bool {
        true
    }

    /// Whether the policy is quarantined after repeated faults, so that its picks are the
    /// native round-robin's. Never, unless a policy can fault.
    fn quarantined(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xxhash_rust::xxh3::xxh3_64;

    #[test]
    fn hash_keys_follow_the_contract() {
        let v4: IpAddr = "192.0.2.7".parse().expect("ip");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        let ip_key = hash_key(&HashKey::ClientIp, Some(v4), None);
        assert_eq!(ip_key, xxh3_64(&[192, 0, 2, 7]));
        assert_eq!(hash_key(&HashKey::ClientIp, Some(mapped), None), ip_key);
        let mut headers = http::HeaderMap::new();
        headers.insert("x-user", "alice".parse().expect("value"));
        headers.append("cookie", "a=1; session=s3cr3t".parse().expect("value"));
        let by_header = HashKey::Header("x-user".into());
        assert_eq!(
            hash_key(&by_header, Some(v4), Some(&headers)),
            xxh3_64(b"alice")
        );
        let by_cookie = HashKey::Cookie("session".into());
        assert_eq!(
            hash_key(&by_cookie, Some(v4), Some(&headers)),
            xxh3_64(b"s3cr3t")
        );
        let absent = HashKey::Cookie("other".into());
        assert_eq!(
            hash_key(&absent, Some(v4), Some(&headers)),
            ip_key,
            "falls back to the client IP"
        );
    }
}
