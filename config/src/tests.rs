//! Tests of parsing, validation and diffing, on inline YAML and generated certificates.

use std::path::Path;

use super::*;

fn parse(yaml: &str) -> Result<Model, ConfigError> {
    parse_str(yaml, Path::new("/nonexistent"))
}

fn problems_of(yaml: &str, dir: &Path) -> Vec<String> {
    match parse_str(yaml, dir) {
        Err(ConfigError::Invalid(problems)) => problems.iter().map(|p| p.to_string()).collect(),
        other => panic!("expected problems, got {other:?}"),
    }
}

/// Writes a self-signed certificate for `names` and its key into `dir`.
fn write_cert(dir: &Path, stem: &str, names: &[&str]) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names).expect("rcgen");
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, generated.cert.pem()).expect("write cert");
    std::fs::write(&key, generated.key_pair.serialize_pem()).expect("write key");
    (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

#[test]
fn an_empty_file_is_a_valid_model_with_a_loopback_admin() {
    let model = parse("").expect("empty is valid");
    assert!(model.services.is_empty());
    assert_eq!(model.admin.listen, DEFAULT_ADMIN_LISTEN);
    assert!(model.admin.listen.ip().is_loopback());
}

#[test]
fn defaults_apply_and_ports_override_them() {
    let model = parse(
        r#"
defaults:
  timeouts: { connect: 2s }
  retries: 1
services:
  - name: web
    address: 127.0.0.1
    ports:
      - port: 8080
        protocol: http
        backends: ["127.0.0.1:9001", { address: "127.0.0.1:9002", weight: 3 }]
        timeouts: { header_read: 3s }
"#,
    )
    .expect("valid");
    let port = model.ports().next().expect("one port");
    assert_eq!(port.key.to_string(), "web/8080");
    assert_eq!(port.bind, "127.0.0.1:8080".parse().expect("addr"));
    assert_eq!(port.protocol, Protocol::Http);
    assert_eq!(port.settings.timeouts.connect.as_secs(), 2);
    assert_eq!(port.settings.timeouts.header_read.as_secs(), 3);
    assert_eq!(port.settings.timeouts.client_idle.as_secs(), 60);
    assert_eq!(port.settings.retries, 1);
    assert_eq!(port.settings.limits.max_header_bytes, 65536);
    assert_eq!(port.settings.limits.max_headers, 100);
    assert_eq!(port.backends[1].weight, 3);
}

#[test]
fn every_problem_is_reported_with_its_field_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = write_cert(dir.path(), "a", &["a.example"]);
    let yaml = format!(
        r#"
runtime: {{ shutdown_grace: soon }}
services:
  - name: one
    ports:
      - port: 70000
  - name: two
    address: not-an-ip
    ports:
      - port: 81
        protocol: htp
  - name: three
    ports:
      - port: 443
        protocol: https
        tls:
          certificates:
            - {{ cert: "{cert}", key: "{key}" }}
            - {{ cert: "{cert}", key: missing.key }}
        backends: ["10.0.0.1"]
        timeouts: {{ connect: 0s }}
        limits: {{ max_headers: 1000 }}
        colour: blue
"#
    );
    let problems = problems_of(&yaml, dir.path());
    let missing_key = dir.path().join("missing.key");
    let expected = [
        "runtime.shutdown_grace: invalid duration `soon`".to_string(),
        "services[0].ports[0].port: invalid value: integer `70000`".to_string(),
        "services[1].ports[0].protocol: unknown variant `htp`".to_string(),
        "services[1].address: `not-an-ip` is not an IP address".to_string(),
        "services[2].ports[0]: unknown field `colour`".to_string(),
        format!(
            "services[2].ports[0].tls.certificates[1].key: file not found: {}",
            missing_key.display()
        ),
        "services[2].ports[0].backends[0]: `10.0.0.1` is not ip:port".to_string(),
        "services[2].ports[0].timeouts.connect: must be greater than zero".to_string(),
        "services[2].ports[0].limits.max_headers: 1000 is out of range 1..=256".to_string(),
    ];
    for want in &expected {
        assert!(
            problems.iter().any(|p| p.starts_with(want.as_str())),
            "missing {want:?} in\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn a_yaml_syntax_error_is_located() {
    let err = parse("services:\n  - name: [unclosed\n").expect_err("syntax");
    let text = err.to_string();
    assert!(matches!(err, ConfigError::Syntax(_)));
    assert!(text.contains("line"), "{text}");
}

#[test]
fn tls_is_required_exactly_where_tls_is_terminated() {
    let problems = problems_of(
        r#"
services:
  - name: s
    ports:
      - { name: a, port: 1, protocol: https }
      - { name: b, port: 2, protocol: tcp, tls: { certificates: [] } }
      - { name: c, port: 3, protocol: http, proxy_protocol: v2 }
      - { name: d, port: 4, protocol: tcp, backend_protocol: h2c }
"#,
        Path::new("/"),
    );
    let joined = problems.join("\n");
    assert!(
        joined.contains("services[0].ports[0].tls: required for https ports"),
        "{joined}"
    );
    assert!(
        joined.contains("services[0].ports[1].tls: only for tls and https ports"),
        "{joined}"
    );
    assert!(
        joined.contains("services[0].ports[2].proxy_protocol: only for tcp, tls and udp"),
        "{joined}"
    );
    assert!(
        joined.contains("services[0].ports[3].backend_protocol: only for http"),
        "{joined}"
    );
}

#[test]
fn names_come_from_the_certificate_or_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = write_cert(dir.path(), "multi", &["A.example.com", "*.b.example.com"]);
    let yaml = format!(
        r#"
services:
  - name: s
    ports:
      - port: 443
        protocol: https
        tls:
          certificates:
            - {{ cert: "{cert}", key: "{key}" }}
            - {{ cert: "{cert}", key: "{key}", names: [Other.example] }}
"#
    );
    let model = parse_str(&yaml, dir.path()).expect("valid");
    let tls = model
        .ports()
        .next()
        .and_then(|p| p.tls.clone())
        .expect("tls");
    assert_eq!(
        tls.certificates[0].names,
        ["a.example.com", "*.b.example.com"]
    );
    assert_eq!(tls.certificates[1].names, ["other.example"]);
    assert_eq!(tls.certificates[0].sha256.len(), 64);
}

#[test]
fn a_key_from_another_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, _) = write_cert(dir.path(), "one", &["one.example"]);
    let (_, other_key) = write_cert(dir.path(), "two", &["two.example"]);
    let not_pem = dir.path().join("garbage.crt");
    std::fs::write(&not_pem, "hello").expect("write");
    let yaml = format!(
        r#"
services:
  - name: s
    ports:
      - port: 443
        protocol: tls
        tls:
          certificates:
            - {{ cert: "{cert}", key: "{other_key}" }}
            - {{ cert: "{}", key: "{other_key}" }}
"#,
        not_pem.display()
    );
    let joined = problems_of(&yaml, dir.path()).join("\n");
    assert!(
        joined.contains("certificates[0].key: private key"),
        "{joined}"
    );
    assert!(joined.contains("does not match certificate"), "{joined}");
    assert!(joined.contains("certificates[1].cert:"), "{joined}");
    assert!(joined.contains("no CERTIFICATE block"), "{joined}");
}

