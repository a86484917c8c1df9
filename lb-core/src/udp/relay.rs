//! Relaying one UDP port's datagrams: the receive loop hands each client datagram to its
//! flow, or starts one with the serving listener's route; each flow's task relays the
//! backend's replies to the client from the port's socket and tells the health policies how
//! the backend did.

use std::net::SocketAddr;
use std::sync::Arc;

use lb_policy::{hash_key, Outcome, PickContext};
use tokio::io::{Interest, Ready};
use tokio::net::UdpSocket;

use super::batch::{read_available, with_buffers};
use super::flows::{Flow, FlowOwner, Live};
use super::port::{UdpPort, UdpPorts};
use crate::metrics::UdpDrop;
use crate::pool::attempt::{self, Attempts};
use crate::proxy_protocol;
use crate::route::Route;

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

/// Starting a port's relaying lives here, beside the loop it starts, so the port's own
/// module ([`super::port`]) keeps only its state.
impl UdpPort {
    /// Makes `owner` the listener that takes new flows, starting the receive loop if it is not
    /// running. Taking the port over from listeners that go away, it takes their flows whose
    /// backend its route also has; the others stay theirs until they end.
    pub(crate) fn serve(self: &Arc<Self>, owner: Arc<FlowOwner>, ports: &UdpPorts) {
        let previous = self.serving.swap(Some(owner.clone()));
        if previous.is_some() {
            let route = owner.route();
            let moved = self
                .flows
                .snapshot()
                .iter()
                .filter(|flow| {
                    let header = proxy_header(&route, flow.client, self.local);
                    flow.move_to(&owner, &route, header)
                })
                .count();
            tracing::info!(
                port = %route.port.key, address = %self.local, moved,
                "took over the UDP socket of a port going away; its flows whose backend this port has are now this port's"
            );
        }
        ports.register(self);
        let mut receiving = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
        if receiving.is_none() {
            *receiving = Some(tokio::spawn(receive(self.clone())));
        }
    }
}

/// Client datagrams read from a port's socket in one call.
const DATAGRAMS_PER_READ: usize = 8;

/// A client datagram that needs waiting for: it starts a flow, or its flow's socket is full.
struct Later {
    client: SocketAddr,
    datagram: Vec<u8>,
    to: Option<(Arc<Flow>, Live)>,
}

/// Receives the port's datagrams until it closes: each read takes what the socket holds (up
/// to [`DATAGRAMS_PER_READ`] datagrams) and relays those of flows that exist at once; the
/// few that need waiting (a new flow's first, one meeting a full socket) are copied and
/// relayed after.
pub(crate) async fn receive(port: Arc<UdpPort>) {
    if !port.may_read().await {
        return;
    }
    // Assembles a PROXY header and a datagram; it grows only on ports that send headers.
    let mut scratch = Vec::new();
    let mut later = Vec::new();
    // Made once: a cancellation future registers with its token (under a lock) when first
    // polled and leaves when dropped, which per datagram would cost two locks for nothing.
    let closed = port.closed.cancelled();
    let stop_reading = port.stop_reading.cancelled();
    tokio::pin!(closed, stop_reading);
    loop {
        tokio::select! {
            biased;
            readable = port.socket.readable() => if readable.is_err() { return },
            () = &mut closed => return,
            () = &mut stop_reading => return,
        };
        with_buffers(DATAGRAMS_PER_READ, |buffers| {
            read_and_relay(&port, buffers, &mut scratch, &mut later)
        });
        for Later {
            client,
            datagram,
            to,
        } in later.drain(..)
        {
            match to {
                Some((flow, live)) => flow.forward(&datagram, &mut scratch, &live).await,
                None => start_with(&port, client, &datagram, &mut scratch).await,
            }
        }
    }
}

/// One read of the port's socket, and what can be relayed at once.
fn read_and_relay(
    port: &Arc<UdpPort>,
    buffers: &mut [&mut [u8]],
    scratch: &mut Vec<u8>,
    later: &mut Vec<Later>,
) {
    let mut received = Vec::with_capacity(DATAGRAMS_PER_READ);
    // An error is an ICMP error from an earlier send, or a transient failure: the socket goes
    // on.
    if read_available(&port.socket, Interest::READABLE, buffers, &mut received).is_err() {
        return;
    }
    for (buffer, datagram) in buffers.iter().zip(&received) {
        let Some(client) = datagram.from else {
            continue;
        };
        let bytes = &buffer[..datagram.len];
        // Behind a datagram of the same client that waits, this one waits too: a flow's
        // datagrams keep their order.
        if later.iter().any(|waiting| waiting.client == client) {
            later.push(Later {
                client,
                datagram: bytes.to_vec(),
                to: None,
            });
        } else if let Some(wait) = relay_now(port, client, bytes, scratch) {
            later.push(wait);
        }
    }
}

