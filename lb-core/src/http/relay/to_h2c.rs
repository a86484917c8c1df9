//! An HTTP/1 request proxied to an h2c backend (a port whose backends speak HTTP/2 in the
//! clear, such as gRPC servers, reached by an HTTP/1 client: a health check, `curl`, a
//! browser). The head is checked and rewritten by the relay's own rules ([`super::request`]:
//! refusals, hop-by-hop fields, the forwarding headers, the absolute form's authority), then
//! carried as an HTTP/2 request through the one h2c exchange ([`crate::http::h2c::forward`]).
//! The body goes up as it comes, de-chunked (HTTP/2 frames delimit it) with its chunked
//! trailers as HTTP/2 trailers.
//!
//! The response is written as HTTP/1.1: with its `Content-Length` when the backend sent one,
//! else chunked (its HTTP/2 trailers become chunked trailers), or, to an HTTP/1.0 client,
//! delimited by the connection's close. A response the backend cuts short leaves the client a
//! body that does not end as framed, and the connection closes: HTTP/1 has no other way to say
//! so (gRPC's status 14 needs trailers the cut response never gets).

use std::mem::MaybeUninit;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::forward::{access_line, parse_or_refuse, READ_CHUNK};
use super::framing::{parse_length, Body, Framing};
use super::request::{HEADER_SLOTS, HOP_BY_HOP};
use super::response::HeadOut;
use super::{refuse, After, Buffers, Client};
use crate::http::exchange::{pick_context, strip_port, Engine, Failure, Record};
use crate::http::h2c::forward::{self, is_grpc, ClientAnswer, ClientBody};
use crate::http::head::close_response;
use crate::metrics::Rejection;
use crate::route::Route;

/// Relays the request whose complete head starts `buffers.client_in` to an h2c backend.
pub async fn relay<C>(route: &Route, mut client: Client<'_, C>, buffers: &mut Buffers) -> After
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let Some(request) = parse_or_refuse(route, &mut client, buffers).await else {
        return After::Close;
    };
    let Some(upstream) = backend_request(&buffers.upstream_out) else {
        refuse(route, client.io, Rejection::Malformed).await;
        return After::Close;
    };
    let mut record = Record::new(route, Engine::Http1, client.peer, started, || {
        access_line(&request, &buffers.client_in)
    });
    let authority = request
        .host
        .clone()
        .and_then(|host| std::str::from_utf8(&buffers.client_in[host]).ok())
        .map(|host| strip_port(host).to_owned());
    let cx = pick_context(
        route,
        client.peer,
        authority.as_deref(),
        request.headers.as_ref(),
    );
    buffers.client_in.advance(request.head_len);
    let timeouts = route.port.settings.timeouts;
    let (read, write) = tokio::io::split(&mut *client.io);
    let mut body = RequestBody {
        read,
        buf: &mut buffers.client_in,
        body: Body::new(
            request.framing,
            route.port.settings.limits.max_header_bytes as usize,
        )
        .keep_trailers(),
        empty: request.framing == Framing::Empty,
        idle: timeouts.client_idle,
    };
    let mut answer = Answer {
        write,
        out: std::mem::take(&mut buffers.client_out),
        head_method: request.head_method,
        http10: request.http10,
        keep_alive: request.keep_alive && !*client.drain.borrow(),
        chunked: false,
        body_allowed: true,
        whole: false,
        continued: request.http10,
        idle: timeouts.client_idle,
    };
    let grpc = is_grpc(upstream.headers());
    let exchange = forward::Client {
        request: &upstream,
        idempotent: request.idempotent,
        grpc,
        body: &mut body,
        answer: &mut answer,
    };
    forward::forward(route, &cx, exchange, &mut record).await;
    record.finish();
    let read_whole = body.body.is_done();
    buffers.client_out = answer.out;
    if answer.whole && answer.keep_alive && read_whole {
        After::KeepAlive
    } else {
        After::Close
    }
}