#[test]
fn conflicting_binds_and_duplicate_names_are_refused() {
    let problems = problems_of(
        r#"
admin: { listen: "127.0.0.1:9000" }
services:
  - name: a
    address: 0.0.0.0
    ports: [{ port: 80 }, { port: 80 }]
  - name: a
    ports: [{ port: 81 }]
  - name: b
    address: 127.0.0.1
    ports: [{ port: 80 }, { name: x, port: 9000 }]
"#,
        Path::new("/"),
    );
    let joined = problems.join("\n");
    assert!(
        joined.contains("services[0].ports[0].name: required when"),
        "{joined}"
    );
    assert!(
        joined.contains("services[1].name: duplicate service name `a`"),
        "{joined}"
    );
    assert!(joined.contains("127.0.0.1:9000"), "{joined}");
}

#[test]
fn port_zero_never_conflicts() {
    let model = parse(
        "services:\n  - name: a\n    address: 127.0.0.1\n    ports: [{name: x, port: 0}, {name: y, port: 0}]\n",
    )
    .expect("valid");
    assert_eq!(model.ports().count(), 2);
}

const BASE: &str = r#"
services:
  - name: web
    address: 127.0.0.1
    ports:
      - { name: http, port: 8080, protocol: http, backends: ["127.0.0.1:1", "127.0.0.1:2"] }
      - { name: tcp, port: 9000, backends: ["127.0.0.1:3"] }
