//! Clients the tests drive Gantry with: hyper for well-formed HTTP/1.1 and HTTP/2 (over TLS with
//! ALPN, or h2c), raw sockets for malformed or slow input, and a TLS connector that trusts the
//! test CA.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

pub fn get_request(authority: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", authority)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

async fn read_answer(response: http::Response<hyper::body::Incoming>) -> hyper::Result<Answer> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Answer {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// An HTTP/1.1 keep-alive connection.
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    authority: String,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<H1> {
        let stream = TcpStream::connect(addr).await?;
        Self::over(stream, addr.to_string()).await
    }

    pub async fn over<S>(io: S, authority: String) -> std::io::Result<H1>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn.with_upgrades());
        Ok(H1 { sender, authority })
    }

    pub async fn get(&mut self, path: &str) -> hyper::Result<Answer> {
        let request = get_request(&self.authority, path);
        self.send(request).await
    }

    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> hyper::Result<Answer> {
        self.sender.ready().await?;
        read_answer(self.sender.send_request(request).await?).await
    }
}

/// One GET on a new HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    H1::connect(addr)
        .await
        .expect("connect")
        .get(path)
        .await
        .expect("response")
}

/// An HTTP/2 connection (TLS with ALPN h2, or cleartext prior knowledge).
pub struct H2 {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2 {
    pub async fn over<S>(io: S) -> H2
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        H2 { sender }
    }

    pub async fn get(&mut self, uri: &str) -> Answer {
        let request = Request::get(uri)
            .body(Full::new(Bytes::new()))
            .expect("request");
        self.send(request).await
    }

    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Answer {
        self.sender.ready().await.expect("h2 ready");
        let response = self
            .sender
            .send_request(request)
            .await
            .expect("h2 response");
        read_answer(response).await.expect("h2 body")
    }

    /// Sends a request and returns the status and the trailers, for gRPC-style exchanges.
    pub async fn trailers(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> (StatusCode, Option<HeaderMap>) {
        self.sender.ready().await.expect("h2 ready");
        let response = self
            .sender
            .send_request(request)
            .await
            .expect("h2 response");
        let status = response.status();
        let collected = response.into_body().collect().await.expect("body");
        (status, collected.trailers().cloned())
    }
}

/// A TLS connection to `addr` asking for `server_name`.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned()).map_err(std::io::Error::other)?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// How long a raw client waits for the server: a regression fails the test instead of
/// hanging it.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads until the server closes the connection (or resets it), failing the test when that
/// takes longer than [`READ_TIMEOUT`].
#[track_caller]
pub fn read_until_closed<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> impl std::future::Future<Output = String> + '_ {
    let caller = std::panic::Location::caller();
    async move {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(READ_TIMEOUT, stream.read_to_end(&mut answer)).await;
        assert!(
            read.is_ok(),
            "the server neither answered nor closed within {READ_TIMEOUT:?} (read at {caller})"
        );
        String::from_utf8_lossy(&answer).into_owned()
    }
}

/// Reads one response (its body framed by `Content-Length` or chunked, without trailers)
/// from a connection that stays open, failing the test when that takes longer than
/// [`READ_TIMEOUT`]; returns its head.
pub async fn read_one_response<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    let read = async {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.expect("read a response");
            assert!(n > 0, "closed before a whole response: {bytes:?}");
            bytes.extend_from_slice(&chunk[..n]);
            let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
            let header = |wanted: &str| {
                head.lines().find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case(wanted).then(|| value.trim())
                })
            };
            let body = &bytes[end + 4..];
            let whole = match header("content-length") {
                Some(length) => body.len() >= length.parse::<usize>().expect("a length"),
                None => {
                    assert_eq!(header("transfer-encoding"), Some("chunked"), "{head}");
                    body.ends_with(b"0\r\n\r\n")
                }
            };
            if whole {
                return head;
            }
        }
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .expect("a whole response within the read timeout")
}

/// Writes `bytes` (without closing) and reads until the server closes the connection.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    read_until_closed(&mut stream).await
}

/// A layer-4 exchange with a test origin through `addr`: writes `bytes`, half-closes, and
/// reads the answer until the far side closes.
pub async fn tcp_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    stream.shutdown().await.expect("half-close");
    read_until_closed(&mut stream).await
}

/// A raw `h2` client connection to `proxy` (h2c by prior knowledge), for what hyper's client
/// does not show (informational responses, resets); its connection driven in the background.
pub async fn h2_client(proxy: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let stream = TcpStream::connect(proxy).await.expect("connect");
    let (send, connection) = h2::client::handshake(stream).await.expect("handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send.ready().await.expect("ready")
}

/// One TCP exchange through `proxy` from source address 127.0.0.`client`: the backend's name.
pub async fn exchange_from(client: u8, proxy: SocketAddr) -> String {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, client)),
            0,
        ))
        .expect("bind a loopback source address");
    let mut stream = socket.connect(proxy).await.expect("connect");
    stream.write_all(b"hi").await.expect("write");
    stream.shutdown().await.expect("half-close");
    let answer = read_until_closed(&mut stream).await;
    let (name, echoed) = answer.split_once(':').expect("name:payload");
    assert_eq!(echoed, "hi");
    name.to_owned()
}
