//! Reading a UDP socket without the extra call that finds it empty. A socket read through
//! tokio is read until a read fails with "would block": that is how tokio learns to wait for
//! the next readiness. For a flow's upstream socket, which usually holds the one reply to the
//! one datagram sent, that doubles the reads. `recvmmsg` with room for more datagrams than
//! came says the socket is empty in the same call; tokio is then told so as if a read had
//! found it empty (its readiness is cleared only if no new event came meanwhile, so a datagram
//! arriving right then still wakes the reader).

use std::cell::RefCell;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Room for the largest datagram, and one byte to tell a larger one.
pub(crate) const DATAGRAM_ROOM: usize = 65_536;

thread_local! {
    /// The worker thread's datagram buffers: per thread, not per port or flow (a port or a
    /// waiting flow holds none, however many there are) and not per read (zeroing 64 KiB for
    /// each reply once cost a tenth of the CPU of a request/response load).
    static BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `read` with `count` datagram buffers of the worker thread (ones of its own, should it
/// ever be called from within itself).
pub(crate) fn with_buffers<R>(count: usize, read: impl FnOnce(&mut [&mut [u8]]) -> R) -> R {
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => {
            while buffers.len() < count {
                buffers.push(vec![0; DATAGRAM_ROOM]);
            }
            let mut slices: Vec<&mut [u8]> =
                buffers.iter_mut().take(count).map(|b| &mut b[..]).collect();
            read(&mut slices)
        }
        Err(_) => {
            let mut own = vec![vec![0; DATAGRAM_ROOM]; count];
            let mut slices: Vec<&mut [u8]> = own.iter_mut().map(|b| &mut b[..]).collect();
            read(&mut slices)
        }
    })
}

/// Reads the datagrams `socket` holds now into `buffers` (at most one each); `received` gets
/// each one's size and sender, in order. `Ok` with none read means nothing was there (tokio
/// waits for the next readiness); an error is the socket's pending error (an ICMP refusal),
/// now cleared.
pub(crate) fn read_available(
    socket: &UdpSocket,
    interest: Interest,
    buffers: &mut [&mut [u8]],
    received: &mut Vec<Received>,
) -> io::Result<()> {
    received.clear();
    let capacity = buffers.len();
    let mut failed = None;
    let attempt = socket.try_io(interest, || {
        match receive(socket.as_raw_fd(), buffers, received) {
            // Fewer than there was room for: the socket is empty now. Saying "would block"
            // makes tokio wait for the next datagram without another read to find that out.
            Ok(()) if received.len() < capacity => Err(io::ErrorKind::WouldBlock.into()),
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Err(err),
            Err(err) => {
                failed = Some(err);
                Ok(())
            }
        }
    });
    match (failed, attempt) {
        (Some(err), _) => Err(err),
        (None, Ok(())) => Ok(()),
        (None, Err(err)) if err.kind() == io::ErrorKind::WouldBlock => Ok(()),
        (None, Err(err)) => Err(err),
    }
}

/// One datagram read: its size, and who sent it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Received {
    pub(crate) len: usize,
    pub(crate) from: Option<SocketAddr>,
}

/// One `recvmmsg` without waiting.
fn receive(fd: i32, buffers: &mut [&mut [u8]], received: &mut Vec<Received>) -> io::Result<()> {
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(buffers.len(), None);
    let mut slices: Vec<[IoSliceMut<'_>; 1]> = buffers
        .iter_mut()
        .map(|buffer| [IoSliceMut::new(buffer)])
        .collect();
    let messages = recvmmsg(
        fd,
        &mut headers,
        slices.iter_mut(),
        MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map_err(io::Error::from)?;
    received.extend(messages.map(|message| Received {
        len: message.bytes,
        from: message.address.and_then(|address| socket_addr(&address)),
    }));
    Ok(())
}

/// The sender's address as the standard library has it.
fn socket_addr(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two datagrams, read in one call with room for three: both come, and the socket is known
    /// empty; the next call reads nothing.
    #[tokio::test]
    async fn what_the_socket_holds_comes_in_one_read() {
        let reader = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let writer = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        writer
            .connect(reader.local_addr().expect("addr"))
            .await
            .expect("connect");
        writer.send(b"one").await.expect("send");
        writer.send(b"three").await.expect("send");
        let (mut a, mut b, mut c) = ([0u8; 16], [0u8; 16], [0u8; 16]);
        let mut lengths = Vec::new();
        reader.readable().await.expect("readable");
        // Both may not have arrived at the first readiness: read until both are in.
        let mut got = Vec::new();
        while got.len() < 2 {
            reader.readable().await.expect("readable");
            let mut buffers = [&mut a[..], &mut b[..], &mut c[..]];
            read_available(&reader, Interest::READABLE, &mut buffers, &mut lengths).expect("read");
            for (buffer, datagram) in buffers.iter().zip(&lengths) {
                assert_eq!(datagram.from, Some(writer.local_addr().expect("addr")));
                got.push(buffer[..datagram.len].to_vec());
            }
        }
        assert_eq!(got, vec![b"one".to_vec(), b"three".to_vec()]);
        let mut buffers = [&mut a[..], &mut b[..], &mut c[..]];
        read_available(&reader, Interest::READABLE, &mut buffers, &mut lengths).expect("read");
        assert!(lengths.is_empty());
    }
}
