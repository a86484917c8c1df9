//! The HTTP guarantees, each run on every engine that carries HTTP: an HTTP/1.1 request, an
//! HTTP/2 stream (h2c by prior knowledge) and a WebSocket upgrade, to HTTP/1 backends and,
//! for requests, to h2c backends. One table of engines, one helper that sends a request on an
//! engine and reads the answer's head, one test per guarantee: a guarantee that fails on one
//! engine fails its test naming the engine and the backends' protocol. What an
//! engine cannot do is listed in `docs/architecture.md` ("What each HTTP engine does").

mod cut;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::client::{H1, H2};
use crate::support::origin::{HttpOrigin, OriginProtocol};
use crate::support::scenario::{Port, Scenario};
use crate::support::{access_log, addr, eventually};

/// An engine that carries HTTP through Gantry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Engine {
    Http1,
    Http2,
    WebSocket,
}

/// What the backends speak, and the engines that reach them: an upgrade needs an HTTP/1
/// backend (HTTP/2 has no `Upgrade`; RFC 8441's extended CONNECT is not offered).
pub(super) const BACKENDS: [(OriginProtocol, &[Engine]); 2] = [
    (
        OriginProtocol::Http1,
        &[Engine::Http1, Engine::Http2, Engine::WebSocket],
    ),
    (OriginProtocol::H2c, &[Engine::Http1, Engine::Http2]),
];

/// An HTTP port named `name` whose backends speak `protocol`.
pub(super) fn web(name: &str, protocol: OriginProtocol) -> Port {
    match protocol {
        OriginProtocol::Http1 => Port::http(name),
        OriginProtocol::H2c => Port::http(name).set("backend_protocol", "h2c"),
    }
}

/// The head of an answer.
#[derive(Debug)]
struct Head {
    status: u16,
    headers: HeaderMap,
}

