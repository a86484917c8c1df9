//! Entry points for the fuzz targets in `fuzz/` (libFuzzer, coverage-guided) and for the test
//! that replays their checked-in corpora on every `cargo test`. Each takes arbitrary bytes,
//! drives one parser or writer that meets untrusted input, and panics only when a property
//! is broken; a panic from the code under test is a finding too.
//!
//! - [`http_request`]: the head reader's checks, then the relay's request parse and rewrite.
//!   What is forwarded must be a complete request head with at most one `Content-Length`,
//!   never together with chunked framing.
//! - [`chunked_body`]: the chunked-body scanner, fed whole or split at an arbitrary point:
//!   the same verdict and the same content either way.
//! - [`proxy_protocol`]: the PROXY protocol writer (v1, v2, v2 datagram), read back by an
//!   independent parser: the addresses and the server name survive the trip.
//! - [`plugin_answers`]: a health plugin's probe plan and an affinity plugin's response
//!   header, as the host takes them: what it acts on is one well-formed probe request (the
//!   path and host the plugin asked for, nothing smuggled in), a probe no more often than
//!   every 100 ms, and a header that is one header line.
//!
//! The configuration loader's target is `lb_config::fuzzing`, the Kubernetes source's
//! `lb_k8s::fuzzing`: each target's body lives in the crate it tests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;

use lb_config::ProxyProtocol;

use crate::http::forwarding::ClientIp;
use crate::http::head::{inspect, HeadLimits, Inspection};
use crate::http::relay::framing::{Body, Framing};
use crate::http::relay::request;
use crate::route::Route;

/// The route requests are parsed for: an `http` port with the default limits.
fn route() -> &'static Route {
    static ROUTE: OnceLock<Route> = OnceLock::new();
    ROUTE.get_or_init(|| {
        let yaml = "services:\n  - name: fuzz\n    address: 127.0.0.1\n    ports:\n      - { name: http, port: 8080, protocol: http, backends: [\"127.0.0.1:9\"] }\n";
        let model = lb_config::parse_str(yaml, std::path::Path::new("/"))
            .unwrap_or_else(|e| panic!("the fuzzing model is valid: {e}"));
        let port = model.ports().next().unwrap_or_else(|| panic!("one port"));
        Route::standalone(port).unwrap_or_else(|e| panic!("the fuzzing route builds: {e}"))
    })
}