/// The backend's request, made from the head the relay rewrote for an HTTP/1 backend
/// (`Host` becomes the authority; HTTP/2 frames the body, so `Transfer-Encoding` goes);
/// `None` if a field cannot travel in HTTP/2.
fn backend_request(head: &[u8]) -> Option<http::Request<()>> {
    let mut slots = [MaybeUninit::uninit(); HEADER_SLOTS];
    let mut parsed = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    if !config
        .parse_request_with_uninit_headers(&mut parsed, head, &mut slots)
        .ok()?
        .is_complete()
    {
        return None;
    }
    let method = http::Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    let target = parsed.path?;
    let mut headers = http::HeaderMap::with_capacity(parsed.headers.len());
    let mut authority = None;
    for header in parsed.headers.iter() {
        if header.name.eq_ignore_ascii_case("host") {
            authority = Some(http::uri::Authority::try_from(header.value).ok()?);
        } else if !header.name.eq_ignore_ascii_case("transfer-encoding") {
            headers.append(
                http::HeaderName::from_bytes(header.name.as_bytes()).ok()?,
                http::HeaderValue::from_bytes(header.value).ok()?,
            );
        }
    }
    // gRPC servers require it; the relay drops `TE` with the other hop-by-hop fields.
    if is_grpc(&headers) {
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
    let path = if target.starts_with('/') || target == "*" {
        http::uri::PathAndQuery::try_from(target).ok()?
    } else {
        // Absolute form: the relay already made its authority the `Host`.
        let uri = http::Uri::try_from(target).ok()?;
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))
    };
    let mut uri = http::Uri::builder().scheme("http");
    if let Some(authority) = authority {
        uri = uri.authority(authority);
    }
    let mut request = http::Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri.path_and_query(path).build().ok()?;
    *request.headers_mut() = headers;
    Some(request)
}

/// The request body, read from the client connection after what was already in hand.
struct RequestBody<'b, R> {
    read: R,
    /// What the client sent and nothing has consumed yet (the next request's bytes stay).
    buf: &'b mut BytesMut,
    body: Body,
    empty: bool,
    /// How long the client may leave the body waiting.
    idle: Duration,
}

impl<R: AsyncRead + Unpin> ClientBody for RequestBody<'_, R> {
    fn is_empty(&self) -> bool {
        self.empty
    }

    async fn data(&mut self) -> Option<Result<Bytes, Failure>> {
        loop {
            if !self.buf.is_empty() && !self.body.is_done() {
                let mut piece = BytesMut::new();
                let input = &self.buf[..];
                let taken = self
                    .body
                    .accept(input, |range| piece.extend_from_slice(&input[range]));
                match taken {
                    Ok(taken) => self.buf.advance(taken),
                    Err(_) => return Some(Err(Failure::Client(Rejection::Malformed))),
                }
                if !piece.is_empty() {
                    return Some(Ok(piece.freeze()));
                }
            }
            if self.body.is_done() {
                return None;
            }
            self.buf.reserve(READ_CHUNK);
            match tokio::time::timeout(self.idle, self.read.read_buf(&mut *self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Some(Err(Failure::ClientGone)),
                Err(_) => return Some(Err(Failure::Client(Rejection::BodyTimeout))),
            }
        }
    }

    fn consumed(&mut self, _len: usize) {}

    async fn trailers(&mut self) -> Result<Option<http::HeaderMap>, Failure> {
        Ok(self.body.take_trailers().map(|lines| trailer_map(&lines)))
    }
}

/// Fields that describe a message's framing, routing or connection: never taken from
/// trailers (RFC 9110 §6.5.1).
fn forbidden_in_trailers(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || ["content-length", "transfer-encoding", "host"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
}

/// Chunked trailer lines (`name: value\r\n` each, as the framing scanner kept them, already
/// checked) as a map.
fn trailer_map(lines: &[u8]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for line in lines.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            if !forbidden_in_trailers(name.as_str()) {
                map.append(name, value);
            }
        }
    }
    map
}

/// The answer, written to the client connection as HTTP/1.1.
struct Answer<W> {
    write: W,
    /// What is being written (the connection's buffer, given back after).
    out: Vec<u8>,
    head_method: bool,
    http10: bool,
    /// The connection may stay open after the response: the client asked, Gantry is not
    /// draining, and the response can be delimited without closing.
    keep_alive: bool,
    /// The body goes in chunked coding.
    chunked: bool,
    /// The response may have a body (not `HEAD`, 1xx, 204 or 304): any data a backend sends
    /// otherwise is dropped, never written where the client reads the next response.
    body_allowed: bool,
    /// The response went out whole.
    whole: bool,
    /// The client was told to send its body (or is an HTTP/1.0 one, which must not be).
    continued: bool,
    /// How long the client may leave its answer untaken.
    idle: Duration,
}

impl<W: AsyncWrite + Unpin> Answer<W> {
    /// Writes `out` and pushes it out, within `within`.
    async fn write_out(&mut self, within: Duration) -> Result<(), Failure> {
        let write = async {
            self.write.write_all(&self.out).await?;
            self.write.flush().await
        };
        match tokio::time::timeout(within, write).await {
            Ok(Ok(())) => Ok(()),
            _ => {
                self.keep_alive = false;
                Err(Failure::ClientGone)
            }
        }
    }
}

impl<W: AsyncWrite + Unpin> ClientAnswer for Answer<W> {
    async fn proceed(&mut self) -> Result<(), Failure> {
        if std::mem::replace(&mut self.continued, true) {
            return Ok(());
        }
        self.out.clear();
        self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        self.write_out(self.idle).await
    }

