//! HTTP listeners. Gantry drives each client connection itself. HTTP/1 runs a loop in which
//! [`head::read_head`] reads and checks each request head under Gantry's limits, then Gantry's
//! own [`relay`] proxies it (upgrades are tunnelled by [`upgrade`]). HTTP/2 (ALPN `h2`, or the
//! h2c preface on cleartext) is Gantry's own server ([`h2`]). Every engine goes through the
//! one [`exchange`]. Only HTTP/1 requests to h2c backends still go to a pingora `HttpProxy`
//! ([`gateway`]), until the h2c client ([`h2c`]) serves them too.
//!
//! The pingora apps are shared ([`HttpApps`]): one per distinct [`AppKey`], whatever the
//! number of listeners, each request finding its listener's route by address ([`routes`]). A pingora app is not small (its upstream connector loads
//! the platform's root certificates), so an app per listener would make ports cost hundreds
//! of kilobytes each; shared, they also share upstream keep-alive pools, which survive backend
//! changes.

pub mod deadline;
pub mod exchange;
pub mod forwarding;
pub mod gateway;
pub mod h2;
pub mod h2c;
pub mod head;
pub mod relay;
pub mod routes;
pub mod settings_guard;
pub mod upgrade;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use lb_config::BackendProtocol;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use self::forwarding::ClientIp;
use self::gateway::Gateway;
use self::head::{read_head, Head, HeadLimits};
use self::relay::{relay, After, Buffers, Client};
use self::routes::ListenerRoutes;
use self::settings_guard::SettingsGuard;
use crate::coalesce::CoalescedWrites;
use crate::connection::Work;
use crate::limiter::ConnLimiter;
use crate::route::{Route, RouteCell};

/// The pingora application of one HTTP listener.
pub type HttpApp = HttpProxy<Gateway>;

/// The start of the HTTP/2 connection preface (RFC 9113 §3.4), enough to tell h2c from HTTP/1.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0\r\n";

/// What a pingora app is built with: listeners whose routes agree on it share the app. Since
/// pingora serves only HTTP/1 sessions (requests to h2c backends), whose limits and timeouts
/// Gantry applies itself, no route setting shapes the app: every HTTP listener shares one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AppKey;

impl AppKey {
    /// The app an HTTP route needs; `None` for other protocols.
    pub fn of(route: &Route) -> Option<AppKey> {
        route.port.protocol.is_http().then_some(AppKey)
    }
}

/// The pingora apps of one Gantry, by [`AppKey`], and the routes they serve.
#[derive(Default)]
pub struct HttpApps {
    routes: Arc<ListenerRoutes>,
    /// Kept while some listener holds the app.
    apps: Mutex<HashMap<AppKey, Weak<HttpApp>>>,
}

impl HttpApps {
    /// The routes of the HTTP listeners.
    pub fn routes(&self) -> &ListenerRoutes {
        &self.routes
    }

    /// The app for listeners of this `key`: the one in use, or a new one.
    pub fn app(&self, key: AppKey) -> Arc<HttpApp> {
        let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(app) = apps.get(&key).and_then(Weak::upgrade) {
            return app;
        }
        apps.retain(|_, app| app.strong_count() > 0);
        let app = build_app(self.routes.clone());
        apps.insert(key, Arc::downgrade(&app));
        app
    }
}

/// Builds an app serving the listeners in `routes`.
fn build_app(routes: Arc<ListenerRoutes>) -> Arc<HttpApp> {
    let mut proxy = HttpProxy::new(Gateway::new(routes), Arc::new(ServerConf::default()));
    proxy.handle_init_modules();
    Arc::new(proxy)
}

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
/// wait needs (see [`crate::connection::Work`]).
pub(crate) async fn serve_cleartext(
    app: Arc<HttpApp>,
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
        http1(app, route, limiter, stream, buffers, Some(first), drain).await;
    }
}

/// Serves a TLS connection: HTTP/2 when ALPN chose it, else HTTP/1.
pub(crate) fn serve_tls<'a>(
    app: Arc<HttpApp>,
    route: &'a RouteCell,
    limiter: &'a Arc<ConnLimiter>,
    stream: Stream,
    drain: watch::Receiver<bool>,
) -> Work<'a> {
    if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
        http2(route, stream, drain)
    } else {
        http1(app, route, limiter, stream, Buffers::default(), None, drain)
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
    app: Arc<HttpApp>,
    route: &'a RouteCell,
    limiter: &'a Arc<ConnLimiter>,
    stream: Stream,
    buffers: Buffers,
    first: Option<Head>,
    drain: watch::Receiver<bool>,
) -> Work<'a> {
    Box::pin(serve_http1(
        app, route, limiter, stream, buffers, first, drain,
    ))
}

/// The HTTP/1 keep-alive loop: read a head under the current limits, relay the request (or
/// tunnel an upgrade, or hand a request for an h2c backend to pingora), repeat while the
/// connection stays reusable. What a client pipelined stays in `buffers` for the next turn.
async fn serve_http1(
    app: Arc<HttpApp>,
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
            Head::Ready(_) if current.port.backend_protocol == BackendProtocol::H2c => {
                let mut session = ServerSession::new_http1(stream);
                session.set_pipelined_prefix(buffers.client_in.split());
                // Any non-zero value lets pingora keep the connection; the idle wait itself
                // is `read_head`'s.
                session.set_keepalive(Some(limits.idle_timeout.as_secs().max(1)));
                match Box::pin(app.process_new_http(session, &drain)).await {
                    Some(reused) => stream = reused.consume().0,
                    None => return,
                }
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
                if Box::pin(relay(&current, client, &mut buffers)).await == After::Close {
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
