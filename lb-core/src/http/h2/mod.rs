//! Gantry's own HTTP/2 server, for clients of ports whose backends speak HTTP/1: the `h2`
//! crate's connection under Gantry's limits ([`settings`]), and each stream proxied to an
//! HTTP/1 backend ([`stream`]) through the same exchange, attempt loop and per-worker idle
//! pool as the HTTP/1 relay. All of one connection runs in its own task: the connection and
//! its streams are polled together, so a stream costs no task, no channel and no hop to
//! another thread (pingora's HTTP/2 path spent about 45 µs a request more on those).
//!
//! A connection without streams for `timeouts.client_idle` is sent `GOAWAY` and closed, as an
//! HTTP/1 connection idle between requests is; a draining listener sends `GOAWAY` at once and
//! lets the streams under way finish.

pub mod request;
mod respond;
pub mod settings;
mod stream;
mod to_h2c;

use std::net::SocketAddr;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::http::forwarding::ClientIp;
use crate::route::RouteCell;

/// Serves one HTTP/2 connection (its preface not read yet) from a client at `peer`.
pub(crate) async fn serve<I>(
    route: &RouteCell,
    io: I,
    peer: SocketAddr,
    mut drain: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let (max_header_bytes, client_idle) = {
        let current = route.load();
        let settings = &current.port.settings;
        (
            settings.limits.max_header_bytes,
            settings.timeouts.client_idle,
        )
    };
    let handshake = settings::server_options(max_header_bytes).handshake::<_, Bytes>(io);
    let mut connection = match tokio::time::timeout(client_idle, handshake).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(err)) => {
            tracing::debug!(client = %peer, %err, "HTTP/2 handshake failed");
            return;
        }
        Err(_) => return,
    };
    let client_ip = ClientIp::new(peer.ip());
    let mut streams = FuturesUnordered::new();
    let idle = tokio::time::sleep(client_idle);
    tokio::pin!(idle);
    let mut closing = false;
    if *drain.borrow() {
        connection.graceful_shutdown();
        closing = true;
    }
    loop {
        tokio::select! {
            // Streams first: every stream that can progress queues its frames before the
            // connection is polled, and polling it writes them all at once (one TLS record
            // and one send for many responses, as HAProxy's event loop batches).
            biased;
            Some(()) = streams.next() => {
                if streams.is_empty() {
                    idle.as_mut().reset(Instant::now() + client_idle);
                }
            }
            accepted = connection.accept() => match accepted {
                Some(Ok((request, respond))) => {
                    let current = route.load_full();
                    streams.push(stream::serve(current, peer, &client_ip, request, respond));
                }
                Some(Err(err)) => {
                    tracing::debug!(client = %peer, %err, "HTTP/2 connection ended with an error");
                    break;
                }
                None => break,
            },
            () = &mut idle, if streams.is_empty() && !closing => {
                connection.graceful_shutdown();
                closing = true;
            }
            changed = drain.changed(), if !closing => {
                if changed.is_err() || *drain.borrow() {
                    connection.graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
    // The connection is over: what streams remain see it closed and end.
    while streams.next().await.is_some() {}
}
