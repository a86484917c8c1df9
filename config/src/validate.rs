//! From the file as written to the model the runtime uses: defaults applied, ranges checked,
//! references resolved, cross-field conflicts found. Every problem is collected with its field
//! path; a model is produced only when there are none.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::file::*;
use crate::lenient::{DurationText, Lenient};
use crate::model::*;
use crate::policy::{
    build_affinity, build_balancer, build_health, build_plugin_limits, build_plugins, Plugins,
};
use crate::problems::{FieldPath, Problems};
use crate::tls::{load_certificate, CertificateRequest};

/// The admin listener's default: loopback only, so a fresh install exposes nothing.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9901);

/// Header count ceiling: pingora's HTTP/1 parser holds at most 256 headers.
const MAX_HEADERS_CEILING: u32 = 256;
/// Header size ceiling: pingora refuses request heads above 1 MiB - 1 on its own.
const MAX_HEADER_BYTES_CEILING: u32 = 1_048_575;
/// Weight ceiling, as HAProxy's: keeps the native weighted schedule small.
pub const MAX_WEIGHT: u32 = 256;
const MAX_RETRIES: u32 = 16;

/// Port settings when neither the port nor `defaults:` says otherwise.
pub fn builtin_port_settings() -> PortSettings {
    PortSettings {
        timeouts: Timeouts {
            connect: Duration::from_secs(5),
            header_read: Duration::from_secs(10),
            tls_handshake: Duration::from_secs(10),
            client_idle: Duration::from_secs(60),
            tcp_idle: Duration::from_secs(3600),
            upstream_read: Duration::from_secs(60),
            upstream_idle: Duration::from_secs(60),
        },
        limits: Limits {
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
        },
        retries: 2,
        backoff: Backoff {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(30),
        },
        trusted_proxies: Vec::new(),
    }
}

/// Builds the model from a parsed file; relative file names resolve against `base_dir`.
pub(crate) fn build_model(file: FileConfig, base_dir: &Path) -> Result<Model, Problems> {
    let mut problems = Problems::default();
    let root = FieldPath::root();
    let admin = build_admin(file.admin, &root.field("admin"), &mut problems);
    let runtime = build_runtime(
        file.runtime,
        base_dir,
        &root.field("runtime"),
        &mut problems,
    );
    let defaults = match take(file.defaults, &root.field("defaults"), &mut problems) {
        Some(overrides) => apply_settings(
            &builtin_port_settings(),
            &overrides,
            &root.field("defaults"),
            &mut problems,
        ),
        None => builtin_port_settings(),
    };

    let plugins = build_plugins(
        file.plugins,
        base_dir,
        &root.field("plugins"),
        &mut problems,
    );
    let plugin_limits = build_plugin_limits(
        take(
            file.plugin_limits,
            &root.field("plugin_limits"),
            &mut problems,
        ),
        &root.field("plugin_limits"),
        &mut problems,
    );
    let shared = Shared {
        defaults: &defaults,
        base_dir,
        plugins: &plugins,
    };

    let mut services = BTreeMap::new();
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    let services_path = root.field("services");
    for (i, item) in file.services.into_iter().enumerate() {
        let path = services_path.index(i);
        let Some(service) = take(Some(item), &path, &mut problems) else {
            continue;
        };
        let Some(service) = build_service(service, &shared, &path, &mut problems) else {
            continue;
        };
        if let Some(first) = first_seen.get(&service.name) {
            problems.push(
                &path.field("name"),
                format!(
                    "duplicate service name `{}` (also services[{first}])",
                    service.name
                ),
            );
            continue;
        }
        first_seen.insert(service.name.clone(), i);
        services.insert(service.name.clone(), service);
    }

    let model = Model {
        admin,
        runtime,
        plugin_limits,
        services,
    };
    check_bind_conflicts(&model, &first_seen, &mut problems);
    if problems.is_empty() {
        Ok(model)
    } else {
        Err(problems)
    }
}

