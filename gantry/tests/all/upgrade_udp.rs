//! Upgrading under UDP load loses nothing: SIGUSR2 hands the UDP sockets and every flow (its
//! backend, and its upstream socket, so the backend sees no change) to the new process, which
//! reads the port from then on; no new flow's first datagram and no old flow's reply is lost,
//! and no flow changes backend. In a network namespace of the test's own, as the TCP upgrade
//! tests are.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use crate::support::binary::Running;
use crate::support::netns::Netns;
use crate::support::udp::{UdpLoad, UdpOrigin};
use crate::upgrade::{exits_cleanly, Successor};

/// A UDP port of 127.0.0.1 that nothing uses now (in the test's own namespace).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

fn config(port: u16, backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\nruntime: {{ shutdown_grace: 5s }}\nservices:\n  - name: dns\n    address: 127.0.0.1\n    ports:\n      - {{ name: udp, port: {port}, protocol: udp, backends: [{}] }}\n",
        list.join(", ")
    )
}

#[test]
fn sigusr2_hands_over_udp_flows_and_loses_no_datagram() {
    Netns::create("udp-handover").run(|| async {
        let (a, b) = (UdpOrigin::start("a").await, UdpOrigin::start("b").await);
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("gantry.yaml");
        let port = free_udp_port();
        std::fs::write(&config_path, config(port, &[a.addr, b.addr])).expect("write");
        let mut first = Running::start(&config_path);
        first.log("ready").await;
        let proxy = SocketAddr::from(([127, 0, 0, 1], port));
        let load = UdpLoad::start(proxy, 16, Duration::from_millis(10)).await;
        // The rate loses nothing without a handover.
        load.runs_on(200, 50).await;
        assert_eq!(load.counts().losses(), (0, 0, 0), "before the handover");

        first.signal("USR2");
        let started = first
            .log("started the new process; waiting until it takes over")
            .await;
        let successor = Successor(
            started["pid"]
                .as_u64()
                .and_then(|pid| u32::try_from(pid).ok())
                .expect("the new process's pid"),
        );
        // The new process logs to the same stream: it adopted every old flow.
        let took = first.log("took over").await;
        assert!(
            took["udp_flows"].as_u64() >= Some(16),
            "the old flows were handed over: {took}"
        );
        exits_cleanly(&mut first.child, "the old process").await;
        // Only the new process is left: the load goes on through it.
        load.runs_on(400, 100).await;
        let counts = load.stop().await;
        assert_eq!(
            counts.losses(),
            (0, 0, 0),
            "old flows' lost and moved answers, new flows' lost first datagrams, across the handover"
        );
        successor.stop().await;
    });
}
