//! UDP origins and clients: an echo server that names itself (and, when asked, parses the
//! PROXY v2 header each datagram carries), and a client socket per simulated client port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;

/// How long a client waits for an answer before calling it lost.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// A UDP echo origin: answers each datagram with `NAME PAYLOAD`.
#[derive(Clone)]
pub struct UdpOrigin {
    pub addr: SocketAddr,
    received: Arc<AtomicUsize>,
    /// Client addresses the PROXY headers named, when the origin parses them.
    pub proxied: Arc<Mutex<Vec<SocketAddr>>>,
}

impl UdpOrigin {
    pub async fn start(name: &str) -> UdpOrigin {
        Self::start_with(name, false).await
    }

    /// An origin that expects (and strips) a PROXY v2 header on each datagram.
    pub async fn start_with(name: &str, proxy_header: bool) -> UdpOrigin {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), name, proxy_header).await
    }

    /// An origin on `bind` (a loopback address of its own, say).
    pub async fn start_on(bind: SocketAddr, name: &str, proxy_header: bool) -> UdpOrigin {
        let socket = UdpSocket::bind(bind).await.expect("bind UDP origin");
        let addr = socket.local_addr().expect("addr");
        let received = Arc::new(AtomicUsize::new(0));
        let proxied = Arc::new(Mutex::new(Vec::new()));
        let (counted, seen, named) = (received.clone(), proxied.clone(), name.to_owned());
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 65_536];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
                    return;
                };
                let mut payload = &buffer[..len];
                if proxy_header {
                    let Some((client, rest)) = parse_v2_dgram(payload) else {
                        continue;
                    };
                    seen.lock().expect("lock").push(client);
                    payload = rest;
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let mut answer = format!("{named} ").into_bytes();
                answer.extend_from_slice(payload);
                let _ = socket.send_to(&answer, peer).await;
            }
        });
        UdpOrigin {
            addr,
            received,
            proxied,
        }
    }

    /// Datagrams received.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

/// A PROXY v2 header with the `DGRAM` transport: the client address, and what follows.
fn parse_v2_dgram(datagram: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let header = datagram.get(..16)?;
    if header[..12] != *b"\r\n\r\n\0\r\nQUIT\n" || header[12] != 0x21 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
    let body = datagram.get(16..16 + len)?;
    let client = match header[13] {
        0x12 => {
            let ip: [u8; 4] = body.get(..4)?.try_into().ok()?;
            let port = u16::from_be_bytes([*body.get(8)?, *body.get(9)?]);
            SocketAddr::from((ip, port))
        }
        0x22 => {
            let ip: [u8; 16] = body.get(..16)?.try_into().ok()?;
            let port = u16::from_be_bytes([*body.get(32)?, *body.get(33)?]);
            SocketAddr::from((ip, port))
        }
        _ => return None,
    };
    Some((client, &datagram[16 + len..]))
}

/// A client: one socket, so one source port (one flow).
pub struct UdpClient {
    pub socket: UdpSocket,
}

impl UdpClient {
    pub async fn new() -> UdpClient {
        UdpClient {
            socket: UdpSocket::bind("127.0.0.1:0").await.expect("bind client"),
        }
    }

    /// Sends `payload` to `to` and waits for one answer: `(origin name, echoed payload)`, or
    /// `None` when none comes in time.
    pub async fn ask(&self, to: SocketAddr, payload: &str) -> Option<(String, String)> {
        self.socket.send_to(payload.as_bytes(), to).await.ok()?;
        let mut buffer = vec![0u8; 65_536];
        let (len, from) = tokio::time::timeout(ANSWER_TIMEOUT, self.socket.recv_from(&mut buffer))
            .await
            .ok()?
            .ok()?;
        assert_eq!(from, to, "the answer comes from the port's own address");
        let text = String::from_utf8_lossy(&buffer[..len]).into_owned();
        let (name, echoed) = text.split_once(' ')?;
        Some((name.to_owned(), echoed.to_owned()))
    }
}
