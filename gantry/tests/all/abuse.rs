//! Clients that try to hold Gantry's resources, through real sockets: hundreds of slow heads
//! and slow bodies at once (slowloris), and a flood of idle connections past the connection
//! cap. A well-behaved client keeps being served (or is served once the others are let go),
//! every abuser is let go by its deadline, which each test shows by the wall clock, and what
//! a thousand held connections cost the `gantry` process in memory is bounded.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::addr;
use crate::support::binary::Running;
use crate::support::client::{get, read_one_response, read_until_closed};
use crate::support::origin::{HttpOrigin, OriginProtocol};
use crate::support::scenario::{Port, Scenario};

/// Raises this process's open-file limit to its hard limit and says how many abusive
/// connections fit in it, up to `wanted` (each costs up to four descriptors in-process: the
/// client's and Gantry's, and for a slow body Gantry's backend connection and the origin's).
fn abusers_that_fit(wanted: usize) -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let room = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(300)
        / 4;
    assert!(
        room >= 100,
        "too few file descriptors for this test: {limit}"
    );
    wanted.min(room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_bodies_do_not_stop_a_good_client_and_are_let_go_at_their_deadlines() {
    let abusers = abusers_that_fit(1000);
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = Scenario::new()
        .port(
            "web",
            Port::http("http")
                .backends(&[origin.addr])
                .set("timeouts", "{ header_read: 2s, client_idle: 2s }"),
        )
        .start()
        .await;
    let proxy = addr(&gantry, "web", "http");

    let started = Instant::now();
    let mut slow = Vec::with_capacity(abusers);
    for i in 0..abusers {
        let mut stream = TcpStream::connect(proxy).await.expect("connect");
        // Three in four never finish their head; the rest never finish their body.
        let partial: &[u8] = if i % 4 == 3 {
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly ten b"
        } else {
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: "
        };
        stream.write_all(partial).await.expect("partial request");
        slow.push(stream);
    }
    for i in 0..20 {
        let answer = get(proxy, &format!("/good/{i}")).await;
        assert_eq!(answer.status, http::StatusCode::OK, "good request {i}");
    }

    // Each abuser is answered 408 (or closed) once its time is up, not before.
    let mut answered = 0;
    for mut stream in slow {
        let answer = read_until_closed(&mut stream).await;
        if answer.starts_with("HTTP/1.1 408 ") {
            answered += 1;
        }
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "nobody was let go before the 2 s deadline"
    );
    assert_eq!(answered, abusers, "every slow client got a 408");
    assert!(
        (20..=20 + abusers / 4).contains(&origin.requests()),
        "the good requests reached the backend, no slow head did: {}",
        origin.requests()
    );
}

/// A flood of connections that send nothing, past the cap: each client let in takes the place
/// of the connection idle longest, so a good client behind the flood is served long before any
/// idle timeout (an hour here) would have let one go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_past_the_cap_makes_room_for_a_good_client() {
    let flood = abusers_that_fit(150);
    let places = 50;
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = Scenario::new()
        .port(
            "web",
            Port::http("http")
                .backends(&[origin.addr])
                .set("limits", &format!("{{ max_connections: {places} }}"))
                .set("timeouts", "{ client_idle: 1h }"),
        )
        .start()
        .await;
    let proxy = addr(&gantry, "web", "http");
    // Idle connections: the first 50 take every place; the rest wait in the accept queue.
    let mut idle = Vec::with_capacity(flood);
    for _ in 0..flood {
        idle.push(TcpStream::connect(proxy).await.expect("connect"));
    }
    let answer = tokio::time::timeout(Duration::from_secs(20), get(proxy, "/"))
        .await
        .expect("the good client is served without waiting out the idle timeout");
    assert_eq!(answer.status, http::StatusCode::OK);
    // As many as made room were closed without an answer. Which ones is the limiter's order
    // of idle marks (its unit test checks the oldest goes first), which follows the order in
    // which the connections' tasks first ran, not quite the accept order on two workers.
    let mut closing: futures::stream::FuturesUnordered<_> = idle
        .iter_mut()
        .map(|stream| async move {
            let mut seen = Vec::new();
            let _ = stream.read_to_end(&mut seen).await;
            seen
        })
        .collect();
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        let mut closed = 0;
        while closed < flood - places {
            let seen = closing.next().await.expect("more connections");
            assert!(seen.is_empty(), "let go unanswered: {seen:?}");
            closed += 1;
        }
        closed
    })
    .await
    .expect("the connections that made room are closed within 20s");
    assert_eq!(closed, flood - places);
    gantry.shutdown(Duration::from_secs(1)).await;
}

