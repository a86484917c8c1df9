//! HTTP/2 clients that try to make Gantry do or keep too much, as raw frames over real
//! sockets (a well-behaved client library would not send them): rapid reset
//! (CVE-2023-44487), a CONTINUATION flood, a flood of SETTINGS and PINGs from a client that
//! never reads, requests whose bodies never come, and a client that opens no window for
//! the answers. Each attack ends in bounded time, and a good client is served meanwhile. And
//! flow-control windows pushed past 2^31-1, which must end the connection with
//! `FLOW_CONTROL_ERROR` (RFC 9113 §6.5.2, §6.9.2).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::addr;
use crate::support::client::raw_exchange;
use crate::support::origin::{HttpOrigin, OriginProtocol};
use crate::support::scenario::{Port, Scenario};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const WINDOW_UPDATE: u8 = 0x8;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small payload");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `GET http://localhost/` in HPACK: indexed `:method GET`, `:scheme http`, `:path /`, and
/// `:authority` as a literal without indexing.
fn get_block() -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 9];
    block.extend_from_slice(b"localhost");
    block
}

/// A connection that has sent its preface and empty SETTINGS.
async fn h2c(proxy: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&hello).await.expect("preface");
    stream
}

async fn served(proxy: SocketAddr) -> bool {
    raw_exchange(
        proxy,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .starts_with("HTTP/1.1 200")
}

async fn proxied(origin: &HttpOrigin) -> gantry::Gantry {
    Scenario::web(origin.addr).start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_ends_the_connection_with_enhance_your_calm() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = proxied(&origin).await;
    let proxy = addr(&gantry, "web", "http");
    let mut stream = h2c(proxy).await;
    // Streams opened and cancelled at once, in one write: no window for Gantry to accept
    // them before they are reset.
    let streams = 1000usize;
    let mut burst = Vec::new();
    for i in 0..streams {
        let id = u32::try_from(2 * i + 1).expect("stream id");
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &get_block()));
        burst.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    let (mut reader, mut writer) = stream.split();
    let (code, _) = tokio::join!(goaway_code(&mut reader), async {
        // Gantry may close before the burst is written; that is the point.
        let _ = writer.write_all(&burst).await;
    });
    assert_eq!(code, Some(ENHANCE_YOUR_CALM));
    assert!(
        origin.requests() < streams / 2,
        "most cancelled streams never reached the backend: {}",
        origin.requests()
    );
    assert!(served(proxy).await, "a good client is served afterwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_ends_the_connection() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = proxied(&origin).await;
    let proxy = addr(&gantry, "web", "http");
    let mut stream = h2c(proxy).await;
    let mut flood = frame(HEADERS, END_STREAM, 1, &get_block());
    // A header block that never ends: each frame one whole literal header, `x-ab: vvvvvvvvv`
    // (not indexed, new name), so every fragment is valid and only their number is wrong.
    let mut literal = vec![0x00, 4];
    literal.extend_from_slice(b"x-ab");
    literal.push(9);
    literal.extend_from_slice(b"vvvvvvvvv");
    for _ in 0..10_000 {
        flood.extend(frame(CONTINUATION, 0, 1, &literal));
    }
    let (mut reader, mut writer) = stream.split();
    let (code, _) = tokio::join!(goaway_code(&mut reader), async {
        let _ = writer.write_all(&flood).await;
    });
    assert_eq!(code, Some(ENHANCE_YOUR_CALM));
    assert_eq!(
        origin.requests(),
        0,
        "the endless request never reached the backend"
    );
    assert!(served(proxy).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_floods_settings_and_pings_without_reading_does_not_stop_others() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = proxied(&origin).await;
    let proxy = addr(&gantry, "web", "http");
    let mut stream = h2c(proxy).await;
    let mut flood = Vec::new();
    for i in 0..20_000u64 {
        flood.extend(frame(SETTINGS, 0, 0, &[]));
        flood.extend(frame(PING, 0, 0, &i.to_be_bytes()));
    }
    // The client never reads its answers: Gantry stops reading once its own writes back up,
    // so this write stalls rather than growing a buffer; it is abandoned after a while.
    let flooding = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&flood)).await;
        stream
    });
    for _ in 0..20 {
        assert!(
            served(proxy).await,
            "good clients are served during the flood"
        );
    }
    let stream = flooding.await.expect("flooder");
    drop(stream);
    assert!(served(proxy).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_never_send_their_body_are_bounded_by_the_stream_limit() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = proxied(&origin).await;
    let proxy = addr(&gantry, "web", "http");
    let mut stream = h2c(proxy).await;
    // 150 requests whose bodies never come (no END_STREAM, no DATA): only 100 may be open.
    let mut opened = Vec::new();
    for i in 0..150u32 {
        opened.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &get_block()));
    }
    stream.write_all(&opened).await.expect("headers");
    // The streams past the limit are refused, one RST_STREAM each.
    let refused = async {
        let mut header = [0u8; 9];
        let mut refused = 0;
        while refused < 50 {
            stream.read_exact(&mut header).await.ok()?;
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0; len];
            stream.read_exact(&mut payload).await.ok()?;
            if header[3] == RST_STREAM && payload[..] == REFUSED_STREAM.to_be_bytes() {
                refused += 1;
            }
        }
        Some(refused)
    };
    let refused = tokio::time::timeout(Duration::from_secs(20), refused)
        .await
        .expect("the refusals come in bounded time");
    assert_eq!(refused, Some(50), "every stream past the 100th refused");
    assert!(served(proxy).await, "others are served meanwhile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_opens_no_window_stalls_only_itself() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = proxied(&origin).await;
    let proxy = addr(&gantry, "web", "http");
    let mut stream = h2c(proxy).await;
    // Every response body must wait for a window this client never opens.
    let mut stalled = initial_window(0);
    for i in 0..100u32 {
        stalled.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            2 * i + 1,
            &get_block(),
        ));
    }
    stream.write_all(&stalled).await.expect("requests");
    crate::support::eventually("the stalled requests to reach the origin", || async {
        origin.requests() >= 100
    })
    .await;
    // The answers wait in bounded buffers (256 KiB a stream at most); the backend
    // connections are free again and others are served.
    for _ in 0..20 {
        assert!(
            served(proxy).await,
            "others are served while one client stalls"
        );
    }
    assert!(origin.requests() >= 120);
    drop(stream);
}

