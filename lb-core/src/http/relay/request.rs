//! A client's HTTP/1 request head, checked as RFC 9112 asks of a server and rewritten for the
//! backend: what Gantry decides about it (body framing, keep-alive, method) and the head it
//! sends upstream, which is the client's own header lines, in order and case, minus the
//! hop-by-hop ones, with the forwarding headers set by policy and one canonical
//! `Content-Length`.
//!
//! A request in absolute form (`GET http://a.example/ HTTP/1.1`) goes with the target's
//! authority as its `Host`, whatever `Host` the client sent (RFC 9112 §3.2.2), and that
//! authority is what policies see.
//!
//! Refused with 400 (never forwarded): an HTTP/1.1 request without `Host`, more than one
//! `Host`, a `Host` that is not `uri-host[:port]` (§3.2), an absolute-form target whose
//! authority is not one; a `Content-Length` that is not a
//! number (lists of one repeated value are collapsed, RFC 9110 §8.6; differing ones were
//! refused by the head reader); a `Transfer-Encoding` whose last coding is not `chunked`, that
//! names `chunked` twice, or that comes in HTTP/1.0 (§6.1). `CONNECT` is 405.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::framing::{parse_length, push_content_length, Framing};
use crate::http::exchange::is_idempotent;
use crate::http::forwarding::{append_forwarded, ClientIp, FORWARDED_FOR, FORWARDED_PROTO};
use crate::metrics::Rejection;
use crate::route::Route;

/// httparse's header slots for one head; the head reader refuses heads with more headers
/// than the port allows, which is at most this.
pub const HEADER_SLOTS: usize = 256;

/// Hop-by-hop fields (RFC 9110 §7.6.1, and the obsolete ones proxies still strip): they
/// describe one connection, not the message; the same list serves requests and responses.
pub(crate) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// What the relay needs to know of a request, its head already on its way upstream.
#[derive(Debug)]
pub struct Request {
    /// Length of the head in the client's buffer.
    pub head_len: usize,
    /// Where the body ends.
    pub framing: Framing,
    /// The client wants the connection kept after the response.
    pub keep_alive: bool,
    /// HTTP/1.0 (its responses cannot be chunked).
    pub http10: bool,
    /// `HEAD`: its response has no body whatever its headers say.
    pub head_method: bool,
    /// Safe to send again on another connection if the first one was dead.
    pub idempotent: bool,
    /// The method, within the head.
    pub method: Range<usize>,
    /// The request target, within the head.
    pub target: Range<usize>,
    /// The authority: the absolute-form target's, else the `Host` value; within the head.
    pub host: Option<Range<usize>>,
    /// The headers as a map, for balancing and affinity policies that may read them (none
    /// otherwise: building it costs allocations per request).
    pub headers: Option<http::HeaderMap>,
}

/// Parses the complete head at the start of `buf`, checks it, and writes the head to send
/// upstream into `upstream` (cleared first). `client` is the client's address.
pub fn parse(
    buf: &[u8],
    route: &Route,
    client: Option<&ClientIp>,
    upstream: &mut Vec<u8>,
) -> Result<Request, Rejection> {
    // Uninitialised: zeroing the slots would cost more than parsing a small head.
    let mut slots = [MaybeUninit::uninit(); HEADER_SLOTS];
    let mut parsed = httparse::Request::new(&mut []);
    let head_len = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        _ => return Err(Rejection::Malformed),
    };
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(Rejection::Malformed);
    };
    if method == "CONNECT" {
        return Err(Rejection::MethodNotAllowed);
    }
    let http10 = version == 0;
    let fields = Fields::read(parsed.headers, http10)?;
    let absolute = absolute_authority(target.as_bytes())?;
    let framing = match (fields.chunked, fields.length) {
        (true, _) => Framing::Chunked,
        (false, Some(0) | None) => Framing::Empty,
        (false, Some(length)) => Framing::Length(length),
    };
    let keep_alive = if http10 {
        fields.keep_alive
    } else {
        !fields.close
    };
    write_upstream_head(
        upstream,
        method,
        target,
        parsed.headers,
        &fields,
        absolute,
        route,
        client,
        false,
    );
    let host = absolute.or(fields.host).map(|h| within(buf, h));
    Ok(Request {
        head_len,
        framing,
        keep_alive,
        http10,
        head_method: method == "HEAD",
        idempotent: is_idempotent(method.as_bytes()),
        method: within(buf, method.as_bytes()),
        target: within(buf, target.as_bytes()),
        host,
        headers: route.reads_headers.then(|| header_map(parsed.headers)),
    })
}

/// What the tunnel needs to know of an upgrade request, its head already written for the
/// backend.
#[derive(Debug)]
pub struct UpgradeHead {
    /// Length of the head in the client's buffer.
    pub head_len: usize,
    /// The method, within the head.
    pub method: Range<usize>,
    /// The request target, within the head.
    pub target: Range<usize>,
    /// The authority (see [`Request::host`]), within the head.
    pub host: Option<Range<usize>>,
    /// The headers, for policies that read them (see [`Request::headers`]).
    pub headers: Option<http::HeaderMap>,
}

