//! The index's rules, driven with plain objects: which Services are Gantry's, which endpoints
//! and nodes carry their traffic, what their spec and annotations become, and that the result
//! passes the model's own validation.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{
    ClientIPConfig, Node, NodeAddress, NodeSpec, NodeStatus, Service, ServicePort, ServiceSpec,
    SessionAffinityConfig, Taint,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use lb_config::file::BackendFile;
use lb_config::{FieldPath, Lenient, ModelBuilder};

use super::translate::{NO_NODE_PORT, UNSUPPORTED_PROTOCOL};
use super::*;
use crate::settings::{BackendMode, Settings, DEFAULT_CLASS};

const ADDRESS: &str = "192.0.2.10";

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..ObjectMeta::default()
    }
}

fn port(name: &str, number: i32, protocol: &str, node_port: Option<i32>) -> ServicePort {
    ServicePort {
        name: (!name.is_empty()).then(|| name.into()),
        port: number,
        protocol: Some(protocol.into()),
        node_port,
        ..ServicePort::default()
    }
}

fn load_balancer(class: Option<&str>, ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: meta("shop", "web"),
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            load_balancer_class: class.map(str::to_owned),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn web() -> ObjectKey {
    ObjectKey::new("shop", "web")
}

/// A slice of shop/web with `ports` (name, number) and `endpoints` (address, ready, serving,
/// terminating).
fn slice(
    name: &str,
    family: &str,
    ports: &[(&str, i32)],
    endpoints: &[(&str, bool, bool, bool)],
) -> EndpointSlice {
    let mut metadata = meta("shop", name);
    metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_owned(),
        "web".to_owned(),
    )]));
    EndpointSlice {
        metadata,
        address_type: family.into(),
        ports: Some(
            ports
                .iter()
                .map(|(name, number)| EndpointPort {
                    name: Some((*name).into()),
                    port: Some(*number),
                    protocol: Some("TCP".into()),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
        endpoints: endpoints
            .iter()
            .map(|(address, ready, serving, terminating)| Endpoint {
                addresses: vec![(*address).into()],
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    serving: Some(*serving),
                    terminating: Some(*terminating),
                }),
                ..Endpoint::default()
            })
            .collect(),
    }
}

fn node(name: &str, internal: &str, label: Option<&str>, tainted: bool) -> Node {
    let mut metadata = ObjectMeta {
        name: Some(name.into()),
        ..ObjectMeta::default()
    };
    if let Some(value) = label {
        metadata.labels = Some(BTreeMap::from([(
            nodes::EXCLUDE_LABEL.to_owned(),
            value.to_owned(),
        )]));
    }
    Node {
        metadata,
        spec: Some(NodeSpec {
            taints: tainted.then(|| {
                vec![Taint {
                    key: nodes::TO_BE_DELETED_TAINT.into(),
                    effect: "NoSchedule".into(),
                    ..Taint::default()
                }]
            }),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: internal.into(),
            }]),
            ..NodeStatus::default()
        }),
    }
}

fn address() -> Option<IpAddr> {
    Some(ADDRESS.parse().expect("ip"))
}

/// The served spec's backends of port `name`.
fn backends_of(translation: &Translation, name: &str) -> Vec<SocketAddr> {
    let Translation::Serve { wanted, .. } = translation else {
        panic!("not served: {translation:?}");
    };
    let port = wanted
        .spec
        .ports
        .iter()
        .filter_map(Lenient::parsed)
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no port {name}"));
    port.backends
        .iter()
        .filter_map(Lenient::parsed)
        .map(|b| match b {
            BackendFile::Resolved(backend) => backend.address,
            other => panic!("unexpected backend {other:?}"),
        })
        .collect()
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| a.parse().expect("addr")).collect()
}

