//! What a running Gantry hands to the process that takes over from it, and what a Gantry that
//! takes over does with what it is handed ([`crate::takeover`] carries both between the
//! processes). The sockets themselves change hands, so there is never a second socket on an
//! address: a TCP port's listening socket (its accept queue with it), a UDP port's socket and
//! its flows, and the admin listener.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use lb_config::ModelBuilder;

use super::{FileApplyError, Gantry};
use crate::http_server::BoundServer;
use crate::sockets::{Inherited, SocketKind};
use crate::udp::HandedFlow;

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
            if let Some((kind, socket)) = listener.serving_socket() {
                add(kind, listener.local_addr(), socket)?;
            }
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
    /// [`crate::udp::transfer`]); none if no port serves that address.
    pub async fn hand_over_udp_flows(
        &self,
        address: SocketAddr,
    ) -> std::io::Result<Vec<HandedFlow>> {
        let listeners = self.inner.listeners.lock().await;
        let port = listeners
            .values()
            .filter(|l| l.local_addr() == address)
            .find_map(|l| l.udp_port().cloned());
        drop(listeners);
        match port {
            Some(port) => port.hand_over_flows().await,
            None => Ok(Vec::new()),
        }
    }

    /// Adopts flows handed over for the UDP port bound to `address`; returns how many were
    /// adopted. The port reads its socket once [`Gantry::open_handed_over_ports`] is called.
    pub async fn adopt_udp_flows(&self, address: SocketAddr, flows: Vec<HandedFlow>) -> usize {
        let listeners = self.inner.listeners.lock().await;
        let port = listeners
            .values()
            .filter(|l| l.local_addr() == address)
            .find_map(|l| l.udp_port().cloned());
        drop(listeners);
        let Some(port) = port else {
            return 0;
        };
        port.adopt_flows(flows)
    }

    /// Lets every UDP port read its socket (those whose flows never came, too).
    pub async fn open_handed_over_ports(&self) {
        for listener in self.inner.listeners.lock().await.values() {
            if let Some(port) = listener.udp_port() {
                port.open_gate();
            }
        }
    }

    /// The UDP ports' addresses.
    pub async fn udp_addresses(&self) -> Vec<SocketAddr> {
        let listeners = self.inner.listeners.lock().await;
        listeners
            .values()
            .filter(|l| l.udp_port().is_some())
            .map(|l| l.local_addr())
            .collect()
    }

    /// Stops the admin listener at once (a successor serves it now).
    pub async fn stop_admin_now(&self) {
        self.stop_admin().await;
    }
}