"#;

#[test]
fn an_unchanged_model_has_no_diff() {
    let a = parse(BASE).expect("valid");
    let b = parse(BASE).expect("valid");
    assert_eq!(diff(&a, &b), Vec::<Change>::new());
}

#[test]
fn the_diff_names_each_kind_of_change() {
    let old = parse(BASE).expect("valid");
    let new = parse(
        r#"
services:
  - name: web
    address: 127.0.0.1
    ports:
      - { name: http, port: 8080, protocol: http, backends: ["127.0.0.1:1"], retries: 0 }
      - { name: tcp, port: 9001, backends: ["127.0.0.1:3"] }
      - { name: extra, port: 9002 }
"#,
    )
    .expect("valid");
    let key = |port: &str| ListenerKey {
        service: "web".into(),
        port: port.into(),
    };
    assert_eq!(
        diff(&old, &new),
        vec![
            Change::ListenerAdded(key("extra")),
            Change::PortChanged {
                key: key("http"),
                what: PortAspects::of(&[PortAspect::Backends, PortAspect::Settings]),
            },
            Change::ListenerRebound {
                key: key("tcp"),
                from: "127.0.0.1:9000".parse().expect("addr"),
                to: "127.0.0.1:9001".parse().expect("addr"),
            },
        ]
    );
    let removed = diff(&new, &old);
    assert!(removed.contains(&Change::ListenerRemoved(key("extra"))));
}

#[test]
fn the_config_dump_never_contains_key_material() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = write_cert(dir.path(), "s", &["s.example"]);
    let key_pem = std::fs::read_to_string(&key).expect("read key");
    let yaml = format!(
        "services:\n  - name: s\n    ports:\n      - port: 443\n        protocol: https\n        tls: {{ certificates: [{{ cert: \"{cert}\", key: \"{key}\" }}] }}\n"
    );
    let model = parse_str(&yaml, dir.path()).expect("valid");
    let json = serde_json::to_string(&model).expect("json");
    let key_body: String = key_pem.lines().nth(1).expect("pem body").to_owned();
    assert!(!json.contains(&key_body));
    assert!(json.contains("\"sha256\""));
    assert!(json.contains("s.example"));
}

#[test]
fn a_port_without_a_balancer_uses_the_builtin_round_robin_keyed_by_client_ip() {
    let model = parse("services:\n  - name: s\n    ports: [{ port: 1 }]\n").expect("valid");
    let port = model.ports().next().expect("port");
    assert_eq!(
        port.balancer.policy,
        PolicySource::Builtin("round-robin".into())
    );
    assert_eq!(port.balancer.hash_key, HashKey::ClientIp);
    assert_eq!(port.origin.to_string(), "services[0].ports[0]");
}

#[test]
fn balancer_policies_params_and_hash_keys_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = dir.path().join("canary.wasm");
    std::fs::write(&wasm, b"\0asm not really").expect("write");
    let yaml = r#"