#[test]
fn only_services_of_gantrys_class_are_gantrys_and_classless_ones_only_as_default() {
    let http = || vec![port("http", 80, "TCP", Some(30080))];
    let mut index = Index::new(Settings::default());
    let cases = [
        (load_balancer(Some(DEFAULT_CLASS), http()), true),
        (
            load_balancer(Some("example.com/internal-vip"), http()),
            false,
        ),
        (load_balancer(None, http()), false),
    ];
    for (service, ours) in cases {
        index.apply_service(&service);
        let served = matches!(
            index.translate(&web(), address()),
            Translation::Serve { .. }
        );
        assert_eq!(
            served,
            ours,
            "{:?}",
            service.spec.and_then(|s| s.load_balancer_class)
        );
    }

    let mut default = Index::new(Settings {
        default_class: true,
        ..Settings::default()
    });
    default.apply_service(&load_balancer(None, http()));
    assert!(matches!(
        default.translate(&web(), address()),
        Translation::Serve { .. }
    ));

    // NodePort Services only when they are served, and ClusterIP ones never.
    let mut node_port = load_balancer(None, http());
    if let Some(spec) = node_port.spec.as_mut() {
        spec.type_ = Some("NodePort".into());
    }
    index.apply_service(&node_port);
    assert!(matches!(
        index.translate(&web(), address()),
        Translation::NotOurs
    ));
    let mut serving = Index::new(Settings {
        node_ports: Some("198.51.100.1".parse().expect("ip")),
        ..Settings::default()
    });
    serving.apply_service(&node_port);
    let Translation::Serve { wanted, .. } = serving.translate(&web(), None) else {
        panic!("a NodePort Service is served when NodePorts are");
    };
    assert_eq!(wanted.spec.address.as_deref(), Some("198.51.100.1"));
    let listen = wanted
        .spec
        .ports
        .iter()
        .filter_map(Lenient::parsed)
        .next()
        .and_then(|p| p.port);
    assert_eq!(listen, Some(30080), "served at its node port");
}

#[test]
fn ready_endpoints_serve_and_terminating_ones_only_when_none_is_ready() {
    let mut index = Index::new(Settings::default());
    index.apply_service(&load_balancer(
        Some(DEFAULT_CLASS),
        vec![port("http", 80, "TCP", None)],
    ));
    // Two slices name the port's target differently; one endpoint is in both.
    index.apply_slice(&slice(
        "web-a",
        "IPv4",
        &[("http", 8080)],
        &[
            ("10.0.0.1", true, true, false),
            ("10.0.0.2", false, true, true),
            ("10.0.0.3", false, false, false),
        ],
    ));
    index.apply_slice(&slice(
        "web-b",
        "IPv4",
        &[("http", 9090)],
        &[("10.0.0.4", true, true, false)],
    ));
    index.apply_slice(&slice(
        "web-c",
        "IPv4",
        &[("http", 8080)],
        &[("10.0.0.1", true, true, false)],
    ));
    assert_eq!(
        backends_of(&index.translate(&web(), address()), "http"),
        addrs(&["10.0.0.1:8080", "10.0.0.4:9090"]),
        "ready ones only, each once, ports by name per slice"
    );

    // No ready endpoint left: the serving terminating one takes the traffic, never the
    // one that is not serving.
    index.apply_slice(&slice(
        "web-a",
        "IPv4",
        &[("http", 8080)],
        &[
            ("10.0.0.2", false, true, true),
            ("10.0.0.3", false, false, false),
        ],
    ));
    index.delete_slice(&slice("web-b", "IPv4", &[], &[]));
    index.delete_slice(&slice("web-c", "IPv4", &[], &[]));
    assert_eq!(
        backends_of(&index.translate(&web(), address()), "http"),
        addrs(&["10.0.0.2:8080"])
    );

    // Endpoints of the other family, and slices without the port, are not used.
    index.apply_slice(&slice(
        "web-v6",
        "IPv6",
        &[("http", 8080)],
        &[("2001:db8::1", true, true, false)],
    ));
    index.apply_slice(&slice(
        "web-x",
        "IPv4",
        &[("metrics", 9100)],
        &[("10.0.0.9", true, true, false)],
    ));
    assert_eq!(
        backends_of(&index.translate(&web(), address()), "http"),
        addrs(&["10.0.0.2:8080"])
    );
}

