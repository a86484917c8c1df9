//! Tests of `udp` ports: their settings and ranges, what they may carry, binds shared with
//! TCP, and a change of transport rebuilding the port.

use std::path::Path;
use std::time::Duration;

use super::*;

fn parse(yaml: &str) -> Result<Model, ConfigError> {
    parse_str(yaml, Path::new("/"))
}

fn problems(yaml: &str) -> String {
    match parse(yaml) {
        Err(ConfigError::Invalid(problems)) => problems.to_string(),
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn udp_ports_take_their_own_defaults_and_ranges() {
    let model = parse("services:\n  - name: dns\n    address: 127.0.0.1\n    ports: [{ port: 53, protocol: udp, backends: [\"10.0.0.1:53\"] }]\n")
        .expect("valid");
    let port = model.ports().next().expect("a port");
    assert_eq!(port.protocol, Protocol::Udp);
    let s = &port.settings;
    assert_eq!(
        (s.timeouts.udp_idle, s.timeouts.udp_stream_idle),
        (Duration::from_secs(30), Duration::from_secs(120))
    );
    assert_eq!(
        (s.limits.max_flows, s.limits.max_datagram_bytes),
        (65_536, 65_507)
    );
    let out_of_range = problems(
        "services:\n  - name: dns\n    address: 127.0.0.1\n    ports: [{ port: 53, protocol: udp, backends: [\"10.0.0.1:53\"], limits: { max_flows: 0, max_datagram_bytes: 100 }, timeouts: { udp_idle: 0s } }]\n",
    );
    for expected in [
        "services[0].ports[0].limits.max_flows: 0 is out of range 1..=16777216",
        "services[0].ports[0].limits.max_datagram_bytes: 100 is out of range 512..=65507",
        "services[0].ports[0].timeouts.udp_idle",
    ] {
        assert!(
            out_of_range.contains(expected),
            "missing `{expected}` in:\n{out_of_range}"
        );
    }
}

#[test]
fn a_udp_port_sends_only_proxy_v2() {
    let refused = problems("services:\n  - name: dns\n    address: 127.0.0.1\n    ports: [{ port: 53, protocol: udp, proxy_protocol: v1, backends: [\"10.0.0.1:53\"] }]\n");
    assert!(
        refused.contains("services[0].ports[0].proxy_protocol: UDP ports send v2"),
        "{refused}"
    );
    parse("services:\n  - name: dns\n    address: 127.0.0.1\n    ports: [{ port: 53, protocol: udp, proxy_protocol: v2, backends: [\"10.0.0.1:53\"] }]\n")
        .expect("v2 is fine");
}

#[test]
fn tcp_and_udp_share_a_port_number_but_two_udp_ports_do_not() {
    let both = "services:\n  - name: dns\n    address: 127.0.0.1\n    ports:\n      - { name: tcp, port: 53, backends: [\"10.0.0.1:53\"] }\n      - { name: udp, port: 53, protocol: udp, backends: [\"10.0.0.1:53\"] }\n";
    assert_eq!(parse(both).expect("valid").ports().count(), 2);
    let twice = "services:\n  - name: a\n    address: 127.0.0.1\n    ports: [{ port: 53, protocol: udp, backends: [\"10.0.0.1:53\"] }]\n  - name: b\n    address: 0.0.0.0\n    ports: [{ port: 53, protocol: udp, backends: [\"10.0.0.1:53\"] }]\n";
    assert!(problems(twice)
        .contains("0.0.0.0:53 (services[1] port `53`) is already used by services[0] port `53`"));
}

#[test]
fn a_change_between_tcp_and_udp_rebuilds_the_port() {
    let config = |protocol: &str| {
        parse(&format!("services:\n  - name: dns\n    address: 127.0.0.1\n    ports: [{{ name: p, port: 53, protocol: {protocol}, backends: [\"10.0.0.1:53\"] }}]\n"))
            .expect("valid")
    };
    let changes = diff(&config("tcp"), &config("udp"));
    assert!(
        matches!(changes.as_slice(), [Change::ListenerRebound { .. }]),
        "{changes:?}"
    );
}
