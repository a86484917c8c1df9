//! Binding a port's socket, for every listener kind: TCP accept loops, UDP ports, and the admin
//! server. A module of its own so that the TCP listener and the UDP port, which both bind, do
//! not import each other.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Pending connections the kernel queues for a listener: a burst of new connections, or
/// connections waiting while Gantry is at its connection limit. The kernel caps it at
/// `net.core.somaxconn` (4096 by default; 65535 on the appliance).
pub(crate) const ACCEPT_BACKLOG: i32 = 65535;

/// The bound socket listening, for tokio.
pub(crate) fn listening(socket: socket2::Socket) -> std::io::Result<TcpListener> {
    socket.listen(ACCEPT_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// A non-blocking TCP (`STREAM`) or UDP (`DGRAM`) socket bound to `addr`. Address reuse is on:
/// rebinding a port whose old connections sit in TIME_WAIT must not fail after a restart.
/// Port reuse (`SO_REUSEPORT`) is on: a second Gantry of the same user binds the same ports
/// while the first still serves, and the first then drains (an upgrade without a refused
/// connection; with `net.ipv4.tcp_migrate_req`, connections still queued on the first's
/// listener move to the second's when it closes instead of being reset). A socket without it
/// (another program) still makes the bind fail.
/// `freebind` (`IP_FREEBIND`/`IPV6_FREEBIND`) lets it bind an address not (yet) configured on
/// the host: a load-balancer address from a pool is routed to the appliance, or added to an
/// interface later, and the listener must not wait for it.
pub(crate) fn bound_socket(
    addr: SocketAddr,
    kind: socket2::Type,
    freebind: bool,
) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let protocol = if kind == Type::DGRAM {
        Protocol::UDP
    } else {
        Protocol::TCP
    };
    let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if freebind {
        match addr {
            SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
            SocketAddr::V6(_) => socket.set_freebind_v6(true)?,
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}