#[test]
fn node_mode_sends_traffic_to_eligible_nodes_checked_where_kube_proxy_tells_their_health() {
    let mut index = Index::new(Settings {
        backend_mode: BackendMode::Nodes,
        ..Settings::default()
    });
    let mut service = load_balancer(
        Some(DEFAULT_CLASS),
        vec![
            port("http", 80, "TCP", Some(30080)),
            port("admin", 81, "TCP", None),
        ],
    );
    index.apply_service(&service);
    for node in [
        node("a", "10.1.0.1", None, false),
        node("b", "10.1.0.2", Some("false"), false),
        node("c", "10.1.0.3", Some(""), false),
        node("d", "10.1.0.4", Some("true"), false),
        node("e", "10.1.0.5", None, true),
    ] {
        index.apply_node(&node);
    }
    let translation = index.translate(&web(), address());
    assert_eq!(
        backends_of(&translation, "http"),
        addrs(&["10.1.0.1:30080", "10.1.0.2:30080"]),
        "excluded by label (empty or true) or by the autoscaler's taint"
    );
    let health_port = |translation: &Translation| {
        let Translation::Serve { wanted, .. } = translation else {
            panic!("not served");
        };
        let port = wanted
            .spec
            .ports
            .iter()
            .filter_map(Lenient::parsed)
            .next()
            .expect("port");
        let health = port.health.as_ref().expect("a node health check");
        let check = health.first().and_then(Lenient::parsed).expect("parsed");
        check.params.as_ref().and_then(|p| p.get("port")).cloned()
    };
    assert_eq!(
        health_port(&translation),
        Some(serde_yaml::Value::String("10256".into())),
        "Cluster: kube-proxy's health port"
    );
    // A port without a node port (allocateLoadBalancerNodePorts: false) goes to its pods.
    index.apply_slice(&slice(
        "web-a",
        "IPv4",
        &[("admin", 8081)],
        &[("10.0.0.1", true, true, false)],
    ));
    assert_eq!(
        backends_of(&index.translate(&web(), address()), "admin"),
        addrs(&["10.0.0.1:8081"])
    );

    if let Some(spec) = service.spec.as_mut() {
        spec.external_traffic_policy = Some("Local".into());
        spec.health_check_node_port = Some(32000);
    }
    index.apply_service(&service);
    assert_eq!(
        health_port(&index.translate(&web(), address())),
        Some(serde_yaml::Value::String("32000".into())),
        "Local: the Service's health check node port"
    );
    // A node leaving takes its backend with it.
    assert_eq!(
        index.delete_node("b").into_iter().collect::<Vec<_>>(),
        [web()]
    );
    assert_eq!(
        backends_of(&index.translate(&web(), address()), "http"),
        addrs(&["10.1.0.1:30080"])
    );
}

#[test]
fn ports_gantry_cannot_serve_are_reported_and_the_others_served() {
    let mut index = Index::new(Settings::default());
    index.apply_service(&load_balancer(
        Some(DEFAULT_CLASS),
        vec![
            port("dns", 53, "UDP", None),
            port("dns-tcp", 53, "TCP", None),
            port("signal", 2905, "SCTP", None),
        ],
    ));
    let Translation::Serve { wanted, .. } = index.translate(&web(), address()) else {
        panic!("served");
    };
    let errors: Vec<_> = wanted
        .ports
        .iter()
        .map(|p| (p.port, p.protocol.as_str(), p.error))
        .collect();
    assert_eq!(
        errors,
        [
            (53, "UDP", None),
            (53, "TCP", None),
            (2905, "SCTP", Some(UNSUPPORTED_PROTOCOL))
        ]
    );
    // TCP and UDP share the port number, each a port of its own kind.
    let protocols: Vec<_> = wanted
        .spec
        .ports
        .iter()
        .filter_map(Lenient::parsed)
        .map(|p| (p.name.clone().unwrap_or_default(), p.protocol))
        .collect();
    assert_eq!(
        protocols,
        [
            ("dns".to_owned(), Some(lb_config::file::ProtocolFile::Udp)),
            (
                "dns-tcp".to_owned(),
                Some(lb_config::file::ProtocolFile::Tcp)
            )
        ]
    );

    // A NodePort Service's port that has no node port cannot be served.
    let mut index = Index::new(Settings {
        node_ports: Some("198.51.100.1".parse().expect("ip")),
        ..Settings::default()
    });
    let mut service = load_balancer(None, vec![port("http", 80, "TCP", None)]);
    if let Some(spec) = service.spec.as_mut() {
        spec.type_ = Some("NodePort".into());
    }
    index.apply_service(&service);
    let Translation::Serve { wanted, .. } = index.translate(&web(), None) else {
        panic!("served");
    };
    assert_eq!(wanted.ports[0].error, Some(NO_NODE_PORT));
}

