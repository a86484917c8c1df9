//! Tests of the `routing:` section.

use std::path::Path;
use std::time::Duration;

use super::*;

fn problems_of(yaml: &str, base: &Path) -> String {
    match parse_str(yaml, base) {
        Err(ConfigError::Invalid(problems)) => problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        other => panic!("expected problems, got {other:?}"),
    }
}

fn assert_all(problems: &str, expected: &[&str]) {
    for wanted in expected {
        assert!(
            problems.contains(wanted),
            "missing `{wanted}` in:\n{problems}"
        );
    }
}

const POOLS: &str = "kubernetes:\n  address_pools:\n    - { name: public, addresses: [203.0.113.0/28] }\n    - { name: inner, addresses: [\"2001:db8:100::/120\"] }\n";

#[test]
fn the_section_takes_its_defaults_and_announces_every_kubernetes_pool() {
    let yaml = format!("{POOLS}routing:\n  daemon: bird\n  asn: 65010\n  peers: [{{ address: 10.0.0.1, asn: 65000 }}]\n");
    let model = parse_str(&yaml, Path::new("/etc/gantry")).expect("valid");
    let routing = model.routing.expect("section");
    assert_eq!(
        routing.daemon,
        Daemon::Bird(Bgp {
            control_socket: DEFAULT_BIRD_SOCKET.into(),
            directory: DEFAULT_BIRD_DIRECTORY.into(),
            asn: 65010,
            router_id: None,
            peers: vec![Peer {
                address: "10.0.0.1".parse().expect("ip"),
                asn: 65000,
                password: None,
                bfd: false,
            }],
            hold_time: Duration::from_secs(9),
            bfd: Bfd {
                interval: Duration::from_millis(100),
                multiplier: 3
            },
        })
    );
    assert_eq!(routing.directory(), Path::new(DEFAULT_BIRD_DIRECTORY));
    assert_eq!(routing.announce, Announce::Always);
    assert_eq!(routing.withdraw_delay, Duration::from_secs(2));
    let names: Vec<&str> = routing.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["public", "inner"]);
    let inside = routing.pool_of("203.0.113.5".parse().expect("ip"));
    assert_eq!(inside.map(|p| p.name.as_str()), Some("public"));
    assert!(routing
        .pool_of("198.51.100.1".parse().expect("ip"))
        .is_none());
    assert!(parse_str("", Path::new("/"))
        .expect("valid")
        .routing
        .is_none());
}

#[test]
fn pools_carry_their_attributes_and_peers_their_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("bgp.secret"), "s3cret-Key\n").expect("secret");
    let yaml = format!(
        "{POOLS}routing:\n  daemon: bird\n  control_socket: bird.ctl\n  directory: /run/g\n  asn: 4200000000\n  router_id: 10.0.0.11\n  announce: healthy\n  withdraw_delay: 0s\n  hold_time: 30s\n  bfd: {{ interval: 50ms, multiplier: 5 }}\n  peers:\n    - {{ address: \"fd00::1\", asn: 65000, password_file: bgp.secret, bfd: true }}\n  pools:\n    - {{ name: public, communities: [\"65000:100\", \"65000:1:2\"], local_preference: 200 }}\n    - {{ addresses: [198.51.100.0/30, 198.51.100.9] }}\n"
    );
    let model = parse_str(&yaml, dir.path()).expect("valid");
    let routing = model.routing.clone().expect("section");
    let Daemon::Bird(bgp) = &routing.daemon else {
        panic!("BIRD: {:?}", routing.daemon);
    };
    assert_eq!(bgp.control_socket, dir.path().join("bird.ctl"));
    assert_eq!(bgp.directory, Path::new("/run/g"));
    assert_eq!(bgp.asn, 4_200_000_000);
    assert_eq!(bgp.router_id, Some("10.0.0.11".parse().expect("id")));
    assert_eq!(routing.announce, Announce::Healthy);
    assert_eq!(routing.withdraw_delay, Duration::ZERO);
    assert_eq!(bgp.hold_time, Duration::from_secs(30));
    assert_eq!(bgp.bfd.multiplier, 5);
    let peer = &bgp.peers[0];
    assert!(peer.bfd);
    let password = peer.password.as_ref().expect("password");
    assert_eq!(password.secret(), "s3cret-Key");
    assert!(model
        .referenced_files()
        .contains(&dir.path().join("bgp.secret")));
    // `/config` shows where the password comes from, never the password.
    let shown = serde_json::to_string(&model).expect("json");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("bgp.secret"));
    let public = &routing.pools[0];
    assert_eq!(
        public.communities,
        vec![
            Community::Standard(65000, 100),
            Community::Large(65000, 1, 2)
        ]
    );
    assert_eq!(public.local_preference, Some(200));
    let listed = routing
        .pool_of("198.51.100.9".parse().expect("ip"))
        .expect("listed");
    assert_eq!(listed.name, "pools[1]");
    assert!(routing
        .pool_of("198.51.100.4".parse().expect("ip"))
        .is_none());
}

