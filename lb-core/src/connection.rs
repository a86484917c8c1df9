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

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use crate::coalesce::CoalescedWrites;
use crate::http::{self, HttpApp};
use crate::limiter::ConnLimiter;
use crate::route::{Route, RouteCell};
use crate::tcp::{self, ClientInfo};

/// What connection tasks share with their listener.
pub(crate) struct ListenerShared {
    /// The current route.
    pub(crate) route: RouteCell,
    /// The pingora app, for HTTP ports.
    pub(crate) http: ArcSwapOption<HttpApp>,
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
    let protocol = route.port.protocol;
    if protocol == Protocol::Tcp {
        let info = ClientInfo {
            peer,
            local,
            server_name: None,
        };
        // Boxed, as every branch that serves: the connection's task holds only what waiting
        // for the first bytes needs, not the largest state any protocol could reach.
        return Box::pin(tcp::proxy(&route, stream, info)).await;
    }

    let stream = pingora_stream(stream, peer, local);
    match protocol {
        // A UDP port has no stream listener: no connection ever arrives for one.
        Protocol::Tcp | Protocol::Udp => {}
        Protocol::Http => {
            if let Some(app) = shared.http.load_full() {
                let (route, limiter, drain) =
                    (&shared.route, &shared.limiter, shared.drain.clone());
                Box::pin(http::serve_cleartext(&app, route, limiter, stream, drain)).await;
            }
        }
        Protocol::Tls | Protocol::Https => {
            let Some(tls) = Box::pin(handshake(&route, stream)).await else {
                return;
            };
            if protocol == Protocol::Tls {
                let server_name = tls
                    .get_ssl()
                    .and_then(|s| s.server_name())
                    .map(str::to_owned);
                let info = ClientInfo {
                    peer,
                    local,
                    server_name: server_name.as_deref(),
                };
                Box::pin(tcp::proxy(&route, tls, info)).await;
            } else if let Some(app) = shared.http.load_full() {
                let (route, limiter, drain) =
                    (&shared.route, &shared.limiter, shared.drain.clone());
                Box::pin(http::serve_tls(&app, route, limiter, Box::new(tls), drain)).await;
            }
        }
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
