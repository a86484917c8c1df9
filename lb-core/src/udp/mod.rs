//! `udp` ports: datagrams relayed by flow ([`flows`]). The first datagram from a client
//! address and port picks a backend through the port's affinity and balancer (the same pool
//! and policies as TCP); its later datagrams go to the same backend, and the backend's replies
//! go back to the client from the port's own address. New flows are checked against the
//! port's source ranges and `limits.max_flows`; datagrams over `limits.max_datagram_bytes`
//! are dropped. Every drop is counted.
//!
//! A removed port stops taking new flows and keeps its socket (replies leave from it) until
//! its flows have ended or the grace period is over.

pub(crate) mod flows;

use std::net::SocketAddr;
use std::sync::Arc;

use lb_policy::{hash_key, Outcome, PickContext};
use tokio::io::{Interest, Ready};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::flows::{Flow, FlowTable};
use crate::connection::ListenerShared;
use crate::metrics::UdpDrop;
use crate::pool::attempt::{self, Attempts};
use crate::proxy_protocol;
use crate::route::Route;

/// Room for the largest datagram, and one byte to tell a larger one. The port's receive loop
/// keeps one; a flow uses one only while it reads (on the stack, not held while it waits), so
/// an idle flow costs its socket and a few hundred bytes.
const RECEIVE_BUFFER: usize = 65_536;

/// A UDP socket on `addr`; with `freebind` the address need not be configured on the host.
pub(crate) fn bind(addr: SocketAddr, freebind: bool) -> std::io::Result<UdpSocket> {
    let socket = crate::listener::bound_socket(addr, socket2::Type::DGRAM, freebind)?;
    UdpSocket::from_std(socket.into())
}

/// What the receive loop of one port works with.
pub(crate) struct Relay {
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) local: SocketAddr,
    pub(crate) shared: Arc<ListenerShared>,
    /// Cancelled when the port is removed: no new flows from then on.
    pub(crate) draining: CancellationToken,
    /// Cancelled when the port is closed for good: every flow ends.
    pub(crate) closed: CancellationToken,
    /// The flows' tasks.
    pub(crate) flows: TaskTracker,
}

/// Receives the port's datagrams until it is closed.
pub(crate) async fn serve(relay: Relay) {
    let table = Arc::new(FlowTable::new());
    let mut buffer = vec![0u8; RECEIVE_BUFFER];
    let mut scratch = Vec::with_capacity(RECEIVE_BUFFER + 64);
    loop {
        let received = tokio::select! {
            received = relay.socket.recv_from(&mut buffer) => received,
            () = relay.closed.cancelled() => return,
        };
        let (len, client) = match received {
            Ok(received) => received,
            // An ICMP error from an earlier send, or a transient failure: the socket goes on.
            Err(_) => continue,
        };
        let route = relay.shared.route.load_full();
        let datagram = &buffer[..len];
        if len > route.port.settings.limits.max_datagram_bytes as usize {
            route.metrics.udp_dropped(UdpDrop::TooLarge);
            continue;
        }
        if let Some(flow) = table.get(&client) {
            if flow.live_in(&route.pool) {
                flow.forward(datagram, &mut scratch, &route.metrics).await;
                continue;
            }
            // Its backend left the set or is unhealthy: this datagram starts a new flow.
            flow.done.cancel();
            table.remove(&flow);
        }
        if let Some(flow) = start(&relay, &route, &table, client).await {
            flow.forward(datagram, &mut scratch, &route.metrics).await;
        }
    }
}

/// Starts the flow of `client`, or says (by counting) why not.
async fn start(
    relay: &Relay,
    route: &Arc<Route>,
    table: &Arc<FlowTable>,
    client: SocketAddr,
) -> Option<Arc<Flow>> {
    let metrics = &route.metrics;
    let settings = &route.port.settings;
    let refuse = |why| {
        metrics.udp_dropped(why);
        None
    };
    if relay.draining.is_cancelled() {
        return refuse(UdpDrop::Draining);
    }
    if !settings.source_ranges.is_empty() && !settings.source_ranges.contains(client.ip()) {
        return refuse(UdpDrop::SourceRange);
    }
    if table.len() >= settings.limits.max_flows as usize {
        return refuse(UdpDrop::MaxFlows);
    }
    let cx = PickContext {
        client: Some(client),
        authority: None,
        protocol: route.port.protocol,
        hash_key: hash_key(&route.port.balancer.hash_key, Some(client.ip()), None),
        headers: None,
    };
    let Ok(attempt) = Attempts::new().next(&route.pool, &cx) else {
        route.unrouted.datagrams_received.inc();
        return refuse(UdpDrop::NoBackend);
    };
    let backend = attempt.backend().address;
    let unspecified: SocketAddr = if backend.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let upstream = match UdpSocket::bind(unspecified).await {
        Ok(socket) => socket,
        Err(err) => {
            tracing::warn!(port = %route.port.key, %err, "no socket for a new UDP flow");
            return refuse(UdpDrop::SendFailed);
        }
    };
    if let Err(err) = upstream.connect(backend).await {
        tracing::debug!(port = %route.port.key, %backend, %err, "UDP backend unreachable");
        return refuse(UdpDrop::SendFailed);
    }
    let header = route
        .port
        .proxy_protocol
        .map(|_| proxy_protocol::datagram_header(client, relay.local));
    let flow = Arc::new(Flow::new(
        client,
        attempt.into_lease(),
        route.pool.clone(),
        upstream,
        header,
    ));
    table.insert(flow.clone());
    metrics.flows_created.inc();
    metrics.flows_active.inc();
    relay.flows.spawn(pump(
        flow.clone(),
        relay.socket.clone(),
        route.clone(),
        table.clone(),
        relay.closed.clone(),
    ));
    Some(flow)
}

