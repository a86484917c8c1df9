//! `udp` ports through real sockets: flows stick to a backend, clients spread, replies come
//! from the port's address, backends that go are replaced on the next datagram, flows expire,
//! the flow cap and source ranges hold, PROXY v2 headers go with each datagram.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use crate::support::scenario::{Port, Scenario};
use crate::support::udp::{UdpClient, UdpOrigin};
use crate::support::{addr, eventually, metric};

fn udp(name: &str, backends: &[SocketAddr]) -> Port {
    Port::new(name, "udp").backends(backends)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_sticks_to_its_backend_and_clients_spread() {
    let origins = [
        UdpOrigin::start("a").await,
        UdpOrigin::start("b").await,
        UdpOrigin::start("c").await,
    ];
    let backends: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let gantry = Scenario::new()
        .port("dns", udp("udp", &backends))
        .start()
        .await;
    let port = addr(&gantry, "dns", "udp");

    let client = UdpClient::new().await;
    let (first, echoed) = client.ask(port, "q0").await.expect("an answer");
    assert_eq!(echoed, "q0");
    for i in 1..20 {
        let (origin, echoed) = client.ask(port, &format!("q{i}")).await.expect("an answer");
        assert_eq!(origin, first, "datagram {i} of one flow went elsewhere");
        assert_eq!(echoed, format!("q{i}"));
    }
    let mut seen = BTreeSet::new();
    for _ in 0..12 {
        let client = UdpClient::new().await;
        seen.insert(client.ask(port, "hi").await.expect("an answer").0);
    }
    assert_eq!(
        seen.len(),
        3,
        "new flows spread over every backend: {seen:?}"
    );
    let metrics = gantry.metrics().render();
    assert_eq!(
        metric(
            &metrics,
            "gantry_udp_flows_created_total{port=\"udp\",service=\"dns\"}"
        ),
        13.0
    );
    assert_eq!(
        metric(
            &metrics,
            "gantry_udp_flows_active{port=\"udp\",service=\"dns\"}"
        ),
        13.0
    );
    let to_backends: f64 = origins
        .iter()
        .map(|o| metric(&metrics, &format!("gantry_udp_datagrams_received_total{{backend=\"{}\",port=\"udp\",service=\"dns\"}}", o.addr)))
        .sum();
    assert_eq!(to_backends, 32.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_whose_backend_leaves_moves_on_its_next_datagram() {
    let (a, b) = (UdpOrigin::start("a").await, UdpOrigin::start("b").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    let scenario = |backends: &[SocketAddr]| Scenario::new().port("dns", udp("udp", backends));
    scenario(&[a.addr]).write(&config);
    let gantry = gantry::Gantry::start_file(lb_config::load_builder(&config).expect("config"))
        .await
        .expect("gantry");
    let port = addr(&gantry, "dns", "udp");
    let client = UdpClient::new().await;
    assert_eq!(client.ask(port, "1").await.expect("answer").0, "a");

    // a is replaced by b: the same client address and port reaches b.
    scenario(&[b.addr]).write(&config);
    gantry::reload::reload_from_file(&gantry, &config)
        .await
        .expect("reload");
    assert_eq!(client.ask(port, "2").await.expect("answer").0, "b");
    assert_eq!(addr(&gantry, "dns", "udp"), port, "the socket stayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_are_capped_and_source_ranges_hold() {
    let origin = UdpOrigin::start("a").await;
    let gantry = Scenario::new()
        .port(
            "capped",
            udp("udp", &[origin.addr]).set("limits", "{ max_flows: 2 }"),
        )
        .port(
            "guarded",
            udp("udp", &[origin.addr]).set("source_ranges", "[10.0.0.0/8]"),
        )
        .start()
        .await;
    let capped = addr(&gantry, "capped", "udp");
    let clients = [
        UdpClient::new().await,
        UdpClient::new().await,
        UdpClient::new().await,
    ];
    assert!(clients[0].ask(capped, "1").await.is_some());
    assert!(clients[1].ask(capped, "2").await.is_some());
    assert!(
        clients[2].ask(capped, "3").await.is_none(),
        "a third flow is over the cap"
    );
    assert!(
        clients[0].ask(capped, "4").await.is_some(),
        "existing flows go on"
    );

    let guarded = addr(&gantry, "guarded", "udp");
    assert!(UdpClient::new().await.ask(guarded, "x").await.is_none());
    let metrics = gantry.metrics().render();
    assert_eq!(
        metric(
            &metrics,
            "gantry_udp_dropped_total{port=\"udp\",reason=\"max_flows\",service=\"capped\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "gantry_udp_dropped_total{port=\"udp\",reason=\"source_range\",service=\"guarded\"}"
        ),
        1.0
    );
    assert_eq!(origin.received(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_datagram_carries_a_proxy_v2_header_when_asked() {
    let origin = UdpOrigin::start_with("a", true).await;
    let gantry = Scenario::new()
        .port(
            "syslog",
            udp("udp", &[origin.addr]).set("proxy_protocol", "v2"),
        )
        .start()
        .await;
    let port = addr(&gantry, "syslog", "udp");
    let client = UdpClient::new().await;
    for i in 0..3 {
        assert_eq!(
            client.ask(port, &format!("m{i}")).await.expect("answer").1,
            format!("m{i}")
        );
    }
    let me = client.socket.local_addr().expect("addr");
    assert_eq!(*origin.proxied.lock().expect("lock"), vec![me; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flow_expires_and_the_client_starts_a_new_one() {
    let origin = UdpOrigin::start("a").await;
    let gantry = Scenario::new()
        .port(
            "dns",
            udp("udp", &[origin.addr])
                .set("timeouts", "{ udp_idle: 200ms, udp_stream_idle: 300ms }"),
        )
        .start()
        .await;
    let port = addr(&gantry, "dns", "udp");
    let client = UdpClient::new().await;
    assert!(client.ask(port, "1").await.is_some());
    let series = "gantry_udp_flows_expired_total{port=\"udp\",service=\"dns\"}";
    eventually("the flow expires", || async {
        metric(&gantry.metrics().render(), series) == 1.0
    })
    .await;
    assert_eq!(
        metric(
            &gantry.metrics().render(),
            "gantry_udp_flows_active{port=\"udp\",service=\"dns\"}"
        ),
        0.0
    );
    assert!(client.ask(port, "2").await.is_some());
    assert_eq!(
        metric(
            &gantry.metrics().render(),
            "gantry_udp_flows_created_total{port=\"udp\",service=\"dns\"}"
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_whose_backend_turns_unhealthy_moves_on_its_next_datagram() {
    use crate::support::origin::{HttpOrigin, OriginProtocol};
    // Each backend has an address of its own, and tells its health over HTTP on one port of
    // that address (the `port` parameter of the check).
    let ips = ["127.0.41.1", "127.0.41.2"];
    let first_health = HttpOrigin::start_on(
        format!("{}:0", ips[0]).parse().expect("addr"),
        "h1",
        OriginProtocol::Http1,
    )
    .await;
    let health_port = first_health.addr.port();
    let second_health = HttpOrigin::start_on(
        SocketAddr::new(ips[1].parse().expect("ip"), health_port),
        "h2",
        OriginProtocol::Http1,
    )
    .await;
    let a = UdpOrigin::start_on(format!("{}:0", ips[0]).parse().expect("addr"), "a", false).await;
    let b = UdpOrigin::start_on(format!("{}:0", ips[1]).parse().expect("addr"), "b", false).await;
    let health = format!(
        "[{{ policy: \"builtin:http-check\", params: {{ port: {health_port}, path: /healthz, interval: 100ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 1 }} }}]"
    );
    let gantry = Scenario::new()
        .port("dns", udp("udp", &[a.addr, b.addr]).set("health", &health))
        .start()
        .await;
    let port = addr(&gantry, "dns", "udp");
    let client = UdpClient::new().await;
    let (first, _) = client.ask(port, "1").await.expect("answer");
    // The flow's backend goes unhealthy: its next datagram goes to the other one.
    let (sick, other) = if first == "a" {
        (&first_health, "b")
    } else {
        (&second_health, "a")
    };
    sick.set_health(503);
    eventually("the flow moves to the healthy backend", || async {
        client
            .ask(port, "2")
            .await
            .is_some_and(|(origin, _)| origin == other)
    })
    .await;
    for i in 3..8 {
        assert_eq!(
            client.ask(port, &i.to_string()).await.expect("answer").0,
            other
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_refuses_datagrams_is_ejected_by_the_outlier_policy() {
    // Nothing listens on `dead`: the kernel answers its datagrams with ICMP port unreachable.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let live = UdpOrigin::start("live").await;
    let gantry = Scenario::new()
        .port(
            "dns",
            udp("udp", &[dead, live.addr]).set(
                "health",
                "[{ policy: \"builtin:outlier\", params: { consecutive_errors: 1, base_ejection: 1m } }]",
            ),
        )
        .start()
        .await;
    let port = addr(&gantry, "dns", "udp");
    let series = format!(
        "gantry_backend_ejections_total{{backend=\"{dead}\",port=\"udp\",service=\"dns\"}}"
    );
    // New flows spread over both until the dead one's refusals eject it.
    eventually("the dead backend is ejected", || async {
        let _ = UdpClient::new().await.ask(port, "probe").await;
        metric(&gantry.metrics().render(), &series) >= 1.0
    })
    .await;
    for _ in 0..6 {
        assert_eq!(
            UdpClient::new()
                .await
                .ask(port, "q")
                .await
                .expect("answer")
                .0,
            "live"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_affinity_keeps_a_client_on_its_backend_across_source_ports() {
    let origins = [
        UdpOrigin::start("a").await,
        UdpOrigin::start("b").await,
        UdpOrigin::start("c").await,
    ];
    let backends: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let gantry = Scenario::new()
        .port(
            "dns",
            udp("udp", &backends).set(
                "affinity",
                "{ policy: \"builtin:client-ip\", params: { timeout_seconds: 60 } }",
            ),
        )
        .start()
        .await;
    let port = addr(&gantry, "dns", "udp");
    // Every new source port is a new flow, but the client's address is the same.
    let first = UdpClient::new()
        .await
        .ask(port, "1")
        .await
        .expect("answer")
        .0;
    for i in 0..10 {
        let (origin, _) = UdpClient::new()
            .await
            .ask(port, &i.to_string())
            .await
            .expect("answer");
        assert_eq!(origin, first, "flow {i} left its client's backend");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_reply_on_flows_whose_backend_stays() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let (a, b, extra) = (
        UdpOrigin::start("a").await,
        UdpOrigin::start("b").await,
        UdpOrigin::start("extra").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    let write = |backends: &[SocketAddr]| {
        Scenario::new()
            .port("dns", udp("udp", backends))
            .write(&config)
    };
    write(&[a.addr, b.addr]);
    let gantry = gantry::Gantry::start_file(lb_config::load_builder(&config).expect("config"))
        .await
        .expect("gantry");
    let port = addr(&gantry, "dns", "udp");
    // Flows on a and b (the backends every reload keeps), asking one after another.
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, lost) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for i in 0..6 {
        // Each flow starts (on a or b) before any reload.
        let client = UdpClient::new().await;
        assert!(client.ask(port, "first").await.is_some());
        let (stop, answered, lost) = (stop.clone(), answered.clone(), lost.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                match client.ask(port, &format!("{i}-{n}")).await {
                    Some(_) => answered.fetch_add(1, Ordering::SeqCst),
                    None => lost.fetch_add(1, Ordering::SeqCst),
                };
                n += 1;
            }
        }));
    }
    for round in 0..6 {
        let backends = if round % 2 == 0 {
            vec![a.addr, b.addr, extra.addr]
        } else {
            vec![a.addr, b.addr]
        };
        write(&backends);
        gantry::reload::reload_from_file(&gantry, &config)
            .await
            .expect("reload");
        let before = answered.load(Ordering::SeqCst);
        eventually("the load goes on", || async {
            answered.load(Ordering::SeqCst) > before + 6
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.expect("client");
    }
    assert!(answered.load(Ordering::SeqCst) >= 60, "the load ran");
    assert_eq!(
        lost.load(Ordering::SeqCst),
        0,
        "replies lost across reloads"
    );
    assert_eq!(
        extra.received(),
        0,
        "existing flows stayed on their backends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_udp_port_serves_its_flows_until_they_end_and_takes_no_new_one() {
    let origin = UdpOrigin::start("a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    let with_port = Scenario::new()
        .section("runtime: { shutdown_grace: 30s }")
        .port("keep", udp("udp", &[origin.addr]))
        .port(
            "dns",
            udp("udp", &[origin.addr])
                .set("timeouts", "{ udp_idle: 300ms, udp_stream_idle: 300ms }"),
        );
    with_port.write(&config);
    let gantry = gantry::Gantry::start_file(lb_config::load_builder(&config).expect("config"))
        .await
        .expect("gantry");
    let port = addr(&gantry, "dns", "udp");
    let old = UdpClient::new().await;
    assert!(old.ask(port, "before").await.is_some());

    Scenario::new()
        .section("runtime: { shutdown_grace: 30s }")
        .port("keep", udp("udp", &[origin.addr]))
        .write(&config);
    gantry::reload::reload_from_file(&gantry, &config)
        .await
        .expect("reload");
    assert!(
        old.ask(port, "during").await.is_some(),
        "the existing flow is still served"
    );
    assert!(
        UdpClient::new().await.ask(port, "new").await.is_none(),
        "no new flow"
    );
    // Once the flow has been idle for its timeout, the socket closes.
    eventually("the port closes once its flow has ended", || async {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        UdpClient::new().await.ask(port, "after").await.is_none()
            && old.ask(port, "after").await.is_none()
    })
    .await;
}

/// A stop ends at once the flows that have been answered and quiet for `udp_drain_quiet`:
/// nothing is in flight on them. Only a flow mid-exchange is given the grace, and its late
/// answer still reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_quiet_flows_at_once_and_waits_only_for_flows_mid_exchange() {
    let origin = UdpOrigin::start("a").await;
    // A backend that answers when the test says so.
    let slow = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let quiet = "{ udp_drain_quiet: 200ms }";
    let gantry = Scenario::new()
        .port("dns", udp("udp", &[origin.addr]).set("timeouts", quiet))
        .port(
            "slow",
            udp("udp", &[slow.local_addr().expect("addr")]).set("timeouts", quiet),
        )
        .start()
        .await;
    let (dns, slow_port) = (addr(&gantry, "dns", "udp"), addr(&gantry, "slow", "udp"));
    let mut answered = Vec::new();
    for i in 0..10 {
        let client = UdpClient::new().await;
        assert!(client.ask(dns, &format!("q{i}")).await.is_some());
        answered.push(client);
    }
    let waiting = UdpClient::new().await;
    waiting
        .socket
        .send_to(b"question", slow_port)
        .await
        .expect("send");
    let mut buffer = [0u8; 64];
    let (_, relay) = slow
        .recv_from(&mut buffer)
        .await
        .expect("the question arrives");

    // The grace is an hour: only ending the quiet flows at once lets the stop finish soon.
    let stopping = tokio::spawn({
        let gantry = gantry.clone();
        async move { gantry.shutdown(std::time::Duration::from_secs(3600)).await }
    });
    eventually("the stop to begin: no new flow is taken", || async {
        UdpClient::new().await.ask(dns, "new").await.is_none()
    })
    .await;
    assert!(
        !stopping.is_finished(),
        "the flow mid-exchange is waited for"
    );
    slow.send_to(b"b answer", relay).await.expect("answer");
    let (len, from) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        waiting.socket.recv_from(&mut buffer),
    )
    .await
    .expect("the late answer reaches the client")
    .expect("recv");
    assert_eq!((&buffer[..len], from), (&b"b answer"[..], slow_port));
    tokio::time::timeout(std::time::Duration::from_secs(20), stopping)
        .await
        .expect("the stop ends once the flows are quiet, not after the hour of grace")
        .expect("shutdown");
}