/// Writes the head of an upgrade request (`Connection` and `Upgrade` kept) for the tunnel, or
/// `None` when the head is not a complete, valid request.
pub fn upgrade_head(
    buf: &[u8],
    route: &Route,
    client: Option<&ClientIp>,
    upstream: &mut Vec<u8>,
) -> Option<UpgradeHead> {
    let mut slots = [MaybeUninit::uninit(); HEADER_SLOTS];
    let mut parsed = httparse::Request::new(&mut []);
    let httparse::Status::Complete(head_len) =
        parsed.parse_with_uninit_headers(buf, &mut slots).ok()?
    else {
        return None;
    };
    let fields = Fields::read(parsed.headers, parsed.version? == 0).ok()?;
    let (method, target) = (parsed.method?, parsed.path?);
    let absolute = absolute_authority(target.as_bytes()).ok()?;
    write_upstream_head(
        upstream,
        method,
        target,
        parsed.headers,
        &fields,
        absolute,
        route,
        client,
        true,
    );
    Some(UpgradeHead {
        head_len,
        method: within(buf, method.as_bytes()),
        target: within(buf, target.as_bytes()),
        host: absolute.or(fields.host).map(|h| within(buf, h)),
        headers: route.reads_headers.then(|| header_map(parsed.headers)),
    })
}

/// Where `part`, a slice of `buf`, lies in it.
fn within(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// What the header fields say, checked.
struct Fields<'h> {
    host: Option<&'h [u8]>,
    length: Option<u64>,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    /// Fields the client's `Connection` names (hop-by-hop for this request).
    nominated: Nominated<'h>,
}

impl<'h> Fields<'h> {
    fn read(headers: &[httparse::Header<'h>], http10: bool) -> Result<Self, Rejection> {
        let mut fields = Fields {
            host: None,
            length: None,
            chunked: false,
            close: false,
            keep_alive: false,
            nominated: Nominated::default(),
        };
        let mut transfer_encoding = false;
        for header in headers {
            let name = header.name;
            if name.eq_ignore_ascii_case("host") {
                if fields.host.is_some() || !valid_host(header.value) {
                    return Err(Rejection::Malformed);
                }
                fields.host = Some(header.value);
            } else if name.eq_ignore_ascii_case("content-length") {
                // Every value is the same (the head reader refused differing ones).
                for value in header.value.split(|b| *b == b',') {
                    fields.length =
                        Some(parse_length(value.trim_ascii()).ok_or(Rejection::Malformed)?);
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                for coding in header.value.split(|b| *b == b',') {
                    let coding = coding.trim_ascii();
                    if coding.is_empty() {
                        continue;
                    }
                    // `chunked` must be the last coding, applied once.
                    if fields.chunked {
                        return Err(Rejection::Malformed);
                    }
                    fields.chunked = coding.eq_ignore_ascii_case(b"chunked");
                }
                transfer_encoding = true;
            } else if name.eq_ignore_ascii_case("connection") {
                for token in header.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    fields.close |= token.eq_ignore_ascii_case(b"close");
                    fields.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                    fields.nominated.push(token);
                }
            }
        }
        if transfer_encoding && (!fields.chunked || http10) {
            return Err(Rejection::Malformed);
        }
        if transfer_encoding && fields.length.is_some() {
            return Err(Rejection::AmbiguousLength);
        }
        if fields.host.is_none() && !http10 {
            return Err(Rejection::Malformed);
        }
        Ok(fields)
    }

    /// Whether a field is not passed on: hop-by-hop, named by `Connection`, or rewritten.
    fn skipped(&self, name: &str) -> bool {
        HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
            || name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case(FORWARDED_FOR)
            || name.eq_ignore_ascii_case(FORWARDED_PROTO)
            || (self.nominated.contains(name) && !end_to_end(name))
    }
}

/// Fields that framing and routing depend on: a `Connection` header cannot make them
/// hop-by-hop.
pub(super) fn end_to_end(name: &str) -> bool {
    ["host", "content-length", "transfer-encoding"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
}

#[allow(clippy::too_many_arguments)] // one head, described by its parts
fn write_upstream_head(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    headers: &[httparse::Header<'_>],
    fields: &Fields<'_>,
    absolute: Option<&[u8]>,
    route: &Route,
    client: Option<&ClientIp>,
    upgrade: bool,
) {
    out.clear();
    out.reserve(super::HEAD_ROOM);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut prior_proto = None;
    for header in headers {
        let name = header.name;
        if name.eq_ignore_ascii_case(FORWARDED_PROTO) && prior_proto.is_none() {
            prior_proto = Some(header.value);
        }
        let kept_for_upgrade = upgrade
            && (name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("upgrade"));
        let overridden = absolute.is_some() && name.eq_ignore_ascii_case("host");
        if (fields.skipped(name) && !kept_for_upgrade) || overridden {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(header.value);
        out.extend_from_slice(b"\r\n");
    }
    if absolute.is_some() || fields.host.is_none() {
        // The absolute-form target's authority wins over `Host` (RFC 9112 §3.2.2); and only
        // an HTTP/1.0 request comes without `Host`, leaving as HTTP/1.1, which needs one
        // (§3.2): empty when the target has no authority.
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(absolute.unwrap_or_default());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(length) = fields.length.filter(|_| !fields.chunked) {
        push_content_length(out, length);
    }
    let prior_for = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(FORWARDED_FOR))
        .map(|h| h.value);
    append_forwarded(out, route, client, prior_for, prior_proto);
    out.extend_from_slice(b"\r\n");
}

/// The authority of an absolute-form target (`http://host:port/path`); `None` for any other
/// form; refused when the target is absolute but its authority is not a valid
/// `uri-host[:port]` (userinfo, junk, or none at all).
fn absolute_authority(target: &[u8]) -> Result<Option<&[u8]>, Rejection> {
    if target.first() == Some(&b'/') || target == b"*" {
        return Ok(None);
    }
    let Some(scheme_end) = target.windows(3).position(|w| w == b"://") else {
        return Ok(None);
    };
    let rest = &target[scheme_end + 3..];
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    if !authority.is_empty() && valid_host(authority) {
        Ok(Some(authority))
    } else {
        Err(Rejection::Malformed)
    }
}

/// `uri-host [ ":" port ]` (RFC 9112 §3.2, RFC 3986 §3.2.2), or empty.
fn valid_host(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|b| *b == b']') else {
            return false;
        };
        let literal = &value[1..end];
        let ok = !literal.is_empty()
            && literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'v' | b'V'));
        if !ok {
            return false;
        }
        (&value[..0], &value[end + 1..])
    } else {
        match value.iter().rposition(|b| *b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &value[value.len()..]),
        }
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    port_ok
        && host.iter().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        })
}

