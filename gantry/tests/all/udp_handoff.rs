//! UDP ports whose socket changes hands within one process: a port re-added at the address of
//! one still draining, and a port rebuilt at its own address in one reload. One socket serves
//! each address and port, so the kernel has only one place to deliver to: new flows go to the
//! port that serves now, a draining port's flows keep their backend until they end, and none
//! of this loses a datagram. (Across processes: `upgrade::sigusr2_hands_over_udp_flows_…`.)

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::scenario::{Port, Scenario};
use crate::support::udp::{UdpClient, UdpLoad, UdpOrigin};
use crate::support::{addr, has_series};

fn udp(name: &str, backends: &[SocketAddr]) -> Port {
    Port::new(name, "udp").backends(backends)
}

const GRACE: &str = "runtime: { shutdown_grace: 60s }";

async fn reload(gantry: &gantry::Gantry, config: &std::path::Path, scenario: &Scenario) {
    scenario.write(config);
    gantry::reload::reload_from_file(gantry, config)
        .await
        .expect("reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_re_added_while_its_old_socket_drains_answers_every_new_flow_and_old_flows_keep_theirs(
) {
    let (before, after) = (
        UdpOrigin::start("before").await,
        UdpOrigin::start("after").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    // The old port's flows end once idle for 4 s, so the test can watch them end.
    let old_port = |port: u16| {
        udp("udp", &[before.addr])
            .set("port", &port.to_string())
            .set("timeouts", "{ udp_stream_idle: 4s }")
    };
    Scenario::new()
        .section(GRACE)
        .port("old", old_port(0))
        .write(&config);
    let gantry = gantry::Gantry::start_file(lb_config::load_builder(&config).expect("config"))
        .await
        .expect("gantry");
    let port = addr(&gantry, "old", "udp");
    let mut old_flows = Vec::new();
    for _ in 0..20 {
        let client = UdpClient::new().await;
        assert_eq!(client.ask(port, "hello").await.expect("answer").0, "before");
        old_flows.push(client);
    }

    // The service goes: its port drains, serving its flows (and taking no new one).
    reload(&gantry, &config, &Scenario::new().section(GRACE)).await;
    for client in &old_flows {
        assert_eq!(
            client.ask(port, "draining").await.expect("answer").0,
            "before"
        );
    }

    // Another service takes the same address and port while the old one drains.
    let new_port = udp("udp", &[after.addr]).set("port", &port.port().to_string());
    reload(
        &gantry,
        &config,
        &Scenario::new().section(GRACE).port("new", new_port),
    )
    .await;
    assert_eq!(addr(&gantry, "new", "udp"), port);
    let mut first_answers = tokio::task::JoinSet::new();
    for _ in 0..200 {
        first_answers.spawn(async move {
            let client = UdpClient::new().await;
            client.ask(port, "new").await.map(|(origin, _)| origin)
        });
    }
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    while let Some(answer) = first_answers.join_next().await {
        let from = answer
            .expect("client")
            .unwrap_or_else(|| "no answer".into());
        *answers.entry(from).or_default() += 1;
    }
    assert_eq!(
        answers,
        [("after".to_owned(), 200)].into(),
        "new flows' first datagrams, by who answered"
    );
    // The draining port's flows still have their backend.
    for client in &old_flows {
        assert_eq!(client.ask(port, "still").await.expect("answer").0, "before");
    }

    // Once they have been idle past their timeout they end, the old port's drain is over (its
    // series go), and its clients' next datagrams start flows on the new port.
    let active = "gantry_udp_flows_active{port=\"udp\",service=\"old\"}";
    crate::support::eventually("the old port's flows end and its drain is over", || async {
        !has_series(&gantry.metrics().render(), active)
    })
    .await;
    for client in &old_flows {
        assert_eq!(client.ask(port, "later").await.expect("answer").0, "after");
    }
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_rebuilt_at_its_own_address_under_load_loses_no_datagram_and_keeps_each_flow_on_its_backend(
) {
    let (a, b) = (UdpOrigin::start("a").await, UdpOrigin::start("b").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    Scenario::new()
        .section(GRACE)
        .port("dns", udp("udp", &[a.addr, b.addr]))
        .write(&config);
    let gantry = gantry::Gantry::start_file(lb_config::load_builder(&config).expect("config"))
        .await
        .expect("gantry");
    let port = addr(&gantry, "dns", "udp");
    let load = UdpLoad::start(port, 16, Duration::from_millis(10)).await;
    // The rate loses nothing without a rebuild.
    load.runs_on(200, 50).await;
    assert_eq!(
        load.counts().losses(),
        (0, 0, 0),
        "lost, moved, new lost before the rebuild"
    );

    // The port is renamed: a port of another name (a new socket, before) at the same address.
    let renamed = udp("dns", &[a.addr, b.addr]).set("port", &port.port().to_string());
    reload(
        &gantry,
        &config,
        &Scenario::new().section(GRACE).port("dns", renamed),
    )
    .await;
    assert_eq!(addr(&gantry, "dns", "dns"), port);
    load.runs_on(400, 100).await;
    let counts = load.stop().await;
    assert_eq!(
        counts.losses(),
        (0, 0, 0),
        "old flows' lost and moved answers, new flows' lost first datagrams, across the rebuild"
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}
