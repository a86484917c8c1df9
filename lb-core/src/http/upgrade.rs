//! HTTP/1 upgrades (WebSocket, or any `Upgrade:` protocol), tunnelled by Gantry itself.
//!
//! pingora 0.9.1 tears an upgraded connection down the moment it is established whenever the
//! backend's `101` is read before the request's own empty body (cloudflare/pingora#946, still
//! open), which a fast backend does routinely. So Gantry forwards the upgrade request head
//! itself (forwarding headers rewritten by the same policy as every request), relays the
//! backend's response head and counts its status, then relays bytes both ways exactly as a TCP
//! port does. The connection is not reused for further requests afterwards.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::forwarding::ClientIp;
use super::gateway::strip_port;
use super::head::close_response;
use super::relay::request;
use super::relay::response::MAX_RESPONSE_HEAD;
use crate::route::Route;
use crate::tcp::{self, ClientInfo};

/// Tunnels one upgrade request whose head (and any bytes after it) is `head`.
pub async fn tunnel<C>(
    route: &Route,
    mut client: C,
    head: BytesMut,
    peer: SocketAddr,
    local: SocketAddr,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let started = Instant::now();
    let (request, host) = match rewrite_head(route, &head, peer) {
        Some(rewritten) => rewritten,
        None => return refuse(client, 400).await,
    };
    let info = ClientInfo {
        peer,
        local,
        server_name: host.as_deref(),
    };
    let Some((lease, mut upstream)) = tcp::connect(route, &info).await else {
        route.unrouted.request(Some(502), started.elapsed());
        return refuse(client, 502).await;
    };
    let backend = lease.backend();
    let timeout = route.port.settings.timeouts.upstream_read;
    let status = match exchange_heads(&mut upstream, &request, timeout).await {
        Some((status, response)) => {
            // The client stream gathers writes until flushed (see `coalesce`).
            if client.write_all(&response).await.is_err() || client.flush().await.is_err() {
                return;
            }
            status
        }
        None => {
            backend.metrics.request(Some(502), started.elapsed());
            return refuse(client, 502).await;
        }
    };
    let outcome = tcp::relay_to_backend(route, backend, client, upstream).await;
    backend.metrics.request(Some(status), started.elapsed());
    if route.logs_access() {
        let key = &route.port.key;
        tracing::info!(
            target: "gantry::access",
            service = %key.service,
            port = %key.port,
            client = %peer,
            upgrade = true,
            status,
            backend = %backend.label,
            outcome = ?outcome,
            duration_ms = crate::logging::millis(started.elapsed()),
        );
    }
}

/// Answers `status` and closes.
async fn refuse<C: tokio::io::AsyncWrite + Unpin>(mut client: C, status: u16) {
    if client.write_all(&close_response(status)).await.is_ok() {
        let _ = client.shutdown().await;
    }
}

/// The request head to send upstream (with anything the client sent after it), and the host
/// without its port.
fn rewrite_head(route: &Route, head: &[u8], peer: SocketAddr) -> Option<(Vec<u8>, Option<String>)> {
    let mut out = Vec::with_capacity(head.len() + 128);
    let (length, host) =
        request::upgrade_head(head, route, Some(&ClientIp::new(peer.ip())), &mut out)?;
    let host = host
        .and_then(|range| std::str::from_utf8(&head[range]).ok())
        .map(|h| strip_port(h).to_owned());
    out.extend_from_slice(&head[length..]);
    Some((out, host))
}

/// Sends the request head and reads the backend's response head (and whatever came with it).
async fn exchange_heads(
    upstream: &mut TcpStream,
    request: &[u8],
    timeout: Duration,
) -> Option<(u16, BytesMut)> {
    upstream.write_all(request).await.ok()?;
    let mut response = BytesMut::with_capacity(1024);
    let deadline = lb_policy::clock::instant_after(timeout);
    loop {
        let read = tokio::time::timeout_at(deadline, upstream.read_buf(&mut response)).await;
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            return None;
        }
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut slots);
        match parsed.parse(&response) {
            Ok(httparse::Status::Complete(_)) => return Some((parsed.code?, response)),
            Ok(httparse::Status::Partial) if response.len() < MAX_RESPONSE_HEAD => {}
            _ => return None,
        }
    }
}
