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

/// UDP traffic that shows what a reload or an upgrade costs a client. Two kinds of flows run
/// until [`UdpLoad::stop`]:
/// - `old` flows, each started (and answered) before the load is handed back, then asking one
///   datagram after another: each must keep the backend that answered it first, and lose
///   nothing;
/// - new flows, one client after another asking once: each first datagram must be answered.
///
/// A datagram is lost when no answer comes within [`ANSWER_TIMEOUT`].
pub struct UdpLoad {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    counts: Arc<LoadCounts>,
}

/// What a [`UdpLoad`] has seen so far.
#[derive(Default)]
pub struct LoadCounts {
    /// Answers on old flows.
    pub old_answered: AtomicUsize,
    /// Datagrams of old flows that got no answer.
    pub old_lost: AtomicUsize,
    /// Old flows' answers that came from another backend than their first.
    pub old_moved: AtomicUsize,
    /// New flows whose first datagram was answered.
    pub new_answered: AtomicUsize,
    /// New flows whose first datagram got no answer.
    pub new_lost: AtomicUsize,
}

impl LoadCounts {
    pub fn old_answered(&self) -> usize {
        self.old_answered.load(Ordering::SeqCst)
    }

    pub fn new_answered(&self) -> usize {
        self.new_answered.load(Ordering::SeqCst)
    }

    /// Everything lost or moved, as one line for an assertion message.
    pub fn losses(&self) -> (usize, usize, usize) {
        (
            self.old_lost.load(Ordering::SeqCst),
            self.old_moved.load(Ordering::SeqCst),
            self.new_lost.load(Ordering::SeqCst),
        )
    }
}

impl UdpLoad {
    /// `old` flows to `to`, each answered once before this returns, then asking continuously;
    /// and a new flow every `new_every`. At most `new_in_flight` new flows wait for their answer
    /// at once (so a loss does not pile up clients).
    pub async fn start(to: SocketAddr, old: usize, new_every: Duration) -> UdpLoad {
        use std::sync::atomic::AtomicBool;
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(LoadCounts::default());
        let mut tasks = Vec::new();
        for i in 0..old {
            let client = UdpClient::new().await;
            let (first, _) = client
                .ask(to, "first")
                .await
                .unwrap_or_else(|| panic!("old flow {i} is answered before the load"));
            let (stop, counts) = (stop.clone(), counts.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    match client.ask(to, &format!("{i}-{n}")).await {
                        Some((origin, _)) if origin == first => {
                            counts.old_answered.fetch_add(1, Ordering::SeqCst);
                        }
                        Some(_) => {
                            counts.old_moved.fetch_add(1, Ordering::SeqCst);
                        }
                        None => {
                            counts.old_lost.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    n += 1;
                }
            }));
        }
        let (stop_new, counts_new) = (stop.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let mut pending = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(new_every);
            while !stop_new.load(Ordering::SeqCst) {
                tick.tick().await;
                // A bounded number waiting: the rate stays modest even when answers stall.
                while pending.len() >= 64 {
                    let _ = pending.join_next().await;
                }
                let counts = counts_new.clone();
                pending.spawn(async move {
                    let client = UdpClient::new().await;
                    match client.ask(to, "new").await {
                        Some(_) => counts.new_answered.fetch_add(1, Ordering::SeqCst),
                        None => counts.new_lost.fetch_add(1, Ordering::SeqCst),
                    };
                });
            }
            while pending.join_next().await.is_some() {}
        }));
        UdpLoad {
            stop,
            tasks,
            counts,
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> &LoadCounts {
        &self.counts
    }

    /// Waits until `old` more answers on old flows and `new` more answered new flows than now.
    pub async fn runs_on(&self, old: usize, new: usize) {
        let (old, new) = (
            self.counts.old_answered() + old,
            self.counts.new_answered() + new,
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.counts.old_answered() < old || self.counts.new_answered() < new {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the load stalled: {} of {old} old answers, {} of {new} new flows answered (lost, moved, new lost: {:?})",
                self.counts.old_answered(),
                self.counts.new_answered(),
                self.counts.losses()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops every client and waits for their last answers; returns the counts.
    pub async fn stop(self) -> Arc<LoadCounts> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("load task");
        }
        self.counts
    }
}
