//! Relaying one UDP port's datagrams: the receive loop hands each client datagram to its
//! flow, or starts one with the serving listener's route; each flow's task relays the
//! backend's replies to the client from the port's socket and tells the health policies how
//! the backend did.

use std::net::SocketAddr;
use std::sync::Arc;

use lb_policy::{hash_key, Outcome, PickContext};
use tokio::io::{Interest, Ready};
use tokio::net::UdpSocket;

use super::flows::{Flow, FlowOwner};
use super::port::UdpPort;
use crate::metrics::UdpDrop;
use crate::pool::attempt::{self, Attempts};
use crate::proxy_protocol;
use crate::route::Route;

/// Room for the largest datagram, and one byte to tell a larger one. The port's receive loop
/// keeps one; a flow uses one only while it reads (on the stack, not held while it waits), so
/// an idle flow costs its socket and a few hundred bytes.
pub(crate) const RECEIVE_BUFFER: usize = 65_536;

/// The PROXY v2 header `route`'s port sends before each datagram of `client` to `local`.
pub(crate) fn proxy_header(
    route: &Route,
    client: SocketAddr,
    local: SocketAddr,
) -> Option<Vec<u8>> {
    route
        .port
        .proxy_protocol
        .map(|_| proxy_protocol::datagram_header(client, local))
}

/// Receives the port's datagrams until it closes.
pub(crate) async fn receive(port: Arc<UdpPort>) {
    if !port.may_read().await {
        return;
    }
    let mut buffer = vec![0u8; RECEIVE_BUFFER];
    let mut scratch = Vec::with_capacity(RECEIVE_BUFFER + 64);
    // Made once: a cancellation future registers with its token (under a lock) when first
    // polled and leaves when dropped, which per datagram would cost two locks for nothing.
    let closed = port.closed.cancelled();
    let stop_reading = port.stop_reading.cancelled();
    tokio::pin!(closed, stop_reading);
    loop {
        let received = tokio::select! {
            biased;
            received = port.socket.recv_from(&mut buffer) => received,
            () = &mut closed => return,
            () = &mut stop_reading => return,
        };
        match received {
            Ok((len, client)) => deliver(&port, client, &buffer[..len], &mut scratch).await,
            // An ICMP error from an earlier send, or a transient failure: the socket goes on.
            Err(_) => continue,
        }
    }
}

/// Hands one client datagram to its flow, or starts a flow for it.
async fn deliver(port: &Arc<UdpPort>, client: SocketAddr, datagram: &[u8], scratch: &mut Vec<u8>) {
    if let Some(flow) = port.flows.get(&client) {
        match flow.live() {
            Some(live) => {
                if fits(&live.route, datagram) {
                    flow.forward(datagram, scratch, &live).await;
                }
                return;
            }
            None => {
                // Its backend left the set or is unhealthy: this datagram starts a new flow.
                flow.done.cancel();
                port.flows.remove(&flow);
            }
        }
    }
    let Some(owner) = port.serving() else {
        return;
    };
    let route = owner.route();
    if !fits(&route, datagram) {
        return;
    }
    if let Some(flow) = start(port, &owner, &route, client).await {
        if let Some(live) = flow.live() {
            flow.forward(datagram, scratch, &live).await;
        }
    }
}

/// Whether the datagram is within the port's size limit; a larger one is dropped and counted.
fn fits(route: &Route, datagram: &[u8]) -> bool {
    let fits = datagram.len() <= route.port.settings.limits.max_datagram_bytes as usize;
    if !fits {
        route.metrics.udp_dropped(UdpDrop::TooLarge);
    }
    fits
}