#[test]
fn affinity_and_source_ranges_follow_the_spec_and_the_rest_passes_the_models_validation() {
    let mut service = load_balancer(Some(DEFAULT_CLASS), vec![port("http", 80, "TCP", None)]);
    service.metadata.annotations = Some(BTreeMap::from([(
        service::SOURCE_RANGES_ANNOTATION.to_owned(),
        "203.0.113.0/24".to_owned(),
    )]));
    if let Some(spec) = service.spec.as_mut() {
        spec.session_affinity = Some("ClientIP".into());
        spec.load_balancer_source_ranges = Some(vec![" 10.0.0.0/8".into(), "192.0.2.7/32".into()]);
    }
    let mut index = Index::new(Settings::default());
    index.apply_service(&service);
    index.apply_slice(&slice(
        "web-a",
        "IPv4",
        &[("http", 8080)],
        &[("10.0.0.1", true, true, false)],
    ));
    let Translation::Serve { wanted, problems } = index.translate(&web(), address()) else {
        panic!("served");
    };
    assert!(problems.is_empty(), "{problems:?}");
    let builder = ModelBuilder::from_file(Default::default(), std::path::Path::new("/"));
    let served = builder
        .check_service(&FieldPath::object("Service", "shop/web"), wanted.spec)
        .expect("a valid service of the model");
    let port = served.ports.get("http").expect("port");
    assert_eq!(served.name, "shop/web");
    assert_eq!(port.bind, "192.0.2.10:80".parse().expect("addr"));
    let client = |ip: &str| ip.parse::<IpAddr>().expect("ip");
    assert!(
        port.settings.source_ranges.contains(client("10.1.1.1")),
        "the spec wins"
    );
    assert!(!port.settings.source_ranges.contains(client("203.0.113.9")));
    let affinity = port.affinity.as_ref().expect("affinity");
    assert_eq!(
        affinity.params,
        [("timeout_seconds".to_owned(), "10800".to_owned())]
    );

    // Switched off: no affinity; the annotation's ranges apply when the spec has none.
    if let Some(spec) = service.spec.as_mut() {
        spec.session_affinity = Some("None".into());
        spec.load_balancer_source_ranges = None;
        spec.session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(90_000),
            }),
        });
    }
    index.apply_service(&service);
    let Translation::Serve { wanted, .. } = index.translate(&web(), address()) else {
        panic!("served");
    };
    let builder = ModelBuilder::from_file(Default::default(), std::path::Path::new("/"));
    let served = builder
        .check_service(&FieldPath::object("Service", "shop/web"), wanted.spec)
        .expect("valid");
    let port = served.ports.get("http").expect("port");
    assert!(port.affinity.is_none());
    assert!(port.settings.source_ranges.contains(client("203.0.113.9")));
}