    async fn head(&mut self, response: http::Response<()>, end: bool) -> Result<(), Failure> {
        let (parts, ()) = response.into_parts();
        let status = parts.status.as_u16();
        let no_body = self.head_method || status == 204 || status == 304 || status < 200;
        self.body_allowed = !no_body;
        let length = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| parse_length(v.as_bytes()));
        let out = &mut self.out;
        out.start(status, parts.status.canonical_reason().unwrap_or(""));
        for (name, value) in &parts.headers {
            let name = name.as_str();
            if HOP_BY_HOP.contains(&name) || name == "content-length" || name == "transfer-encoding"
            {
                continue;
            }
            out.field(name, value.as_bytes());
        }
        let itoa = &mut itoa::Buffer::new();
        match length {
            // For `HEAD`, the length of what `GET` would get.
            Some(length) => out.field("content-length", itoa.format(length).as_bytes()),
            None if no_body => {}
            None if end => out.field("content-length", b"0"),
            None if self.http10 => self.keep_alive = false,
            None => {
                self.chunked = true;
                out.field("transfer-encoding", b"chunked");
            }
        }
        out.end(Some((self.keep_alive, self.http10)));
        self.write_out(self.idle).await?;
        self.whole = end;
        Ok(())
    }

    async fn data(&mut self, data: Bytes, within: Duration) -> Result<(), Failure> {
        if data.is_empty() || !self.body_allowed {
            // An empty frame (HTTP/2 may end a stream with one) would be the last chunk.
            return Ok(());
        }
        self.out.clear();
        if self.chunked {
            let mut size = [0u8; 16];
            let digits = hex(data.len(), &mut size);
            self.out.extend_from_slice(digits);
            self.out.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(&data);
            self.out.extend_from_slice(b"\r\n");
        } else {
            self.out.extend_from_slice(&data);
        }
        self.write_out(within).await
    }

    async fn end(&mut self, trailers: Option<http::HeaderMap>) -> Result<(), Failure> {
        if self.chunked {
            self.out.clear();
            self.out.extend_from_slice(b"0\r\n");
            for (name, value) in trailers.iter().flatten() {
                self.out.field(name.as_str(), value.as_bytes());
            }
            self.out.extend_from_slice(b"\r\n");
            self.write_out(self.idle).await?;
        }
        self.whole = true;
        Ok(())
    }

    async fn gone(&mut self) {
        // An HTTP/1 client says it went away only by closing, which the next read or write
        // finds.
        std::future::pending::<()>().await;
    }

    async fn cut(&mut self, _grpc: bool) -> Failure {
        self.keep_alive = false;
        Failure::CutResponse
    }

    async fn failed(&mut self, record: &Record<'_>, _grpc: bool) {
        self.keep_alive = false;
        if let Some(status) = record.status {
            self.out = close_response(status);
            let _ = self.write_out(self.idle).await;
        }
    }
}

/// `n` in lowercase hexadecimal, in `room`.
fn hex(mut n: usize, room: &mut [u8; 16]) -> &[u8] {
    let mut at = room.len();
    loop {
        at -= 1;
        room[at] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            return &room[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rewritten_head_becomes_an_http2_request() {
        let head = b"POST http://a.example/x?y=1 HTTP/1.1\r\nhost: a.example:8080\r\ntransfer-encoding: chunked\r\ncontent-type: application/grpc\r\nx-forwarded-for: 192.0.2.1\r\n\r\n";
        let request = backend_request(head).expect("request");
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(request.uri().to_string(), "http://a.example:8080/x?y=1");
        assert!(request.headers().get("host").is_none());
        assert!(request.headers().get("transfer-encoding").is_none());
        assert_eq!(request.headers()["te"], "trailers");
        assert_eq!(request.headers()["x-forwarded-for"], "192.0.2.1");
        let plain = backend_request(b"OPTIONS * HTTP/1.1\r\nhost: b\r\n\r\n").expect("request");
        assert_eq!(plain.uri().path(), "*");
        assert!(plain.headers().get("te").is_none());
    }

    #[test]
    fn trailer_lines_become_fields_except_framing_ones() {
        let map = trailer_map(b"x-checksum: abc \r\ncontent-length: 5\r\ngrpc-status: 0\r\n");
        assert_eq!(map.len(), 2);
        assert_eq!(map["x-checksum"], "abc");
        assert_eq!(map["grpc-status"], "0");
    }

    #[test]
    fn chunk_sizes_are_hexadecimal() {
        let mut room = [0u8; 16];
        assert_eq!(hex(0, &mut room), b"0");
        assert_eq!(hex(255, &mut room), b"ff");
        assert_eq!(hex(16 * 1024, &mut room), b"4000");
    }
}
