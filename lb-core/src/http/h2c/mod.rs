//! Connections to backends that speak HTTP/2 in the clear (h2c, gRPC's usual transport): one
//! multiplexed connection per backend and worker thread, kept in a thread-local map as the
//! HTTP/1 relay keeps its idle connections, so a request takes a handle with no lock. Each
//! connection is driven by a task of its own (the only task an h2c backend costs, not one
//! per request). A connection found closed is replaced; the backend's own
//! `SETTINGS_MAX_CONCURRENT_STREAMS` makes further requests wait for a stream, for at most the
//! port's `connect` timeout (a backend with no stream to give counts as one that did not take
//! the connection). A connection no request has started a stream on for the port's
//! `upstream_idle` is let go: the map forgets it on the worker's next h2c request (a sweep at
//! most once a second), and once its last stream ends the `h2` crate closes it, so a backend that
//! left the configuration does not keep a connection from every worker.
//!
//! [`forward`] proxies one request over such a connection, for HTTP/2 and HTTP/1 clients
//! alike.

pub mod forward;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use lb_policy::Outcome;
use rustc_hash::FxBuildHasher;

use lb_config::Timeouts;
use tokio::time::Instant;

use super::h2::settings::{CONNECTION_WINDOW, MAX_FRAME_SIZE, STREAM_WINDOW};
use crate::pool::BackendState;
use crate::tcp;

/// How often at most a worker looks for connections idle past their port's `upstream_idle`.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A worker's connection to one backend.
struct Kept {
    send: SendRequest<Bytes>,
    /// When a request last took it.
    used: Instant,
    /// How long it may go unused (the last port's `upstream_idle`).
    idle: Duration,
}

impl Kept {
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.used) >= self.idle
    }
}

/// The worker's connections, and when it last swept them.
struct Connections {
    /// Keyed by configured backend addresses, which no client chooses: a fast hash is safe.
    by_backend: HashMap<SocketAddr, Kept, FxBuildHasher>,
    swept: Option<Instant>,
}

impl Connections {
    /// The connection to `backend`, marked used now, if there is one not idle too long;
    /// others idle too long are forgotten on the way.
    fn take(
        &mut self,
        backend: SocketAddr,
        now: Instant,
        idle: Duration,
    ) -> Option<SendRequest<Bytes>> {
        if self
            .swept
            .is_none_or(|at| now.saturating_duration_since(at) >= SWEEP_EVERY)
        {
            self.by_backend.retain(|_, kept| !kept.expired(now));
            self.swept = Some(now);
        }
        let kept = self.by_backend.get_mut(&backend)?;
        if kept.expired(now) {
            self.by_backend.remove(&backend);
            return None;
        }
        kept.used = now;
        kept.idle = idle;
        Some(kept.send.clone())
    }
}

thread_local! {
    static CONNECTIONS: RefCell<Connections> = RefCell::new(Connections {
        by_backend: HashMap::default(),
        swept: None,
    });
}

/// A handle ready to open a stream to `backend`, on this thread's connection to it or a new
/// one (`true`: new, so a failure on it says something of the backend). The connect is bounded
/// by `timeouts.connect`, handshake included, and so is the wait for a stream on a kept one.
pub async fn ready(
    backend: &BackendState,
    timeouts: &Timeouts,
) -> Result<(SendRequest<Bytes>, bool), Outcome> {
    let timeout = timeouts.connect;
    let now = Instant::now();
    let kept = CONNECTIONS.with(|c| {
        c.borrow_mut()
            .take(backend.address, now, timeouts.upstream_idle)
    });
    if let Some(kept) = kept {
        match tokio::time::timeout(timeout, kept.ready()).await {
            Ok(Ok(ready)) => return Ok((ready, false)),
            // Every stream the backend allows is busy.
            Err(_) => return Err(Outcome::TimedOut),
            Ok(Err(_)) => {
                CONNECTIONS.with(|c| c.borrow_mut().by_backend.remove(&backend.address));
            }
        }
    }
    let stream = tcp::dial(backend, timeout).await?;
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE);
    let handshake = tokio::time::timeout(timeout, builder.handshake::<_, Bytes>(stream));
    let (send, connection) = match handshake.await {
        Ok(Ok(pair)) => pair,
        Ok(Err(err)) => {
            tracing::debug!(backend = %backend.label, %err, "h2c handshake failed");
            return Err(Outcome::ConnectFailed);
        }
        Err(_) => return Err(Outcome::TimedOut),
    };
    let label = backend.label.clone();
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(backend = %label, %err, "h2c connection ended");
        }
    });
    let kept = Kept {
        send: send.clone(),
        used: now,
        idle: timeouts.upstream_idle,
    };
    CONNECTIONS.with(|c| c.borrow_mut().by_backend.insert(backend.address, kept));
    match tokio::time::timeout(timeout, send.ready()).await {
        Ok(Ok(ready)) => Ok((ready, true)),
        Ok(Err(_)) => Err(Outcome::ConnectFailed),
        Err(_) => Err(Outcome::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle on an in-memory HTTP/2 connection (the server side accepts and does nothing).
    async fn handle() -> SendRequest<Bytes> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            if let Ok(mut connection) = h2::server::handshake(server).await {
                while connection.accept().await.is_some() {}
            }
        });
        let (send, connection) = h2::client::handshake(client).await.expect("handshake");
        tokio::spawn(connection);
        send
    }

    #[tokio::test]
    async fn a_connection_unused_for_upstream_idle_is_let_go_and_others_swept() {
        let idle = Duration::from_secs(10);
        let (a, b): (SocketAddr, SocketAddr) = (
            "192.0.2.1:80".parse().expect("addr"),
            "192.0.2.2:80".parse().expect("addr"),
        );
        let start = Instant::now();
        let mut connections = Connections {
            by_backend: HashMap::default(),
            swept: None,
        };
        for backend in [a, b] {
            let kept = Kept {
                send: handle().await,
                used: start,
                idle,
            };
            connections.by_backend.insert(backend, kept);
        }
        let at = |secs| start + Duration::from_secs(secs);
        // Each use starts the idle time again.
        assert!(connections.take(a, at(5), idle).is_some());
        assert!(connections.take(a, at(14), idle).is_some());
        // `b`, unused since the start, went in the sweep.
        assert_eq!(connections.by_backend.len(), 1);
        assert!(connections.take(b, at(14), idle).is_none());
        assert!(connections.take(a, at(24), idle).is_none());
        assert!(connections.by_backend.is_empty());
    }
}