/// Unwraps a lenient section, reporting its parse error at its path.
fn take<T>(item: Option<Lenient<T>>, path: &FieldPath, problems: &mut Problems) -> Option<T> {
    match item? {
        Lenient::Parsed(value) => Some(value),
        Lenient::Invalid {
            path: inner,
            message,
        } => {
            problems.push_nested(path, &inner, &message);
            None
        }
    }
}

fn build_admin(file: Option<Lenient<AdminFile>>, path: &FieldPath, p: &mut Problems) -> Admin {
    let file = take(file, path, p).unwrap_or_default();
    let listen = match file.listen {
        Some(text) => {
            parse_socket_addr(&text, &path.field("listen"), p).unwrap_or(DEFAULT_ADMIN_LISTEN)
        }
        None => DEFAULT_ADMIN_LISTEN,
    };
    Admin { listen }
}

fn build_runtime(
    file: Option<Lenient<RuntimeFile>>,
    base_dir: &Path,
    path: &FieldPath,
    p: &mut Problems,
) -> Runtime {
    let file = take(file, path, p).unwrap_or_default();
    if let Some(workers) = file.workers {
        if !(1..=1024).contains(&workers) {
            p.push(
                &path.field("workers"),
                format!("{workers} is out of range 1..=1024"),
            );
        }
    }
    let watch_interval = file.watch_interval.map_or(Duration::from_secs(2), |d| d.0);
    if watch_interval < Duration::from_millis(100) {
        p.push(&path.field("watch_interval"), "must be at least 100ms");
    }
    Runtime {
        workers: file.workers,
        shutdown_grace: file.shutdown_grace.map_or(Duration::from_secs(30), |d| d.0),
        watch_interval,
        access_log: file.access_log.unwrap_or(false),
        plugin_cache: match file.plugin_cache.as_deref() {
            None | Some("auto") => PluginCache::Auto,
            Some("off") => PluginCache::Off,
            Some("") => {
                p.push(&path.field("plugin_cache"), "a folder, `auto` or `off`");
                PluginCache::Off
            }
            Some(folder) => PluginCache::Folder(base_dir.join(folder)),
        },
    }
}

/// What every service and port is validated against.
struct Shared<'a> {
    defaults: &'a PortSettings,
    base_dir: &'a Path,
    plugins: &'a Plugins,
}

