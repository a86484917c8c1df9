//! An HTTP/2 request's head written as HTTP/1.1 for a backend: the pseudo-headers become the
//! request line and `Host` (`:authority` wins over a `Host` field, RFC 9113 §8.3.1), the
//! `cookie` fields HTTP/2 may split are joined into one (§8.2.3), connection-specific fields
//! are dropped, the forwarding headers are set by the policy every engine uses, and the body
//! is framed by its `Content-Length` when the client gave one (h2 checks the DATA against it)
//! and chunked otherwise, which also carries the request's trailers.

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};
use http::request::Parts;

use crate::http::forwarding::{append_forwarded, ClientIp, FORWARDED_FOR, FORWARDED_PROTO};
use crate::http::relay::framing::{parse_length, push_content_length};
use crate::http::relay::request::HOP_BY_HOP;
use crate::route::Route;

/// How the request body travels to the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length,
    /// Chunked, trailers included.
    Chunked,
}

/// Fields that say how an HTTP/1 message travels, never passed on from HTTP/2 (where they
/// are refused anyway) nor trusted from the client: the framing is Gantry's.
fn dropped(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || matches!(
            name,
            "host" | "content-length" | "transfer-encoding" | "cookie"
        )
        || name == FORWARDED_FOR
        || name == FORWARDED_PROTO
}

/// Writes the HTTP/1.1 head for `parts` into `out` (cleared first); `authority` is the
/// request's (`:authority`, else `Host`), `ended`: the client's stream ended with its headers.
pub fn write_head(
    out: &mut Vec<u8>,
    parts: &Parts,
    authority: Option<&str>,
    route: &Route,
    client: &ClientIp,
    ended: bool,
) -> BodyFraming {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let headers = &parts.headers;
    for (name, value) in headers {
        if !dropped(name.as_str()) {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    let mut cookies = headers.get_all(http::header::COOKIE).iter();
    if let Some(first) = cookies.next() {
        out.extend_from_slice(b"cookie: ");
        out.extend_from_slice(first.as_bytes());
        for more in cookies {
            out.extend_from_slice(b"; ");
            out.extend_from_slice(more.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    let length = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| parse_length(v.as_bytes()));
    let framing = match (ended, length) {
        (true, _) => BodyFraming::Empty,
        (false, Some(length)) => {
            push_content_length(out, length);
            BodyFraming::Length
        }
        (false, None) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            BodyFraming::Chunked
        }
    };
    if framing == BodyFraming::Empty && length.is_some_and(|l| l > 0) {
        // The client announced a body and sent none: say what it sent.
        push_content_length(out, 0);
    }
    let prior_for = headers
        .get_all(FORWARDED_FOR)
        .iter()
        .map(http::HeaderValue::as_bytes);
    let prior_proto = headers
        .get(FORWARDED_PROTO)
        .map(http::HeaderValue::as_bytes);
    append_forwarded(out, route, Some(client), prior_for, prior_proto);
    out.extend_from_slice(b"\r\n");
    framing
}

/// Frames `data` as one chunk of a chunked body into `out`.
pub fn push_chunk(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return; // an empty chunk would end the body
    }
    let mut size = String::with_capacity(8);
    let _ = write!(size, "{:x}\r\n", data.len());
    out.put_slice(size.as_bytes());
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Ends a chunked body into `out`, with `trailers` as its trailer section.
pub fn push_last_chunk(out: &mut BytesMut, trailers: Option<&http::HeaderMap>) {
    out.put_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

/// Parses the trailer lines a chunked response ended with (see
/// [`crate::http::relay::framing::Body::take_trailers`]) into fields HTTP/2 can carry;
/// connection-specific ones are dropped.
pub fn parse_trailers(lines: &[u8]) -> http::HeaderMap {
    let mut block = Vec::with_capacity(lines.len() + 2);
    block.extend_from_slice(lines);
    block.extend_from_slice(b"\r\n");
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut map = http::HeaderMap::new();
    if let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(&block, &mut slots)
    {
        for field in fields {
            if dropped(&field.name.to_ascii_lowercase()) {
                continue;
            }
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(field.name.as_bytes()),
                http::HeaderValue::from_bytes(field.value),
            ) {
                map.append(name, value);
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> Route {
        let yaml = "services:\n  - name: s\n    address: 127.0.0.1\n    ports:\n      - { name: h, port: 8443, protocol: http, backends: [\"127.0.0.1:9\"] }\n";
        let model = lb_config::parse_str(yaml, std::path::Path::new("/")).expect("model");
        let route = Route::standalone(model.ports().next().expect("port")).expect("route");
        route
    }

    fn head(request: http::Request<()>, ended: bool) -> (String, BodyFraming) {
        let (parts, ()) = request.into_parts();
        let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
        let mut out = Vec::new();
        let client = ClientIp::new("192.0.2.7".parse().expect("ip"));
        let framing = write_head(
            &mut out,
            &parts,
            authority.as_deref(),
            &route(),
            &client,
            ended,
        );
        (String::from_utf8(out).expect("text"), framing)
    }

    #[test]
    fn pseudo_headers_become_the_request_line_and_host_and_cookies_are_joined() {
        let request = http::Request::get("https://a.example:8443/p?q=1")
            .header("host", "b.example")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("te", "trailers")
            .header("x-kept", "yes")
            .body(())
            .expect("request");
        let (text, framing) = head(request, true);
        assert_eq!(framing, BodyFraming::Empty);
        assert!(
            text.starts_with("GET /p?q=1 HTTP/1.1\r\nhost: a.example:8443\r\n"),
            "{text}"
        );
        assert!(text.contains("cookie: a=1; b=2\r\n"), "{text}");
        assert!(text.contains("x-kept: yes\r\n"), "{text}");
        assert!(
            !text.contains("b.example") && !text.contains("te:"),
            "{text}"
        );
        assert!(text.contains("x-forwarded-for: 192.0.2.7\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    #[test]
    fn a_body_goes_by_its_length_or_chunked() {
        let sized = http::Request::post("https://a/")
            .header("content-length", "5")
            .body(())
            .expect("request");
        let (text, framing) = head(sized, false);
        assert_eq!(framing, BodyFraming::Length);
        assert!(text.contains("content-length: 5\r\n"), "{text}");
        let streamed = http::Request::post("https://a/").body(()).expect("request");
        let (text, framing) = head(streamed, false);
        assert_eq!(framing, BodyFraming::Chunked);
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    }

    #[test]
    fn chunks_and_trailers_are_framed_and_read_back() {
        let mut out = BytesMut::new();
        push_chunk(&mut out, b"hello");
        push_chunk(&mut out, b"");
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        push_last_chunk(&mut out, Some(&trailers));
        assert_eq!(&out[..], b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n");
        let parsed = parse_trailers(b"grpc-status: 0\r\nconnection: x\r\n");
        assert_eq!(
            parsed.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..])
        );
        assert_eq!(parsed.len(), 1, "connection-specific fields are dropped");
    }
}
