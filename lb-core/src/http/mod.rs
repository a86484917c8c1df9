//! HTTP listeners. Gantry drives each client connection itself. HTTP/1 runs a loop in which
//! [`head::read_head`] reads and checks each request head under Gantry's limits, then Gantry's
//! own [`relay`] proxies it (to an h2c backend as HTTP/2, [`relay::to_h2c`]; upgrades are
//! tunnelled by [`upgrade`]). HTTP/2 (ALPN `h2`, or the h2c preface on cleartext) is Gantry's
//! own server ([`h2`]). Every engine goes through the one [`exchange`]; requests to h2c
//! backends, from either version, through the one h2c exchange ([`h2c::forward`]).

pub mod deadline;
pub mod exchange;
pub mod forwarding;
pub mod h2;
pub mod h2c;
pub mod head;
pub mod relay;
pub mod settings_guard;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;

use lb_config::BackendProtocol;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Stream, ALPN};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use self::forwarding::ClientIp;
use self::head::{read_head, Head, HeadLimits};
use self::relay::{relay, After, Buffers, Client};
use self::settings_guard::SettingsGuard;
use crate::coalesce::CoalescedWrites;
use crate::limiter::ConnLimiter;
use crate::route::{Route, RouteCell};
use crate::work::Work;

/// The start of the HTTP/2 connection preface (RFC 9113 §3.4), enough to tell h2c from HTTP/1.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0\r\n";

fn head_limits(route: &Route) -> HeadLimits {
    let settings = &route.port.settings;
    HeadLimits {
        max_bytes: settings.limits.max_header_bytes as usize,
        max_headers: settings.limits.max_headers as usize,
        header_timeout: settings.timeouts.header_read,
        idle_timeout: settings.timeouts.client_idle,
    }
}

/// Serves a cleartext connection: h2c by prior knowledge, else HTTP/1.
///
/// What comes after the first head is made by plain functions ([`http2`], [`http1`]), so that
/// this future, which an idle connection's task holds while it waits, keeps only what that
/// wait needs (see [`crate::work`]).
pub(crate) async fn serve_cleartext(
    route: &RouteCell,
    limiter: &Arc<ConnLimiter>,
    mut stream: CoalescedWrites<L4Stream>,
    drain: watch::Receiver<bool>,
) {
    let mut buffers = Buffers::default();
    let first = read_head(
        &mut stream,
        &mut buffers.client_in,
        head_limits(&route.load()),
        &mut buffers.client_timer,
        Some(limiter),
    )
    .await;
    if matches!(first, Head::Ready(_)) && buffers.client_in.starts_with(H2_PREFACE_START) {
        // Nothing was written yet, so the inner stream can take the bytes back.
        stream.get_mut().rewind(&buffers.client_in);
        http2(route, Box::new(stream), drain).await;
    } else {
        let stream = Box::new(stream);
        http1(route, limiter, stream, buffers, Some(first), drain).await;
    }
}

/// Serves a TLS connection: HTTP/2 when ALPN chose it, else HTTP/1.
pub(crate) fn serve_tls<'a>(
    route: &'a RouteCell,
    limiter: &'a Arc<ConnLimiter>,
    stream: Stream,
    drain: watch::Receiver<bool>,
) -> Work<'a> {
    if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
        http2(route, stream, drain)
    } else {
        http1(route, limiter, stream, Buffers::default(), None, drain)
    }
}

/// An HTTP/2 connection, served by Gantry's own server ([`self::h2`]).
fn http2<'a>(route: &'a RouteCell, stream: Stream, drain: watch::Receiver<bool>) -> Work<'a> {
    match peer_address(&stream) {
        Some(peer) => Box::pin(self::h2::serve(
            route,
            SettingsGuard::new(stream),
            peer,
            drain,
        )),
        None => Box::pin(async {}),
    }
}

/// An HTTP/1 connection, served by [`serve_http1`].
fn http1<'a>(
    route: &'a RouteCell,
    limiter: &'a Arc<ConnLimiter>,
    stream: Stream,
    buffers: Buffers,
    first: Option<Head>,
    drain: watch::Receiver<bool>,
) -> Work<'a> {
    Box::pin(serve_http1(route, limiter, stream, buffers, first, drain))
}

/// The HTTP/1 keep-alive loop: read a head under the current limits, relay the request (or
/// tunnel an upgrade), repeat while the connection stays reusable. What a client pipelined stays in `buffers` for the next turn.
async fn serve_http1(
    route: &RouteCell,
    limiter: &Arc<ConnLimiter>,
    mut stream: Stream,
    mut buffers: Buffers,
    mut pending: Option<Head>,
    drain: watch::Receiver<bool>,
) {
    let Some(peer) = peer_address(&stream) else {
        return;
    };
    let client_ip = ClientIp::new(peer.ip());
    loop {
        let current = route.load_full();
        let limits = head_limits(&current);
        let head = match pending.take() {
            Some(head) => head,
            None => {
                buffers.release_while_idle();
                let (buf, timer) = (&mut buffers.client_in, &mut buffers.client_timer);
                read_head(&mut stream, buf, limits, timer, Some(limiter)).await
            }
        };
        match head {
            Head::Ready(head) if head.upgrade => {
                let bytes = buffers.client_in.split();
                Box::pin(upgrade::tunnel(&current, stream, bytes, peer)).await;
                return;
            }
            Head::Ready(_) => {
                let client = Client {
                    io: &mut stream,
                    peer,
                    ip: &client_ip,
                    drain: &drain,
                };
                // Boxed: an idle connection's task holds only what waiting for a request
                // needs, not the relay's state.
                let after = if current.port.backend_protocol == BackendProtocol::H2c {
                    Box::pin(relay::to_h2c::relay(&current, client, &mut buffers)).await
                } else {
                    Box::pin(relay(&current, client, &mut buffers)).await
                };
                if after == After::Close {
                    let _ = stream.shutdown().await;
                    return;
                }
            }
            Head::Closed => return,
            Head::Refused(why) => {
                Box::pin(relay::refuse(&current, &mut stream, why)).await;
                return;
            }
        }
    }
}

/// The client's address, as recorded when the connection was accepted.
fn peer_address(stream: &Stream) -> Option<SocketAddr> {
    let digest = stream.get_socket_digest()?;
    Some(*digest.peer_addr()?.as_inet()?)
}