/// The head reader's checks on `data`, then, for a complete head it passes, the relay's
/// parse and rewrite (see the module documentation for the properties).
pub fn http_request(data: &[u8]) {
    let route = route();
    let limits = &route.port.settings.limits;
    let head_limits = HeadLimits {
        max_bytes: limits.max_header_bytes as usize,
        max_headers: limits.max_headers as usize,
        header_timeout: std::time::Duration::ZERO,
        idle_timeout: std::time::Duration::ZERO,
    };
    if !matches!(
        inspect(data, head_limits),
        Inspection::Complete { upgrade: false }
    ) {
        return;
    }
    let client = ClientIp::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    let mut upstream = Vec::new();
    let Ok(parsed) = request::parse(data, route, Some(&client), &mut upstream) else {
        return;
    };
    assert!(parsed.head_len <= data.len());
    let mut slots = [httparse::EMPTY_HEADER; 512];
    let mut forwarded = httparse::Request::new(&mut slots);
    let status = forwarded.parse(&upstream);
    assert!(
        matches!(status, Ok(httparse::Status::Complete(n)) if n == upstream.len()),
        "the forwarded head is one complete head: {status:?} {:?}",
        String::from_utf8_lossy(&upstream)
    );
    let count = |name: &str| {
        forwarded
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    let lengths = count("content-length");
    let chunked = count("transfer-encoding");
    assert!(lengths <= 1, "one Content-Length at most");
    assert!(lengths == 0 || chunked == 0, "never both framings");
    if forwarded.version == Some(1) {
        assert_eq!(
            count("host"),
            1,
            "an HTTP/1.1 request goes with exactly one Host"
        );
    }
    let mut body = Body::new(parsed.framing, limits.max_header_bytes as usize);
    let _ = body.accept(&data[parsed.head_len..], |_| {});
}

/// The chunked scanner over `data[1..]`, whole and split at `data[0]` (scaled): the same
/// outcome either way.
pub fn chunked_body(data: &[u8]) {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let split = usize::from(split) * input.len() / 256;
    let whole = scan(&[input]);
    let pieces = scan(&[&input[..split], &input[split..]]);
    assert_eq!(
        whole, pieces,
        "the verdict does not depend on how the bytes arrive"
    );
}

/// What a chunked body made of `pieces` comes to: bytes consumed, content, done, or the
/// first error.
fn scan(pieces: &[&[u8]]) -> Result<(usize, Vec<u8>, bool), String> {
    let mut body = Body::new(Framing::Chunked, 1024);
    let mut content = Vec::new();
    let mut consumed = 0;
    let mut pending: Vec<u8> = Vec::new();
    for piece in pieces {
        pending.extend_from_slice(piece);
        let taken = body
            .accept(&pending, |range| content.extend_from_slice(&pending[range]))
            .map_err(|e| format!("{e:?}"))?;
        assert!(taken <= pending.len());
        consumed += taken;
        pending.drain(..taken);
        if body.is_done() {
            break;
        }
    }
    Ok((consumed, content, body.is_done()))
}

/// Headers written for addresses and a server name taken from `data`, read back.
pub fn proxy_protocol(data: &[u8]) {
    let mut bytes = data.iter().copied();
    let mut next = || bytes.next().unwrap_or(0);
    let mut address = |v6: bool| -> SocketAddr {
        let ip = if v6 {
            IpAddr::V6(Ipv6Addr::from(std::array::from_fn::<u8, 16, _>(|_| next())))
        } else {
            IpAddr::V4(Ipv4Addr::from(std::array::from_fn::<u8, 4, _>(|_| next())))
        };
        SocketAddr::new(ip, u16::from_be_bytes([next(), next()]))
    };
    let flags = data.first().copied().unwrap_or(0);
    let client = address(flags & 1 != 0);
    let local = address(flags & 2 != 0);
    let name_len = usize::from(u16::from_be_bytes([
        data.get(1).copied().unwrap_or(0),
        data.get(2).copied().unwrap_or(0),
    ]));
    let name: String = std::iter::repeat_n('n', name_len).collect();
    let authority = (flags & 4 != 0).then_some(name.as_str());
    let same_family = client.is_ipv4() == local.is_ipv4();
    let canonical = |a: SocketAddr| match (same_family, a.ip()) {
        (false, IpAddr::V4(v4)) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        _ => a,
    };

    let v1 = crate::proxy_protocol::header(ProxyProtocol::V1, client, local, authority);
    let line = std::str::from_utf8(&v1).unwrap_or_else(|_| panic!("v1 is text"));
    let fields: Vec<&str> = line
        .strip_suffix("\r\n")
        .unwrap_or_else(|| panic!("v1 ends its line"))
        .split(' ')
        .collect();
    assert!(v1.len() <= 107, "v1 fits its 107-byte maximum");
    assert_eq!(fields.len(), 6, "{line:?}");
    let read = |ip: &str, port: &str| -> SocketAddr {
        SocketAddr::new(
            ip.parse().unwrap_or_else(|_| panic!("an address: {ip}")),
            port.parse().unwrap_or_else(|_| panic!("a port: {port}")),
        )
    };
    assert_eq!(read(fields[2], fields[4]), canonical(client));
    assert_eq!(read(fields[3], fields[5]), canonical(local));

    for (header, datagram) in [
        (
            crate::proxy_protocol::header(ProxyProtocol::V2, client, local, authority),
            false,
        ),
        (crate::proxy_protocol::datagram_header(client, local), true),
    ] {
        let parsed = parse_v2(&header).unwrap_or_else(|why| panic!("v2 reads back: {why}"));
        assert_eq!(parsed.datagram, datagram);
        assert_eq!(parsed.client, canonical(client));
        assert_eq!(parsed.local, canonical(local));
        if !datagram {
            // The addresses take 12 bytes (IPv4) or 36 (IPv6) of the 16-bit length.
            let addresses = if same_family && client.is_ipv4() {
                12
            } else {
                36
            };
            let room = 65_535 - addresses - 3;
            let expected = authority.filter(|n| !n.is_empty() && n.len() <= room);
            assert_eq!(parsed.authority.as_deref(), expected);
        }
    }
}

struct ParsedV2 {
    datagram: bool,
    client: SocketAddr,
    local: SocketAddr,
    authority: Option<String>,
}

/// A PROXY v2 header read by the specification, independently of the writer.
fn parse_v2(header: &[u8]) -> Result<ParsedV2, String> {
    let rest = header
        .strip_prefix(&crate::proxy_protocol::V2_SIGNATURE)
        .ok_or("no signature")?;
    let [command, family, len_hi, len_lo, body @ ..] = rest else {
        return Err("short".into());
    };
    if *command != 0x21 {
        return Err(format!("command {command:#x}"));
    }
    let len = usize::from(u16::from_be_bytes([*len_hi, *len_lo]));
    if body.len() != len {
        return Err(format!("length {len} but {} bytes follow", body.len()));
    }
    let datagram = match family & 0x0f {
        1 => false,
        2 => true,
        other => return Err(format!("transport {other}")),
    };
    let (client_ip, local_ip, rest): (IpAddr, IpAddr, &[u8]) = match family >> 4 {
        1 if body.len() >= 12 => (
            IpAddr::from(<[u8; 4]>::try_from(&body[0..4]).map_err(|e| e.to_string())?),
            IpAddr::from(<[u8; 4]>::try_from(&body[4..8]).map_err(|e| e.to_string())?),
            &body[8..],
        ),
        2 if body.len() >= 36 => (
            IpAddr::from(<[u8; 16]>::try_from(&body[0..16]).map_err(|e| e.to_string())?),
            IpAddr::from(<[u8; 16]>::try_from(&body[16..32]).map_err(|e| e.to_string())?),
            &body[32..],
        ),
        other => return Err(format!("family {other} with {} bytes", body.len())),
    };
    let [cp_hi, cp_lo, lp_hi, lp_lo, tlvs @ ..] = rest else {
        return Err("no ports".into());
    };
    let mut tlvs: &[u8] = tlvs;
    let mut authority = None;
    while let [kind, hi, lo, value @ ..] = tlvs {
        let n = usize::from(u16::from_be_bytes([*hi, *lo]));
        let value_bytes = value.get(..n).ok_or("a TLV runs past the header")?;
        if *kind == crate::proxy_protocol::PP2_TYPE_AUTHORITY {
            authority = Some(String::from_utf8_lossy(value_bytes).into_owned());
        }
        tlvs = &value[n..];
    }
    if !tlvs.is_empty() {
        return Err("a partial TLV".into());
    }
    Ok(ParsedV2 {
        datagram,
        client: SocketAddr::new(client_ip, u16::from_be_bytes([*cp_hi, *cp_lo])),
        local: SocketAddr::new(local_ip, u16::from_be_bytes([*lp_hi, *lp_lo])),
        authority,
    })
}

/// A health plan and an affinity header made of `data` (numbers from its first bytes, then
/// strings separated by 0xff), taken as the host takes a plugin's answers.
pub fn plugin_answers(data: &[u8]) {
    let number = |at: usize| {
        u32::from_le_bytes(std::array::from_fn(|i| {
            data.get(at + i).copied().unwrap_or(0)
        }))
    };
    let flags = data.first().copied().unwrap_or(0);
    let mut strings = data
        .get(9..)
        .unwrap_or_default()
        .split(|b| *b == 0xff)
        .map(|s| String::from_utf8_lossy(s).into_owned());
    let mut next = || strings.next().unwrap_or_default();
    let (path, host, name, value) = (next(), next(), next(), next());
    let http = (flags & 1 != 0).then(|| lb_plugins::fuzzing::HttpProbe {
        path: path.clone(),
        host: (flags & 2 != 0).then(|| host.clone()),
        tls: flags & 4 != 0,
    });
    let port = (flags & 8 != 0).then(|| (number(1) & 0xffff) as u16);
    if let Ok(settings) = lb_plugins::fuzzing::health_settings(number(1), number(5), port, http) {
        let plan = settings
            .probe
            .unwrap_or_else(|| panic!("a plan asked for is a plan given"));
        assert!(
            plan.interval >= std::time::Duration::from_millis(100),
            "no busy probing"
        );
        assert!(plan.timeout >= std::time::Duration::from_millis(1));
        assert_ne!(plan.port, Some(0), "port 0 means the backend's own");
        if let lb_policy::ProbeKind::Http { path, host, .. } = &plan.kind {
            let host = host.as_deref().unwrap_or("192.0.2.1:80");
            let request = crate::health::probe::request(path, host);
            let mut slots = [httparse::EMPTY_HEADER; 16];
            let mut parsed = httparse::Request::new(&mut slots);
            let status = parsed.parse(request.as_bytes());
            assert!(
                matches!(status, Ok(httparse::Status::Complete(n)) if n == request.len()),
                "one whole request: {status:?} {request:?}"
            );
            assert_eq!(
                parsed.path,
                Some(path.as_str()),
                "the path asked for, no more"
            );
            assert_eq!(
                parsed.headers.len(),
                4,
                "Host, User-Agent, Accept, Connection"
            );
        }
    }
    if let Some(header) = lb_plugins::fuzzing::affinity_header(name, value) {
        let line = [header.name.as_str().as_bytes(), header.value.as_bytes()].concat();
        assert!(
            !line.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
            "a header the host sends is one line"
        );
    }
}
