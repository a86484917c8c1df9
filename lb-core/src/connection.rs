//! One accepted client connection, from the socket to the protocol handler the route names:
//! the port's source ranges checked first (a client outside them is reset and counted), the
//! TLS handshake (bounded by `tls_handshake`) where the port terminates TLS, then the TCP relay
//! or the HTTP driver.

use std::net::SocketAddr;
use std::sync::Arc;

use lb_config::Protocol;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::tls::TlsStream;
use pingora::protocols::SocketDigest;
use pingora::protocols::{GetSocketDigest, Ssl};
use tokio::net::TcpStream;

use tokio::sync::watch;

use crate::coalesce::CoalescedWrites;
use crate::http;
use crate::limiter::ConnLimiter;
use crate::route::{Route, RouteCell};
use crate::tcp::{self, ClientInfo};
use crate::work::Work;

/// What connection tasks share with their listener.
pub struct ListenerShared {
    /// The current route.
    pub route: RouteCell,
    /// Flips to `true` when the listener drains.
    pub(crate) drain: watch::Receiver<bool>,
    pub(crate) limiter: Arc<ConnLimiter>,
}

/// Counts a connection as open for as long as it lives.
struct OpenConnection<'a>(&'a Route);

impl<'a> OpenConnection<'a> {
    fn new(route: &'a Route) -> Self {
        route.metrics.connections.inc();
        route.metrics.active.inc();
        OpenConnection(route)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.metrics.active.dec();
    }
}

/// Serves one accepted connection with `route`.
pub(crate) async fn serve(
    shared: &ListenerShared,
    route: Arc<Route>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let ranges = &route.port.settings.source_ranges;
    if !ranges.is_empty() && !ranges.contains(peer.ip()) {
        // Refused before a byte is read or a backend chosen; a reset tells the client at once.
        route.metrics.refused_by_source.inc();
        let _ = stream.set_zero_linger();
        tracing::debug!(port = %route.port.key, client = %peer, "client outside the port's source ranges");
        return;
    }
    let _open = OpenConnection::new(&route);
    let local = match stream.local_addr() {
        Ok(local) => local,
        Err(_) => return, // the client is already gone
    };
    let addresses = Addresses { peer, local };
    protocol_work(shared, &route, stream, addresses).await;
}

/// The two ends of an accepted connection.
#[derive(Clone, Copy)]
struct Addresses {
    peer: SocketAddr,
    local: SocketAddr,
}

/// Makes, on the heap, the work `route`'s protocol does with an accepted connection (a plain
/// function on purpose: see [`crate::work`]).
fn protocol_work<'a>(
    shared: &'a ListenerShared,
    route: &'a Route,
    stream: TcpStream,
    Addresses { peer, local }: Addresses,
) -> Work<'a> {
    let nothing: Work<'a> = Box::pin(std::future::ready(()));
    match route.port.protocol {
        Protocol::Tcp => {
            let info = ClientInfo {
                peer,
                local,
                server_name: None,
            };
            Box::pin(tcp::proxy(route, stream, info))
        }
        // A UDP port has no stream listener: no connection ever arrives for one.
        Protocol::Udp => nothing,
        Protocol::Http => {
            let stream = pingora_stream(stream, peer, local);
            let (routes, limiter, drain) = (&shared.route, &shared.limiter, shared.drain.clone());
            Box::pin(http::serve_cleartext(routes, limiter, stream, drain))
        }
        Protocol::Tls | Protocol::Https => {
            let stream = pingora_stream(stream, peer, local);
            Box::pin(serve_tls(shared, route, stream, Addresses { peer, local }))
        }
    }
}

/// A TLS port's connection: the handshake, then the TCP relay or the HTTP driver.
async fn serve_tls(
    shared: &ListenerShared,
    route: &Route,
    stream: ClientStream,
    Addresses { peer, local }: Addresses,
) {
    let Some(tls) = handshake(route, stream).await else {
        return;
    };
    if route.port.protocol == Protocol::Tls {
        let server_name = tls
            .get_ssl()
            .and_then(|s| s.server_name())
            .map(str::to_owned);
        let info = ClientInfo {
            peer,
            local,
            server_name: server_name.as_deref(),
        };
        Box::pin(tcp::proxy(route, tls, info)).await;
    } else {
        let (routes, limiter, drain) = (&shared.route, &shared.limiter, shared.drain.clone());
        http::serve_tls(routes, limiter, Box::new(tls), drain).await;
    }
}

/// An accepted client connection as pingora sees it.
pub(crate) type ClientStream = CoalescedWrites<L4Stream>;

/// Wraps an accepted socket for pingora: with the write buffering pingora's HTTP code expects
/// (see [`crate::coalesce`]), and with the addresses pingora reports to the proxy logic
/// recorded (it only learns them itself when it accepts the socket).
pub(crate) fn pingora_stream(
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) -> ClientStream {
    let mut stream = L4Stream::from(stream);
    use std::os::fd::AsRawFd;
    let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
    let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(peer)));
    let _ = digest.local_addr.set(Some(PingoraAddr::Inet(local)));
    stream.set_socket_digest(digest);
    CoalescedWrites::new(stream)
}

async fn handshake(route: &Route, stream: ClientStream) -> Option<TlsStream<ClientStream>> {
    let acceptor = route.tls.as_ref()?;
    let timeout = route.port.settings.timeouts.tls_handshake;
    match tokio::time::timeout(timeout, acceptor.tls_handshake(stream)).await {
        Ok(Ok(tls)) => {
            route.metrics.tls_handshakes.inc();
            Some(tls)
        }
        Ok(Err(err)) => {
            route.metrics.tls_handshake_failures.inc();
            tracing::debug!(port = %route.port.key, %err, "TLS handshake failed");
            None
        }
        Err(_) => {
            route.metrics.tls_handshake_failures.inc();
            tracing::debug!(port = %route.port.key, "TLS handshake timed out");
            None
        }
    }
}
