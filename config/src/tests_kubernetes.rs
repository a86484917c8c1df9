//! Tests of the `kubernetes:` section and of combining another source's services with the
//! file's.

use std::path::Path;
use std::time::Duration;

use super::*;

fn problems_of(yaml: &str) -> Vec<String> {
    match parse_str(yaml, Path::new("/etc/gantry")) {
        Err(ConfigError::Invalid(problems)) => problems.iter().map(|p| p.to_string()).collect(),
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn the_section_takes_its_defaults_and_resolves_the_kubeconfig() {
    let model = parse_str(
        "kubernetes:\n  kubeconfig: kube/config\n  instance: lb-1\n  address_pools:\n    - { name: main, addresses: [192.0.2.0/30, 198.51.100.7, \"2001:db8::10-2001:db8::1f\"] }\n",
        Path::new("/etc/gantry"),
    )
    .expect("valid");
    let section = model.kubernetes.expect("section");
    assert_eq!(
        section.credentials,
        KubeCredentials::Kubeconfig {
            path: "/etc/gantry/kube/config".into(),
            context: None
        }
    );
    assert_eq!(section.load_balancer_class, DEFAULT_LOAD_BALANCER_CLASS);
    assert!(!section.default_provider);
    assert_eq!(section.backends, KubeBackends::Pods);
    assert_eq!(section.node_port_address, None);
    assert_eq!(section.batch_delay, DEFAULT_BATCH_DELAY);
    let ranges = &section.address_pools[0].ranges;
    // A /30 leaves out its network and broadcast addresses.
    assert_eq!(
        ranges[0],
        AddressRange {
            first: "192.0.2.1".parse().expect("ip"),
            last: "192.0.2.2".parse().expect("ip")
        }
    );
    assert_eq!(ranges[1].first, ranges[1].last);
    assert!(ranges[2].contains("2001:db8::1a".parse().expect("ip")));
    let in_cluster = parse_str("kubernetes: {}\n", Path::new("/")).expect("valid");
    assert_eq!(
        in_cluster.kubernetes.expect("section").credentials,
        KubeCredentials::InCluster
    );
    assert!(parse_str("", Path::new("/"))
        .expect("valid")
        .kubernetes
        .is_none());
}

/// The first and last address a pool of one CIDR hands out.
fn pool_bounds(entry: &str) -> (String, String) {
    let yaml = format!("kubernetes:\n  address_pools:\n    - {entry}\n");
    let model = parse_str(&yaml, Path::new("/")).expect("valid");
    let range = &model.kubernetes.expect("section").address_pools[0].ranges[0];
    (range.first.to_string(), range.last.to_string())
}

#[test]
fn a_cidr_leaves_out_its_reserved_addresses_unless_its_pool_says_not_to() {
    let bounds = |first: &str, last: &str| (first.to_owned(), last.to_owned());
    for (entry, expected) in [
        // IPv6: the subnet-router anycast address (all-zeros interface identifier) is left out.
        (
            "{ name: v6, addresses: [\"fd00:10::/120\"] }",
            bounds("fd00:10::1", "fd00:10::ff"),
        ),
        // IPv4: the network and broadcast addresses.
        (
            "{ name: v4, addresses: [192.0.2.0/28] }",
            bounds("192.0.2.1", "192.0.2.14"),
        ),
        // Point-to-point networks have no reserved address (RFC 3021, RFC 6164).
        (
            "{ name: p2p, addresses: [\"fd00:10::/127\"] }",
            bounds("fd00:10::", "fd00:10::1"),
        ),
        (
            "{ name: all, addresses: [\"fd00:10::/120\"], skip_reserved: false }",
            bounds("fd00:10::", "fd00:10::ff"),
        ),
        (
            "{ name: all, addresses: [192.0.2.0/28], skip_reserved: false }",
            bounds("192.0.2.0", "192.0.2.15"),
        ),
        // A range is taken as written.
        (
            "{ name: r, addresses: [\"fd00:10::-fd00:10::3\"] }",
            bounds("fd00:10::", "fd00:10::3"),
        ),
    ] {
        assert_eq!(pool_bounds(entry), expected, "{entry}");
    }
}

#[test]
fn every_problem_of_the_section_is_reported_with_its_path() {
    let problems = problems_of(
        r#"
services:
  - name: static
    address: 192.0.2.5
    ports: [{ port: 80, backends: ["10.0.0.1:80"] }]
kubernetes:
  context: nowhere
  load_balancer_class: no-slash
  backends: everywhere
  node_port_address: not-an-ip
  address_pools:
    - { name: main, addresses: [192.0.2.0/28, "192.0.2.9-192.0.2.3", "2001:db8::/129", 10.0.0.1/24] }
    - { name: main, addresses: [192.0.2.8/29] }
    - { name: Bad_Name, addresses: [] }
"#,
    );
    let joined = problems.join("\n");
    for expected in [
        "kubernetes.context: needs `kubeconfig`",
        "kubernetes.load_balancer_class: `no-slash` is not a class",
        "kubernetes.backends: `everywhere`",
        "kubernetes.node_port_address: `not-an-ip` is not an IP address",
        "kubernetes.address_pools[0].addresses[1]: `192.0.2.9-192.0.2.3` is not",
        "kubernetes.address_pools[0].addresses[2]: `2001:db8::/129` is not",
        "kubernetes.address_pools[0].addresses[3]: `10.0.0.1/24` is not",
        "kubernetes.address_pools[1].name: duplicate pool name `main`",
        "kubernetes.address_pools[1].addresses[0]: `192.0.2.8/29` overlaps addresses of pool `main`",
        "kubernetes.address_pools[2].name: `Bad_Name` is not a name",
        "kubernetes.address_pools[2].addresses: 0 entries",
        "services[0].address: 192.0.2.5 is in the Kubernetes address pool `main`",
    ] {
        assert!(joined.contains(expected), "missing `{expected}` in:\n{joined}");
    }
}

#[test]
fn leader_election_is_on_with_client_gos_timings_unless_turned_off() {
    let section = |yaml: &str| {
        parse_str(yaml, Path::new("/"))
            .expect("valid")
            .kubernetes
            .expect("section")
    };
    assert_eq!(
        section("kubernetes: {}\n").leader_election,
        Some(LeaderElection {
            lease_name: "gantry".to_owned(),
            lease_namespace: "gantry-system".to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        })
    );
    let quick = section(
        "kubernetes:\n  leader_election: { lease_name: lb.example, lease_namespace: lb, lease_duration: 1s, renew_deadline: 800ms, retry_period: 200ms }\n",
    )
    .leader_election
    .expect("on");
    assert_eq!(quick.lease_namespace, "lb");
    assert_eq!(quick.renew_deadline, Duration::from_millis(800));
    assert_eq!(
        section("kubernetes: { leader_election: { enabled: false } }\n").leader_election,
        None
    );
    // Turned off, its values are still checked.
    let problems =
        problems_of("kubernetes: { leader_election: { enabled: false, retry_period: 0s } }\n")
            .join("\n");
    assert!(
        problems.contains("kubernetes.leader_election.retry_period: must be greater than zero"),
        "{problems}"
    );
}

#[test]
fn leader_election_durations_keep_their_ranges_and_order() {
    let problems = problems_of(
        "kubernetes:\n  leader_election: { lease_name: Bad, lease_namespace: a.b, lease_duration: 1500ms, renew_deadline: 2h, retry_period: 10ms }\n",
    )
    .join("\n");
    for expected in [
        "kubernetes.leader_election.lease_name: `Bad` is not a name",
        "kubernetes.leader_election.lease_namespace: `a.b` is not a namespace",
        "kubernetes.leader_election.lease_duration: must be a whole number of seconds",
        "kubernetes.leader_election.renew_deadline: 2h is above the maximum of 1h",
        "kubernetes.leader_election.retry_period: must be at least 100ms",
    ] {
        assert!(
            problems.contains(expected),
            "missing `{expected}` in:\n{problems}"
        );
    }
    let problems = problems_of(
        "kubernetes:\n  leader_election: { lease_duration: 10s, renew_deadline: 10s, retry_period: 9s }\n",
    )
    .join("\n");
    for expected in [
        "kubernetes.leader_election.renew_deadline: must be below `lease_duration`",
        "kubernetes.leader_election.renew_deadline: must be above 1.2 × `retry_period`",
    ] {
        assert!(
            problems.contains(expected),
            "missing `{expected}` in:\n{problems}"
        );
    }
}

#[test]
fn the_batch_delay_keeps_its_range() {
    let section = |delay: &str| format!("kubernetes:\n  kubeconfig: k\n  batch_delay: {delay}\n");
    let model = parse_str(&section("0s"), Path::new("/")).expect("0s: every change at once");
    assert_eq!(
        model.kubernetes.expect("section").batch_delay,
        Duration::ZERO
    );
    let model = parse_str(&section("1s"), Path::new("/")).expect("the maximum");
    assert_eq!(
        model.kubernetes.expect("section").batch_delay,
        MAX_BATCH_DELAY
    );
    assert_eq!(
        problems_of(&section("2s")),
        ["kubernetes.batch_delay: 2s is above the maximum of 1s"]
    );
}

#[test]
fn another_sources_services_are_admitted_only_when_they_clash_with_nothing() {
    let yaml = "services:\n  - name: static\n    address: 127.0.0.1\n    ports: [{ name: web, port: 8080, backends: [\"127.0.0.1:1\"] }]\n";
    let builder = builder_from_str(yaml, Path::new("/")).expect("valid");
    let service = |name: &str, port: u16| {
        let spec: file::ServiceFile = serde_yaml::from_str(&format!(
            "{{ name: \"{name}\", address: 127.0.0.1, ports: [{{ name: web, port: {port}, backends: [\"127.0.0.1:2\"] }}] }}"
        ))
        .expect("spec");
        std::sync::Arc::new(
            builder
                .check_service(&FieldPath::object("Service", name), spec)
                .expect("valid alone"),
        )
    };
    let mut combined = builder.clone();
    let outcomes = combined.admit(vec![
        (
            FieldPath::object("Service", "ns/a"),
            vec![vec![service("ns/a", 8080)], vec![service("ns/a", 8081)]],
        ),
        (
            FieldPath::object("Service", "ns/b"),
            vec![vec![service("ns/b", 8081)]],
        ),
        (
            FieldPath::object("Service", "ns/c"),
            vec![vec![service("static", 9000)]],
        ),
    ]);
    // a clashes with the file's port and falls back to its second configuration, the clash
    // of its first still told; b then clashes with a; c takes the file's name.
    let Admission::Admitted {
        alternative: 1,
        passed_over,
    } = &outcomes[0]
    else {
        panic!("a is served by its second configuration: {:?}", outcomes[0]);
    };
    assert!(
        passed_over.to_string().contains(
            "127.0.0.1:8080 (Service ns/a port `web`) is already used by services[0] port `web`"
        ),
        "{passed_over}"
    );
    let refused = |outcome: &Admission| match outcome {
        Admission::Refused(clashes) => clashes.to_string(),
        other => panic!("refused, not {other:?}"),
    };
    let b = refused(&outcomes[1]);
    assert!(
        b.contains(
            "127.0.0.1:8081 (Service ns/b port `web`) is already used by Service ns/a port `web`"
        ),
        "{b}"
    );
    let c = refused(&outcomes[2]);
    assert!(
        c.contains("Service ns/c name: duplicate service name `static` (also services[0])"),
        "{c}"
    );
    let model = combined.finish().expect("the admitted ones make a model");
    assert_eq!(
        model.services.keys().collect::<Vec<_>>(),
        vec!["ns/a", "static"]
    );
}
