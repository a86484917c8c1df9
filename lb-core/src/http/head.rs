//! Reading an HTTP/1 request head before pingora parses it, to enforce what pingora does not:
//! a deadline on the whole head counted from its first byte (pingora only bounds each read, so
//! a client trickling a byte at a time would hold the connection), the operator's size and
//! count limits answered with 431, and RFC 9112 §6.3 framing: a request with both
//! `Content-Length` and `Transfer-Encoding`, or with conflicting lengths, is refused with 400
//! and never forwarded (pingora would drop the length and forward it).
//!
//! The bytes read stay in the caller's buffer for the relay (or are handed to pingora unchanged
//! as the session's prefix, for h2c backends); anything this reader cannot classify is left to
//! the parser that comes next, and its own 400.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::deadline::Deadline;
use crate::limiter::ConnLimiter;
use crate::metrics::Rejection;

/// pingora's HTTP/1 parser holds at most this many headers; limits are validated against it.
const PARSER_HEADER_SLOTS: usize = 256;

/// The most [`take_what_is_in_hand`] takes at once.
const MAX_IN_HAND: usize = 16 * 1024;

/// Room for the first read of a head, on the stack ([`read_first`]): most heads fit.
const FIRST_READ_ROOM: usize = 4096;

/// The least a head's buffer grows by when more of the head is to come.
const GROWTH: usize = 256;

/// The limits and timeouts a head is read under.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Largest request head, in bytes.
    pub max_bytes: usize,
    /// Most headers.
    pub max_headers: usize,
    /// From the first byte of the head to its end.
    pub header_timeout: Duration,
    /// Waiting for the first byte of a request on an open connection.
    pub idle_timeout: Duration,
}

/// A complete request head at the start of the reader's buffer, with what the proxy needs to
/// know about it (whatever followed it, the start of a body or of a tunnel, is in the buffer
/// after it).
#[derive(Debug)]
pub struct RequestHead {
    /// The request asks to switch protocols (`Connection: upgrade` with `Upgrade:`).
    pub upgrade: bool,
}

/// The outcome of reading one request head.
#[derive(Debug)]
pub enum Head {
    /// A complete head, for pingora or the upgrade tunnel.
    Ready(RequestHead),
    /// The client closed, or stayed idle past the idle timeout.
    Closed,
    /// The request must be refused with this answer, then the connection closed.
    Refused(Rejection),
}

/// Reads one request head from `io` into `buf`, after what `buf` already holds (the next
/// request a client pipelined), or decides why not.
///
/// A drain does not cut the wait for a request short: closing a connection between two
/// requests races the client's next one, which a client that does not retry sees as an error.
/// The draining connection waits for that request instead, and its answer closes the
/// connection (`Connection: close`), as HAProxy's `idle-close-on-response` does; the wait is
/// bounded by the idle timeout and by the drain's grace period, which ends the connection.
///
/// While it waits for a request's first byte, the connection is marked idle with `limiter`
/// (when given): a listener at its connection cap may reclaim it for a new client, which
/// closes it.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    limits: HeadLimits,
    timer: &mut Deadline,
    limiter: Option<&Arc<ConnLimiter>>,
) -> Head {
    if buf.is_empty() {
        // No buffer while waiting: the first bytes are read onto the stack and only what came
        // is kept ([`read_first`]), so a connection that sends nothing holds no buffer, and
        // one that sends a head a few bytes at a time holds what it sent.
        // Marked idle only if the read has to wait (`biased` polls it first), and until the
        // first byte: the mark goes with this future.
        let reclaimed = async {
            match limiter {
                Some(limiter) => {
                    let mark = limiter.idle();
                    mark.reclaimed.cancelled().await;
                }
                None => std::future::pending().await,
            }
        };
        // Waiting for a request is idleness, bounded by the idle timeout. The timer is set (and
        // the clock read) only if the read has to wait: `biased` polls the read first, and the
        // block runs on its first poll.
        let first = tokio::select! {
            biased;
            read = read_first(io, buf) => read,
            _ = async { timer.at(lb_policy::clock::instant_after(limits.idle_timeout)).await } => {
                return Head::Closed
            }
            () = reclaimed => return Head::Closed,
        };
        match first {
            Ok(FIRST_READ_ROOM) => take_what_is_in_hand(io, buf).await,
            Ok(n) if n > 0 => {}
            _ => return Head::Closed,
        }
    }
    // The head's time runs from its first byte; a head that came whole needs no deadline.
    let mut deadline = None;
    // The head is parsed once it has ended (or outgrown the limit): parsing it again after
    // every read would cost the square of its length, which a client sending large heads a
    // few bytes at a time could make Gantry pay. Each byte is scanned once for the end.
    let mut scanned = 0;
    loop {
        if head_ended(buf, scanned) || buf.len() > limits.max_bytes {
            match inspect(buf, limits) {
                Inspection::Complete { upgrade } => return Head::Ready(RequestHead { upgrade }),
                Inspection::Refuse(why) => return Head::Refused(why),
                Inspection::Partial => {}
            }
        }
        scanned = buf.len();
        let deadline =
            *deadline.get_or_insert_with(|| lb_policy::clock::instant_after(limits.header_timeout));
        // Doubling as the head grows, up to a page per read.
        buf.reserve(buf.len().clamp(GROWTH, 4096));
        let read = tokio::select! {
            biased;
            read = io.read_buf(buf) => read,
            _ = timer.at(deadline) => return Head::Refused(Rejection::HeaderTimeout),
        };
        if !matches!(read, Ok(n) if n > 0) {
            return Head::Closed;
        }
    }
}