/// In time as well as in memory: a stream whose window never opens is given up after
/// `client_idle` without progress, and a connection left without streams is closed after
/// `client_idle` too. Measured on the wall clock from the request, so neither ends before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_idle_connection_is_let_go_after_client_idle() {
    const CLIENT_IDLE: Duration = Duration::from_millis(300);
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = Scenario::new()
        .port(
            "web",
            Port::http("http")
                .backends(&[origin.addr])
                .set("timeouts", "{ client_idle: 300ms }"),
        )
        .start()
        .await;
    let proxy = addr(&gantry, "web", "http");

    // A request whose answer can never be sent: the client opens no window.
    let mut stalled = h2c(proxy).await;
    let asked = std::time::Instant::now();
    let mut request = initial_window(0);
    request.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &get_block()));
    stalled.write_all(&request).await.expect("request");
    let _ = goaway_code(&mut stalled).await;
    assert!(asked.elapsed() >= CLIENT_IDLE, "not before client_idle");
    assert_eq!(origin.requests(), 1, "the request was proxied");

    // A connection that never asks anything.
    let mut idle = h2c(proxy).await;
    let opened = std::time::Instant::now();
    let _ = goaway_code(&mut idle).await;
    assert!(opened.elapsed() >= CLIENT_IDLE, "not before client_idle");
    assert!(served(proxy).await);
}

fn initial_window(value: u32) -> Vec<u8> {
    let mut entry = SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
    entry.extend_from_slice(&value.to_be_bytes());
    frame(SETTINGS, 0, 0, &entry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_past_the_maximum_end_the_connection_with_flow_control_error() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = proxied(&origin).await;
    let proxy = addr(&gantry, "web", "http");

    // A SETTINGS value above 2^31-1 (§6.5.2).
    let mut stream = h2c(proxy).await;
    stream
        .write_all(&initial_window(1 << 31))
        .await
        .expect("settings");
    assert_eq!(goaway_code(&mut stream).await, Some(FLOW_CONTROL_ERROR));

    // An open stream's window pushed past 2^31-1 by a SETTINGS change (§6.9.2): a request
    // whose body has not ended keeps the stream open; its window is raised to the maximum,
    // then the initial window grows by one.
    let mut stream = h2c(proxy).await;
    let mut attack = frame(HEADERS, END_HEADERS, 1, &get_block());
    let raise = (1u32 << 31) - 1 - 65_535;
    attack.extend(frame(WINDOW_UPDATE, 0, 1, &raise.to_be_bytes()));
    attack.extend(initial_window(65_536));
    stream.write_all(&attack).await.expect("attack");
    assert_eq!(goaway_code(&mut stream).await, Some(FLOW_CONTROL_ERROR));
    assert!(served(proxy).await);
}

/// The error code of the GOAWAY the server sends before it closes, reading (and discarding)
/// every other frame; `None` if it closes without one. Bounded by a deadline.
async fn goaway_code<R: AsyncReadExt + Unpin>(reader: &mut R) -> Option<u32> {
    let read = async {
        let mut header = [0u8; 9];
        loop {
            reader.read_exact(&mut header).await.ok()?;
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0; len];
            reader.read_exact(&mut payload).await.ok()?;
            if header[3] == GOAWAY && len >= 8 {
                return Some(u32::from_be_bytes(payload[4..8].try_into().ok()?));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the server ends the connection in bounded time")
}