/// Relays the backend's datagrams to the client until the flow ends, and tells the port's
/// health policies how the backend did: its first answer (with how long it took), each ICMP
/// refusal, and a flow that expired unanswered.
async fn pump(
    flow: Arc<Flow>,
    socket: Arc<UdpSocket>,
    route: Arc<Route>,
    table: Arc<FlowTable>,
    closed: CancellationToken,
) {
    let timeouts = route.port.settings.timeouts;
    let started = tokio::time::Instant::now();
    let mut answered = false;
    loop {
        let expires = flow.expires_at(timeouts.udp_idle, timeouts.udp_stream_idle);
        tokio::select! {
            // An ICMP refusal is an error event without data: wait for both.
            ready = flow.upstream.ready(Interest::READABLE | Interest::ERROR) => {
                let Ok(ready) = ready else { break };
                let sent = match relay_reply(&flow.upstream, ready, &socket, flow.client) {
                    Reply::Nothing => continue,
                    Reply::Refused => {
                        // The ICMP answer to a datagram nothing took at the backend's port;
                        // the flow waits for the next datagram, or its idle timeout.
                        route.pool.observe(flow.backend(), Outcome::ConnectFailed);
                        continue;
                    }
                    Reply::Sent(len) => Some(len),
                    Reply::Lost => None,
                    Reply::Waiting(reply) => socket.send_to(&reply, flow.client).await.ok(),
                };
                if let Some(len) = sent {
                    let m = &flow.backend().metrics;
                    m.datagrams_sent.inc();
                    m.bytes_sent.inc_by(len as u64);
                }
                if !answered {
                    answered = true;
                    attempt::finished(&route.pool, flow.backend(), Outcome::Connected, started.elapsed());
                }
                flow.answered();
            }
            () = tokio::time::sleep_until(expires) => {
                if flow.expires_at(timeouts.udp_idle, timeouts.udp_stream_idle) <= tokio::time::Instant::now() {
                    route.metrics.flows_expired.inc();
                    if !answered {
                        route.pool.observe(flow.backend(), Outcome::TimedOut);
                    }
                    break;
                }
            }
            () = flow.done.cancelled() => break,
            () = closed.cancelled() => break,
        }
    }
    table.remove(&flow);
    route.metrics.flows_active.dec();
}

/// What became of one read from a flow's upstream socket.
enum Reply {
    /// The readiness was stale: nothing to read.
    Nothing,
    /// The backend's host refused an earlier datagram (ICMP port unreachable).
    Refused,
    /// Relayed to the client at once, this many bytes.
    Sent(usize),
    /// The port's send buffer is full: the reply, copied to its size, waits for room.
    Waiting(Vec<u8>),
    /// The client could not be sent to (its address unreachable from here): the reply is lost,
    /// as a router would lose it.
    Lost,
}

/// Reads one datagram from `upstream` and relays it to `client` without waiting. The buffer
/// lives only for this call, so a waiting flow holds none; only a reply that meets a full send
/// buffer is copied, to its exact size.
fn relay_reply(
    upstream: &UdpSocket,
    ready: Ready,
    socket: &UdpSocket,
    client: SocketAddr,
) -> Reply {
    let mut buffer = [0u8; RECEIVE_BUFFER];
    // Not `try_recv`: it only reads on read readiness, and an ICMP refusal is an error event
    // alone, which must be read (and so cleared) too. `try_io` takes one interest at a time
    // (a combined one matches nothing).
    let interest = if ready.is_readable() {
        Interest::READABLE
    } else {
        Interest::ERROR
    };
    let received = upstream.try_io(interest, || {
        std::io::Read::read(&mut &*socket2::SockRef::from(upstream), &mut buffer)
    });
    let len = match received {
        Ok(len) => len,
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Reply::Nothing,
        Err(_) => return Reply::Refused,
    };
    match socket.try_send_to(&buffer[..len], client) {
        Ok(_) => Reply::Sent(len),
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
            Reply::Waiting(buffer[..len].to_vec())
        }
        Err(_) => Reply::Lost,
    }
}