plugins:
  canary: { file: canary.wasm, sha256: "0000000000000000000000000000000000000000000000000000000000000000" }
  broken: { file: missing.wasm }
plugin_limits: { memory_mib: 9000 }
services:
  - name: s
    ports:
      - { name: a, port: 1, balancer: { policy: "builtin:nope" } }
      - { name: b, port: 2, balancer: { policy: other } }
      - { name: c, port: 3, balancer: { policy: broken } }
      - { name: d, port: 4, balancer: { policy: "builtin:maglev", params: { table_size: [1] }, hash_key: "body:x" } }
"#;
    let problems = problems_of(yaml, dir.path()).join("\n");
    for expected in [
        "plugins.canary.sha256: ",
        "not the pinned 0000",
        "plugins.broken.file: file not found:",
        "plugin_limits.memory_mib: 9000 is out of range",
        "services[0].ports[0].balancer.policy: unknown built-in `nope`; built-ins are builtin:round-robin",
        "services[0].ports[1].balancer.policy: `other` is neither a built-in",
        "services[0].ports[3].balancer.params.table_size: must be a string, a number or a boolean",
        "services[0].ports[3].balancer.hash_key: `body:x` is not",
    ] {
        assert!(problems.contains(expected), "missing {expected:?} in\n{problems}");
    }
    assert!(
        !problems.contains("ports[2].balancer"),
        "a plugin whose file failed is reported once, under plugins:\n{problems}"
    );
}

#[test]
fn a_changed_plugin_file_is_a_changed_balancer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = dir.path().join("p.wasm");
    let yaml = "plugins:\n  mine: { file: p.wasm }\nservices:\n  - name: s\n    ports: [{ port: 1, balancer: { policy: mine, params: { weight: 3, on: true }, hash_key: \"header:X-User\" } }]\n";
    std::fs::write(&wasm, b"one").expect("write");
    let before = parse_str(yaml, dir.path()).expect("valid");
    let port = before.ports().next().expect("port");
    assert_eq!(
        port.balancer.params,
        [
            ("on".to_string(), "true".to_string()),
            ("weight".into(), "3".into())
        ]
    );
    assert_eq!(port.balancer.hash_key, HashKey::Header("x-user".into()));
    assert!(before.referenced_files().contains(&wasm));
    std::fs::write(&wasm, b"two").expect("write");
    let after = parse_str(yaml, dir.path()).expect("valid");
    let key = port.key.clone();
    assert_eq!(
        diff(&before, &after),
        [Change::PortChanged {
            key,
            what: PortAspects::of(&[PortAspect::Balancer]),
        }]
    );
}

#[test]
fn every_duration_has_a_maximum() {
    let problems = problems_of(
        r#"
runtime: { shutdown_grace: 2h, watch_interval: 50ms }
plugin_limits: { call_deadline: 5s, setup_deadline: 2m, quarantine_after: 0 }
defaults:
  timeouts: { header_read: 300000000000y, tcp_idle: 8d, connect: 0s }
  backoff: { initial: 2h }
services:
  - name: s
    ports:
      - { port: 1, timeouts: { upstream_read: 25h, client_idle: 24h } }
"#,
        Path::new("/"),
    )
    .join("\n");
    for expected in [
        "runtime.shutdown_grace: 2h is above the maximum of 1h",
        "runtime.watch_interval: must be at least 100ms",
        "plugin_limits.call_deadline: 5s is above the maximum of 1s",
        "plugin_limits.setup_deadline: 2m is above the maximum of 1m",
        "plugin_limits.quarantine_after: 0 is out of range 1..=1000000",
        "defaults.timeouts.header_read: 300000000000years is above the maximum of 1h",
        "defaults.timeouts.tcp_idle: 8days is above the maximum of 7days",
        "defaults.timeouts.connect: must be greater than zero",
        "defaults.backoff.initial: 2h is above the maximum of 1h",
        "services[0].ports[0].timeouts.upstream_read: 1day 1h is above the maximum of 1day",
    ] {
        assert!(
            problems.contains(expected),
            "missing {expected:?} in\n{problems}"
        );
    }
    assert!(
        !problems.contains("client_idle"),
        "24h is the maximum itself:\n{problems}"
    );
}

