//! One service and its ports: names, address, protocol, TLS, policies and settings, each
//! checked; a port whose parts fail is left out with its problems reported.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use crate::file::{BackendProtocolFile, PortFile, ProtocolFile, ProxyProtocolFile, ServiceFile};
use crate::lenient::Lenient;
use crate::model::{
    BackendProtocol, FieldOrigin, ListenerKey, Port, PortSettings, Protocol, ProxyProtocol,
    Service, ServiceSource, Shadows,
};
use crate::problems::{FieldPath, Problems};

use super::backends::build_backends;
use super::policy::{
    build_affinity, build_balancer, build_health, build_shadow, Plugins, Shadowed,
};
use super::settings::apply_settings;
use super::tls::{build_tls, TlsOutcome};
use super::{is_valid_name, take};

/// What every service and port is validated against.
pub(super) struct Shared<'a> {
    pub(super) defaults: &'a PortSettings,
    pub(super) base_dir: &'a Path,
    pub(super) plugins: &'a Plugins,
}

pub(super) fn build_service(
    file: ServiceFile,
    shared: &Shared<'_>,
    path: &FieldPath,
    p: &mut Problems,
) -> Option<Service> {
    let name = match file.name {
        Some(name) if is_valid_name(&name) => Some(name),
        Some(name) => {
            p.push(
                &path.field("name"),
                format!(
                    "`{name}` must be 1 to 253 characters of letters, digits, `-`, `_`, `.` or `/`"
                ),
            );
            None
        }
        None => {
            p.push(&path.field("name"), "required");
            None
        }
    };
    let address = match file.address {
        Some(text) => match text.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                p.push(
                    &path.field("address"),
                    format!("`{text}` is not an IP address"),
                );
                None
            }
        },
        None => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
    };
    if file.ports.is_empty() {
        p.push(&path.field("ports"), "a service needs at least one port");
    }
    let several_ports = file.ports.len() > 1;
    let mut ports = BTreeMap::new();
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    for (i, item) in file.ports.into_iter().enumerate() {
        let port_path = path.field("ports").index(i);
        let Some(port_file) = take(Some(item), &port_path, p) else {
            continue;
        };
        let context = PortContext {
            service: name.as_deref(),
            address,
            several_ports,
            shared,
        };
        let Some(port) = build_port(port_file, &context, &port_path, p) else {
            continue;
        };
        if let Some(first) = first_seen.get(&port.key.port) {
            p.push(
                &port_path.field("name"),
                format!(
                    "duplicate port name `{}` (also ports[{first}])",
                    port.key.port
                ),
            );
            continue;
        }
        first_seen.insert(port.key.port.clone(), i);
        ports.insert(port.key.port.clone(), port);
    }
    Some(Service {
        name: name?,
        address: address?,
        ports,
        source: ServiceSource::File,
    })
}

/// What a port inherits from its service.
struct PortContext<'a> {
    service: Option<&'a str>,
    address: Option<IpAddr>,
    several_ports: bool,
    shared: &'a Shared<'a>,
}

const PORT_FIELDS: &str =
    "name, port, protocol, backends, tls, proxy_protocol, backend_protocol, balancer, \
                           affinity, timeouts, limits, retries, backoff, trusted_proxies, \
                           source_ranges";