/// Most resident memory one held connection may add to the process: one that sends nothing,
/// one that sent part of a head, one kept alive after a request (its task, its stream, what
/// it sent; the kernel's socket is not counted). Measured in a release build: 3.0, 3.2 and
/// 6.5 KiB.
const MEMORY_PER_HELD_CONNECTION_KIB: u64 = 8;

/// How a held connection behaves.
#[derive(Clone, Copy, Debug)]
enum Held {
    /// Connects and sends nothing.
    Idle,
    /// Sends part of a head and stops.
    Slow,
    /// Has one request answered, then keeps the connection open and quiet.
    KeptAlive,
}

/// A thousand connections of each kind in [`Held`] cost the process at most 8 KiB each; once
/// they are gone, the process gives the memory back (its resident size returns to within 20%
/// of what it was before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_connections_cost_the_process_little_memory_and_give_it_back() {
    let clients = abusers_that_fit(1000);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    Scenario::new()
        .section("runtime: { workers: 2 }")
        .port(
            "web",
            Port::http("http")
                .backends(&[origin.addr])
                .set("timeouts", "{ header_read: 60s }"),
        )
        .write(&config);
    let mut gantry = Running::start(&config);
    let proxy = gantry.address("listening").await;
    gantry.log("ready").await;
    // Warm: the first requests make what every later connection shares.
    for _ in 0..10 {
        assert_eq!(get(proxy, "/").await.status, http::StatusCode::OK);
    }
    let before = gantry.resident_kib();
    let mut held = Vec::with_capacity(3 * clients);
    for kind in [Held::Idle, Held::Slow, Held::KeptAlive] {
        let start = gantry.resident_kib();
        for _ in 0..clients {
            let mut stream = TcpStream::connect(proxy).await.expect("connect");
            match kind {
                Held::Idle => {}
                Held::Slow => {
                    let partial = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ";
                    stream.write_all(partial).await.expect("partial head");
                }
                Held::KeptAlive => {
                    let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
                    stream.write_all(request).await.expect("request");
                    let head = read_one_response(&mut stream).await;
                    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                }
            }
            held.push(stream);
        }
        // Every one of them is held by Gantry (accepted, its head read so far) before
        // measuring: a request behind them is answered.
        assert_eq!(get(proxy, "/").await.status, http::StatusCode::OK);
        let now = gantry.resident_kib();
        let grown = now.saturating_sub(start);
        eprintln!("{clients} {kind:?} connections: {start} -> {now} KiB resident (+{grown})");
        assert!(
            grown <= clients as u64 * MEMORY_PER_HELD_CONNECTION_KIB,
            "{clients} {kind:?} connections grew the process by {grown} KiB ({start} -> {now})"
        );
    }
    drop(held);
    let mut after = gantry.resident_kib();
    let deadline = Instant::now() + Duration::from_secs(60);
    while after > before + before / 5 && Instant::now() < deadline {
        // A legitimate client goes on; the process's own accounting has no event to wait for.
        assert_eq!(get(proxy, "/").await.status, http::StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = gantry.resident_kib();
    }
    eprintln!("after: {after} KiB resident (before the connections: {before})");
    assert!(
        after <= before + before / 5,
        "the memory was not given back within a minute: {before} -> {after} KiB"
    );
}