#[test]
fn a_bad_affinity_timeout_is_reported_and_the_default_used() {
    let mut service = load_balancer(Some(DEFAULT_CLASS), vec![port("http", 80, "TCP", None)]);
    if let Some(spec) = service.spec.as_mut() {
        spec.session_affinity = Some("ClientIP".into());
        spec.session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(0),
            }),
        });
    }
    let mut index = Index::new(Settings::default());
    index.apply_service(&service);
    let Translation::Serve { problems, .. } = index.translate(&web(), address()) else {
        panic!("served");
    };
    assert_eq!(
        problems,
        ["spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is out of range 1..=86400"]
    );
}

#[test]
fn a_deleted_or_unaddressed_load_balancer_serves_nothing() {
    let mut service = load_balancer(Some(DEFAULT_CLASS), vec![port("http", 80, "TCP", None)]);
    let mut index = Index::new(Settings::default());
    index.apply_service(&service);
    assert!(matches!(
        index.translate(&web(), None),
        Translation::NoAddress
    ));
    service.metadata.deletion_timestamp = Some(Time(Default::default()));
    index.apply_service(&service);
    assert!(matches!(
        index.translate(&web(), address()),
        Translation::Deleting
    ));
    index.delete_service(&web());
    assert!(matches!(
        index.translate(&web(), address()),
        Translation::NotOurs
    ));
}

fn tls_secret(type_: &str, with_key: bool) -> k8s_openapi::api::core::v1::Secret {
    use k8s_openapi::ByteString;
    let generated =
        rcgen::generate_simple_self_signed(vec!["shop.example".to_owned()]).expect("rcgen");
    let mut data = BTreeMap::from([(
        "tls.crt".to_owned(),
        ByteString(generated.cert.pem().into_bytes()),
    )]);
    if with_key {
        data.insert(
            "tls.key".to_owned(),
            ByteString(generated.key_pair.serialize_pem().into_bytes()),
        );
    }
    k8s_openapi::api::core::v1::Secret {
        metadata: meta("shop", "web-tls"),
        type_: Some(type_.into()),
        data: Some(data),
        ..Default::default()
    }
}

#[test]
fn tls_ports_take_their_certificate_from_the_secret_the_annotation_names() {
    let mut index = Index::new(Settings::default());
    let mut service = load_balancer(Some(DEFAULT_CLASS), vec![port("https", 443, "TCP", None)]);
    service.metadata.annotations = Some(BTreeMap::from([
        ("gantry.io/protocol".to_owned(), "https".to_owned()),
        ("gantry.io/tls-secret".to_owned(), "web-tls".to_owned()),
    ]));
    index.apply_service(&service);
    assert_eq!(
        index.referenced_secrets(),
        [ObjectKey::new("shop", "web-tls")].into()
    );
    let problems = |index: &Index| match index.translate(&web(), address()) {
        Translation::Serve { problems, .. } => problems.join("\n"),
        other => panic!("{other:?}"),
    };
    assert!(
        problems(&index).contains("Secret shop/web-tls not found"),
        "{}",
        problems(&index)
    );

    assert_eq!(
        index.apply_secret(&tls_secret("Opaque", true)),
        [web()].into()
    );
    assert!(
        problems(&index).contains("is of type `Opaque`"),
        "{}",
        problems(&index)
    );
    index.apply_secret(&tls_secret("kubernetes.io/tls", false));
    assert!(
        problems(&index).contains("has no `tls.key`"),
        "{}",
        problems(&index)
    );

    index.apply_secret(&tls_secret("kubernetes.io/tls", true));
    let Translation::Serve { wanted, problems } = index.translate(&web(), address()) else {
        panic!("served");
    };
    assert!(problems.is_empty(), "{problems:?}");
    let builder = ModelBuilder::from_file(
        lb_config::file::FileConfig::default(),
        std::path::Path::new("/"),
    );
    let service = builder
        .check_service(&FieldPath::object("Service", "shop/web"), wanted.spec)
        .expect("a valid service");
    let tls = service.ports["https"].tls.as_ref().expect("tls");
    assert_eq!(tls.certificates[0].names, vec!["shop.example".to_owned()]);
}