fn build_service(
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
                           affinity, timeouts, limits, retries, backoff, trusted_proxies";

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
                "only for tcp and tls ports (HTTP ports send X-Forwarded-For)",
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
    let balancer = match file.balancer {
        Some(Lenient::Invalid {
            path: inner,
            message,
        }) => {
            p.push_nested(&balancer_path, &inner, &message);
            None
        }
        Some(Lenient::Parsed(spec)) => {
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
        Some(Lenient::Parsed(spec)) => {
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
        settings,
        origin: FieldOrigin(path.to_string()),
    })
}

fn build_backends(
    items: Vec<Lenient<BackendFile>>,
    path: &FieldPath,
    p: &mut Problems,
) -> Option<Vec<Backend>> {
    let mut backends: Vec<Backend> = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.into_iter().enumerate() {
        let item_path = path.index(i);
        let Some(item) = take(Some(item), &item_path, p) else {
            ok = false;
            continue;
        };
        let (address, weight, address_path) = match item {
            BackendFile::Address(text) => (Some(text), 1, item_path.clone()),
            BackendFile::Detailed(detail) => {
                if detail.address.is_none() {
                    p.push(&item_path.field("address"), "required");
                }
                (
                    detail.address,
                    detail.weight.unwrap_or(1),
                    item_path.field("address"),
                )
            }
        };
        if weight > MAX_WEIGHT {
            p.push(
                &item_path.field("weight"),
                format!("{weight} is out of range 0..={MAX_WEIGHT}"),
            );
            ok = false;
        }
        let Some(address) = address.and_then(|a| parse_socket_addr(&a, &address_path, p)) else {
            ok = false;
            continue;
        };
        if let Some(first) = backends.iter().position(|b| b.address == address) {
            p.push(
                &address_path,
                format!("duplicate backend {address} (also backends[{first}])"),
            );
            ok = false;
            continue;
        }
        backends.push(Backend { address, weight });
    }
    ok.then_some(backends)
}

enum TlsOutcome {
    NotWanted,
    Loaded(Arc<TlsSettings>),
    Failed,
}

fn build_tls(
    file: Option<Lenient<TlsFile>>,
    protocol: Protocol,
    base_dir: &Path,
    path: &FieldPath,
    p: &mut Problems,
) -> TlsOutcome {
    match (&file, protocol.terminates_tls()) {
        (None, false) => return TlsOutcome::NotWanted,
        (None, true) => {
            p.push(
                path,
                format!(
                    "required for {} ports: list certificates",
                    protocol.as_str()
                ),
            );
            return TlsOutcome::Failed;
        }
        (Some(_), false) => {
            p.push(
                path,
                format!(
                    "only for tls and https ports (this port is {}; use protocol: tls to terminate TLS, or tcp to pass it through)",
                    protocol.as_str()
                ),
            );
            return TlsOutcome::Failed;
        }
        (Some(_), true) => {}
    }
    let Some(file) = take(file, path, p) else {
        return TlsOutcome::Failed;
    };
    let certs_path = path.field("certificates");
    if file.certificates.is_empty() {
        p.push(&certs_path, "at least one certificate is required");
        return TlsOutcome::Failed;
    }
    let mut certificates = Vec::new();
    let mut ok = true;
    for (i, item) in file.certificates.into_iter().enumerate() {
        let item_path = certs_path.index(i);
        let Some(item) = take(Some(item), &item_path, p) else {
            ok = false;
            continue;
        };
        if item.cert.is_none() {
            p.push(&item_path.field("cert"), "required");
        }
        if item.key.is_none() {
            p.push(&item_path.field("key"), "required");
        }
        let (Some(cert), Some(key)) = (item.cert, item.key) else {
            ok = false;
            continue;
        };
        let request = CertificateRequest {
            cert_path: base_dir.join(cert),
            key_path: base_dir.join(key),
            names: item.names,
        };
        match load_certificate(request, &item_path, p) {
            Some(certificate) => certificates.push(certificate),
            None => ok = false,
        }
    }
    if ok {
        TlsOutcome::Loaded(Arc::new(TlsSettings { certificates }))
    } else {
        TlsOutcome::Failed
    }
}

/// `base` overridden by whatever `file` sets, each value range-checked.
fn apply_settings(
    base: &PortSettings,
    file: &PortSettingsFile,
    path: &FieldPath,
    p: &mut Problems,
) -> PortSettings {
    let mut out = base.clone();
    if let Some(timeouts) = lenient_ref(&file.timeouts, &path.field("timeouts"), p) {
        let tp = path.field("timeouts");
        let t = &mut out.timeouts;
        for (value, slot, name) in [
            (timeouts.connect, &mut t.connect, "connect"),
            (timeouts.header_read, &mut t.header_read, "header_read"),
            (
                timeouts.tls_handshake,
                &mut t.tls_handshake,
                "tls_handshake",
            ),
            (timeouts.client_idle, &mut t.client_idle, "client_idle"),
            (timeouts.tcp_idle, &mut t.tcp_idle, "tcp_idle"),
            (
                timeouts.upstream_read,
                &mut t.upstream_read,
                "upstream_read",
            ),
            (
                timeouts.upstream_idle,
                &mut t.upstream_idle,
                "upstream_idle",
            ),
        ] {
            set_positive_duration(value, slot, &tp.field(name), p);
        }
    }
    if let Some(limits) = lenient_ref(&file.limits, &path.field("limits"), p) {
        let lp = path.field("limits");
        let l = &mut out.limits;
        for (value, slot, name, range) in [
            (
                limits.max_connections,
                &mut l.max_connections,
                "max_connections",
                1..=u32::MAX,
            ),
            (
                limits.max_header_bytes,
                &mut l.max_header_bytes,
                "max_header_bytes",
                1024..=MAX_HEADER_BYTES_CEILING,
            ),
            (
                limits.max_headers,
                &mut l.max_headers,
                "max_headers",
                1..=MAX_HEADERS_CEILING,
            ),
        ] {
            match value {
                Some(v) if range.contains(&v) => *slot = v,
                Some(v) => p.push(
                    &lp.field(name),
                    format!("{v} is out of range {}..={}", range.start(), range.end()),
                ),
                None => {}
            }
        }
    }
    match file.retries {
        Some(r) if r <= MAX_RETRIES => out.retries = r,
        Some(r) => p.push(
            &path.field("retries"),
            format!("{r} is out of range 0..={MAX_RETRIES}"),
        ),
        None => {}
    }
    if let Some(backoff) = lenient_ref(&file.backoff, &path.field("backoff"), p) {
        let bp = path.field("backoff");
        set_positive_duration(
            backoff.initial,
            &mut out.backoff.initial,
            &bp.field("initial"),
            p,
        );
        set_positive_duration(backoff.max, &mut out.backoff.max, &bp.field("max"), p);
        if out.backoff.max < out.backoff.initial {
            p.push(&bp.field("max"), "must not be shorter than backoff.initial");
        }
    }
    if let Some(cidrs) = &file.trusted_proxies {
        let tp = path.field("trusted_proxies");
        out.trusted_proxies = cidrs
            .iter()
            .enumerate()
            .filter_map(|(i, text)| parse_net(text, &tp.index(i), p))
            .collect();
    }
    out
}

/// A lenient section borrowed: `Some` when present and parsed.
fn lenient_ref<'a, T>(
    item: &'a Option<Lenient<T>>,
    path: &FieldPath,
    p: &mut Problems,
) -> Option<&'a T> {
    match item.as_ref()? {
        Lenient::Parsed(value) => Some(value),
        Lenient::Invalid {
            path: inner,
            message,
        } => {
            p.push_nested(path, inner, message);
            None
        }
    }
}

