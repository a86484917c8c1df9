//! One listening socket and the connections (or, for a `udp` port, the flows) it serves. The
//! accept loop loads the current [`Route`] per connection (the UDP relay per datagram), so a
//! reload swaps what a listener serves without touching its socket. Removing a TCP listener
//! closes the socket at once, asks open connections to finish (HTTP/1 closes after the
//! current response, HTTP/2 sends GOAWAY, TCP runs on), and closes whatever is left when the
//! grace period ends; a UDP listener takes no new flow but keeps serving its flows until they
//! end or the grace period does, and its socket stays open as long as any listener holds it
//! (one re-added at its address takes it over: [`crate::udp::port`]).

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use lb_config::ListenerKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bind::{bound_socket, listening};
use crate::connection::{self, ListenerShared};
use crate::limiter::ConnLimiter;
use crate::ports::Transport;
use crate::route::{Route, RouteCell};
use crate::sockets::{SocketKind, Sockets};
use crate::tls::TlsEndpoint;
use crate::udp::{FlowOwner, PortHold, UdpPort, UdpPorts};

/// A bound listener. It accepts once [`Listener::start`] is called; dropped before that, its
/// socket simply closes (how a failed reload rolls back).
pub struct Listener {
    key: ListenerKey,
    local_addr: SocketAddr,
    shared: Arc<ListenerShared>,
    /// Long-lived TLS state, once the port terminates TLS.
    tls: Option<Arc<TlsEndpoint>>,
    socket: Option<Bound>,
    /// The socket was bound here, not taken over (from a draining port or a predecessor).
    fresh: bool,
    accept_task: Option<tokio::task::JoinHandle<()>>,
    /// The listening socket, shared with the accept loop, while it accepts.
    listening: Option<Arc<TcpListener>>,
    /// A UDP port's socket and this listener's share of it, once serving.
    udp: Option<UdpServing>,
    /// The process's UDP sockets, by address.
    udp_ports: Arc<UdpPorts>,
    drain: watch::Sender<bool>,
    stop_accepting: CancellationToken,
    force_close: CancellationToken,
    connections: TaskTracker,
}

impl Listener {
    /// Binds `bind` for `route`; nothing is accepted until [`Listener::start`]. With
    /// `freebind`, the address need not be configured on the host yet. A UDP port whose
    /// address has a socket already (a draining port's) takes a hold on it instead of binding.
    pub fn bind(
        key: ListenerKey,
        bind: SocketAddr,
        freebind: bool,
        route: Route,
        tls: Option<Arc<TlsEndpoint>>,
        sockets: &Sockets,
    ) -> std::io::Result<Listener> {
        let mut fresh = false;
        let (socket, local_addr) = if route.port.protocol.is_udp() {
            let hold = match sockets.udp.find(bind) {
                Some(hold) => hold,
                None => match sockets.take_inherited(SocketKind::Udp, bind) {
                    Some(fd) => UdpPort::open_handed_over(tokio::net::UdpSocket::from_std(
                        std::net::UdpSocket::from(fd),
                    )?)?,
                    None => {
                        fresh = true;
                        UdpPort::open(crate::udp::bind(bind, freebind)?)?
                    }
                },
            };
            let local = hold.port().local;
            (Bound::Udp(hold), local)
        } else {
            let socket = match sockets.take_inherited(SocketKind::Tcp, bind) {
                // Listening already; listening again (at start) only sets the backlog.
                Some(fd) => socket2::Socket::from(fd),
                None => {
                    fresh = true;
                    bind_socket(bind, freebind)?
                }
            };
            let local = socket
                .local_addr()?
                .as_socket()
                .ok_or_else(|| std::io::Error::other("bound to a non-IP address"))?;
            (Bound::Tcp(socket), local)
        };
        let limiter = ConnLimiter::new(route.port.settings.limits.max_connections);
        let (drain, drain_rx) = watch::channel(false);
        let route: RouteCell = Arc::new(ArcSwap::from_pointee(route));
        Ok(Listener {
            key,
            local_addr,
            shared: Arc::new(ListenerShared {
                route,
                drain: drain_rx,
                limiter,
            }),
            tls,
            socket: Some(socket),
            fresh,
            accept_task: None,
            listening: None,
            udp: None,
            udp_ports: sockets.udp.clone(),
            drain,
            stop_accepting: CancellationToken::new(),
            force_close: CancellationToken::new(),
            connections: TaskTracker::new(),
        })
    }

