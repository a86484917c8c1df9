//! Connections to backends that speak HTTP/2 in the clear (h2c, gRPC's usual transport): one
//! multiplexed connection per backend and worker thread, kept in a thread-local map as the
//! HTTP/1 relay keeps its idle connections, so a request takes a handle with no lock. Each
//! connection is driven by a task of its own (the only task an h2c backend costs, not one
//! per request). A connection found closed is replaced; the backend's own
//! `SETTINGS_MAX_CONCURRENT_STREAMS` makes further requests wait for a stream.
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

use super::h2::settings::{CONNECTION_WINDOW, MAX_FRAME_SIZE, STREAM_WINDOW};
use crate::pool::BackendState;
use crate::tcp;

thread_local! {
    /// Keyed by configured backend addresses, which no client chooses: a fast hash is safe.
    static CONNECTIONS: RefCell<HashMap<SocketAddr, SendRequest<Bytes>, FxBuildHasher>> =
        RefCell::new(HashMap::default());
}

/// A handle ready to open a stream to `backend`, on this thread's connection to it or a new
/// one (`true`: new, so a failure on it says something of the backend). The connect is bounded
/// by `timeout`, handshake included.
pub async fn ready(
    backend: &BackendState,
    timeout: Duration,
) -> Result<(SendRequest<Bytes>, bool), Outcome> {
    let kept = CONNECTIONS.with(|c| c.borrow().get(&backend.address).cloned());
    if let Some(kept) = kept {
        if let Ok(ready) = kept.ready().await {
            return Ok((ready, false));
        }
        CONNECTIONS.with(|c| c.borrow_mut().remove(&backend.address));
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
    CONNECTIONS.with(|c| c.borrow_mut().insert(backend.address, send.clone()));
    match send.ready().await {
        Ok(ready) => Ok((ready, true)),
        Err(_) => Err(Outcome::ConnectFailed),
    }
}
