//! Where an HTTP/1 message body ends (RFC 9112 §6): nothing, a length, chunked coding, or (for
//! responses only) the connection's close; and a chunked-coding scanner that finds the end of
//! a chunked body while checking its syntax strictly, so a body is relayed byte for byte and
//! never re-framed, yet nothing malformed is passed on silently.
//!
//! The scanner refuses what request smuggling is built from: a bare LF or a CR not followed by
//! LF in framing, a chunk size that is not hexadecimal or overflows, a chunk extension longer
//! than [`MAX_CHUNK_EXTENSION`], and trailers longer than the head limit.

use std::ops::Range;

/// Longest chunk extension accepted (`;name=value…` after a chunk size). Extensions carry
/// nothing Gantry or common backends use; a long one is only a way to make a proxy buffer.
pub const MAX_CHUNK_EXTENSION: usize = 1024;

/// Most hexadecimal digits in a chunk size: 16 fill a `u64`.
const MAX_SIZE_DIGITS: u8 = 16;

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the sender closes (responses only).
    UntilClose,
}

/// How far a body has come, as its bytes pass.
#[derive(Clone, Debug)]
pub struct Body {
    state: BodyState,
    /// A finished chunked body's kept trailer lines.
    trailers: Option<Vec<u8>>,
}

#[derive(Clone, Debug)]
enum BodyState {
    Length(u64),
    Chunked(ChunkedScanner),
    UntilClose,
    Done,
}

impl Body {
    /// A body framed as `framing`; chunked trailers may take `max_trailer_bytes`.
    pub fn new(framing: Framing, max_trailer_bytes: usize) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(ChunkedScanner::new(max_trailer_bytes)),
            Framing::UntilClose => BodyState::UntilClose,
        };
        Body {
            state,
            trailers: None,
        }
    }

    /// Takes the body's share of `input`, the next bytes on the wire: how many belong to it
    /// (the rest is the next message). `data` gets the ranges of content within them (all
    /// of them, except chunked framing).
    pub fn accept(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(Range<usize>),
    ) -> Result<usize, ChunkError> {
        let taken = match &mut self.state {
            BodyState::Done => 0,
            BodyState::Length(remaining) => {
                let take = usize::try_from(*remaining).map_or(input.len(), |r| r.min(input.len()));
                *remaining -= take as u64;
                if *remaining == 0 {
                    self.state = BodyState::Done;
                }
                data(0..take);
                take
            }
            BodyState::UntilClose => {
                data(0..input.len());
                input.len()
            }
            BodyState::Chunked(scanner) => {
                let scanned = scanner.scan(input, data)?;
                if scanned.done {
                    self.trailers = scanner.trailers.take();
                    self.state = BodyState::Done;
                }
                scanned.consumed
            }
        };
        Ok(taken)
    }

    /// Keeps a chunked body's trailer field lines, for [`Body::take_trailers`].
    pub fn keep_trailers(mut self) -> Self {
        if let BodyState::Chunked(scanner) = &mut self.state {
            scanner.keep_trailers();
        }
        self
    }

    /// The trailer field lines (`name: value\r\n` each) of a chunked body kept with
    /// [`Body::keep_trailers`], once it is done; `None` when there were none (or not yet).
    pub fn take_trailers(&mut self) -> Option<Vec<u8>> {
        self.trailers.take().filter(|t| !t.is_empty())
    }

    /// Whether the whole body has passed.
    pub fn is_done(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    /// The body is delimited by the sender's close.
    pub fn until_close(&self) -> bool {
        matches!(self.state, BodyState::UntilClose)
    }
}

/// Why a chunked body was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// Bad size, bad line ending, or bad data terminator.
    Malformed,
    /// A chunk extension over [`MAX_CHUNK_EXTENSION`].
    ExtensionTooLong,
    /// Trailers over the head limit.
    TrailersTooLong,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the hexadecimal size; `digits` read so far.
    Size { digits: u8, size: u64 },
    /// After the size: whitespace and extensions up to CR; `len` bytes so far.
    Extension { size: u64, len: usize },
    /// Expecting the LF of a size line.
    SizeLf { size: u64 },
    /// Inside chunk data.
    Data { remaining: u64 },
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// Expecting the LF of a trailer line (`last`: of the final empty line).
    TrailerLf { last: bool },
    /// The body is complete.
    Done,
}