#[test]
fn every_routing_value_is_checked_with_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("quoted"), "a\"b").expect("secret");
    let problems = problems_of(
        "routing:\n  daemon: bird\n  asn: 0\n  router_id: 0.0.0.0\n  announce: sometimes\n  withdraw_delay: 10m\n  hold_time: 2500ms\n  bfd: { interval: 1ms, multiplier: 0 }\n  peers:\n    - { address: 10.0.0.1, asn: 4294967295 }\n    - { address: 10.0.0.1, asn: 65000, password_file: quoted }\n    - { address: 224.0.0.5, asn: 65000, password_file: missing }\n    - { asn: 65000 }\n  pools:\n    - { name: nowhere }\n    - { addresses: [not-an-address], communities: [\"65536:1\", x] , local_preference: 4294967296 }\n    - { name: a, addresses: [192.0.2.1] }\n    - {}\n",
        dir.path(),
    );
    assert_all(
        &problems,
        &[
            "routing.asn: 0 is not an AS number",
            "routing.router_id: `0.0.0.0` is not a router ID",
            "routing.announce: `sometimes`: expected `always` or `healthy`",
            "routing.withdraw_delay: 10m is above the maximum of 5m",
            "routing.hold_time: must be a whole number of seconds",
            "routing.hold_time: must be at least 3s",
            "routing.bfd.interval: must be at least 10ms",
            "routing.bfd.multiplier: 0: expected 1 to 255",
            "routing.peers[0].asn: 4294967295 is not an AS number",
            "routing.peers[1].address: 10.0.0.1 is listed twice",
            "routing.peers[1].password_file: ",
            "a password is printable ASCII without spaces",
            "routing.peers[2].address: `224.0.0.5` is not a peer's address",
            "routing.peers[2].password_file: cannot read",
            "routing.peers[3].address: required",
            "routing.pools[0].name: no pool `nowhere` in `kubernetes.address_pools`",
            "routing.pools[1].addresses[0]: `not-an-address` is not an address",
            "routing.pools[1].communities[0]: `65536:1` is not a community",
            "routing.pools[1].communities[1]: `x` is not a community",
            "routing.pools[1].local_preference: 4294967296: expected 0 to 4294967295",
            "routing.pools[2]: `name` and `addresses` both given",
            "routing.pools[3]: `name` (a Kubernetes pool) or `addresses` required",
        ],
    );
    let problems = problems_of(
        "routing: { daemon: bird, directory: \"/run/a\\\"b\", asn: 65010, peers: [{ address: 10.0.0.1, asn: 1 }], pools: [{ addresses: [192.0.2.1] }] }\n",
        dir.path(),
    );
    assert_all(
        &problems,
        &["routing.directory: the daemon's configuration names this folder in quotes"],
    );
    let problems = problems_of("routing: { daemon: frr, asn: 65010 }\n", dir.path());
    assert_all(
        &problems,
        &["routing.daemon: `frr` is not supported: `bird` (BGP through BIRD 2) or `keepalived` (VRRP)"],
    );
    let problems = problems_of("routing: { daemon: bird }\n", dir.path());
    assert_all(
        &problems,
        &[
            "routing.asn: required",
            "routing.peers: at least one peer",
            "routing.pools: nothing to announce",
        ],
    );
}

#[test]
fn a_routing_change_is_a_change_of_its_own() {
    let base = format!("{POOLS}routing:\n  daemon: bird\n  asn: 65010\n  peers: [{{ address: 10.0.0.1, asn: 65000 }}]\n");
    let old = parse_str(&base, Path::new("/")).expect("valid");
    let new = parse_str(&base.replace("65000 }", "65001 }"), Path::new("/")).expect("valid");
    assert_eq!(diff(&old, &new), vec![Change::RoutingChanged]);
    assert_eq!(diff(&old, &old), Vec::new());
}

#[test]
fn keepalived_takes_its_folder_and_pid_file_and_refuses_what_is_bgp() {
    let yaml = "routing:\n  daemon: keepalived\n  pid_file: run/keepalived.pid\n  withdraw_delay: 1s\n  pools: [{ addresses: [203.0.113.0/24] }]\n";
    let routing = parse_str(yaml, Path::new("/etc/gantry"))
        .expect("valid")
        .routing
        .expect("section");
    assert_eq!(
        routing.daemon,
        Daemon::Keepalived(Vrrp {
            directory: DEFAULT_KEEPALIVED_DIRECTORY.into(),
            pid_file: Some("/etc/gantry/run/keepalived.pid".into()),
        })
    );
    assert_eq!(routing.directory(), Path::new(DEFAULT_KEEPALIVED_DIRECTORY));
    let problems = problems_of(
        "routing:\n  daemon: keepalived\n  control_socket: /run/bird/bird.ctl\n  asn: 65010\n  router_id: 10.0.0.1\n  hold_time: 9s\n  bfd: { interval: 100ms }\n  peers: [{ address: 10.0.0.1, asn: 65000 }]\n  pools: [{ addresses: [203.0.113.0/24], communities: [\"65000:1\"] }]\n",
        Path::new("/"),
    );
    let bgp_only = "BGP only (`daemon: bird`): keepalived announces the addresses by VRRP";
    for field in [
        "control_socket",
        "asn",
        "router_id",
        "hold_time",
        "bfd",
        "peers",
    ] {
        assert!(
            problems.contains(&format!("routing.{field}: {bgp_only}")),
            "{field}:\n{problems}"
        );
    }
    assert!(
        problems
            .contains("routing.pools[0]: `communities` and `local_preference` are BGP attributes"),
        "{problems}"
    );
    let problems = problems_of(
        "routing: { daemon: bird, pid_file: /run/k.pid, asn: 1, peers: [{ address: 10.0.0.1, asn: 2 }], pools: [{ addresses: [192.0.2.1] }] }\n",
        Path::new("/"),
    );
    assert!(
        problems.contains("routing.pid_file: keepalived only"),
        "{problems}"
    );
}
