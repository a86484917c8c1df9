//! Upgrading without a refused connection: a second `gantry` (the new binary, the same
//! configuration) binds the first's ports while the first still serves (`SO_REUSEPORT`), the
//! first is sent SIGTERM and drains, and clients that open a new connection for every request
//! see no failure at any point. In a network namespace of its own with
//! `net.ipv4.tcp_migrate_req = 1`, as the appliance sets it: connections still queued on the
//! first's listener when it closes move to the second's instead of being reset.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::binary::Running;
use crate::support::cluster::origin_behind;
use crate::support::eventually;
use crate::support::netns::Netns;
use crate::support::origin::{HttpOrigin, OriginProtocol};

/// Clients each opening a new connection per request, throughout.
const CLIENTS: usize = 4;
/// Requests answered before the handover starts, and after the first process has exited.
const REQUESTS_PER_PHASE: u64 = 200;

#[test]
fn a_second_gantry_takes_over_the_ports_while_the_first_drains_and_no_request_fails() {
    Netns::create("upgrade").run(scenario);
}

async fn scenario() {
    std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1")
        .expect("net.ipv4.tcp_migrate_req (Linux 5.14 or later)");
    let origin = HttpOrigin::start("origin", OriginProtocol::Http1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |port: u16| {
        format!(
            "admin: {{ listen: \"127.0.0.1:0\" }}\nservices:\n  - name: web\n    address: 127.0.0.1\n    ports:\n      - {{ name: http, port: {port}, protocol: http, backends: [\"{}\"] }}\n",
            origin.addr
        )
    };
    let first_config = dir.path().join("first.yaml");
    std::fs::write(&first_config, config(0)).expect("write");
    let mut first = Running::start(&first_config);
    let proxy = first.address("listening").await;
    first.log("ready").await;

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, answered, failures) = (stop.clone(), answered.clone(), failures.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match origin_behind(proxy).await.as_deref() {
                        Some("origin") => answered.fetch_add(1, Ordering::Relaxed),
                        other => {
                            failures.lock().expect("lock").push(format!("{other:?}"));
                            0
                        }
                    };
                }
            })
        })
        .collect();
    let answered_by = |count: u64| {
        let answered = answered.clone();
        async move { answered.load(Ordering::Relaxed) >= count }
    };
    eventually("the load runs through the first process", || {
        answered_by(REQUESTS_PER_PHASE)
    })
    .await;

    // The new process on the same configuration: it binds the same port beside the first.
    let second_config = dir.path().join("second.yaml");
    std::fs::write(&second_config, config(proxy.port())).expect("write");
    let mut second = Running::start(&second_config);
    assert_eq!(second.address("listening").await, proxy, "the same port");
    second.log("ready").await;

    first.signal("TERM");
    let exit = tokio::time::timeout(Duration::from_secs(30), first.child.wait())
        .await
        .expect("the first process drains and exits")
        .expect("wait");
    assert!(exit.success(), "the first process exits 0: {exit}");
    // Only the second process is left to answer.
    let handed_over = answered.load(Ordering::Relaxed);
    eventually("the load runs through the second process alone", || {
        answered_by(handed_over + REQUESTS_PER_PHASE)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client");
    }
    let failures = failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the handover: {:?}",
        failures.len(),
        answered.load(Ordering::Relaxed) + failures.len() as u64,
        &failures[..failures.len().min(10)]
    );
    second.signal("TERM");
    let exit = tokio::time::timeout(Duration::from_secs(30), second.child.wait())
        .await
        .expect("the second process exits")
        .expect("wait");
    assert!(exit.success(), "{exit}");
}
