//! Handing a UDP port's flows to another process ([`crate::takeover`]). The old process stops
//! reading the port's socket (which the new process holds too: the same socket, passed over),
//! stops its flows' tasks and hands over each flow as its state (client, backend, whether the
//! backend answered, how long it has been idle) and its upstream socket. The new process
//! adopts every flow whose backend its own port has, and reads the socket from then on. The
//! backend sees nothing change: the flow's datagrams still come from the same upstream socket,
//! and replies that arrived while the flow changed hands wait in that socket for the new
//! process.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;

use super::flows::Flow;
use super::port::UdpPort;
use super::relay::{proxy_header, pump};

/// One flow as it crosses to the new process (its upstream socket goes beside it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowState {
    /// The client's address and port.
    pub client: SocketAddr,
    /// The backend the flow goes to.
    pub backend: SocketAddr,
    /// The backend has answered (the flow's idle timeout is `udp_stream_idle`).
    pub answered: bool,
    /// Milliseconds since the flow's last datagram.
    pub idle_ms: u64,
}

/// A flow handed over: its state and its upstream socket.
pub struct HandedFlow {
    /// What the new process needs to know of it.
    pub state: FlowState,
    /// Its upstream socket (a duplicate: the old process closes its own).
    pub upstream: OwnedFd,
}

impl UdpPort {
    /// Stops reading the socket for good and hands over every flow: their tasks are stopped
    /// (no reply is read here any more) and their upstream sockets duplicated for the caller.
    /// The flows are then ended here, without being counted as expired.
    pub(crate) async fn hand_over_flows(&self) -> std::io::Result<Vec<HandedFlow>> {
        self.stop_receiving().await;
        let mut handed = Vec::new();
        let mut flows: Vec<(Arc<Flow>, SocketAddr, OwnedFd)> = Vec::new();
        for flow in self.flows.snapshot() {
            let Some((_, backend)) = flow.bound() else {
                continue;
            };
            let upstream = flow.upstream.as_fd().try_clone_to_owned()?;
            flows.push((flow, backend.address, upstream));
        }
        for (flow, _, _) in &flows {
            flow.done.cancel();
        }
        // Every task has stopped reading once the tracker is empty (none starts: nothing reads
        // the socket any more).
        self.tasks.close();
        self.tasks.wait().await;
        for (flow, backend, upstream) in flows {
            handed.push(HandedFlow {
                state: FlowState {
                    client: flow.client,
                    backend,
                    answered: flow.has_answered(),
                    idle_ms: u64::try_from(flow.idle().as_millis()).unwrap_or(u64::MAX),
                },
                upstream,
            });
        }
        Ok(handed)
    }

    /// Adopts flows handed over by the old process: each whose backend the serving listener's
    /// route has (healthy) goes on here with its own upstream socket; the others are dropped
    /// (their clients' next datagrams start new flows). Returns how many were adopted.
    pub(crate) fn adopt_flows(self: &Arc<Self>, flows: Vec<HandedFlow>) -> usize {
        let Some(owner) = self.serving() else {
            return 0;
        };
        let route = owner.route();
        let mut adopted = 0;
        for HandedFlow { state, upstream } in flows {
            let Some(backend) = route
                .pool
                .backends()
                .iter()
                .find(|b| b.address == state.backend && b.is_healthy())
            else {
                continue;
            };
            let Ok(upstream) = adopted_socket(upstream, state.backend) else {
                tracing::warn!(port = %route.port.key, client = %state.client, "a handed-over flow's socket is not a UDP socket connected to its backend; dropped");
                continue;
            };
            let flow = Arc::new(Flow::new(
                state.client,
                owner.clone(),
                backend.lease(),
                route.pool.clone(),
                upstream,
                proxy_header(&route, state.client, self.local),
                &route.metrics,
            ));
            flow.restore(state.answered, Duration::from_millis(state.idle_ms));
            self.flows.insert(flow.clone());
            self.tasks.spawn(pump(flow, self.clone()));
            adopted += 1;
        }
        adopted
    }
}

/// A handed-over upstream socket, checked to be what it claims: UDP, connected to `backend`.
fn adopted_socket(fd: OwnedFd, backend: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::from(fd);
    let peer = socket.peer_addr()?.as_socket();
    if socket.r#type()? != socket2::Type::DGRAM || peer != Some(backend) {
        return Err(std::io::Error::other(
            "not a UDP socket connected to the backend",
        ));
    }
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}
