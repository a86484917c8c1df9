//! Where a listener's socket comes from, besides a fresh bind: a UDP socket of this process
//! still serving a draining port at the same address ([`crate::udp::UdpPorts`]), or a socket
//! handed over by the process this one took over from ([`Inherited`], see
//! the appliance's takeover). Either way there is one socket per address, port and protocol: the
//! kernel never has two to choose between.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::udp::{HandedFlow, UdpPorts};

/// What a socket handed between processes serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketKind {
    /// A TCP port's listening socket.
    Tcp,
    /// A UDP port's socket.
    Udp,
    /// The admin endpoint's listening socket.
    Admin,
}

/// Sockets handed over by a predecessor, by kind and bound address, until the first
/// configuration has taken those it serves (the rest are closed then; the predecessor drains
/// them).
#[derive(Default)]
pub struct Inherited(HashMap<(SocketKind, SocketAddr), OwnedFd>);

impl Inherited {
    /// Adds a socket bound to `address`.
    pub fn add(&mut self, kind: SocketKind, address: SocketAddr, socket: OwnedFd) {
        self.0.insert((kind, address), socket);
    }

    /// Sockets not taken yet.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The socket of `kind` bound to `address`, if one was handed over (a port 0 asks for a
    /// new socket and never matches).
    pub fn take(&mut self, kind: SocketKind, address: SocketAddr) -> Option<OwnedFd> {
        if address.port() == 0 {
            return None;
        }
        self.0.remove(&(kind, address))
    }
}

/// The sockets of one Gantry and what its listeners share.
#[derive(Default)]
pub struct Sockets {
    /// The UDP ports, by address.
    pub(crate) udp: Arc<UdpPorts>,
    /// Sockets handed over by a predecessor, not taken yet.
    inherited: Mutex<Inherited>,
}

impl Sockets {
    /// Sockets with these handed over.
    pub fn inheriting(inherited: Inherited) -> Self {
        Sockets {
            inherited: Mutex::new(inherited),
            ..Sockets::default()
        }
    }

    /// Takes the handed-over socket of `kind` bound to `address`, if there is one.
    pub fn take_inherited(&self, kind: SocketKind, address: SocketAddr) -> Option<OwnedFd> {
        self.inherited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(kind, address)
    }

    /// Closes the handed-over sockets no port took; returns how many.
    pub fn close_unused_inherited(&self) -> usize {
        let mut inherited = self.inherited.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *inherited).len()
    }

    /// Every UDP socket, a draining port's too, with its address (to hand to a successor: a
    /// port of the successor at that address must take it over rather than bind beside it).
    pub fn udp_sockets(&self) -> Vec<(SocketAddr, Arc<tokio::net::UdpSocket>)> {
        let ports = self.udp.all();
        ports
            .iter()
            .map(|port| (port.local, port.socket.clone()))
            .collect()
    }

    /// Stops reading the UDP port bound to `address` for good and hands over its flows (see
    /// [`crate::udp::transfer`]); none if no port has that address.
    pub async fn hand_over_udp_flows(
        &self,
        address: SocketAddr,
    ) -> std::io::Result<Vec<HandedFlow>> {
        match self.udp.get(address) {
            Some(port) => port.hand_over_flows().await,
            None => Ok(Vec::new()),
        }
    }

    /// Adopts flows handed over for the UDP port bound to `address`; returns how many were
    /// adopted. The port reads its socket once [`Sockets::open_handed_over_ports`] is called.
    pub fn adopt_udp_flows(&self, address: SocketAddr, flows: Vec<HandedFlow>) -> usize {
        match self.udp.get(address) {
            Some(port) => port.adopt_flows(flows),
            None => 0,
        }
    }

    /// Lets every UDP port read its socket (those whose flows never came, too).
    pub fn open_handed_over_ports(&self) {
        for port in self.udp.all() {
            port.open_gate();
        }
    }
}