/// A service as another source builds it in code: typed backends, certificate material held
/// in memory, problems located at the object.
fn service_from_code(
    name: &str,
    port: u16,
    weight: u32,
    pem: Option<file::PemMaterial>,
) -> file::ServiceFile {
    let tls = pem.map(|pem| {
        Lenient::Parsed(file::TlsFile {
            certificates: vec![Lenient::Parsed(file::CertificateFile {
                pem: Some(pem),
                ..Default::default()
            })],
        })
    });
    file::ServiceFile {
        name: Some(name.into()),
        address: Some("127.0.0.1".into()),
        ports: vec![Lenient::Parsed(file::PortFile {
            name: Some("web".into()),
            port: Some(port),
            protocol: Some(if tls.is_some() {
                file::ProtocolFile::Https
            } else {
                file::ProtocolFile::Http
            }),
            backends: vec![Lenient::Parsed(file::BackendFile::Resolved(Backend {
                address: "198.51.100.7:8080".parse().expect("addr"),
                weight,
            }))],
            tls,
            ..Default::default()
        })],
    }
}

#[test]
fn a_model_is_built_from_code_with_problems_located_at_the_object() {
    let generated =
        rcgen::generate_simple_self_signed(vec!["shop.example".to_string()]).expect("rcgen");
    let key_pem = generated.key_pair.serialize_pem();
    let pem = file::PemMaterial {
        from: "secret default/shop-tls".into(),
        cert: generated.cert.pem().into_bytes(),
        key: key_pem.clone().into_bytes(),
    };
    let base = parse_file("").expect("empty");
    let builder = ModelBuilder::from_file(base, Path::new("/"));
    let origin = FieldPath::object("Service", "default/shop");

    // The weight is out of range: the object's problem says where, starting with the object.
    let problems = builder
        .check_service(
            &origin,
            service_from_code("default/shop", 443, 300, Some(pem.clone())),
        )
        .expect_err("weight too large")
        .to_string();
    assert_eq!(
        problems,
        "Service default/shop ports[0].backends[0].weight: 300 is out of range 0..=256"
    );

    let spec = service_from_code("default/shop", 443, 1, Some(pem));
    let mut builder = builder;
    builder.add_service(origin, spec);
    let model = builder.finish().expect("valid");
    let port = model.ports().next().expect("port");
    let cert = &port.tls.as_ref().expect("tls").certificates[0];
    assert_eq!(cert.names, ["shop.example"]);
    assert_eq!(
        cert.source,
        CertificateSource::Inline {
            from: "secret default/shop-tls".into()
        }
    );
    assert!(model.referenced_files().is_empty(), "nothing to watch");
    let json = serde_json::to_string(&model).expect("json");
    assert!(
        json.contains("\"from\":\"secret default/shop-tls\""),
        "{json}"
    );
    let key_body = key_pem.lines().nth(1).expect("pem body");
    assert!(!json.contains(key_body), "no key material in the dump");
}

#[test]
fn a_clash_between_sources_is_a_problem_with_both_origins() {
    let file = parse_file(
        "services:\n  - name: shop\n    address: 127.0.0.1\n    ports: [{ name: web, port: 8080, protocol: http }]\n",
    )
    .expect("yaml");
    let mut builder = ModelBuilder::from_file(file, Path::new("/"));
    builder.add_service(
        FieldPath::object("Service", "default/other"),
        service_from_code("other", 8080, 1, None),
    );
    builder.add_service(
        FieldPath::object("Service", "default/shop"),
        service_from_code("shop", 9090, 1, None),
    );
    let problems = builder.finish().expect_err("clashes").to_string();
    assert!(
        problems.contains(
            "Service default/shop name: duplicate service name `shop` (also services[0])"
        ),
        "{problems}"
    );
    assert!(
        problems.contains(
            "Service default/other ports: 127.0.0.1:8080 (Service default/other port `web`) is already used by services[0] port `web`"
        ),
        "{problems}"
    );
}

