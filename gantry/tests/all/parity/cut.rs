//! What a client sees when its backend dies mid-response, on every engine and backend
//! protocol: the response's head and first bytes arrive, then the backend's connection ends.
//! HTTP/1.1: the body does not end as framed and the connection closes. HTTP/2: the stream is
//! reset (`INTERNAL_ERROR`), or, for gRPC, ends with trailers carrying `grpc-status: 14`
//! (UNAVAILABLE, which gRPC clients may retry, where a reset reads as their own cancel). An
//! upgrade: the tunnel closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::{read_head, web, Engine, BACKENDS};
use crate::support::addr;
use crate::support::client::h2_client;
use crate::support::origin::OriginProtocol;
use crate::support::scenario::Scenario;

/// What the backend sends before it dies.
const FIRST: &[u8] = b"0123456789";

const WAIT: Duration = Duration::from_secs(10);

/// A backend that answers each request with a head announcing more than [`FIRST`], sends
/// [`FIRST`], and drops the connection when told to.
struct Dying {
    addr: SocketAddr,
    die: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Dying {
    async fn start(protocol: OriginProtocol) -> Dying {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let die = Arc::new(Notify::new());
        let told = die.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                match protocol {
                    OriginProtocol::Http1 => tokio::spawn(http1(stream, told.clone())),
                    OriginProtocol::H2c => tokio::spawn(h2c(stream, told.clone())),
                };
            }
        });
        Dying { addr, die, task }
    }
}

impl Drop for Dying {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn http1(mut stream: TcpStream, die: Arc<Notify>) {
    let head = read_head(&mut stream).await;
    let answer = if head.to_ascii_lowercase().contains("upgrade: websocket") {
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n"
    } else {
        "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"
    };
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.write_all(FIRST).await;
    die.notified().await;
}

async fn h2c(stream: TcpStream, die: Arc<Notify>) {
    let Ok(mut connection) = h2::server::handshake(stream).await else {
        return;
    };
    let mut held = Vec::new();
    let serve = async {
        while let Some(Ok((request, mut respond))) = connection.accept().await {
            let mut response = http::Response::new(());
            if let Some(kind) = request.headers().get("content-type") {
                response.headers_mut().insert("content-type", kind.clone());
            }
            if let Ok(mut send) = respond.send_response(response, false) {
                let _ = send.send_data(Bytes::from_static(FIRST), false);
                // Held (and the connection polled) until the backend dies.
                held.push(send);
            }
        }
    };
    tokio::select! {
        () = serve => {}
        () = die.notified() => {}
    }
}

/// How the client saw the response end.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// The connection closed before the body ended as framed.
    Closed,
    /// The stream was reset with this reason.
    Reset(h2::Reason),
    /// The stream ended with these gRPC status trailers.
    GrpcStatus(String),
}

/// Asks on `engine`, waits for the first bytes, lets the backend die, and tells how the
/// response ended.
async fn ask(engine: Engine, proxy: SocketAddr, grpc: bool, die: &Notify) -> Seen {
    match engine {
        Engine::Http1 | Engine::WebSocket => {
            let mut stream = TcpStream::connect(proxy).await.expect("connect");
            let head = if engine == Engine::WebSocket {
                "GET /ws HTTP/1.1\r\nHost: shop.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            } else {
                "GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n"
            };
            stream.write_all(head.as_bytes()).await.expect("send");
            let mut seen = Vec::new();
            let mut chunk = [0u8; 1024];
            while !seen.windows(FIRST.len()).any(|w| w == FIRST) {
                let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                    .await
                    .expect("the first bytes within 10s")
                    .expect("read");
                assert!(n > 0, "{engine:?}: closed before the first bytes: {seen:?}");
                seen.extend_from_slice(&chunk[..n]);
            }
            die.notify_one();
            let mut rest = Vec::new();
            let closed = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await;
            assert!(closed.is_ok(), "{engine:?}: the connection closes");
            let text =
                String::from_utf8_lossy(&seen).into_owned() + &String::from_utf8_lossy(&rest);
            assert!(
                !text.ends_with("0\r\n\r\n"),
                "{engine:?}: no last chunk: {text}"
            );
            Seen::Closed
        }
        Engine::Http2 => {
            let mut client = h2_client(proxy).await;
            let mut request = Request::get("http://shop.example/");
            if grpc {
                request = request.header("content-type", "application/grpc");
            }
            let request = request.body(()).expect("request");
            let (response, _) = client.send_request(request, true).expect("send");
            let response = tokio::time::timeout(WAIT, response)
                .await
                .expect("a head within 10s")
                .expect("head");
            let mut body = response.into_body();
            let first = tokio::time::timeout(WAIT, body.data())
                .await
                .expect("the first bytes within 10s")
                .expect("data")
                .expect("no error yet");
            assert_eq!(&first[..], FIRST);
            die.notify_one();
            loop {
                match tokio::time::timeout(WAIT, body.data())
                    .await
                    .expect("an end")
                {
                    Some(Ok(_)) => continue,
                    Some(Err(err)) => return Seen::Reset(err.reason().expect("a reset")),
                    None => break,
                }
            }
            let trailers = body.trailers().await.expect("trailers").expect("some");
            let status = trailers.get("grpc-status").expect("grpc-status");
            Seen::GrpcStatus(status.to_str().expect("text").to_owned())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_dying_mid_response_is_a_cut_the_client_can_tell_on_every_engine() {
    for (protocol, engines) in BACKENDS {
        let backend = Dying::start(protocol).await;
        let gantry = Scenario::new()
            .port("shop", web("web", protocol).backends(&[backend.addr]))
            .start()
            .await;
        let proxy = addr(&gantry, "shop", "web");
        for &engine in engines {
            let on = format!("{engine:?} to {protocol:?}");
            let seen = ask(engine, proxy, false, &backend.die).await;
            match engine {
                Engine::Http2 => assert_eq!(seen, Seen::Reset(h2::Reason::INTERNAL_ERROR), "{on}"),
                _ => assert_eq!(seen, Seen::Closed, "{on}"),
            }
            if engine == Engine::Http2 {
                let seen = ask(engine, proxy, true, &backend.die).await;
                assert_eq!(seen, Seen::GrpcStatus("14".to_owned()), "{on}, gRPC");
            }
        }
        gantry.shutdown(Duration::from_secs(1)).await;
    }
}