/// Relays a client datagram to its flow now; what needs waiting for is returned.
fn relay_now(
    port: &Arc<UdpPort>,
    client: SocketAddr,
    datagram: &[u8],
    scratch: &mut Vec<u8>,
) -> Option<Later> {
    if let Some(flow) = port.flows.get(&client) {
        match flow.live() {
            Some(live) => {
                if !fits(&live.route, datagram) || flow.try_forward(datagram, scratch, &live) {
                    return None;
                }
                return Some(Later {
                    client,
                    datagram: datagram.to_vec(),
                    to: Some((flow, live)),
                });
            }
            None => {
                // Its backend left the set or is unhealthy: this datagram starts a new flow.
                flow.done.cancel();
                port.flows.remove(&flow);
            }
        }
    }
    Some(Later {
        client,
        datagram: datagram.to_vec(),
        to: None,
    })
}

/// Relays a client datagram that waited to its flow, starting the flow if it has none (or
/// saying, by counting, why not).
async fn start_with(
    port: &Arc<UdpPort>,
    client: SocketAddr,
    datagram: &[u8],
    scratch: &mut Vec<u8>,
) {
    // A datagram that waited behind another of its client's may find the flow started since.
    if let Some(flow) = port.flows.get(&client) {
        if let Some(live) = flow.live() {
            if fits(&live.route, datagram) {
                flow.forward(datagram, scratch, &live).await;
            }
            return;
        }
        flow.done.cancel();
        port.flows.remove(&flow);
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
                let replies = match relay_replies(&flow.upstream, ready, &port.socket, flow.client) {
                    Ok(replies) => replies,
                    Err(_) => {
                        // The ICMP answer to a datagram nothing took at the backend's port;
                        // the flow waits for the next datagram, or its idle timeout.
                        route.pool.observe(&backend, Outcome::ConnectFailed);
                        continue;
                    }
                };
                if replies.is_empty() {
                    continue;
                }
                for reply in replies {
                    let sent = match reply {
                        Reply::Sent(len) => Some(len),
                        Reply::Lost => None,
                        Reply::Waiting(reply) => port.socket.send_to(&reply, flow.client).await.ok(),
                    };
                    if let Some(len) = sent {
                        let m = &backend.metrics;
                        m.datagrams_sent.inc();
                        m.bytes_sent.inc_by(len as u64);
                    }
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

/// What became of one reply read from a flow's upstream socket.
enum Reply {
    /// Relayed to the client at once, this many bytes.
    Sent(usize),
    /// The port's send buffer is full: the reply, copied to its size, waits for room.
    Waiting(Vec<u8>),
    /// The client could not be sent to (its address unreachable from here): the reply is lost,
    /// as a router would lose it.
    Lost,
}

/// Replies read from one flow's upstream socket in one call. A flow usually has one reply
/// waiting: two buffers are enough to learn in the same call that it was the only one.
const REPLIES_PER_READ: usize = 2;

/// Reads the replies `upstream` holds now (an error: the backend's host refused an earlier
/// datagram) and relays each to `client` without waiting; only a reply that meets a full send
/// buffer is copied, to its exact size. No reply at all means the readiness was stale.
fn relay_replies(
    upstream: &UdpSocket,
    ready: Ready,
    socket: &UdpSocket,
    client: SocketAddr,
) -> std::io::Result<Vec<Reply>> {
    with_buffers(REPLIES_PER_READ, |buffers| {
        relay_replies_through(upstream, ready, socket, client, buffers)
    })
}

fn relay_replies_through(
    upstream: &UdpSocket,
    ready: Ready,
    socket: &UdpSocket,
    client: SocketAddr,
    buffers: &mut [&mut [u8]],
) -> std::io::Result<Vec<Reply>> {
    // An ICMP refusal is an error event alone, which must be read (and so cleared) too;
    // `try_io` takes one interest at a time (a combined one matches nothing).
    let interest = if ready.is_readable() {
        Interest::READABLE
    } else {
        Interest::ERROR
    };
    let mut received = Vec::with_capacity(REPLIES_PER_READ);
    read_available(upstream, interest, buffers, &mut received)?;
    Ok(buffers
        .iter()
        .zip(received.iter().map(|datagram| datagram.len))
        .map(
            |(buffer, len)| match socket.try_send_to(&buffer[..len], client) {
                Ok(_) => Reply::Sent(len),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    Reply::Waiting(buffer[..len].to_vec())
                }
                Err(_) => Reply::Lost,
            },
        )
        .collect())
}