    /// Starts listening and accepting (a UDP listener: taking new flows on its socket).
    pub fn start(&mut self) {
        let task = match self.socket.take() {
            None => return,
            Some(Bound::Udp(hold)) => {
                let owner = Arc::new(FlowOwner::new(self.shared.clone()));
                hold.port().serve(owner.clone(), &self.udp_ports);
                self.udp = Some(UdpServing { hold, owner });
                tracing::info!(service = %self.key.service, port = %self.key.port, address = %self.local_addr, "listening");
                return;
            }
            Some(Bound::Tcp(socket)) => {
                // Listening only now: a socket that shares its port (SO_REUSEPORT) takes
                // connections from the moment it listens, and a reload that fails after binding
                // must not have taken any. Binding found the conflicts; this cannot meet one
                // short of another socket of this user bound to the port and not listening.
                let socket = match listening(socket) {
                    Ok(socket) => Arc::new(socket),
                    Err(err) => {
                        tracing::error!(service = %self.key.service, port = %self.key.port, address = %self.local_addr, error = %err, "cannot listen");
                        return;
                    }
                };
                self.listening = Some(socket.clone());
                tokio::spawn(accept_loop(
                    socket,
                    self.shared.clone(),
                    self.stop_accepting.clone(),
                    self.force_close.clone(),
                    self.connections.clone(),
                ))
            }
        };
        self.accept_task = Some(task);
        tracing::info!(service = %self.key.service, port = %self.key.port, address = %self.local_addr, "listening");
    }

    /// The socket this listener bound itself, not yet serving: checked against other
    /// processes' sockets before it serves ([`crate::ports`]).
    pub fn freshly_bound(&self) -> Option<(Transport, SocketAddr)> {
        match (&self.socket, self.fresh) {
            (Some(Bound::Tcp(_)), true) => Some((Transport::Tcp, self.local_addr)),
            (Some(Bound::Udp(_)), true) => Some((Transport::Udp, self.local_addr)),
            _ => None,
        }
    }

    /// The listening socket of a TCP port while it accepts (to hand to a successor).
    pub fn listening_socket(&self) -> Option<BorrowedFd<'_>> {
        self.listening.as_ref().map(|socket| socket.as_fd())
    }

    /// The address actually bound (differs from the configured one for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The key.
    pub fn key(&self) -> &ListenerKey {
        &self.key
    }

    /// What connection tasks share.
    pub fn shared(&self) -> &Arc<ListenerShared> {
        &self.shared
    }

    /// The route served now.
    pub fn route(&self) -> Arc<Route> {
        self.shared.route.load_full()
    }

    /// The listener's TLS state, if it has any yet.
    pub fn tls(&self) -> Option<&Arc<TlsEndpoint>> {
        self.tls.as_ref()
    }

    /// Keeps `endpoint` as the listener's TLS state.
    pub fn set_tls(&mut self, endpoint: Arc<TlsEndpoint>) {
        self.tls = Some(endpoint);
    }

    /// Serves `route` from the next connection or request on; returns the route it replaced.
    pub fn swap(&mut self, route: Route) -> Arc<Route> {
        self.shared
            .limiter
            .set_max(route.port.settings.limits.max_connections);
        self.shared.route.swap(Arc::new(route))
    }

    /// How to count the listener's open connections (or flows).
    pub fn open_count(&self) -> OpenCount {
        match &self.udp {
            Some(udp) => OpenCount(Open::Flows(udp.owner.clone())),
            None => OpenCount(Open::Connections(self.connections.clone())),
        }
    }

    /// Stops accepting and asks open connections to finish. The socket is closed when this
    /// returns: new connections are refused from then on.
    pub async fn begin_drain(&mut self) {
        self.socket = None;
        self.stop_accepting.cancel();
        if let Some(task) = self.accept_task.take() {
            // The loop holds the socket too; it returns as soon as it sees the cancellation.
            let _ = task.await;
        }
        self.listening = None;
        if let Some(udp) = &self.udp {
            udp.owner.draining.cancel();
        }
        self.connections.close();
        self.drain.send_replace(true);
    }

    /// Waits for open connections to finish, up to `grace`; then closes the rest.
    pub async fn finish_drain(&mut self, grace: Duration) {
        if let Some(udp) = self.udp.take() {
            return udp.finish_drain(&self.key, grace).await;
        }
        if tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                service = %self.key.service, port = %self.key.port,
                remaining = self.connections.len(),
                "grace period over; closing remaining connections"
            );
            self.force_close.cancel();
            self.connections.wait().await;
        }
    }
}