/// Starts the flow of `client` with `owner`'s `route`, or says (by counting) why not.
async fn start(
    port: &Arc<UdpPort>,
    owner: &Arc<FlowOwner>,
    route: &Arc<Route>,
    client: SocketAddr,
) -> Option<Arc<Flow>> {
    let metrics = &route.metrics;
    let settings = &route.port.settings;
    let refuse = |why| {
        metrics.udp_dropped(why);
        None
    };
    if owner.draining.is_cancelled() {
        return refuse(UdpDrop::Draining);
    }
    if !settings.source_ranges.is_empty() && !settings.source_ranges.contains(client.ip()) {
        return refuse(UdpDrop::SourceRange);
    }
    if owner.open() >= settings.limits.max_flows as usize {
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
    let flow = Arc::new(Flow::new(
        client,
        owner.clone(),
        attempt.into_lease(),
        route.pool.clone(),
        upstream,
        proxy_header(route, client, port.local),
        metrics,
    ));
    port.flows.insert(flow.clone());
    metrics.flows_created.inc();
    port.tasks.spawn(pump(flow.clone(), port.clone()));
    Some(flow)
}

/// Relays the backend's datagrams to the client until the flow ends, and tells the owner's
/// health policies how the backend did: its first answer (with how long it took), each ICMP
/// refusal, and a flow that expired unanswered.
pub(crate) async fn pump(flow: Arc<Flow>, port: Arc<UdpPort>) {
    let started = tokio::time::Instant::now();
    let mut answered = false;
    // One timer for the flow's life, set for when it would expire and, when it fires early
    // (traffic came meanwhile), set again: resetting it on every datagram would take the timer
    // wheel's lock twice per datagram. The cancellation futures are made once for the same
    // reason.
    let expiry = tokio::time::sleep_until(tokio::time::Instant::now());
    let done = flow.done.cancelled();
    let closed = port.closed.cancelled();
    tokio::pin!(expiry, done, closed);
    // What the timer was last set with: set it again when that changes (the first answer
    // moves the flow from `udp_idle` to `udp_stream_idle`; a reload may change both).
    let mut armed = None;
    while let Some((route, backend)) = flow.bound() {
        let timeouts = route.port.settings.timeouts;
        let basis = Some((timeouts.udp_idle, timeouts.udp_stream_idle, answered));
        if armed != basis {
            expiry
                .as_mut()
                .reset(flow.expires_at(timeouts.udp_idle, timeouts.udp_stream_idle));
            armed = basis;
        }
        tokio::select! {
            biased;
            // An ICMP refusal is an error event without data: wait for both.
            ready = flow.upstream.ready(Interest::READABLE | Interest::ERROR) => {
                let Ok(ready) = ready else { break };
                let sent = match relay_reply(&flow.upstream, ready, &port.socket, flow.client) {
                    Reply::Nothing => continue,
                    Reply::Refused => {
                        // The ICMP answer to a datagram nothing took at the backend's port;
                        // the flow waits for the next datagram, or its idle timeout.
                        route.pool.observe(&backend, Outcome::ConnectFailed);
                        continue;
                    }
                    Reply::Sent(len) => Some(len),
                    Reply::Lost => None,
                    Reply::Waiting(reply) => port.socket.send_to(&reply, flow.client).await.ok(),
                };
                if let Some(len) = sent {
                    let m = &backend.metrics;
                    m.datagrams_sent.inc();
                    m.bytes_sent.inc_by(len as u64);
                }
                if !answered {
                    answered = true;
                    attempt::finished(&route.pool, &backend, Outcome::Connected, started.elapsed());
                }
                flow.answered();
            }
            () = &mut done => break,
            () = &mut closed => break,
            () = &mut expiry => {
                if flow.expires_at(timeouts.udp_idle, timeouts.udp_stream_idle) <= tokio::time::Instant::now() {
                    route.metrics.flows_expired.inc();
                    if !answered {
                        route.pool.observe(&backend, Outcome::TimedOut);
                    }
                    break;
                }
                // Traffic came since it was set: set it again.
                armed = None;
            }
        }
    }
    port.flows.remove(&flow);
    flow.unbind();
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