/// Scans a chunked body incrementally, as its bytes arrive in any split.
#[derive(Clone, Debug)]
pub struct ChunkedScanner {
    state: State,
    trailer_bytes: usize,
    max_trailer_bytes: usize,
    /// The trailer section's field lines, kept for a reader that re-frames them (HTTP/2).
    trailers: Option<Vec<u8>>,
}

/// What one call to [`ChunkedScanner::scan`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scanned {
    /// Bytes of the input that belong to the body (all of it unless `done`).
    pub consumed: usize,
    /// The body ended within the input.
    pub done: bool,
}

impl ChunkedScanner {
    /// A scanner at the start of a body whose trailers may take `max_trailer_bytes`.
    pub fn new(max_trailer_bytes: usize) -> Self {
        ChunkedScanner {
            state: State::Size { digits: 0, size: 0 },
            trailer_bytes: 0,
            max_trailer_bytes,
            trailers: None,
        }
    }

    /// Scans `input`, the body's next bytes, calling `data` with the range of each run of
    /// chunk data in it (for a reader that wants the decoded content).
    pub fn scan(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(Range<usize>),
    ) -> Result<Scanned, ChunkError> {
        let mut at = 0;
        while at < input.len() {
            if self.state == State::Done {
                break;
            }
            if let State::Data { remaining } = self.state {
                let take = (input.len() - at).min(usize::try_from(remaining).unwrap_or(usize::MAX));
                data(at..at + take);
                at += take;
                let remaining = remaining - take as u64;
                self.state = if remaining == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining }
                };
                continue;
            }
            let byte = input[at];
            let next = self.step(byte)?;
            // A trailer line's bytes, its CRLF included (not the final empty line's).
            let in_trailer = matches!(next, State::Trailer | State::TrailerLf { last: false })
                || (self.state == State::TrailerLf { last: false } && byte == b'\n');
            if let (true, Some(kept)) = (in_trailer, &mut self.trailers) {
                kept.push(byte);
            }
            self.state = next;
            at += 1;
        }
        Ok(Scanned {
            consumed: at,
            done: self.state == State::Done,
        })
    }

    /// Whether the body is complete.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Keeps the trailer section's field lines from now on (see [`Body::take_trailers`]).
    fn keep_trailers(&mut self) {
        self.trailers.get_or_insert_with(Vec::new);
    }

    /// The state after one framing byte.
    fn step(&mut self, byte: u8) -> Result<State, ChunkError> {
        Ok(match (self.state, byte) {
            (State::Size { digits, size }, _) if byte.is_ascii_hexdigit() => {
                if digits >= MAX_SIZE_DIGITS {
                    return Err(ChunkError::Malformed);
                }
                let digit = u64::from(hex_value(byte));
                let size = size.checked_mul(16).ok_or(ChunkError::Malformed)? | digit;
                State::Size {
                    digits: digits + 1,
                    size,
                }
            }
            (State::Size { digits: 0, .. }, _) => return Err(ChunkError::Malformed),
            (State::Size { size, .. }, b'\r') => State::SizeLf { size },
            (State::Size { size, .. }, b';' | b' ' | b'\t') => State::Extension { size, len: 1 },
            (State::Extension { size, .. }, b'\r') => State::SizeLf { size },
            (State::Extension { size, len }, _) if is_extension_byte(byte) => {
                if len >= MAX_CHUNK_EXTENSION {
                    return Err(ChunkError::ExtensionTooLong);
                }
                State::Extension { size, len: len + 1 }
            }
            (State::SizeLf { size: 0 }, b'\n') => State::TrailerStart,
            (State::SizeLf { size }, b'\n') => State::Data { remaining: size },
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size { digits: 0, size: 0 },
            (State::TrailerStart, b'\r') => State::TrailerLf { last: true },
            (State::TrailerStart | State::Trailer, _) if is_field_byte(byte) => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > self.max_trailer_bytes {
                    return Err(ChunkError::TrailersTooLong);
                }
                State::Trailer
            }
            (State::Trailer, b'\r') => State::TrailerLf { last: false },
            (State::TrailerLf { last: true }, b'\n') => State::Done,
            (State::TrailerLf { last: false }, b'\n') => State::TrailerStart,
            _ => return Err(ChunkError::Malformed),
        })
    }
}

