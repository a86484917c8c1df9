//! The new process's side: finding the running Gantry on the control socket, taking its
//! sockets, and adopting its UDP flows once this process serves.

use std::net::SocketAddr;

use super::wire::{Connection, WireError};
use super::{Message, TakeoverError};
use crate::app::Gantry;
use lb_core::sockets::{Inherited, SocketKind};
use lb_core::udp::HandedFlow;

/// The running Gantry, as found on its control socket.
pub struct Predecessor {
    connection: Connection,
    /// Its process id: the kernel's word (as this process sees it), else its own.
    pub pid: u32,
    /// Its configuration file.
    pub config: String,
    name: String,
}

impl Predecessor {
    /// Connects to the Gantry holding the control socket `name`; `Ok(None)` if none does.
    pub async fn find(name: &str) -> Result<Option<Predecessor>, TakeoverError> {
        match Self::connect(name).await {
            Ok(found) => Ok(Some(found)),
            Err(TakeoverError::Wire(WireError::Io(err)))
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                ) =>
            {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// Connects to the Gantry holding the control socket `name` and hears who it is.
    pub(super) async fn connect(name: &str) -> Result<Predecessor, TakeoverError> {
        let connection = Connection::connect(name).map_err(WireError::Io)?;
        let seen = connection.peer_pid();
        let hello = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            connection.receive::<Message>(),
        )
        .await
        .map_err(|_| WireError::Protocol("no answer on the control socket".into()))?;
        match hello? {
            (Message::Hello { pid, config, .. }, _) => Ok(Predecessor {
                connection,
                pid: if seen != 0 { seen } else { pid },
                config,
                name: name.to_owned(),
            }),
            (other, _) => Err(WireError::Protocol(format!("{other:?}")).into()),
        }
    }

    /// The error a Gantry that was not asked to take over starts with.
    pub(super) fn into_another_gantry(self) -> TakeoverError {
        TakeoverError::AnotherGantry {
            pid: self.pid,
            config: self.config,
            name: self.name,
        }
    }

    /// Asks for every socket the predecessor serves on.
    pub async fn take_sockets(&self) -> Result<Inherited, TakeoverError> {
        self.connection.send(&Message::Takeover, &[]).await?;
        let mut inherited = Inherited::default();
        loop {
            match self.connection.receive::<Message>().await? {
                (Message::Sockets { sockets }, fds) => {
                    if sockets.len() != fds.len() {
                        return Err(WireError::Protocol(format!(
                            "{} sockets named, {} attached",
                            sockets.len(),
                            fds.len()
                        ))
                        .into());
                    }
                    for ((kind, address), fd) in sockets.into_iter().zip(fds) {
                        check_handed_socket(kind, address, &fd)?;
                        inherited.add(kind, address, fd);
                    }
                }
                (Message::SocketsEnd, _) => return Ok(inherited),
                (Message::Refused { reason }, _) => return Err(TakeoverError::Refused(reason)),
                (other, _) => return Err(WireError::Protocol(format!("{other:?}")).into()),
            }
        }
    }

    /// Tells the predecessor that `gantry` serves, adopts the UDP flows it hands over, and lets
    /// every UDP port read. Returns how many flows were adopted. Whatever happens, the ports
    /// read in the end: this process serves from here on.
    pub async fn finish(self, gantry: &Gantry) -> Result<usize, TakeoverError> {
        let result = self.adopt_flows(gantry).await;
        gantry.open_handed_over_ports();
        result
    }

    async fn adopt_flows(&self, gantry: &Gantry) -> Result<usize, TakeoverError> {
        let udp = gantry.udp_addresses();
        self.connection.send(&Message::Ready { udp }, &[]).await?;
        let mut adopted = 0;
        loop {
            match self.connection.receive::<Message>().await? {
                (Message::Flows { port, flows }, fds) => {
                    adopted += adopt(gantry, port, flows, fds).await?;
                }
                (Message::Done, _) => return Ok(adopted),
                (other, _) => return Err(WireError::Protocol(format!("{other:?}")).into()),
            }
        }
    }
}

/// A handed-over socket is what the predecessor says: of its kind, bound to its address.
/// Serving a port on a socket of another address would serve it where it is not configured.
fn check_handed_socket(
    kind: SocketKind,
    address: SocketAddr,
    fd: &std::os::fd::OwnedFd,
) -> Result<(), TakeoverError> {
    let socket = socket2::SockRef::from(fd);
    let actual = socket.local_addr().ok().and_then(|a| a.as_socket());
    let expected_type = match kind {
        SocketKind::Udp => socket2::Type::DGRAM,
        SocketKind::Tcp | SocketKind::Admin => socket2::Type::STREAM,
    };
    if actual != Some(address) || socket.r#type().ok() != Some(expected_type) {
        return Err(WireError::Protocol(format!(
            "a socket handed over as {kind:?} on {address} is not one (bound to {actual:?})"
        ))
        .into());
    }
    Ok(())
}

async fn adopt(
    gantry: &Gantry,
    port: SocketAddr,
    flows: Vec<lb_core::udp::FlowState>,
    fds: Vec<std::os::fd::OwnedFd>,
) -> Result<usize, TakeoverError> {
    if flows.len() != fds.len() {
        return Err(WireError::Protocol(format!(
            "{} flows named, {} sockets attached",
            flows.len(),
            fds.len()
        ))
        .into());
    }
    let handed = flows
        .into_iter()
        .zip(fds)
        .map(|(state, upstream)| HandedFlow { state, upstream })
        .collect();
    Ok(gantry.adopt_udp_flows(port, handed))
}