/// Reads what the client sent into room on the stack, and appends only those bytes to `buf`
/// (allocated to fit). Cancel-safe: bytes are taken only by a read that completes.
async fn read_first<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut) -> io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut room = [MaybeUninit::<u8>::uninit(); FIRST_READ_ROOM];
        let mut read = ReadBuf::uninit(&mut room);
        std::task::ready!(Pin::new(&mut *io).poll_read(cx, &mut read))?;
        buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    })
    .await
}

/// Reads, without waiting, whatever more the client has already sent when the first read
/// filled its room: the request is then judged on all its bytes in hand, as if the room had
/// been larger.
async fn take_what_is_in_hand<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut) {
    while buf.len() < MAX_IN_HAND {
        buf.reserve(4096);
        let room = buf.capacity() - buf.len();
        let read = tokio::select! {
            biased;
            read = io.read_buf(buf) => read,
            // Nothing more in hand: the read (cancel-safe) is dropped.
            () = std::future::ready(()) => return,
        };
        if !matches!(read, Ok(n) if n == room) {
            return;
        }
    }
}

/// Whether `buf` holds the empty line that ends a head (`\r\n\r\n`, or bare `\n`s, which
/// the parser accepts too), looking only at what came after the first `scanned` bytes (and the
/// two before them, where the end may have begun).
fn head_ended(buf: &[u8], scanned: usize) -> bool {
    let from = scanned.saturating_sub(2);
    buf[from..]
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .any(|(i, _)| {
            let rest = &buf[from + i + 1..];
            rest.starts_with(b"\n") || rest.starts_with(b"\r\n")
        })
}

pub(crate) enum Inspection {
    Complete { upgrade: bool },
    Partial,
    Refuse(Rejection),
}

pub(crate) fn inspect(buf: &[u8], limits: HeadLimits) -> Inspection {
    #[cfg(test)]
    tests::PARSED.with(|parsed| parsed.set(parsed.get() + buf.len()));
    // Uninitialised: zeroing the slots would cost more than parsing a small head.
    let mut slots = [std::mem::MaybeUninit::uninit(); PARSER_HEADER_SLOTS];
    let slots = &mut slots[..limits.max_headers.min(PARSER_HEADER_SLOTS)];
    let mut request = httparse::Request::new(&mut []);
    match request.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(len)) if len > limits.max_bytes => {
            Inspection::Refuse(Rejection::HeaderTooLarge)
        }
        Ok(httparse::Status::Complete(_)) => match classify(request.headers) {
            Ok(upgrade) => Inspection::Complete { upgrade },
            Err(why) => Inspection::Refuse(why),
        },
        Ok(httparse::Status::Partial) if buf.len() > limits.max_bytes => {
            Inspection::Refuse(Rejection::HeaderTooLarge)
        }
        Ok(httparse::Status::Partial) => Inspection::Partial,
        Err(httparse::Error::TooManyHeaders) => Inspection::Refuse(Rejection::TooManyHeaders),
        // Anything else malformed: pingora's parser has the final word (and answers 400).
        Err(_) => Inspection::Complete { upgrade: false },
    }
}

