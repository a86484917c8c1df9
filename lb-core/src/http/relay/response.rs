//! A backend's HTTP/1 response head, checked and rewritten for the client: where its body
//! ends (RFC 9112 §6.3, from the request's point of view: a `HEAD` request's response, 1xx,
//! 204 and 304 have none), whether the backend connection can be reused, and the head the
//! client gets, which is the backend's own lines minus the hop-by-hop ones, with Gantry's
//! `Connection` answer and the affinity's header added. The same rules write the head for an
//! HTTP/1 client (bytes) and for an HTTP/2 one (a header map, see [`HeadOut`]).
//!
//! A response Gantry cannot frame safely is a bad gateway (502): both `Content-Length` and
//! `Transfer-Encoding`, an invalid or conflicting `Content-Length`, a `101` to a request that
//! did not ask to switch.

use std::mem::MaybeUninit;

use lb_policy::ResponseHeader as AffinityHeader;

use super::framing::{parse_length, Framing};
use super::request::{end_to_end, Nominated, HEADER_SLOTS, HOP_BY_HOP};

/// Largest response head accepted from a backend.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A response head, parsed, with what the relay does about it.
#[derive(Clone, Copy, Debug)]
pub struct Response {
    /// Length of the head in the backend's buffer.
    pub head_len: usize,
    /// The status code.
    pub status: u16,
    /// Where the body ends.
    pub framing: Framing,
    /// A 1xx other than 101: another head follows.
    pub informational: bool,
    /// The backend keeps the connection open after this response.
    pub reusable: bool,
    /// The client's connection stays open after this response.
    pub keep_alive: bool,
    /// The body is chunked but the client speaks HTTP/1.0: it gets the data, and the end of
    /// the connection marks the end of the body.
    pub dechunk: bool,
}

/// What the client asked and may be told.
#[derive(Clone, Copy, Debug)]
pub struct Exchange<'a> {
    /// The request was `HEAD`.
    pub head_method: bool,
    /// The client speaks HTTP/1.0.
    pub http10: bool,
    /// The client's connection may stay open (it asked, and Gantry is not draining).
    pub keep_alive: bool,
    /// The affinity's header to add (a `set-cookie`).
    pub affinity: Option<&'a AffinityHeader>,
}

/// Why a response cannot be relayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadResponse;

/// Where a response head is written for the client: the head's bytes for an HTTP/1 client,
/// a header map for an HTTP/2 one.
pub trait HeadOut {
    /// The client gets the body's data, not its chunked framing (HTTP/2's frames delimit it).
    const DECHUNKS: bool;
    /// Empties it.
    fn clear(&mut self);
    /// Starts a head (clearing what was there).
    fn start(&mut self, status: u16, reason: &str);
    /// Adds a field.
    fn field(&mut self, name: &str, value: &[u8]);
    /// Ends the head; for a final one, whether the connection stays open after it, and
    /// whether the client speaks HTTP/1.0.
    fn end(&mut self, last: Option<(bool, bool)>);
}

impl HeadOut for Vec<u8> {
    const DECHUNKS: bool = false;

    fn clear(&mut self) {
        Vec::clear(self);
    }

    fn start(&mut self, status: u16, reason: &str) {
        Vec::clear(self);
        self.reserve(super::HEAD_ROOM);
        self.extend_from_slice(b"HTTP/1.1 ");
        self.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        self.push(b' ');
        self.extend_from_slice(reason.as_bytes());
        self.extend_from_slice(b"\r\n");
    }

    fn field(&mut self, name: &str, value: &[u8]) {
        self.extend_from_slice(name.as_bytes());
        self.extend_from_slice(b": ");
        self.extend_from_slice(value);
        self.extend_from_slice(b"\r\n");
    }

    fn end(&mut self, last: Option<(bool, bool)>) {
        match last {
            Some((false, _)) => self.extend_from_slice(b"connection: close\r\n"),
            Some((true, true)) => self.extend_from_slice(b"connection: keep-alive\r\n"),
            Some((true, false)) | None => {}
        }
        self.extend_from_slice(b"\r\n");
    }
}

impl HeadOut for http::HeaderMap {
    const DECHUNKS: bool = true;

    fn clear(&mut self) {
        http::HeaderMap::clear(self);
    }

    fn start(&mut self, _status: u16, _reason: &str) {
        http::HeaderMap::clear(self);
    }

    fn field(&mut self, name: &str, value: &[u8]) {
        match (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(value),
        ) {
            (Ok(name), Ok(value)) => {
                self.append(name, value);
            }
            // httparse lets through bytes HTTP/2 forbids in a field (obsolete text).
            _ => tracing::debug!(field = name, "response field HTTP/2 cannot carry dropped"),
        }
    }

    fn end(&mut self, _last: Option<(bool, bool)>) {}
}