impl Head {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends one request with `headers` on a new connection of `engine` to `proxy` (path `/` for
/// HTTP, `/ws` for an upgrade) and returns the answer's head.
async fn ask(engine: Engine, proxy: SocketAddr, headers: &[(&str, &str)]) -> Head {
    match engine {
        Engine::Http1 | Engine::Http2 => {
            // HTTP/1 in origin form with `Host`; HTTP/2 with `:authority`.
            let target = match engine {
                Engine::Http1 => "/".to_owned(),
                _ => format!("http://shop.example:{}/", proxy.port()),
            };
            let mut request = Request::get(target);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            if engine == Engine::Http1 {
                request = request.header("host", format!("shop.example:{}", proxy.port()));
            }
            let request = request.body(Full::new(Bytes::new())).expect("request");
            let stream = TcpStream::connect(proxy).await.expect("connect");
            let answer = if engine == Engine::Http1 {
                let authority = format!("shop.example:{}", proxy.port());
                let mut client = H1::over(stream, authority).await.expect("handshake");
                client.send(request).await.expect("answer")
            } else {
                H2::over(stream).await.send(request).await
            };
            Head {
                status: answer.status.as_u16(),
                headers: answer.headers,
            }
        }
        Engine::WebSocket => {
            let mut head = String::from(
                "GET /ws HTTP/1.1\r\nHost: shop.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let mut stream = TcpStream::connect(proxy).await.expect("connect");
            stream.write_all(head.as_bytes()).await.expect("send");
            parse_head(&read_head(&mut stream).await)
        }
    }
}

/// Reads a response head (a `101` has no body; any other answer here has none that matters).
pub(super) async fn read_head(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 1024];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("a head within 10s")
            .expect("read");
        assert!(n > 0, "closed before the whole head: {seen:?}");
        seen.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// The status and fields of a raw HTTP/1 response head.
fn parse_head(raw: &str) -> Head {
    let mut lines = raw.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("a status line in {raw:?}"));
    let mut headers = HeaderMap::new();
    for line in lines.take_while(|line| !line.is_empty()) {
        if let Some((name, value)) = line.split_once(':') {
            headers.append(
                http::HeaderName::from_bytes(name.trim().as_bytes()).expect("name"),
                http::HeaderValue::from_str(value.trim()).expect("value"),
            );
        }
    }
    Head { status, headers }
}

/// The status a successful exchange has on `engine`.
fn ok(engine: Engine) -> u16 {
    match engine {
        Engine::WebSocket => 101,
        _ => 200,
    }
}

async fn origins(n: usize, protocol: OriginProtocol) -> Vec<HttpOrigin> {
    let mut all = Vec::new();
    for i in 0..n {
        all.push(HttpOrigin::start(&format!("o{i}"), protocol).await);
    }
    all
}

fn addresses(origins: &[HttpOrigin]) -> Vec<SocketAddr> {
    origins.iter().map(|o| o.addr).collect()
}

/// A Gantry with one port, `shop/web`, over `n` origins speaking `protocol`, the port shaped
/// by `shape`: the origins, the Gantry and the port's address.
async fn shop(
    protocol: OriginProtocol,
    n: usize,
    shape: impl FnOnce(Port) -> Port,
) -> (Vec<HttpOrigin>, gantry::Gantry, SocketAddr) {
    let backends = origins(n, protocol).await;
    let port = shape(web("web", protocol).backends(&addresses(&backends)));
    let gantry = Scenario::new().port("shop", port).start().await;
    let proxy = addr(&gantry, "shop", "web");
    (backends, gantry, proxy)
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_on_every_engine() {
    for (protocol, engines) in BACKENDS {
        let (_origins, gantry, proxy) = shop(protocol, 1, |port| port).await;
        for &engine in engines {
            let head = ask(engine, proxy, &[("x-forwarded-for", "203.0.113.9")]).await;
            let on = format!("{engine:?} to {protocol:?}");
            assert_eq!(head.status, ok(engine), "{on}");
            // A client outside trusted_proxies cannot claim an address.
            assert_eq!(head.header("x-seen-xff"), "127.0.0.1", "{on}");
            assert_eq!(head.header("x-seen-xfp"), "http", "{on}");
        }
        gantry.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_affinity_is_set_and_honoured_on_every_engine() {
    for (protocol, engines) in BACKENDS {
        let (_origins, gantry, proxy) = shop(protocol, 3, |port| {
            port.set(
                "affinity",
                "{ policy: \"builtin:cookie\", params: { name: sid, max_age_seconds: 60 } }",
            )
        })
        .await;
        for &engine in engines {
            let on = format!("{engine:?} to {protocol:?}");
            let first = ask(engine, proxy, &[]).await;
            assert_eq!(first.status, ok(engine), "{on}");
            let set_cookie = first.header("set-cookie");
            let pair = set_cookie
                .split(';')
                .next()
                .filter(|pair| pair.starts_with("sid="))
                .unwrap_or_else(|| panic!("{on}: no affinity cookie in {first:?}"));
            for _ in 0..6 {
                let again = ask(engine, proxy, &[("cookie", pair)]).await;
                assert_eq!(
                    again.header("x-origin"),
                    first.header("x-origin"),
                    "{on}: the cookie keeps the client on its backend"
                );
                assert_eq!(again.header("set-cookie"), "", "{on}");
            }
        }
        gantry.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_hash_key_keeps_a_key_on_one_backend_on_every_engine() {
    for (protocol, engines) in BACKENDS {
        let (_origins, gantry, proxy) = shop(protocol, 3, |port| {
            port.set(
                "balancer",
                "{ policy: \"builtin:maglev\", hash_key: \"header:x-user\" }",
            )
        })
        .await;
        for &engine in engines {
            let on = format!("{engine:?} to {protocol:?}");
            let mut by_user = std::collections::HashMap::new();
            for round in 0..3 {
                for user in ["ann", "bob", "cyd", "dee", "eve", "fay"] {
                    let head = ask(engine, proxy, &[("x-user", user)]).await;
                    let origin = head.header("x-origin").to_owned();
                    let first = by_user.entry(user).or_insert_with(|| origin.clone());
                    assert_eq!(*first, origin, "{on}: {user} moved in round {round}");
                }
            }
            let spread: std::collections::HashSet<_> = by_user.values().collect();
            assert!(spread.len() > 1, "{on}: keys are spread: {by_user:?}");
        }
        gantry.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_is_retried_within_the_budget_on_every_engine() {
    for (protocol, engines) in BACKENDS {
        let live = origins(1, protocol).await;
        let dead = closed_port().await;
        let backends = [dead, live[0].addr];
        let scenario = |retries: u32| {
            Scenario::new().port(
                "shop",
                web("web", protocol)
                    .backends(&backends)
                    .set("retries", &retries.to_string())
                    // Every request tries the dead backend first while it is not backing off.
                    .set("backoff", "{ initial: 1ms, max: 1ms }"),
            )
        };
        let gantry = scenario(1).start().await;
        let proxy = addr(&gantry, "shop", "web");
        for &engine in engines {
            for _ in 0..4 {
                let head = ask(engine, proxy, &[]).await;
                assert_eq!(
                    head.status,
                    ok(engine),
                    "{engine:?} to {protocol:?}: retried on the live one"
                );
            }
        }
        gantry.shutdown(Duration::from_secs(1)).await;

        let gantry = scenario(0).start().await;
        let proxy = addr(&gantry, "shop", "web");
        for &engine in engines {
            let mut statuses = Vec::new();
            for _ in 0..4 {
                statuses.push(ask(engine, proxy, &[]).await.status);
            }
            assert!(
                statuses.contains(&502),
                "{engine:?} to {protocol:?}: with no retries, the dead backend's turn is a 502: {statuses:?}"
            );
        }
        gantry.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_is_503_and_unreachable_backends_502_on_every_engine() {
    for (protocol, engines) in BACKENDS {
        let dead = closed_port().await;
        let gantry = Scenario::new()
            .port("shop", web("web", protocol).backends(&[]))
            .port("gone", web("web", protocol).backends(&[dead]))
            .start()
            .await;
        for &engine in engines {
            let none = ask(engine, addr(&gantry, "shop", "web"), &[]).await;
            assert_eq!(none.status, 503, "{engine:?} to {protocol:?}");
            let gone = ask(engine, addr(&gantry, "gone", "web"), &[]).await;
            assert_eq!(gone.status, 502, "{engine:?} to {protocol:?}");
        }
        gantry.shutdown(Duration::from_secs(1)).await;
    }
}

/// A backend that accepts connections and never answers (it holds them until dropped).
struct Silent {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Silent {
    async fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Silent { addr, task }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_does_not_answer_in_time_is_504_on_every_engine() {
    for (protocol, engines) in BACKENDS {
        let silent = Silent::start().await;
        let gantry = Scenario::new()
            .port(
                "shop",
                web("web", protocol)
                    .backends(&[silent.addr])
                    .set("timeouts", "{ upstream_read: 300ms }"),
            )
            .start()
            .await;
        for &engine in engines {
            let asked = std::time::Instant::now();
            let head = ask(engine, addr(&gantry, "shop", "web"), &[]).await;
            assert_eq!(head.status, 504, "{engine:?} to {protocol:?}");
            // The answer comes from the timeout, not from a later failure.
            assert!(
                asked.elapsed() >= Duration::from_millis(300),
                "{engine:?} to {protocol:?}: answered before upstream_read"
            );
        }
        gantry.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_request_headers_are_431_on_every_engine() {
    for (protocol, engines) in BACKENDS {
        let (backends, gantry, proxy) =
            shop(protocol, 1, |port| port.set("limits", "{ max_headers: 8 }")).await;
        let names: Vec<String> = (0..12).map(|i| format!("x-extra-{i}")).collect();
        let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
        for &engine in engines {
            assert_eq!(ask(engine, proxy, &many[..2]).await.status, ok(engine));
            let head = ask(engine, proxy, &many).await;
            assert_eq!(head.status, 431, "{engine:?} to {protocol:?}");
        }
        assert_eq!(
            backends[0].requests(),
            engines.len(),
            "{protocol:?}: refused requests never reach a backend"
        );
        gantry.shutdown(Duration::from_secs(1)).await;
    }
}

/// Sends a 5-byte `PUT` expecting `100-continue` on `engine` and sends the body only once the
/// `100` came (within 10 s, far below no client's own expect timeout); the final answer's
/// status and body.
async fn put_expecting_continue(engine: Engine, proxy: SocketAddr) -> (u16, String) {
    const WAIT: Duration = Duration::from_secs(10);
    match engine {
        Engine::Http1 => {
            let mut stream = TcpStream::connect(proxy).await.expect("connect");
            let head = "PUT /up HTTP/1.1\r\nHost: shop.example\r\nExpect: 100-continue\r\ncontent-length: 5\r\nconnection: close\r\n\r\n";
            stream.write_all(head.as_bytes()).await.expect("head");
            let interim = read_head(&mut stream).await;
            assert!(interim.starts_with("HTTP/1.1 100 "), "{interim}");
            let after_interim = interim[interim.find("\r\n\r\n").expect("end") + 4..].to_owned();
            stream.write_all(b"hello").await.expect("body");
            let mut rest = Vec::new();
            tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
                .await
                .expect("the answer within 10s")
                .expect("read");
            let answer = after_interim + &String::from_utf8_lossy(&rest);
            let head = parse_head(&answer);
            let body = answer[answer.find("\r\n\r\n").expect("end") + 4..].to_owned();
            (head.status, body)
        }
        Engine::Http2 => {
            let mut client = crate::support::client::h2_client(proxy).await;
            let request = Request::put("http://shop.example/up")
                .header("expect", "100-continue")
                .header("content-length", "5")
                .body(())
                .expect("request");
            let (mut response, mut body) = client.send_request(request, false).expect("send");
            let interim = tokio::time::timeout(
                WAIT,
                std::future::poll_fn(|cx| response.poll_informational(cx)),
            )
            .await
            .expect("the 100 within 10s")
            .expect("an informational response")
            .expect("no error");
            assert_eq!(interim.status(), 100);
            body.send_data(Bytes::from_static(b"hello"), true)
                .expect("body");
            let response = tokio::time::timeout(WAIT, response)
                .await
                .expect("the answer within 10s")
                .expect("response");
            let status = response.status().as_u16();
            let mut data = response.into_body();
            let mut text = Vec::new();
            while let Some(chunk) = data.data().await {
                let chunk = chunk.expect("data");
                let _ = data.flow_control().release_capacity(chunk.len());
                text.extend_from_slice(&chunk);
            }
            (status, String::from_utf8_lossy(&text).into_owned())
        }
        Engine::WebSocket => unreachable!("an upgrade carries no body before its 101"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_expecting_100_continue_gets_it_before_sending_on_every_engine() {
    for (protocol, engines) in BACKENDS {
        let (_origins, gantry, proxy) = shop(protocol, 1, |port| port).await;
        for &engine in engines.iter().filter(|e| **e != Engine::WebSocket) {
            let (status, body) = put_expecting_continue(engine, proxy).await;
            assert_eq!(status, 200, "{engine:?} to {protocol:?}");
            // The origin names itself and the body length it got.
            assert!(body.contains("o0 5"), "{engine:?} to {protocol:?}: {body}");
        }
        gantry.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_and_the_metrics_count_every_engine_alike() {
    access_log::capture();
    for (protocol, engines) in BACKENDS {
        let service = format!("parity-log-{protocol:?}").to_lowercase();
        let backends = origins(1, protocol).await;
        let gantry = Scenario::new()
            .section("runtime: { access_log: true }")
            .port(
                &service,
                web("web", protocol).backends(&addresses(&backends)),
            )
            .start()
            .await;
        let proxy = addr(&gantry, &service, "web");
        for &engine in engines {
            assert_eq!(ask(engine, proxy, &[]).await.status, ok(engine));
        }
        // An upgrade's line is written when its tunnel ends, which the origin's echo keeps
        // open until the client leaves: the client has left, so wait for it.
        eventually("a line per engine", || async {
            access_log::lines_for(&service).len() >= engines.len()
        })
        .await;
        let lines = access_log::lines_for(&service);
        for &engine in engines {
            let protocol_field = match engine {
                Engine::Http1 => "http/1.1",
                Engine::Http2 => "h2",
                Engine::WebSocket => "upgrade",
            };
            let line = lines
                .iter()
                .find(|line| line.contains(&format!(" protocol={protocol_field} ")))
                .unwrap_or_else(|| panic!("no {engine:?} line to {protocol:?} in {lines:?}"));
            for field in [
                "service=",
                "port=",
                "client=",
                "method=GET",
                "path=/",
                "status=",
                "backend=",
                "duration_ms=",
                "bytes_received=",
                "bytes_sent=",
                "retries=0",
            ] {
                assert!(
                    line.contains(field),
                    "{engine:?} to {protocol:?}: {field} missing from {line}"
                );
            }
        }
        // The same record counted the requests, by the status class each engine answered.
        let text = gantry.metrics().render();
        let count = |class: &str| {
            let series = format!(
                "gantry_requests_total{{backend=\"{}\",class=\"{class}\",port=\"web\",service=\"{service}\"}}",
                backends[0].addr
            );
            crate::support::metric(&text, &series)
        };
        let upgrades = engines.iter().filter(|e| **e == Engine::WebSocket).count();
        assert_eq!(
            count("2xx"),
            (engines.len() - upgrades) as f64,
            "{protocol:?}"
        );
        if upgrades > 0 {
            assert_eq!(count("1xx"), upgrades as f64, "{protocol:?}: the 101s");
        }
        gantry.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_request_goes_with_its_targets_authority() {
    // A backend that only records the head Gantry forwards.
    let catcher = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let catcher_addr = catcher.local_addr().expect("addr");
    let gantry = Scenario::new()
        .port("raw", Port::http("web").backends(&[catcher_addr]))
        .start()
        .await;
    let mut client = TcpStream::connect(addr(&gantry, "raw", "web"))
        .await
        .expect("connect");
    client
        .write_all(b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n")
        .await
        .expect("send");
    let (mut upstream, _) = catcher.accept().await.expect("forwarded");
    let seen = read_head(&mut upstream).await;
    assert!(
        seen.starts_with("GET http://a.example/x HTTP/1.1\r\n"),
        "{seen}"
    );
    assert!(
        seen.contains("host: a.example\r\n"),
        "RFC 9112 §3.2.2: {seen}"
    );
    assert!(!seen.contains("b.example"), "{seen}");
    gantry.shutdown(Duration::from_secs(1)).await;
}
