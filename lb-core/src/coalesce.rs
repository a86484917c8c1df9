//! Write coalescing for client connections handed to pingora.
//!
//! pingora's HTTP code writes a response header and its body separately and flushes where a
//! client must see bytes; it expects the stream underneath to buffer small writes, as the
//! streams made by pingora's own listeners do (1460 bytes, about one segment). A stream made
//! from a socket accepted elsewhere (`Stream::from(TcpStream)`) does not buffer, and the
//! constructor that would is crate-private, so every header and every small body went out as
//! its own segment: on a small response, twice the sends and twice the wakeups of the client.
//! [`CoalescedWrites`] restores the buffering pingora is written for and passes every other
//! capability (TLS details, digests, peeking) through unchanged.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use pingora::protocols::{Shutdown, IO};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// pingora's own default: about one TCP segment, so buffering never delays more than that.
const WRITE_BUFFER: usize = 1460;

/// A stream whose small writes are gathered until a flush or until a segment's worth is
/// pending.
pub struct CoalescedWrites<S> {
    inner: S,
    pending: Vec<u8>,
    /// How much of `pending` is already written to `inner`.
    written: usize,
}

impl<S> CoalescedWrites<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        CoalescedWrites {
            inner,
            // Allocated by the first write: an idle connection holds none.
            pending: Vec::new(),
            written: 0,
        }
    }

    /// The wrapped stream; only for reads (writes would bypass what is pending).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncWrite + Unpin> CoalescedWrites<S> {
    /// Writes out everything pending.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CoalescedWrites<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.len() + buf.len() > WRITE_BUFFER {
            ready!(this.poll_drain(cx))?;
        }
        if buf.len() >= WRITE_BUFFER {
            // Large writes gain nothing from a copy.
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if this.pending.capacity() == 0 {
            this.pending.reserve(WRITE_BUFFER);
        }
        this.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> fmt::Debug for CoalescedWrites<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoalescedWrites")
            .field("pending", &(self.pending.len() - self.written))
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: IO> Shutdown for CoalescedWrites<S> {
    async fn shutdown(&mut self) {
        // What is pending must reach the client before the close.
        let _ = std::future::poll_fn(|cx| self.poll_drain(cx)).await;
        self.inner.shutdown().await;
    }
}

crate::passthrough::pass_through_capabilities!(CoalescedWrites<S>, inner);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_writes_leave_together_at_the_flush_and_large_ones_at_once() {
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let mut stream = CoalescedWrites::new(near);
        stream
            .write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .expect("write");
        stream.write_all(b"body").await.expect("write");
        let mut probe = [0u8; 64];
        // A duplex hands written bytes over at once, so one poll tells whether any were.
        let readable = std::future::poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut probe);
            Poll::Ready(Pin::new(&mut far).poll_read(cx, &mut buf).is_ready())
        })
        .await;
        assert!(!readable, "nothing leaves before the flush");
        stream.flush().await.expect("flush");
        let n = far.read(&mut probe).await.expect("read");
        assert_eq!(&probe[..n], b"HTTP/1.1 200 OK\r\n\r\nbody");

        let big = vec![7u8; 4 * WRITE_BUFFER];
        stream.write_all(b"head").await.expect("write");
        stream.write_all(&big).await.expect("write");
        let mut got = vec![0u8; 4 + big.len()];
        far.read_exact(&mut got)
            .await
            .expect("pending then large write, in order, unflushed");
        assert_eq!(&got[..4], b"head");
    }
}
