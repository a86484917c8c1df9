//! Idle backend connections kept for the next request, per worker thread and backend address:
//! taking and returning one is a thread-local vector push or pop, with no lock, channel or
//! task per request (pingora's pool spawns an idle watcher per release and shares an LRU
//! behind locks).
//!
//! A connection is reused most-recently-returned first (the likeliest to be alive), dropped
//! when it has been idle for its port's `upstream_idle`, and checked when taken: one that the
//! backend closed, or that holds bytes nobody asked for, is dropped. What slips past the check
//! (a close racing the reuse) is the relay's to retry. Every thread sweeps its expired
//! connections at most once a second while it serves; a thread that stops serving keeps its
//! few sockets until it serves again (the backend will have closed them by then).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use rustc_hash::FxBuildHasher;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// Most idle connections kept per backend on one thread; more are closed as they return. As
/// many as an HTTP/2 client load needs at once (200 streams in flight with -c20 -m10) stay
/// open instead of being closed and dialled again.
pub const MAX_IDLE_PER_BACKEND: usize = 256;

/// How often a thread looks for expired connections.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Idle {
    stream: TcpStream,
    expires: Instant,
}

struct Pool {
    /// Keyed by configured backend addresses, which no client chooses: a fast hash is safe.
    by_backend: HashMap<SocketAddr, Vec<Idle>, FxBuildHasher>,
    next_sweep: Instant,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool {
        by_backend: HashMap::default(),
        next_sweep: Instant::now() + SWEEP_EVERY,
    });
}

/// An idle connection to `backend` that still looks alive, if this thread has one; `now` is
/// the caller's recent reading of the clock.
pub fn take(backend: SocketAddr, now: Instant) -> Option<TcpStream> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        pool.sweep(now);
        let idle = pool.by_backend.get_mut(&backend)?;
        while let Some(candidate) = idle.pop() {
            if candidate.expires > now && looks_alive(&candidate.stream) {
                return Some(candidate.stream);
            }
        }
        None
    })
}

/// Keeps `stream`, connected to `backend` and done with its last response, for `idle_for`.
pub fn put(backend: SocketAddr, stream: TcpStream, idle_for: Duration) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let now = Instant::now();
        pool.sweep(now);
        let idle = pool.by_backend.entry(backend).or_default();
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push(Idle {
                stream,
                expires: now + idle_for,
            });
        }
    });
}

impl Pool {
    fn sweep(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_EVERY;
        self.by_backend.retain(|_, idle| {
            idle.retain(|c| c.expires > now);
            !idle.is_empty()
        });
    }
}

/// Whether a connection with no request outstanding is still usable: nothing to read (a
/// close reads as end of file, and stray bytes would be taken for the next response).
fn looks_alive(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_comes_back_once_and_not_after_the_backend_closed_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let backend = listener.local_addr().expect("addr");
        let client = TcpStream::connect(backend).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        put(backend, client, Duration::from_secs(60));
        let taken = take(backend, Instant::now()).expect("the idle connection");
        assert!(take(backend, Instant::now()).is_none(), "taken once");

        put(backend, taken, Duration::from_secs(60));
        drop(server);
        // Until the reactor has seen the close the connection may still look alive (the
        // relay's retry covers that race); once it is readable, it is not handed out.
        if let Some(stream) = take(backend, Instant::now()) {
            stream.readable().await.expect("readable");
            put(backend, stream, Duration::from_secs(60));
            assert!(
                take(backend, Instant::now()).is_none(),
                "a closed connection is not handed out"
            );
        }
    }
}
