//! What a running Gantry hands to the process that takes over from it, and what a Gantry that
//! takes over does with what it is handed ([`crate::takeover`] carries both between the
//! processes). The sockets themselves change hands, so there is never a second socket on an
//! address: a TCP port's listening socket (its accept queue with it), a UDP port's socket and
//! its flows, and the admin listener.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use lb_config::ModelBuilder;

use super::{FileApplyError, Gantry};
use lb_core::http_server::BoundServer;
use lb_core::sockets::{Inherited, SocketKind};
use lb_core::udp::HandedFlow;

/// A socket to hand over: what it serves, where, and a duplicate of it.
pub struct HandedSocket {
    /// What it serves.
    pub kind: SocketKind,
    /// The address it is bound to.
    pub address: SocketAddr,
    /// A duplicate (the caller closes it once passed on).
    pub socket: OwnedFd,
}

impl Gantry {
    /// [`Gantry::start_file`] in a process taking over from another: each port (and the admin
    /// endpoint) whose address matches a socket in `inherited` serves on that socket instead of
    /// binding one; a UDP port reads its socket only once [`Gantry::adopt_udp_flows`] or
    /// [`Gantry::open_handed_over_ports`] says so. Sockets no port takes are closed.
    pub async fn start_file_inheriting(
        builder: ModelBuilder,
        inherited: Inherited,
    ) -> Result<Gantry, FileApplyError> {
        let model = builder
            .clone()
            .finish()
            .map_err(lb_config::ConfigError::Invalid)?;
        Ok(Self::start_with(model, Some(builder), inherited).await?)
    }

    /// The admin listener for `address`: the handed-over socket, or a new one.
    pub(super) async fn bind_admin(&self, address: SocketAddr) -> std::io::Result<BoundServer> {
        match self
            .inner
            .sockets
            .take_inherited(SocketKind::Admin, address)
        {
            Some(socket) => BoundServer::listen(socket.into()),
            None => BoundServer::bind(address).await,
        }
    }

    /// Duplicates of every socket serving now, for a successor: each port's, and the admin
    /// listener's.
    pub async fn sockets_to_hand_over(&self) -> std::io::Result<Vec<HandedSocket>> {
        let listeners = self.inner.listeners.lock().await;
        let mut handed = Vec::with_capacity(listeners.len() + 1);
        let mut add = |kind, address, socket: BorrowedFd<'_>| -> std::io::Result<()> {
            handed.push(HandedSocket {
                kind,
                address,
                socket: socket.try_clone_to_owned()?,
            });
            Ok(())
        };
        for listener in listeners.values() {
            if let Some(socket) = listener.listening_socket() {
                add(SocketKind::Tcp, listener.local_addr(), socket)?;
            }
        }
        // Every UDP socket, a draining port's too: a port of the successor at its address must
        // take it over rather than bind beside it.
        for (address, socket) in self.inner.sockets.udp_sockets() {
            add(SocketKind::Udp, address, socket.as_fd())?;
        }
        let admin = self.inner.admin.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(server) = admin.as_ref() {
            add(
                SocketKind::Admin,
                server.local_addr(),
                server.socket().as_fd(),
            )?;
        }
        Ok(handed)
    }

    /// Stops reading the UDP port bound to `address` for good and hands over its flows (see
    /// [`lb_core::udp::transfer`]); none if no port has that address.
    pub async fn hand_over_udp_flows(
        &self,
        address: SocketAddr,
    ) -> std::io::Result<Vec<HandedFlow>> {
        self.inner.sockets.hand_over_udp_flows(address).await
    }

    /// Adopts flows handed over for the UDP port bound to `address`; returns how many were
    /// adopted. The port reads its socket once [`Gantry::open_handed_over_ports`] is called.
    pub fn adopt_udp_flows(&self, address: SocketAddr, flows: Vec<HandedFlow>) -> usize {
        self.inner.sockets.adopt_udp_flows(address, flows)
    }

    /// Lets every UDP port read its socket (those whose flows never came, too).
    pub fn open_handed_over_ports(&self) {
        self.inner.sockets.open_handed_over_ports();
    }

    /// The UDP ports' addresses.
    pub fn udp_addresses(&self) -> Vec<SocketAddr> {
        let sockets = self.inner.sockets.udp_sockets();
        sockets.into_iter().map(|(address, _)| address).collect()
    }

    /// Stops the admin listener at once (a successor serves it now).
    pub async fn stop_admin_now(&self) {
        self.stop_admin().await;
    }
}