#[test]
fn source_ranges_are_networks_that_match_mapped_ipv4_clients() {
    let model = parse(
        "services:\n  - name: s\n    ports: [{ port: 1, source_ranges: [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"] }]\n",
    )
    .expect("valid");
    let ranges = &model.ports().next().expect("port").settings.source_ranges;
    let ip = |text: &str| text.parse::<std::net::IpAddr>().expect("ip");
    assert!(ranges.contains(ip("10.1.2.3")));
    assert!(
        ranges.contains(ip("::ffff:10.1.2.3")),
        "a v4 client on a dual-stack socket"
    );
    assert!(ranges.contains(ip("2001:db8::1")));
    assert!(ranges.contains(ip("192.0.2.7")));
    assert!(!ranges.contains(ip("192.0.2.8")));

    let problems = problems_of(
        "services:\n  - name: s\n    ports: [{ port: 1, source_ranges: [\"10.0.0.0/8\", \"nowhere\"] }]\n",
        Path::new("/"),
    )
    .join("\n");
    assert!(
        problems.contains(
            "services[0].ports[0].source_ranges[1]: `nowhere` is not an IP address or CIDR"
        ),
        "{problems}"
    );
}

#[test]
fn a_shadow_is_checked_like_the_policy_it_stands_beside_and_diffs_alone() {
    let port = |balancer: &str, affinity: &str| {
        format!(
            "services:\n  - name: web\n    ports:\n      - {{ name: http, port: 8080, backends: [\"127.0.0.1:9000\"], balancer: {balancer}, affinity: {affinity} }}\n"
        )
    };
    let problems = problems_of(
        &port(
            "{ shadow: { policy: \"builtin:client-ip\", sample_percent: 250 } }",
            "{ policy: \"builtin:client-ip\", shadow: { policy: \"native:round-robin\" } }",
        ),
        Path::new("/"),
    );
    assert_eq!(
        problems,
        [
            "services[0].ports[0].balancer.shadow.policy: unknown built-in `client-ip`; built-ins are builtin:round-robin, builtin:random, builtin:least-request, builtin:maglev, builtin:ring-hash",
            "services[0].ports[0].balancer.shadow.sample_percent: 250 is out of range 0.01..=100",
            "services[0].ports[0].affinity.shadow.policy: `native:round-robin` is neither a built-in (builtin:client-ip, builtin:cookie), nor a plugin named under `plugins:`",
        ]
    );

    let affinity = "{ policy: \"builtin:client-ip\" }";
    let plain = parse(&port("{ policy: \"builtin:maglev\" }", affinity)).expect("valid");
    let shadowed = parse(&port(
        "{ policy: \"builtin:maglev\", shadow: { policy: \"builtin:ring-hash\", sample_percent: 0.5 } }",
        "{ policy: \"builtin:client-ip\", shadow: { policy: \"builtin:cookie\" } }",
    ))
    .expect("valid");
    let port_of = |model: &Model| model.ports().next().expect("a port").clone();
    let shadow = port_of(&shadowed).shadow;
    assert_eq!(shadow.balancer.map(|s| s.sample_per_million), Some(5_000));
    assert_eq!(
        shadow.affinity.map(|s| s.sample_per_million),
        Some(1_000_000)
    );
    assert_eq!(port_of(&shadowed).balancer, port_of(&plain).balancer);
    let changes = diff(&plain, &shadowed);
    assert!(
        matches!(&changes[..], [Change::PortChanged { what, .. }] if *what == PortAspects::of(&[PortAspect::Shadow])),
        "{changes:?}"
    );
}