/// A bound socket, not yet serving.
enum Bound {
    /// A TCP port's socket, bound; it listens once started.
    Tcp(socket2::Socket),
    /// A UDP port's socket, this listener's to serve once started.
    Udp(PortHold),
}

/// A UDP listener's share of its port.
struct UdpServing {
    hold: PortHold,
    owner: Arc<FlowOwner>,
}

impl UdpServing {
    /// Waits for the listener's flows to end, up to `grace`, ending at once each flow that
    /// has been answered and quiet for `timeouts.udp_drain_quiet` (it has nothing in flight:
    /// only flows mid-exchange are given the grace); then ends the rest and lets go of the
    /// port (which closes if no other listener holds it).
    async fn finish_drain(self, key: &ListenerKey, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        let quiet = self.owner.route().port.settings.timeouts.udp_drain_quiet;
        let port = self.hold.port();
        loop {
            let next = port.end_quiet_flows_of(&self.owner, quiet);
            // A flow not answered yet may be answered any time: look again after `quiet`.
            let next = next.unwrap_or_else(|| tokio::time::Instant::now() + quiet);
            tokio::select! {
                () = self.owner.all_ended() => break,
                () = tokio::time::sleep_until(next.min(deadline)) => {
                    if tokio::time::Instant::now() < deadline {
                        continue;
                    }
                    tracing::warn!(
                        service = %key.service, port = %key.port, remaining = self.owner.open(),
                        "grace period over; ending remaining UDP flows"
                    );
                    port.end_flows_of(&self.owner);
                    self.owner.all_ended().await;
                    break;
                }
            }
        }
        self.hold.release().await;
    }
}

/// Counts a listener's open connections, or a UDP listener's flows.
#[derive(Clone)]
pub struct OpenCount(Open);

#[derive(Clone)]
enum Open {
    Connections(TaskTracker),
    Flows(Arc<FlowOwner>),
}

impl OpenCount {
    /// How many are open now.
    pub fn get(&self) -> usize {
        match &self.0 {
            Open::Connections(tracker) => tracker.len(),
            Open::Flows(owner) => owner.open(),
        }
    }
}

/// A TCP socket bound to `addr`, not listening yet (see [`crate::bind`]).
fn bind_socket(addr: SocketAddr, freebind: bool) -> std::io::Result<socket2::Socket> {
    let socket = bound_socket(addr, socket2::Type::STREAM, freebind)?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket)
}

async fn accept_loop(
    socket: Arc<TcpListener>,
    shared: Arc<ListenerShared>,
    stop: CancellationToken,
    force_close: CancellationToken,
    connections: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            _ = stop.cancelled() => return,
        };
        let permit = match shared.limiter.try_acquire() {
            Some(permit) => permit,
            None => {
                // At the cap, with a client in hand (the only one held so: the kernel queues
                // the others): the connection that has waited longest for a request is closed
                // to make room; with none waiting, the client waits for a connection to end.
                shared.limiter.reclaim_oldest_idle();
                tokio::select! {
                    permit = shared.limiter.acquire() => permit,
                    _ = stop.cancelled() => return,
                }
            }
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors (or similar): back off instead of spinning; the
                // kernel keeps queueing meanwhile.
                tracing::error!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let route = shared.route.load_full();
        let shared = shared.clone();
        let force_close = force_close.clone();
        connections.spawn(async move {
            let _permit = permit;
            // Biased: the connection is polled first and the rarely-fired force-close only
            // when it waits (no random draw per wake-up).
            tokio::select! {
                biased;
                _ = connection::serve(&shared, route, stream, peer) => {}
                _ = force_close.cancelled() => {}
            }
        });
    }
}
