//! The UDP side of `bench/udp.sh`: an echo backend, and load generators, so the benchmark
//! needs nothing beyond this repository and the proxies it compares.
//!
//! ```text
//! udp_load echo ADDR                      answers every datagram with its own bytes; a
//!                                         datagram `__count` is answered with how many
//!                                         datagrams it received before it
//! udp_load rr TARGET FLOWS SECONDS        request/response: FLOWS sockets (flows), each
//!                                         sending a datagram and waiting for its answer;
//!                                         prints answers/s, p50 and p99 in microseconds,
//!                                         and lost (no answer within 1 s)
//! udp_load oneway TARGET FLOWS SECONDS BACKEND
//!                                         one-way: FLOWS sockets send 64-byte datagrams as
//!                                         fast as they can; then BACKEND (the echo server,
//!                                         asked directly) says how many arrived; prints
//!                                         datagrams/s delivered
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let addr = |i: usize| -> SocketAddr { arg(i).parse().expect("an address") };
    let number = |i: usize| -> u64 { arg(i).parse().expect("a number") };
    match arg(0).as_str() {
        "echo" => runtime.block_on(echo(addr(1))),
        "rr" => runtime.block_on(request_response(addr(1), number(2), number(3))),
        "oneway" => runtime.block_on(one_way(addr(1), number(2), number(3), addr(4))),
        _ => eprintln!("usage: udp_load echo ADDR | rr TARGET FLOWS SECONDS | oneway TARGET FLOWS SECONDS BACKEND"),
    }
}

async fn echo(listen: SocketAddr) {
    let socket = UdpSocket::bind(listen).await.expect("bind");
    let mut buffer = vec![0u8; 65_536];
    let mut received: u64 = 0;
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        if &buffer[..len] == b"__count" {
            let _ = socket.send_to(received.to_string().as_bytes(), peer).await;
            continue;
        }
        received += 1;
        let _ = socket.send_to(&buffer[..len], peer).await;
    }
}

async fn request_response(target: SocketAddr, flows: u64, seconds: u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..flows {
        let (stop, lost) = (stop.clone(), lost.clone());
        tasks.push(tokio::spawn(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            socket.connect(target).await.expect("connect");
            let payload = [7u8; 64];
            let mut buffer = [0u8; 2048];
            let mut latencies = Vec::with_capacity(1 << 16);
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                if socket.send(&payload).await.is_err() {
                    lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buffer)).await {
                    Ok(Ok(_)) => latencies.push(sent.elapsed().as_micros() as u64),
                    _ => {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap_or_default());
    }
    all.sort_unstable();
    let at = |p: f64| {
        all.get(((all.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{:.0} {} {} {}",
        all.len() as f64 / seconds as f64,
        at(0.5),
        at(0.99),
        lost.load(Ordering::Relaxed)
    );
}

async fn one_way(target: SocketAddr, flows: u64, seconds: u64, backend: SocketAddr) {
    let ask = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let count = async || -> u64 {
        let _ = ask.send_to(b"__count", backend).await;
        let mut buffer = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(2), ask.recv_from(&mut buffer)).await {
            Ok(Ok((len, _))) => String::from_utf8_lossy(&buffer[..len]).parse().unwrap_or(0),
            _ => 0,
        }
    };
    let before = count().await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..flows {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            socket.connect(target).await.expect("connect");
            let payload = [7u8; 64];
            let mut sent: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                if socket.send(&payload).await.is_ok() {
                    sent += 1;
                }
            }
            sent
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for task in tasks {
        sent += task.await.unwrap_or(0);
    }
    // Let the last datagrams land before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = count().await.saturating_sub(before);
    println!(
        "{:.0} {:.0}",
        delivered as f64 / seconds as f64,
        sent as f64 / seconds as f64
    );
}