/// The headers as an `http::HeaderMap`, for policies; fields that are not valid there (which
/// httparse would not have accepted anyway) are left out.
fn header_map(headers: &[httparse::Header<'_>]) -> http::HeaderMap {
    let mut map = http::HeaderMap::with_capacity(headers.len());
    for header in headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(header.name.as_bytes()),
            http::HeaderValue::from_bytes(header.value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// The names a `Connection` header nominates, kept without allocating: up to eight; more
/// are unusual enough to pass on (they are not hop-by-hop by any standard).
#[derive(Default)]
pub(super) struct Nominated<'h> {
    names: [&'h [u8]; 8],
    len: usize,
}

impl<'h> Nominated<'h> {
    pub(super) fn push(&mut self, name: &'h [u8]) {
        if self.len < self.names.len() {
            self.names[self.len] = name;
            self.len += 1;
        }
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.names[..self.len]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absolute_targets_authority_is_taken_and_a_bad_one_refused() {
        assert_eq!(absolute_authority(b"http://b:8/p?q"), Ok(Some(&b"b:8"[..])));
        assert_eq!(absolute_authority(b"http://[::1]"), Ok(Some(&b"[::1]"[..])));
        assert_eq!(absolute_authority(b"/p"), Ok(None));
        assert_eq!(absolute_authority(b"*"), Ok(None));
        assert_eq!(
            absolute_authority(b"http://user@b/"),
            Err(Rejection::Malformed),
            "userinfo is not a host"
        );
        assert_eq!(absolute_authority(b"http:///p"), Err(Rejection::Malformed));
    }

    #[test]
    fn an_absolute_targets_authority_replaces_the_clients_host() {
        let yaml = "services:\n  - name: s\n    address: 127.0.0.1\n    ports:\n      - { name: http, port: 8080, protocol: http, backends: [\"127.0.0.1:9\"] }\n";
        let model = lb_config::parse_str(yaml, std::path::Path::new("/")).expect("model");
        let route = Route::standalone(model.ports().next().expect("port")).expect("route");
        let head = b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\nAccept: */*\r\n\r\n";
        let mut upstream = Vec::new();
        let request = parse(head, &route, None, &mut upstream).expect("a valid request");
        let sent = String::from_utf8(upstream).expect("text");
        assert!(sent.contains("host: a.example\r\n"), "{sent}");
        assert!(!sent.contains("b.example"), "{sent}");
        assert_eq!(&head[request.host.expect("an authority")], b"a.example");
    }

    #[test]
    fn hosts_are_checked() {
        for good in [
            &b"a.test"[..],
            b"a.test:8080",
            b"127.0.0.1:80",
            b"[::1]",
            b"[::1]:443",
            b"",
        ] {
            assert!(valid_host(good), "{:?}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b"a b"[..],
            b"a.test:80x",
            b"a.test:123456",
            b"[::1",
            b"a/b",
            b"a@b",
            b"[zz]",
        ] {
            assert!(!valid_host(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