/// Writes the one `Content-Length` line a forwarded head carries.
pub fn push_content_length(out: &mut Vec<u8>, length: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A decimal `Content-Length` value (RFC 9110 §8.6): digits only, no sign, at most 19 digits
/// so it cannot overflow.
pub fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn hex_value(byte: u8) -> u8 {
    match byte {
        b'0'..=b'9' => byte - b'0',
        b'a'..=b'f' => byte - b'a' + 10,
        _ => byte - b'A' + 10,
    }
}

/// Visible characters, spaces and tabs: what extensions may hold (no CR, LF or controls).
fn is_extension_byte(byte: u8) -> bool {
    byte == b'\t' || (b' '..=b'~').contains(&byte) || byte >= 0x80
}

/// What a trailer field line may hold.
fn is_field_byte(byte: u8) -> bool {
    is_extension_byte(byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_trailers_are_the_field_lines_whatever_the_split() {
        let body = b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\nx-t: 1\r\n\r\n";
        for step in 1..body.len() {
            let mut framed = Body::new(Framing::Chunked, 64).keep_trailers();
            let mut at = 0;
            for piece in body.chunks(step) {
                at += framed.accept(piece, |_| {}).expect("valid");
            }
            assert!(framed.is_done() && at == body.len());
            assert_eq!(
                framed.take_trailers().as_deref(),
                Some(&b"grpc-status: 0\r\nx-t: 1\r\n"[..]),
                "in pieces of {step}"
            );
        }
        let mut plain = Body::new(Framing::Chunked, 64).keep_trailers();
        plain.accept(b"0\r\n\r\n", |_| {}).expect("valid");
        assert_eq!(plain.take_trailers(), None);
    }

    /// Scans `body` in pieces of `step` bytes; the decoded data, or the error.
    fn scan_in_pieces(body: &[u8], step: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut scanner = ChunkedScanner::new(64);
        let mut decoded = Vec::new();
        let mut total = 0;
        for piece in body.chunks(step) {
            let scanned = scanner.scan(piece, |r| decoded.extend_from_slice(&piece[r]))?;
            total += scanned.consumed;
            if scanned.done {
                return Ok((decoded, total));
            }
        }
        Err(ChunkError::Malformed)
    }

    #[test]
    fn a_chunked_body_ends_where_its_last_chunk_and_trailers_end_in_any_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 1\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (decoded, consumed) = scan_in_pieces(body, step).expect("valid");
            assert_eq!(decoded, b"hello world");
            assert_eq!(consumed, body.len() - 4, "step {step}");
        }
    }

    #[test]
    fn a_body_takes_its_share_and_leaves_the_next_message() {
        let mut body = Body::new(Framing::Length(3), 0);
        assert_eq!(body.accept(b"ab", |_| {}), Ok(2));
        assert!(!body.is_done());
        assert_eq!(body.accept(b"cGET", |_| {}), Ok(1));
        assert!(body.is_done());
        assert_eq!(body.accept(b"GET", |_| {}), Ok(0));
        let mut chunked = Body::new(Framing::Chunked, 0);
        assert_eq!(chunked.accept(b"1\r\na\r\n0\r\n\r\nGET", |_| {}), Ok(11));
        assert!(chunked.is_done());
    }

    #[test]
    fn lengths_are_decimal_and_bounded() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"1234"), Some(1234));
        for bad in [&b""[..], b"-1", b"+1", b"1a", b"99999999999999999999"] {
            assert_eq!(parse_length(bad), None);
        }
    }

    #[test]
    fn malformed_framing_is_refused() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..], // bare LF after the size
            b"5\r\nhello\n0\r\n\r\n",      // bare LF after data
            b"5\r\nhelloX\r\n0\r\n\r\n",   // data longer than its size
            b"g\r\n",                      // not hexadecimal
            b"\r\n",                       // no size at all
            b"11111111111111111\r\n",      // 17 digits
            b"0\r\nx: 1\n\r\n",            // bare LF in trailers
            b"5\r\0",                      // CR then something else
        ] {
            assert_eq!(
                scan_in_pieces(bad, 64),
                Err(ChunkError::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn extensions_and_trailers_are_bounded() {
        let long = format!("1;{}\r\na\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_EXTENSION));
        assert_eq!(
            scan_in_pieces(long.as_bytes(), 64),
            Err(ChunkError::ExtensionTooLong)
        );
        let trailers = format!("0\r\nx: {}\r\n\r\n", "v".repeat(100));
        assert_eq!(
            scan_in_pieces(trailers.as_bytes(), 64),
            Err(ChunkError::TrailersTooLong)
        );
    }
}