fn build_port(
    file: PortFile,
    cx: &PortContext<'_>,
    path: &FieldPath,
    p: &mut Problems,
) -> Option<Port> {
    let mut ok = true;
    for key in file.unknown.keys() {
        p.push(
            path,
            format!("unknown field `{key}`, expected one of {PORT_FIELDS}"),
        );
        ok = false;
    }
    let number = file.port;
    if number.is_none() {
        p.push(&path.field("port"), "required");
    }
    let name = match (file.name, number) {
        (Some(name), _) if is_valid_name(&name) => Some(name),
        (Some(name), _) => {
            p.push(
                &path.field("name"),
                format!("`{name}` is not a valid port name"),
            );
            None
        }
        (None, _) if cx.several_ports => {
            p.push(
                &path.field("name"),
                "required when a service has several ports",
            );
            None
        }
        (None, number) => number.map(|n| n.to_string()),
    };
    let protocol = match file.protocol.unwrap_or(ProtocolFile::Tcp) {
        ProtocolFile::Tcp => Protocol::Tcp,
        ProtocolFile::Tls => Protocol::Tls,
        ProtocolFile::Http => Protocol::Http,
        ProtocolFile::Https => Protocol::Https,
        ProtocolFile::Udp => Protocol::Udp,
    };
    let backends = build_backends(file.backends, &path.field("backends"), p);
    let tls = build_tls(
        file.tls,
        protocol,
        cx.shared.base_dir,
        &path.field("tls"),
        p,
    );
    let proxy_protocol = file.proxy_protocol.map(|v| {
        if protocol.is_http() {
            p.push(
                &path.field("proxy_protocol"),
                "only for tcp, tls and udp ports (HTTP ports send X-Forwarded-For)",
            );
            ok = false;
        }
        if protocol.is_udp() && v == ProxyProtocolFile::V1 {
            p.push(
                &path.field("proxy_protocol"),
                "UDP ports send v2 (a header per datagram); v1 has no datagram form",
            );
            ok = false;
        }
        match v {
            ProxyProtocolFile::V1 => ProxyProtocol::V1,
            ProxyProtocolFile::V2 => ProxyProtocol::V2,
        }
    });
    let backend_protocol = match file.backend_protocol {
        None | Some(BackendProtocolFile::Http1) => BackendProtocol::Http1,
        Some(BackendProtocolFile::H2c) if protocol.is_http() => BackendProtocol::H2c,
        Some(BackendProtocolFile::H2c) => {
            p.push(
                &path.field("backend_protocol"),
                "only for http and https ports",
            );
            ok = false;
            BackendProtocol::H2c
        }
    };
    let settings = apply_settings(cx.shared.defaults, &file.settings, path, p);
    let balancer_path = path.field("balancer");
    let mut shadow = Shadows::default();
    let balancer = match file.balancer {
        Some(Lenient::Invalid {
            path: inner,
            message,
        }) => {
            p.push_nested(&balancer_path, &inner, &message);
            None
        }
        Some(Lenient::Parsed(mut spec)) => {
            if let Some(file) = spec.shadow.take() {
                let at = balancer_path.field("shadow");
                shadow.balancer = build_shadow(file, Shadowed::Balancer, cx.shared.plugins, &at, p);
                ok &= shadow.balancer.is_some();
            }
            build_balancer(Some(spec), cx.shared.plugins, &balancer_path, p)
        }
        None => build_balancer(None, cx.shared.plugins, &balancer_path, p),
    };
    let affinity_path = path.field("affinity");
    let affinity = match file.affinity {
        Some(Lenient::Invalid {
            path: inner,
            message,
        }) => {
            p.push_nested(&affinity_path, &inner, &message);
            ok = false;
            None
        }
        Some(Lenient::Parsed(mut spec)) => {
            if let Some(file) = spec.shadow.take() {
                let at = affinity_path.field("shadow");
                shadow.affinity = build_shadow(file, Shadowed::Affinity, cx.shared.plugins, &at, p);
                ok &= shadow.affinity.is_some();
            }
            match build_affinity(spec, cx.shared.plugins, &affinity_path, p) {
                Some(affinity) => Some(affinity),
                None => {
                    ok = false;
                    None
                }
            }
        }
        None => None,
    };
    let mut health = Vec::new();
    for (i, item) in file.health.unwrap_or_default().into_iter().enumerate() {
        let item_path = path.field("health").index(i);
        match item {
            Lenient::Invalid {
                path: inner,
                message,
            } => {
                p.push_nested(&item_path, &inner, &message);
                ok = false;
            }
            Lenient::Parsed(spec) => match build_health(spec, cx.shared.plugins, &item_path, p) {
                Some(policy) => health.push(policy),
                None => ok = false,
            },
        }
    }
    if health.len() > 8 {
        p.push(&path.field("health"), "at most 8 health policies per port");
        ok = false;
    }

    if !ok {
        return None;
    }
    let bind = SocketAddr::new(cx.address?, number?);
    Some(Port {
        key: ListenerKey {
            service: cx.service?.to_owned(),
            port: name?,
        },
        bind,
        protocol,
        backends: backends?,
        tls: match tls {
            TlsOutcome::NotWanted => None,
            TlsOutcome::Loaded(tls) => Some(tls),
            TlsOutcome::Failed => return None,
        },
        proxy_protocol,
        backend_protocol,
        balancer: balancer?,
        affinity,
        health,
        shadow,
        settings,
        origin: FieldOrigin(path.clone()),
    })
}
