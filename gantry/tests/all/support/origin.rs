//! Origins the tests put behind Gantry: an HTTP server (hyper, so a different HTTP stack from
//! the proxy's) that names itself and echoes what it saw, a TCP echo server, and a TCP server
//! that parses a PROXY protocol header with its own parser.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// What an HTTP origin speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginProtocol {
    Http1,
    H2c,
}

/// An HTTP origin. Paths: `/slow` waits for [`HttpOrigin::release`]; `/ws` is a WebSocket
/// echo; `/grpc` answers with a `grpc-status` trailer; anything else answers 200 naming the
/// origin and echoing `x-forwarded-for`/`-proto` in `x-seen-*` headers, and the address the
/// request came from (the proxy's) in `x-seen-peer`.
#[derive(Clone)]
pub struct HttpOrigin {
    pub addr: SocketAddr,
    pub name: String,
    requests: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    /// Requests parked on `/slow`.
    parked: Arc<AtomicUsize>,
    /// The status `/healthz` answers.
    health: Arc<AtomicU16>,
}

impl HttpOrigin {
    pub async fn start(name: &str, protocol: OriginProtocol) -> HttpOrigin {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), name, protocol).await
    }

    /// An origin listening on `bind` (a node's address and port, say).
    pub async fn start_on(bind: SocketAddr, name: &str, protocol: OriginProtocol) -> HttpOrigin {
        let listener = TcpListener::bind(bind).await.expect("bind origin");
        let origin = HttpOrigin {
            addr: listener.local_addr().expect("addr"),
            name: name.to_owned(),
            requests: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            parked: Arc::default(),
            health: Arc::new(AtomicU16::new(200)),
        };
        let serving = origin.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let origin = serving.clone();
                tokio::spawn(async move {
                    let io = TokioIo::new(stream);
                    let service = hyper::service::service_fn(move |req| {
                        let origin = origin.clone();
                        async move { Ok::<_, Infallible>(origin.handle(req, peer).await) }
                    });
                    let _ = match protocol {
                        OriginProtocol::Http1 => {
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .with_upgrades()
                                .await
                        }
                        OriginProtocol::H2c => {
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, service)
                                .await
                        }
                    };
                });
            }
        });
        origin
    }

    /// Requests this origin has received.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Requests waiting on `/slow` now.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::SeqCst)
    }

    /// Lets `n` parked `/slow` requests answer.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }

    /// Makes `/healthz` answer `status`.
    pub fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::SeqCst);
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<TestBody> {
        if req.uri().path() == "/healthz" {
            // Health probes are not requests: `requests()` counts traffic only.
            let mut response = Response::new(TestBody::full(Bytes::new()));
            *response.status_mut() =
                StatusCode::from_u16(self.health.load(Ordering::SeqCst)).expect("status");
            return response;
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        match req.uri().path() {
            "/ws" => self.websocket(req),
            "/grpc" => {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().expect("value"));
                let mut response = Response::new(TestBody::with_trailers(
                    Bytes::from_static(b"\0\0\0\0\0"),
                    trailers,
                ));
                response
                    .headers_mut()
                    .insert("content-type", "application/grpc".parse().expect("value"));
                response
            }
            path => {
                // `/delay/MS` answers after MS milliseconds; `/status/CODE` answers CODE.
                if let Some(ms) = path.strip_prefix("/delay/") {
                    let ms = ms.parse().expect("delay in ms");
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                }
                let status = path
                    .strip_prefix("/status/")
                    .map(|code| StatusCode::from_bytes(code.as_bytes()).expect("status code"));
                if path == "/slow" {
                    self.parked.fetch_add(1, Ordering::SeqCst);
                    let permit = self.gate.acquire().await.expect("gate open");
                    permit.forget();
                    self.parked.fetch_sub(1, Ordering::SeqCst);
                }
                let seen = |name: &str| {
                    req.headers()
                        .get_all(name)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .collect::<Vec<_>>()
                        .join(" | ")
                };
                let (xff, xfp) = (seen("x-forwarded-for"), seen("x-forwarded-proto"));
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut response = Response::new(TestBody::full(Bytes::from(format!(
                    "{} {}",
                    self.name,
                    body.len()
                ))));
                if let Some(status) = status {
                    *response.status_mut() = status;
                }
                let headers = response.headers_mut();
                headers.insert("x-origin", self.name.parse().expect("value"));
                headers.insert("x-seen-xff", xff.parse().expect("value"));
                headers.insert("x-seen-xfp", xfp.parse().expect("value"));
                headers.insert("x-seen-peer", peer.ip().to_string().parse().expect("value"));
                response
            }
        }
    }

    fn websocket(&self, mut req: Request<Incoming>) -> Response<TestBody> {
        let seen = |name: &str| {
            req.headers()
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let (xff, xfp) = (seen("x-forwarded-for"), seen("x-forwarded-proto"));
        let key = req
            .headers()
            .get("sec-websocket-key")
            .and_then(|k| k.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = TokioIo::new(upgraded);
            // Echo each frame's payload back as an unmasked frame of the same opcode.
            while let Some((opcode, payload)) = read_ws_frame(&mut io).await {
                if io
                    .write_all(&ws_frame(opcode, &payload, None))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let mut response = Response::new(TestBody::full(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert("upgrade", "websocket".parse().expect("value"));
        headers.insert("connection", "Upgrade".parse().expect("value"));
        headers.insert(
            "sec-websocket-accept",
            websocket_accept(&key).parse().expect("value"),
        );
        headers.insert("x-origin", self.name.parse().expect("value"));
        headers.insert("x-seen-xff", xff.parse().expect("value"));
        headers.insert("x-seen-xfp", xfp.parse().expect("value"));
        response
    }
}

/// RFC 6455 §4.2.2: base64(SHA-1(key + GUID)).
pub fn websocket_accept(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// Encodes one final WebSocket frame (payloads under 64 KiB), masked when `mask` is given.
pub fn ws_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if payload.len() < 126 {
        out.push(mask_bit | payload.len() as u8);
    } else {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Reads one WebSocket frame; `None` at EOF or on a close frame.
pub async fn read_ws_frame<S: tokio::io::AsyncRead + Unpin>(io: &mut S) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await.ok()?;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let mut len = u64::from(head[1] & 0x7f);
    if len == 126 {
        let mut ext = [0u8; 2];
        io.read_exact(&mut ext).await.ok()?;
        len = u64::from(u16::from_be_bytes(ext));
    } else if len == 127 {
        let mut ext = [0u8; 8];
        io.read_exact(&mut ext).await.ok()?;
        len = u64::from_be_bytes(ext);
    }
    let mut mask = [0u8; 4];
    if masked {
        io.read_exact(&mut mask).await.ok()?;
    }
    let mut payload = vec![0u8; usize::try_from(len).ok()?];
    io.read_exact(&mut payload).await.ok()?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    (opcode != 0x8).then_some((opcode, payload))
}

/// A response body of data frames and optional trailers.
pub struct TestBody {
    frames: VecDeque<Frame<Bytes>>,
}

impl TestBody {
    pub fn full(data: Bytes) -> Self {
        TestBody {
            frames: VecDeque::from([Frame::data(data)]),
        }
    }

    fn with_trailers(data: Bytes, trailers: HeaderMap) -> Self {
        TestBody {
            frames: VecDeque::from([Frame::data(data), Frame::trailers(trailers)]),
        }
    }
}

impl http_body::Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.frames.pop_front().map(Ok))
    }
}

/// What a TCP origin learned from the PROXY header it received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub authority: Option<String>,
}

/// A TCP origin: reads the client's bytes to EOF (after an optional PROXY header), answers
/// `<name>:<bytes>`, then closes. Reading to EOF before answering proves half-close works.
#[derive(Clone)]
pub struct TcpOrigin {
    pub addr: SocketAddr,
    headers: Arc<Mutex<Vec<ProxyHeader>>>,
    accepting: tokio::task::AbortHandle,
}

impl TcpOrigin {
    pub async fn start(name: &str, expect_proxy_header: bool) -> TcpOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("addr");
        let headers: Arc<Mutex<Vec<ProxyHeader>>> = Arc::default();
        let serving = headers.clone();
        let name = name.to_owned();
        let accepting = tokio::spawn(async move {
            let headers = serving;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let headers = headers.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let _ = serve_tcp(stream, &name, expect_proxy_header, &headers).await;
                });
            }
        });
        TcpOrigin {
            addr,
            headers,
            accepting: accepting.abort_handle(),
        }
    }

    /// Closes the listening socket; returns once connecting is refused.
    pub async fn stop(&self) {
        self.accepting.abort();
        crate::support::eventually("the origin to refuse connections", || async {
            TcpStream::connect(self.addr).await.is_err()
        })
        .await;
    }

    /// PROXY headers received so far.
    pub fn proxy_headers(&self) -> Vec<ProxyHeader> {
        self.headers.lock().expect("lock").clone()
    }
}

