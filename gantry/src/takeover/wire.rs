//! The control connection between two Gantry processes: a Unix `SOCK_SEQPACKET` socket in the
//! abstract namespace (it vanishes with its process, so no stale file is ever left, and it is as
//! wide as the network namespace, which is exactly where ports can clash). Each message is one
//! JSON document, with the file descriptors it names attached (`SCM_RIGHTS`); a sequenced-packet
//! socket keeps each message and its descriptors together. Only a peer of this process's user
//! (or root) is answered: the kernel names the peer (`SO_PEERCRED`).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
    UCred,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::Interest;

/// Most descriptors one message carries (the kernel's `SCM_MAX_FD` is 253).
pub(crate) const MAX_FDS: usize = 250;

/// Largest message: a batch of [`MAX_FDS`] sockets or flows described in JSON fits many times.
const MAX_MESSAGE: usize = 256 * 1024;

/// Why the control connection failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent what this protocol does not say.
    #[error("control socket: unexpected message from the other process: {0}")]
    Protocol(String),
    /// The peer closed the connection.
    #[error("control socket: the other process closed the connection")]
    Closed,
}

/// A socket registered with tokio's reactor. Tokio has no sequenced-packet type; its Unix
/// datagram type serves to wait for readiness on any Unix socket, and every call on the
/// socket is rustix's.
type Registered = tokio::net::UnixDatagram;

fn registered(fd: OwnedFd) -> std::io::Result<Registered> {
    rustix::io::ioctl_fionbio(&fd, true)?;
    Registered::from_std(std::os::unix::net::UnixDatagram::from(fd))
}

fn seqpacket() -> std::io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

fn address(name: &str) -> std::io::Result<SocketAddrUnix> {
    Ok(SocketAddrUnix::new_abstract_name(name.as_bytes())?)
}

/// The listening end, bound to an abstract name.
pub struct ControlListener {
    socket: Registered,
}

impl ControlListener {
    /// Binds `name`; fails with `AddrInUse` while another process holds it.
    pub fn bind(name: &str) -> std::io::Result<ControlListener> {
        let fd = seqpacket()?;
        rustix::net::bind(&fd, &address(name)?)?;
        rustix::net::listen(&fd, 16)?;
        Ok(ControlListener {
            socket: registered(fd)?,
        })
    }

    /// The next connection.
    pub async fn accept(&self) -> std::io::Result<Connection> {
        let fd = self
            .socket
            .async_io(Interest::READABLE, || {
                Ok(rustix::net::accept_with(
                    &self.socket,
                    SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
                )?)
            })
            .await?;
        Connection::new(fd)
    }
}

/// One end of a control connection.
pub struct Connection {
    socket: Registered,
}

impl Connection {
    fn new(fd: OwnedFd) -> std::io::Result<Connection> {
        Ok(Connection {
            socket: registered(fd)?,
        })
    }

    /// Connects to the process listening on `name`.
    pub fn connect(name: &str) -> std::io::Result<Connection> {
        let fd = seqpacket()?;
        // Connecting to a Unix socket does not wait on the network: blocking is fine here.
        rustix::net::connect(&fd, &address(name)?)?;
        Connection::new(fd)
    }

    /// Who the peer is, as the kernel says (its pid is 0 when the peer's process is not
    /// visible from this one's PID namespace).
    pub fn peer(&self) -> std::io::Result<UCred> {
        Ok(rustix::net::sockopt::socket_peercred(&self.socket)?)
    }

    /// The peer's process id, as this process sees it (0 if not visible).
    pub fn peer_pid(&self) -> u32 {
        self.peer()
            .ok()
            .and_then(|peer| u32::try_from(peer.pid.as_raw_nonzero().get()).ok())
            .unwrap_or(0)
    }

    /// Whether the peer runs as this process's user, or as root.
    pub fn peer_is_trusted(&self) -> std::io::Result<bool> {
        let peer = self.peer()?;
        Ok(peer.uid == rustix::process::geteuid() || peer.uid.is_root())
    }

    /// Sends `message` with `fds` attached (at most [`MAX_FDS`]).
    pub async fn send<M: Serialize>(
        &self,
        message: &M,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), WireError> {
        let bytes = serde_json::to_vec(message).map_err(std::io::Error::other)?;
        if bytes.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
            return Err(WireError::Protocol(format!(
                "a message of {} bytes and {} descriptors is too large to send",
                bytes.len(),
                fds.len()
            )));
        }
        self.socket
            .async_io(Interest::WRITABLE, || {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                    return Err(std::io::Error::other("no room for the descriptors"));
                }
                let iov = [IoSlice::new(&bytes)];
                Ok(rustix::net::sendmsg(
                    &self.socket,
                    &iov,
                    &mut control,
                    SendFlags::NOSIGNAL,
                )?)
            })
            .await?;
        Ok(())
    }

    /// The next message and the descriptors attached to it.
    pub async fn receive<M: DeserializeOwned>(&self) -> Result<(M, Vec<OwnedFd>), WireError> {
        let mut buffer = vec![0u8; MAX_MESSAGE];
        let (len, fds, truncated) = self
            .socket
            .async_io(Interest::READABLE, || {
                receive_raw(self.socket.as_fd(), &mut buffer)
            })
            .await?;
        if truncated {
            return Err(WireError::Protocol(
                "a message larger than the protocol allows".into(),
            ));
        }
        if len == 0 {
            return Err(WireError::Closed);
        }
        let message = serde_json::from_slice(&buffer[..len])
            .map_err(|err| WireError::Protocol(err.to_string()))?;
        Ok((message, fds))
    }
}

/// One message: its length, the descriptors it carried (owned from here on, so none leaks),
/// and whether anything was cut off.
fn receive_raw(
    fd: BorrowedFd<'_>,
    buffer: &mut [u8],
) -> std::io::Result<(usize, Vec<OwnedFd>, bool)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buffer)];
    let message = rustix::net::recvmsg(fd, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for control in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = control {
            fds.extend(received);
        }
    }
    let truncated = message
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC);
    Ok((message.bytes, fds, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message and two descriptors cross; each descriptor is a working socket on the other
    /// side.
    #[tokio::test]
    async fn a_message_crosses_with_its_descriptors() {
        let name = format!("gantry-wire-test-{}", std::process::id());
        let listener = ControlListener::bind(&name).expect("bind");
        assert_eq!(
            ControlListener::bind(&name).err().map(|e| e.kind()),
            Some(std::io::ErrorKind::AddrInUse),
            "one holder per name"
        );
        let client = Connection::connect(&name).expect("connect");
        let server = listener.accept().await.expect("accept");
        assert!(server.peer_is_trusted().expect("peer"));
        assert_eq!(server.peer_pid(), std::process::id());
        let sockets = [
            std::net::UdpSocket::bind("127.0.0.1:0").expect("udp"),
            std::net::UdpSocket::bind("127.0.0.1:0").expect("udp"),
        ];
        let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|s| s.as_fd()).collect();
        client
            .send(&serde_json::json!({"hello": 1}), &fds)
            .await
            .expect("send");
        let (message, received): (serde_json::Value, _) = server.receive().await.expect("receive");
        assert_eq!(message, serde_json::json!({"hello": 1}));
        assert_eq!(received.len(), 2);
        for (fd, original) in received.into_iter().zip(&sockets) {
            let socket = std::net::UdpSocket::from(fd);
            assert_eq!(
                socket.local_addr().expect("addr"),
                original.local_addr().expect("addr")
            );
        }
        drop(client);
        assert!(matches!(
            server.receive::<serde_json::Value>().await,
            Err(WireError::Closed)
        ));
    }
}
