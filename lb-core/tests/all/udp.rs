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
    let gantry = lb_core::Gantry::start_file(lb_config::load_builder(&config).expect("config"))
        .await
        .expect("gantry");
    let port = addr(&gantry, "dns", "udp");
    let client = UdpClient::new().await;
    assert_eq!(client.ask(port, "1").await.expect("answer").0, "a");

    // a is replaced by b: the same client address and port reaches b.
    scenario(&[b.addr]).write(&config);
    lb_core::reload::reload_from_file(&gantry, &config)
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