async fn serve_tcp(
    mut stream: TcpStream,
    name: &str,
    expect_proxy_header: bool,
    headers: &Mutex<Vec<ProxyHeader>>,
) -> std::io::Result<()> {
    let mut data = Vec::new();
    stream.read_to_end(&mut data).await?;
    let mut payload = &data[..];
    if expect_proxy_header {
        let (header, rest) = parse_proxy_header(&data).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "no PROXY header")
        })?;
        headers.lock().expect("lock").push(header);
        payload = rest;
    }
    let answer = format!("{name}:{}", String::from_utf8_lossy(payload));
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}

/// Parses a v1 or v2 PROXY header (the test's own reading of HAProxy's spec).
fn parse_proxy_header(data: &[u8]) -> Option<(ProxyHeader, &[u8])> {
    const V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    if let Some(rest) = data.strip_prefix(b"PROXY ") {
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&rest[..end]).ok()?;
        let parts: Vec<&str> = line.split(' ').collect();
        let [_, src, dst, sport, dport] = parts[..] else {
            return None;
        };
        let header = ProxyHeader {
            source: format!("{}:{sport}", bracket(src)).parse().ok()?,
            destination: format!("{}:{dport}", bracket(dst)).parse().ok()?,
            authority: None,
        };
        return Some((header, &rest[end + 2..]));
    }
    let body = data.strip_prefix(V2)?;
    let (command, family) = (body[0], body[1]);
    let len = usize::from(u16::from_be_bytes([body[2], body[3]]));
    if command != 0x21 {
        return None;
    }
    let block = &body[4..4 + len];
    let (source, destination, tlvs) = match family {
        0x11 => {
            let ip = |o: usize| {
                std::net::Ipv4Addr::new(block[o], block[o + 1], block[o + 2], block[o + 3])
            };
            let port = |o: usize| u16::from_be_bytes([block[o], block[o + 1]]);
            (
                SocketAddr::from((ip(0), port(8))),
                SocketAddr::from((ip(4), port(10))),
                &block[12..],
            )
        }
        0x21 => {
            let ip = |o: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&block[o..o + 16]);
                std::net::Ipv6Addr::from(octets)
            };
            let port = |o: usize| u16::from_be_bytes([block[o], block[o + 1]]);
            (
                SocketAddr::from((ip(0), port(32))),
                SocketAddr::from((ip(16), port(34))),
                &block[36..],
            )
        }
        _ => return None,
    };
    let mut authority = None;
    let mut t = tlvs;
    while t.len() >= 3 {
        let tlv_len = usize::from(u16::from_be_bytes([t[1], t[2]]));
        if t[0] == 0x02 {
            authority = String::from_utf8(t[3..3 + tlv_len].to_vec()).ok();
        }
        t = &t[3 + tlv_len..];
    }
    let header = ProxyHeader {
        source,
        destination,
        authority,
    };
    Some((header, &body[4 + len..]))
}

fn bracket(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    }
}
