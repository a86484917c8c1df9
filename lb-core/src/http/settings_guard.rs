//! One check the HTTP/2 library gets wrong, made on the client's bytes before it sees them:
//! RFC 9113 §6.5.2 makes a `SETTINGS_INITIAL_WINDOW_SIZE` above 2^31-1 a connection error of
//! type `FLOW_CONTROL_ERROR`, and h2 0.4 answers `PROTOCOL_ERROR`. [`SettingsGuard`] follows
//! the client's frames as they pass (their headers, and the entries of SETTINGS frames;
//! nothing is buffered or delayed), and on such a value sends `GOAWAY(FLOW_CONTROL_ERROR)`
//! itself and ends the connection, which h2 then sees closed. The GOAWAY is sent only between
//! two of the server's own frames (when its last write was whole); otherwise the connection
//! just ends.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use pingora::protocols::{Shutdown, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 §3.4), which precedes its first frame.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const MAX_WINDOW: u32 = (1 << 31) - 1;
/// `GOAWAY`, last stream 0, `FLOW_CONTROL_ERROR` (0x3).
const GOAWAY_FLOW_CONTROL: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];

/// Where the reader is in the client's byte stream.
#[derive(Debug)]
enum Position {
    /// Inside the preface: this many bytes of it still to pass.
    Preface(usize),
    /// Reading a frame header: the bytes so far.
    Header([u8; FRAME_HEADER_LEN], usize),
    /// Inside a frame's payload: bytes left, and for a SETTINGS frame the entry so far.
    Payload {
        left: usize,
        entry: Option<([u8; 6], usize)>,
    },
    /// The client broke the rule; the connection is over.
    Refused,
}

/// A client stream whose HTTP/2 SETTINGS are checked as they pass (see the module
/// documentation).
pub struct SettingsGuard {
    inner: Stream,
    position: Position,
    /// Whether the server's last write was taken whole (so the next byte starts a frame).
    at_frame_boundary: bool,
}

impl SettingsGuard {
    /// Guards `inner`, a connection whose first bytes are the client preface.
    pub fn new(inner: Stream) -> Self {
        SettingsGuard {
            inner,
            position: Position::Preface(PREFACE_LEN),
            at_frame_boundary: true,
        }
    }
}

impl Position {
    /// Follows `bytes`, the client's next bytes; false if they break the rule.
    fn follow(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match self {
                Position::Refused => return false,
                Position::Preface(left) => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        *self = Position::Header([0; FRAME_HEADER_LEN], 0);
                    }
                }
                Position::Header(header, have) => {
                    let n = (FRAME_HEADER_LEN - *have).min(bytes.len());
                    header[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == FRAME_HEADER_LEN {
                        let left = usize::from(header[0]) << 16
                            | usize::from(header[1]) << 8
                            | usize::from(header[2]);
                        let settings = header[3] == SETTINGS && header[4] & ACK == 0;
                        *self = if left == 0 {
                            Position::Header([0; FRAME_HEADER_LEN], 0)
                        } else {
                            Position::Payload {
                                left,
                                entry: settings.then_some(([0; 6], 0)),
                            }
                        };
                    }
                }
                Position::Payload { left, entry } => {
                    let n = (*left).min(bytes.len());
                    if let Some((entry, have)) = entry {
                        for &byte in &bytes[..n] {
                            entry[*have] = byte;
                            *have += 1;
                            if *have == entry.len() {
                                *have = 0;
                                let id = u16::from_be_bytes([entry[0], entry[1]]);
                                let value =
                                    u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
                                if id == SETTINGS_INITIAL_WINDOW_SIZE && value > MAX_WINDOW {
                                    *self = Position::Refused;
                                    return false;
                                }
                            }
                        }
                    }
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        *self = Position::Header([0; FRAME_HEADER_LEN], 0);
                    }
                }
            }
        }
        true
    }
}

impl AsyncRead for SettingsGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if matches!(this.position, Position::Refused) {
            return Poll::Ready(Ok(())); // end of stream
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.position.follow(&buf.filled()[before..]) {
            return Poll::Ready(Ok(()));
        }
        // Nothing of this read reaches h2: its connection ends at the last frame it had.
        buf.set_filled(before);
        if this.at_frame_boundary {
            // One attempt: a GOAWAY that does not fit in the socket's buffer is not waited for.
            let sent = Pin::new(&mut this.inner).poll_write(cx, &GOAWAY_FLOW_CONTROL);
            if matches!(sent, Poll::Ready(Ok(n)) if n == GOAWAY_FLOW_CONTROL.len()) {
                let _ = Pin::new(&mut this.inner).poll_flush(cx);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SettingsGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if matches!(this.position, Position::Refused) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.at_frame_boundary = n == buf.len();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl std::fmt::Debug for SettingsGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettingsGuard")
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Shutdown for SettingsGuard {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

crate::passthrough::pass_through_capabilities!(SettingsGuard, inner);

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags, 0, 0, 0, 0]);
        out.extend_from_slice(payload);
        out
    }

    fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
        let payload: Vec<u8> = entries
            .iter()
            .flat_map(|(id, value)| id.to_be_bytes().into_iter().chain(value.to_be_bytes()))
            .collect();
        frame(SETTINGS, 0, &payload)
    }

    /// Whether `stream` passes, fed in pieces of `step` bytes.
    fn passes(stream: &[u8], step: usize) -> bool {
        let mut position = Position::Preface(PREFACE_LEN);
        stream.chunks(step).all(|piece| position.follow(piece))
    }

    #[test]
    fn a_window_above_the_maximum_is_caught_however_the_bytes_arrive() {
        let mut good = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        good.extend(settings(&[
            (0x3, 100),
            (SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW),
        ]));
        good.extend(frame(0x6, 0, &[0; 8])); // PING
                                             // An ACK carries no entries to check, and a DATA payload may hold anything.
        good.extend(frame(SETTINGS, ACK, &[]));
        good.extend(frame(0x0, 0, &[0, 4, 0x80, 0, 0, 0]));
        let mut bad = good.clone();
        bad.extend(settings(&[
            (0x1, 4096),
            (SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW + 1),
        ]));
        for step in [1, 2, 5, 9, 1000] {
            assert!(passes(&good, step), "step {step}");
            assert!(!passes(&bad, step), "step {step}");
        }
    }
}