/// Parses the response head at the start of `buf`: `Ok(None)` while incomplete. A complete
/// head's client-side form is written to `out` (cleared first), except for 1xx heads an
/// HTTP/1.0 client must not get, for which `out` is left empty.
pub fn parse<O: HeadOut>(
    buf: &[u8],
    exchange: &Exchange<'_>,
    out: &mut O,
) -> Result<Option<Response>, BadResponse> {
    // Uninitialised: zeroing the slots would cost more than parsing a small head.
    let mut slots = [MaybeUninit::uninit(); HEADER_SLOTS];
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let head_len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => return Ok(None),
        _ => return Err(BadResponse),
    };
    let (Some(status), Some(version)) = (parsed.code, parsed.version) else {
        return Err(BadResponse);
    };
    if status == 101 || !(100..=599).contains(&status) {
        return Err(BadResponse);
    }
    let informational = status < 200;
    let mut length: Option<u64> = None;
    let (mut chunked, mut transfer_encoding) = (false, false);
    let (mut close, mut keep_alive_token) = (false, false);
    let mut nominated = Nominated::default();
    for header in parsed.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            for value in header.value.split(|b| *b == b',') {
                let value = parse_length(value.trim_ascii()).ok_or(BadResponse)?;
                if length.is_some_and(|seen| seen != value) {
                    return Err(BadResponse);
                }
                length = Some(value);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            chunked = header
                .value
                .split(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
                .rfind(|c| !c.is_empty())
                .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
                nominated.push(token);
            }
        }
    }
    if transfer_encoding && length.is_some() {
        return Err(BadResponse);
    }
    let framing = if informational || exchange.head_method || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if transfer_encoding {
        Framing::UntilClose
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let reusable = framing != Framing::UntilClose && !close && (version == 1 || keep_alive_token);
    let dechunk = framing == Framing::Chunked && (exchange.http10 || O::DECHUNKS);
    let keep_alive = exchange.keep_alive && framing != Framing::UntilClose && !dechunk;
    let response = Response {
        head_len,
        status,
        framing,
        informational,
        reusable,
        keep_alive,
        dechunk,
    };
    if informational && exchange.http10 {
        out.clear();
        return Ok(Some(response)); // RFC 9110 §15.2: never to an HTTP/1.0 client
    }
    out.start(status, parsed.reason.unwrap_or(""));
    for header in parsed.headers.iter() {
        let name = header.name;
        let skipped = HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
            || ((dechunk || O::DECHUNKS) && name.eq_ignore_ascii_case("transfer-encoding"))
            || name.eq_ignore_ascii_case("content-length")
            || (nominated.contains(name) && !end_to_end(name));
        if skipped {
            continue;
        }
        out.field(name, header.value);
    }
    if let Some(length) = length {
        out.field(
            "content-length",
            itoa::Buffer::new().format(length).as_bytes(),
        );
    }
    if informational {
        out.end(None);
    } else {
        if let Some(header) = exchange.affinity {
            out.field(header.name.as_str(), header.value.as_bytes());
        }
        out.end(Some((keep_alive, exchange.http10)));
    }
    Ok(Some(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Exchange<'static> = Exchange {
        head_method: false,
        http10: false,
        keep_alive: true,
        affinity: None,
    };

    fn parse_text(raw: &str, exchange: &Exchange<'_>) -> (Response, String) {
        let mut out = Vec::new();
        let response = parse(raw.as_bytes(), exchange, &mut out)
            .expect("valid")
            .expect("complete");
        (response, String::from_utf8(out).expect("text"))
    }

    #[test]
    fn framing_follows_rfc_9112_from_the_requests_point_of_view() {
        let framing = |raw: &str, exchange: &Exchange<'_>| parse_text(raw, exchange).0.framing;
        let head = Exchange {
            head_method: true,
            ..PLAIN
        };
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", &PLAIN),
            Framing::Length(5)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", &head),
            Framing::Empty
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                &PLAIN
            ),
            Framing::Chunked
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\n\r\n", &PLAIN),
            Framing::Empty
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n", &PLAIN),
            Framing::UntilClose
        );
        let (response, _) = parse_text("HTTP/1.1 200 OK\r\n\r\n", &PLAIN);
        assert!(!response.keep_alive && !response.reusable);
    }

    #[test]
    fn hop_by_hop_fields_are_dropped_and_gantrys_own_added() {
        let cookie = AffinityHeader {
            name: http::HeaderName::from_static("set-cookie"),
            value: http::HeaderValue::from_static("g=1"),
        };
        let exchange = Exchange {
            affinity: Some(&cookie),
            ..PLAIN
        };
        let (response, head) = parse_text(
            "HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: 2\r\nContent-Length: 2, 2\r\n\r\nhi",
            &exchange,
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nX-Kept: 2\r\ncontent-length: 2\r\nset-cookie: g=1\r\n\r\n"
        );
        assert!(response.reusable && response.keep_alive);
    }

    #[test]
    fn an_http10_client_gets_a_chunked_body_decoded_and_no_1xx() {
        let old = Exchange {
            http10: true,
            ..PLAIN
        };
        let (response, head) = parse_text(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            &old,
        );
        assert!(response.dechunk && !response.keep_alive);
        assert_eq!(head, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
        let (response, head) = parse_text("HTTP/1.1 100 Continue\r\n\r\n", &old);
        assert!(response.informational);
        assert!(head.is_empty());
    }

    #[test]
    fn unframeable_responses_are_bad_gateways() {
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            assert_eq!(
                parse(raw.as_bytes(), &PLAIN, &mut Vec::new()).err(),
                Some(BadResponse),
                "{raw:?}"
            );
        }
    }
}
