//! HTTP/1 upgrades (WebSocket, or any `Upgrade:` protocol), tunnelled by Gantry itself.
//!
//! pingora 0.9.1 tears an upgraded connection down the moment it is established whenever the
//! backend's `101` is read before the request's own empty body (cloudflare/pingora#946, still
//! open), which a fast backend does routinely. So Gantry forwards the upgrade request head
//! itself (forwarding headers rewritten by the same policy as every request), relays the
//! backend's response head and counts its status, then relays bytes both ways exactly as a TCP
//! port does. The connection is not reused for further requests afterwards.
//!
//! An upgrade is an exchange like any other ([`crate::http::exchange`]): the backend is picked
//! from the same input (the headers and cookies included, so cookie affinity and header hash
//! keys hold), the affinity's `Set-Cookie` goes on the backend's answer, a failed connect is
//! tried elsewhere by the retry rule, and the one record counts and logs it. A backend that
//! closes before answering the upgrade is not retried: the tunnel's first bytes may already be
//! on their way.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use lb_policy::ResponseHeader as AffinityHeader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::exchange::{pick_context, strip_port, AccessLine, Engine, Failure, Record};
use super::forwarding::ClientIp;
use super::head::close_response;
use super::relay::forward::choose;
use super::relay::request::{self, UpgradeHead};
use super::relay::response::{HeadOut, MAX_RESPONSE_HEAD};
use crate::pool::attempt::Attempts;
use crate::route::Route;
use crate::tcp;

/// Tunnels one upgrade request whose head (and any bytes after it) is `head`.
pub async fn tunnel<C>(route: &Route, mut client: C, head: BytesMut, peer: SocketAddr)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut request = Vec::with_capacity(head.len() + 128);
    let ip = ClientIp::new(peer.ip());
    let Some(parsed) = request::upgrade_head(&head, route, Some(&ip), &mut request) else {
        return refuse(client, 400).await;
    };
    request.extend_from_slice(&head[parsed.head_len..]);
    let mut record = Record::new(route, Engine::Upgrade, peer, started, || {
        access_line(&parsed, &head)
    });
    let authority = parsed
        .host
        .clone()
        .and_then(|range| std::str::from_utf8(&head[range]).ok())
        .map(strip_port);
    let cx = pick_context(route, peer, authority, parsed.headers.as_ref());
    let mut attempts = Attempts::new();
    let chosen = choose(route, &cx, &mut attempts, None).await;
    record.retries = attempts.failures();
    let mut chosen = match chosen {
        Ok(chosen) => chosen,
        Err(no) => return fail(record, client, Failure::NoBackend(no)).await,
    };
    let backend = chosen.attempt.backend().clone();
    record.backend = Some(backend.clone());
    let timeout = route.port.settings.timeouts.upstream_read;
    let mut response = match exchange_heads(&mut chosen.upstream, &request, timeout).await {
        Ok(response) => response,
        Err(failure) => return fail(record, client, failure).await,
    };
    record.answered(&backend, response.status);
    if let Some(header) = &chosen.affinity {
        response.add_header(header);
    }
    // The client stream gathers writes until flushed (see `coalesce`).
    if client.write_all(&response.bytes).await.is_err() || client.flush().await.is_err() {
        record.failed(Failure::ClientGone);
        return record.finish();
    }
    // The tunnel counts its bytes in the backend's metrics as they pass.
    let outcome = tcp::relay_to_backend(route, &backend, client, chosen.upstream).await;
    tracing::debug!(service = %route.port.key.service, port = %route.port.key.port, backend = %backend.label, ?outcome, "tunnel ended");
    drop(chosen.attempt); // the lease: the backend's in-flight count
    record.finish();
}

/// Answers the failure's status, closes, and records the exchange.
async fn fail<C>(mut record: Record<'_>, client: C, failure: Failure)
where
    C: tokio::io::AsyncWrite + Unpin,
{
    record.failed(failure);
    let status = record.status;
    record.finish();
    if let Some(status) = status {
        refuse(client, status).await;
    }
}

/// Answers `status` and closes.
async fn refuse<C: tokio::io::AsyncWrite + Unpin>(mut client: C, status: u16) {
    if client.write_all(&close_response(status)).await.is_ok() {
        let _ = client.shutdown().await;
    }
}

fn access_line(parsed: &UpgradeHead, head: &[u8]) -> AccessLine {
    let text = |range: std::ops::Range<usize>| String::from_utf8_lossy(&head[range]).into_owned();
    AccessLine {
        method: text(parsed.method.clone()),
        path: text(parsed.target.clone()),
    }
}

/// The backend's answer to an upgrade: its head and whatever came with it.
struct UpgradeResponse {
    status: u16,
    head_len: usize,
    bytes: BytesMut,
}

impl UpgradeResponse {
    /// Adds `header` at the end of the head.
    fn add_header(&mut self, header: &AffinityHeader) {
        let end = self.head_len - 2; // before the blank line
        let mut line = Vec::new();
        line.field(header.name.as_str(), header.value.as_bytes());
        let mut bytes = BytesMut::with_capacity(self.bytes.len() + line.len());
        bytes.extend_from_slice(&self.bytes[..end]);
        bytes.extend_from_slice(&line);
        bytes.extend_from_slice(&self.bytes[end..]);
        self.head_len += line.len();
        self.bytes = bytes;
    }
}

/// Sends the request head and reads the backend's response head (and whatever came with it).
async fn exchange_heads(
    upstream: &mut TcpStream,
    request: &[u8],
    timeout: Duration,
) -> Result<UpgradeResponse, Failure> {
    let closed = Failure::Backend {
        timed_out: false,
        dead_reuse: false,
    };
    upstream.write_all(request).await.map_err(|_| closed)?;
    let mut response = BytesMut::with_capacity(1024);
    let deadline = lb_policy::clock::instant_after(timeout);
    loop {
        match tokio::time::timeout_at(deadline, upstream.read_buf(&mut response)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err(closed),
            Err(_) => {
                return Err(Failure::Backend {
                    timed_out: true,
                    dead_reuse: false,
                })
            }
        }
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut slots);
        match parsed.parse(&response) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = parsed.code.ok_or(Failure::BadResponse)?;
                return Ok(UpgradeResponse {
                    status,
                    head_len,
                    bytes: response,
                });
            }
            Ok(httparse::Status::Partial) if response.len() < MAX_RESPONSE_HEAD => {}
            _ => return Err(Failure::BadResponse),
        }
    }
}