fn set_positive_duration(
    value: Option<DurationText>,
    slot: &mut Duration,
    path: &FieldPath,
    p: &mut Problems,
) {
    match value {
        Some(DurationText(d)) if d.is_zero() => p.push(path, "must be greater than zero"),
        Some(DurationText(d)) => *slot = d,
        None => {}
    }
}

fn parse_socket_addr(text: &str, path: &FieldPath, p: &mut Problems) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            p.push(
                path,
                format!("`{text}` is not ip:port (e.g. 10.0.0.7:8080 or [fd00::7]:8080; host names are not resolved)"),
            );
            None
        }
    }
}

fn parse_net(text: &str, path: &FieldPath, p: &mut Problems) -> Option<IpNet> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net.trunc());
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    p.push(
        path,
        format!("`{text}` is not an IP address or CIDR (e.g. 10.0.0.0/8)"),
    );
    None
}

fn is_valid_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

/// Two ports cannot listen on the same address and port, and a wildcard address (`0.0.0.0`,
/// `::`) takes the port on every address. Port 0 (any free port) never conflicts.
fn check_bind_conflicts(model: &Model, order: &HashMap<String, usize>, p: &mut Problems) {
    let mut taken: Vec<(SocketAddr, String)> = vec![(model.admin.listen, "admin.listen".into())];
    for service in model.services.values() {
        let index = order.get(&service.name).copied().unwrap_or_default();
        for port in service.ports.values() {
            if port.bind.port() == 0 {
                continue;
            }
            let here = format!("services[{index}] port `{}`", port.key.port);
            if let Some((_, other)) = taken.iter().find(|(addr, _)| overlaps(*addr, port.bind)) {
                p.push(
                    &FieldPath::root()
                        .field("services")
                        .index(index)
                        .field("ports"),
                    format!("{} ({here}) is already used by {other}", port.bind),
                );
            } else {
                taken.push((port.bind, here));
            }
        }
    }
}

fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
