//! Where a listener's socket comes from, besides a fresh bind: a UDP socket of this process
//! still serving a draining port at the same address ([`crate::udp::UdpPorts`]), or a socket
//! handed over by the process this one took over from ([`Inherited`], see
//! [`crate::takeover`]). Either way there is one socket per address, port and protocol: the
//! kernel never has two to choose between.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::udp::UdpPorts;

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
    pub(crate) fn take(&mut self, kind: SocketKind, address: SocketAddr) -> Option<OwnedFd> {
        if address.port() == 0 {
            return None;
        }
        self.0.remove(&(kind, address))
    }
}

/// The sockets of one Gantry and what its listeners share.
#[derive(Default)]
pub(crate) struct Sockets {
    /// The UDP ports, by address.
    pub(crate) udp: Arc<UdpPorts>,
    /// Sockets handed over by a predecessor, not taken yet.
    inherited: Mutex<Inherited>,
}

impl Sockets {
    /// Sockets with these handed over.
    pub(crate) fn inheriting(inherited: Inherited) -> Self {
        Sockets {
            inherited: Mutex::new(inherited),
            ..Sockets::default()
        }
    }

    /// Takes the handed-over socket of `kind` bound to `address`, if there is one.
    pub(crate) fn take_inherited(&self, kind: SocketKind, address: SocketAddr) -> Option<OwnedFd> {
        self.inherited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(kind, address)
    }

    /// Closes the handed-over sockets no port took; returns how many.
    pub(crate) fn close_unused_inherited(&self) -> usize {
        let mut inherited = self.inherited.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *inherited).len()
    }
}
