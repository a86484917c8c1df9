//! `udp` ports: datagrams relayed by flow ([`flows`]). The first datagram from a client
//! address and port picks a backend through the port's affinity and balancer (the same pool
//! and policies as TCP); its later datagrams go to the same backend, and the backend's replies
//! go back to the client from the port's own address. New flows are checked against the
//! port's source ranges and `limits.max_flows`; datagrams over `limits.max_datagram_bytes`
//! are dropped. Every drop is counted.
//!
//! One socket serves each address and port ([`port`]): a removed port stops taking new flows
//! and keeps its socket (replies leave from it) until its flows have ended or the grace period
//! is over, and a port added at that address meanwhile takes the socket over instead of
//! binding a second one beside it. [`relay`] moves the datagrams; [`transfer`] hands a port's
//! flows to a new process at an upgrade.

mod batch;
pub(crate) mod flows;
pub(crate) mod port;
pub(crate) mod relay;
pub(crate) mod transfer;

use std::net::SocketAddr;

use tokio::net::UdpSocket;

pub(crate) use self::flows::FlowOwner;
pub(crate) use self::port::{PortHold, UdpPort, UdpPorts};
pub use self::transfer::{FlowState, HandedFlow};

/// A UDP socket on `addr`; with `freebind` the address need not be configured on the host.
pub(crate) fn bind(addr: SocketAddr, freebind: bool) -> std::io::Result<UdpSocket> {
    let socket = crate::bind::bound_socket(addr, socket2::Type::DGRAM, freebind)?;
    UdpSocket::from_std(socket.into())
}