/// One pass over the headers: refuses ambiguous framing, and tells whether the request is an
/// upgrade. Both framings at once, or `Content-Length` values that disagree (across repeated
/// headers or within one comma-separated header), make the body's end ambiguous: the classic
/// request-smuggling setup, refused outright.
fn classify(headers: &[httparse::Header<'_>]) -> Result<bool, Rejection> {
    let mut transfer_encoding = false;
    let mut length: Option<&[u8]> = None;
    let (mut connection_upgrade, mut upgrade_header) = (false, false);
    for header in headers {
        let name = header.name;
        if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            for value in header.value.split(|b| *b == b',') {
                let value = value.trim_ascii();
                match length {
                    Some(seen) if seen != value => return Err(Rejection::AmbiguousLength),
                    _ => length = Some(value),
                }
            }
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= header
                .value
                .split(|b| *b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_header = true;
        }
    }
    if transfer_encoding && length.is_some() {
        return Err(Rejection::AmbiguousLength);
    }
    Ok(connection_upgrade && upgrade_header)
}

/// The status a refused request is answered with.
pub fn refusal_status(why: Rejection) -> u16 {
    match why {
        Rejection::HeaderTooLarge | Rejection::TooManyHeaders => 431,
        Rejection::HeaderTimeout => 408,
        Rejection::AmbiguousLength | Rejection::Malformed => 400,
        Rejection::MethodNotAllowed => 405,
        Rejection::BodyTimeout => 408,
    }
}

/// A bodiless HTTP/1.1 response that announces the connection closes after it.
pub fn close_response(status: u16) -> Vec<u8> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_bytes: 256,
        max_headers: 4,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
    };

    fn classify(raw: &str) -> &'static str {
        match inspect(raw.as_bytes(), LIMITS) {
            Inspection::Complete { upgrade: true } => "upgrade",
            Inspection::Complete { upgrade: false } => "complete",
            Inspection::Partial => "partial",
            Inspection::Refuse(why) => why.label(),
        }
    }

    #[test]
    fn heads_are_classified() {
        assert_eq!(classify("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), "complete");
        assert_eq!(classify("GET / HTTP/1.1\r\nHost: a\r\n"), "partial");
        assert_eq!(
            classify(&format!("GET /{} HTTP/1.1\r\n", "a".repeat(300))),
            "header_too_large"
        );
        assert_eq!(
            classify("GET / HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\n\r\n"),
            "too_many_headers"
        );
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for raw in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
        ] {
            assert_eq!(classify(raw), "ambiguous_length", "{raw:?}");
        }
        assert_eq!(
            classify("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            "complete",
            "identical repeats are one length (RFC 9110 §8.6)"
        );
    }

    #[test]
    fn only_connection_upgrade_with_an_upgrade_header_is_an_upgrade() {
        assert_eq!(
            classify(
                "GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"
            ),
            "upgrade"
        );
        assert_eq!(
            classify("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
            "complete"
        );
        assert_eq!(
            classify("GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n"),
            "complete"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_times_out_from_its_first_byte() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move {
            read_head(
                &mut server,
                &mut BytesMut::new(),
                LIMITS,
                &mut Deadline::default(),
                None,
            )
            .await
        });
        use tokio::io::AsyncWriteExt;
        for byte in b"GET / HTTP/1.1\r\n" {
            // Writes fail once the reader gave up and closed its end; that is the point.
            let _ = client.write_all(&[*byte]).await;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let head = reader.await.expect("join");
        assert!(
            matches!(head, Head::Refused(Rejection::HeaderTimeout)),
            "{head:?}"
        );
    }

    thread_local! {
        /// Bytes handed to the parser on this thread.
        pub(super) static PARSED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// A head sent a few bytes at a time is parsed once it has ended, not after every read:
    /// the parser sees each byte about once, whether the head is accepted or refused.
    #[tokio::test]
    async fn a_head_is_parsed_once_however_it_is_trickled() {
        let filler = "x-filler: 0123456789abcdef0123456789abcdef\r\n".repeat(150);
        for (head, limits, accepted) in [
            (
                format!("GET / HTTP/1.1\r\nHost: a\r\n{filler}\r\n"),
                HeadLimits {
                    max_bytes: 65536,
                    ..LIMITS
                },
                true,
            ),
            // Too large: refused once it outgrows the limit.
            (
                format!("GET / HTTP/1.1\r\nHost: a\r\n{filler}{filler}\r\n"),
                HeadLimits {
                    max_bytes: 8192,
                    ..LIMITS
                },
                false,
            ),
        ] {
            let (mut client, mut server) = tokio::io::duplex(64);
            let bytes = head.clone().into_bytes();
            let writer = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                for chunk in bytes.chunks(50) {
                    // Fails once the reader refused the head and closed its end.
                    if client.write_all(chunk).await.is_err() {
                        break;
                    }
                }
            });
            PARSED.with(|p| p.set(0));
            let outcome = read_head(
                &mut server,
                &mut BytesMut::new(),
                HeadLimits {
                    max_headers: 256,
                    ..limits
                },
                &mut Deadline::default(),
                None,
            )
            .await;
            drop(server);
            let _ = writer.await;
            assert_eq!(matches!(outcome, Head::Ready(_)), accepted, "{outcome:?}");
            let parsed = PARSED.with(std::cell::Cell::get);
            assert!(
                parsed <= head.len() + 64,
                "{parsed} bytes parsed for a head of {}",
                head.len()
            );
        }
    }

    #[test]
    fn the_end_of_a_head_is_found_however_it_is_split() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for cut in 0..head.len() {
            assert!(head_ended(head, cut), "scanned up to {cut}");
        }
        assert!(head_ended(b"GET / HTTP/1.1\nHost: a\n\n", 20));
        assert!(!head_ended(b"GET / HTTP/1.1\r\nHost: a\r\n", 0));
    }

    /// On tokio's paused clock, which the idle wait runs on.
    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_closes_quietly_after_the_idle_timeout() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let waiting = tokio::time::Instant::now();
        let head = read_head(
            &mut server,
            &mut BytesMut::new(),
            LIMITS,
            &mut Deadline::default(),
            None,
        )
        .await;
        assert!(matches!(head, Head::Closed));
        assert_eq!(waiting.elapsed(), LIMITS.idle_timeout);
    }
}
