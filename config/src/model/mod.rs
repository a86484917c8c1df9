//! The validated, immutable model the runtime consumes. Every default is applied and every
//! reference resolved (certificates are read and checked), so the runtime never has to
//! second-guess it. The model does not know which source it came from: certificate material
//! carries its own [`CertificateSource`] (a file, or data handed over by another source such as
//! a Kubernetes Secret), and only file sources are watched for changes. It serializes to JSON
//! for `/config` with key material left out.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod policy;

pub use self::policy::{
    AffinityPolicy, BalancerPolicy, HashKey, HealthPolicy, PluginBinary, PolicySource,
    ShadowPolicy, Shadows,
};
pub use crate::addresses::{AddressRange, Networks};
use crate::problems::FieldPath;
pub use crate::routing::{
    Announce, Bfd, Bgp, Community, Daemon, Password, Peer, RoutedPool, Routing, Vrrp,
};
use rustls::sign::CertifiedKey;
use serde::{Serialize, Serializer};

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Model {
    /// The admin listener.
    pub admin: Admin,
    /// Process-wide settings.
    pub runtime: Runtime,
    /// Sandbox limits of policy plugins.
    pub plugin_limits: PluginLimits,
    /// Services by name (shared: a model built from another's keeps the services it did not
    /// change without copying them).
    pub services: BTreeMap<String, Arc<Service>>,
    /// The Kubernetes source, when configured.
    pub kubernetes: Option<Kubernetes>,
    /// Announcing the served addresses through a routing daemon, when configured.
    pub routing: Option<Routing>,
}

impl Model {
    /// Every port of every service, in name order.
    pub fn ports(&self) -> impl Iterator<Item = &Port> {
        self.services.values().flat_map(|s| s.ports.values())
    }

    /// The port with this key, if any.
    pub fn port(&self, key: &ListenerKey) -> Option<&Port> {
        self.services.get(&key.service)?.ports.get(&key.port)
    }

    /// Files whose contents the model depends on besides the config file itself (certificates,
    /// keys, plugins and the admin token read from files; material from other sources is not
    /// a file): a change
    /// to any of them means the model must be rebuilt.
    pub fn referenced_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .ports()
            .filter_map(|p| p.tls.as_ref())
            .flat_map(|tls| tls.certificates.iter())
            .flat_map(|c| match &c.source {
                CertificateSource::File { cert, key } => vec![cert.clone(), key.clone()],
                CertificateSource::Inline { .. } => Vec::new(),
            })
            .chain(
                self.ports()
                    .flat_map(Port::policies)
                    .filter_map(|policy| match policy {
                        PolicySource::File(plugin) => Some(plugin.file.clone()),
                        PolicySource::Builtin(_) | PolicySource::Native => None,
                    }),
            )
            .chain(self.admin.token.as_ref().and_then(|t| t.file.clone()))
            .chain(
                self.routing
                    .iter()
                    .filter_map(|r| match &r.daemon {
                        Daemon::Bird(bgp) => Some(bgp.peers.iter()),
                        Daemon::Keepalived(_) => None,
                    })
                    .flatten()
                    .filter_map(|peer| peer.password.as_ref().map(|p| p.file.clone())),
            )
            .collect();
        files.sort();
        files.dedup();
        files
    }
}

/// `plugin_limits:`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PluginLimits {
    /// Deadline of one `pick`.
    #[serde(with = "duration_text")]
    pub call_deadline: Duration,
    /// Deadline of `configure` and `set-backends`.
    #[serde(with = "duration_text")]
    pub setup_deadline: Duration,
    /// Linear memory cap per instance, bytes.
    pub memory_bytes: u64,
    /// Consecutive faults before quarantine.
    pub quarantine_after: u32,
}

/// `admin:`
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Admin {
    /// Listen address.
    pub listen: SocketAddr,
    /// The bearer token `/config` and `/metrics` ask for, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<AdminToken>,
    /// `/config` and `/metrics` are served without a token off loopback too, as the operator
    /// asked.
    pub open: bool,
}

/// Who may read the admin endpoint's `/config` and `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminAccess {
    /// Whoever presents the token.
    Token,
    /// Anyone: the listener is on loopback, where only this host reaches it.
    Loopback,
    /// Anyone who reaches the listener, off loopback: `admin.open: true`.
    Open,
    /// No one: the listener is off loopback and no token is configured; the answer says how
    /// to configure one.
    TokenNeeded,
}

impl Admin {
    /// Who may read `/config` and `/metrics`.
    pub fn access(&self) -> AdminAccess {
        if self.token.is_some() {
            AdminAccess::Token
        } else if self.listen.ip().is_loopback() {
            AdminAccess::Loopback
        } else if self.open {
            AdminAccess::Open
        } else {
            AdminAccess::TokenNeeded
        }
    }

    /// What `gantry check` warns of, with the field it is about: an endpoint off loopback
    /// that is open to anyone, or that serves its configuration and metrics to no one.
    pub fn warning(&self) -> Option<(&'static str, String)> {
        match self.access() {
            AdminAccess::Token | AdminAccess::Loopback => None,
            AdminAccess::Open => Some((
                "admin.open",
                format!(
                    "/config and /metrics are served without a token to anyone who reaches {}: the services, their addresses and backends",
                    self.listen
                ),
            )),
            AdminAccess::TokenNeeded => Some((
                "admin.listen",
                format!(
                    "{} is not a loopback address and no token is set: /config and /metrics will answer 401 (set admin.token_file or admin.token_env; or admin.open: true to serve them to anyone)",
                    self.listen
                ),
            )),
        }
    }
}

/// The admin token: where it came from (shown), and the secret (never shown, logged or
/// serialized).
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct AdminToken {
    /// `file:PATH` or `env:NAME`.
    pub source: String,
    /// The file it was read from, watched like certificates.
    #[serde(skip)]
    pub file: Option<PathBuf>,
    #[serde(skip)]
    secret: Vec<u8>,
}

impl AdminToken {
    /// A token read from `file`, or else from the environment variable `env`.
    pub fn new(file: Option<PathBuf>, env: &str, secret: Vec<u8>) -> Self {
        let source = match &file {
            Some(file) => format!("file:{}", file.display()),
            None => format!("env:{env}"),
        };
        AdminToken {
            source,
            file,
            secret,
        }
    }

    /// Whether an `Authorization` header value presents this token (`Bearer TOKEN`). The
    /// comparison takes the same time wherever the first difference is, so the token cannot
    /// be guessed a byte at a time from response times.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(presented) = authorization.and_then(|v| v.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let presented = presented.trim_ascii();
        if presented.len() != self.secret.len() {
            return false;
        }
        presented
            .iter()
            .zip(&self.secret)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// `runtime:`
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Runtime {
    /// Worker threads; `None` = one per CPU.
    pub workers: Option<usize>,
    /// Grace period for draining on shutdown and on port removal.
    #[serde(with = "duration_text")]
    pub shutdown_grace: Duration,
    /// Poll interval for file changes.
    #[serde(with = "duration_text")]
    pub watch_interval: Duration,
    /// Whether to emit access log lines.
    pub access_log: bool,
    /// Where compiled plugins are kept across restarts.
    pub plugin_cache: PluginCache,
}

/// `runtime.plugin_cache`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginCache {
    /// Compile at every start.
    Off,
    /// The service's cache folder, found from the environment.
    Auto,
    /// This folder.
    Folder(PathBuf),
}

/// A service: a name, an address and ports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Service {
    /// Unique name.
    pub name: String,
    /// Listen address of its ports.
    pub address: IpAddr,
    /// Ports by name.
    pub ports: BTreeMap<String, Port>,
    /// Where it came from.
    pub source: ServiceSource,
}

/// Where a service came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceSource {
    /// The configuration file.
    #[default]
    File,
    /// A Kubernetes object.
    Kubernetes(ObjectSource),
}

/// The Kubernetes object a service was built from, as last read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ObjectSource {
    /// `Service`.
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: String,
    /// The resourceVersion it was read at.
    pub resource_version: String,
}

/// The `kubernetes:` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Kubernetes {
    /// How to reach the cluster.
    pub credentials: KubeCredentials,
    /// The `spec.loadBalancerClass` Gantry answers to.
    pub load_balancer_class: String,
    /// Also take LoadBalancer Services that name no class.
    pub default_provider: bool,
    /// Where LoadBalancer Services' traffic goes by default.
    pub backends: KubeBackends,
    /// Where NodePort Services are served; `None`: they are not.
    pub node_port_address: Option<IpAddr>,
    /// Address pools, in order.
    pub address_pools: Vec<AddressPool>,
    /// The name Events are reported under.
    pub instance: String,
    /// The Lease that decides which replica writes; `None`: this one writes without.
    pub leader_election: Option<LeaderElection>,
    /// How long a burst of changes is gathered into one apply.
    #[serde(with = "duration_text")]
    pub batch_delay: Duration,
}

/// Which replica writes to the cluster: the holder of a Lease (client-go's leader election).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeaderElection {
    /// The Lease's name.
    pub lease_name: String,
    /// Its namespace.
    pub lease_namespace: String,
    /// How long a renewal holds the Lease (whole seconds).
    #[serde(with = "duration_text")]
    pub lease_duration: Duration,
    /// How long the holder writes after its last renewal.
    #[serde(with = "duration_text")]
    pub renew_deadline: Duration,
    /// How often the Lease is tried or renewed.
    #[serde(with = "duration_text")]
    pub retry_period: Duration,
}

/// How Gantry reaches the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KubeCredentials {
    /// A kubeconfig file and an optional context.
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The context; its current one when `None`.
        context: Option<String>,
    },
    /// The service account of the pod Gantry runs in.
    InCluster,
}

/// Where a LoadBalancer Service's traffic goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KubeBackends {
    /// The Service's endpoints.
    Pods,
    /// Every eligible node's `nodePort`.
    Nodes,
}

/// A named pool of load-balancer addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AddressPool {
    /// Its name.
    pub name: String,
    /// Whether its CIDRs leave out their reserved addresses (see [`AddressRange::of_net`]).
    pub skip_reserved: bool,
    /// Its addresses.
    pub ranges: Vec<AddressRange>,
}

/// Identity of a listener across reloads: a reload that keeps the key and the bind address
/// keeps the socket.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ListenerKey {
    /// Service name.
    pub service: String,
    /// Port name within the service.
    pub port: String,
}

impl fmt::Display for ListenerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.port)
    }
}

/// One listening port and everything about how it is served.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Port {
    /// Service and port name.
    pub key: ListenerKey,
    /// Address to bind.
    pub bind: SocketAddr,
    /// What is spoken on the port.
    pub protocol: Protocol,
    /// Where traffic goes, in file order.
    pub backends: Vec<Backend>,
    /// Certificates, for `tls` and `https`.
    pub tls: Option<Arc<TlsSettings>>,
    /// PROXY protocol header sent to backends (`tcp`/`tls`).
    pub proxy_protocol: Option<ProxyProtocol>,
    /// HTTP version spoken to backends (`http`/`https`).
    pub backend_protocol: BackendProtocol,
    /// The balancing policy.
    pub balancer: BalancerPolicy,
    /// Session affinity, if any.
    pub affinity: Option<AffinityPolicy>,
    /// Health policies; a backend is healthy when none of them holds it out.
    pub health: Vec<HealthPolicy>,
    /// Policies run beside the serving ones, their answers only compared.
    #[serde(skip_serializing_if = "Shadows::is_empty")]
    pub shadow: Shadows,
    /// Timeouts, limits and retry policy.
    pub settings: PortSettings,
    /// Where in the file this port was written, for diagnostics about it found later.
    #[serde(skip)]
    pub origin: FieldOrigin,
}

impl Port {
    /// The plugins this port runs: its balancer's, its affinity's, its health policies'.
    pub fn policies(&self) -> impl Iterator<Item = &PolicySource> {
        std::iter::once(&self.balancer.policy)
            .chain(self.affinity.as_ref().map(|a| &a.policy))
            .chain(self.health.iter().map(|h| &h.policy))
    }
}

/// The field path a part of the model came from (`services[2].ports[0]`). Not part of what a
/// port *is*: moving a port within the file changes nothing, so it always compares equal.
#[derive(Clone, Debug, Default)]
pub struct FieldOrigin(pub FieldPath);

impl PartialEq for FieldOrigin {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl fmt::Display for FieldOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a port speaks to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Layer-4 proxy.
    Tcp,
    /// TLS terminated, then layer-4.
    Tls,
    /// HTTP proxy.
    Http,
    /// TLS terminated, then HTTP proxy.
    Https,
    /// UDP datagrams, relayed by flow.
    Udp,
}

impl Protocol {
    /// True for `udp`: a datagram socket, not a stream one.
    pub fn is_udp(self) -> bool {
        self == Protocol::Udp
    }

    /// True for `tls` and `https`.
    pub fn terminates_tls(self) -> bool {
        matches!(self, Protocol::Tls | Protocol::Https)
    }

    /// True for `http` and `https`.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https)
    }

    /// The lowercase name used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Udp => "udp",
        }
    }
}

/// PROXY protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// Text header.
    V1,
    /// Binary header.
    V2,
}

/// HTTP version spoken to backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendProtocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 cleartext, prior knowledge.
    H2c,
}

/// A backend address and its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Backend {
    /// Where to connect.
    pub address: SocketAddr,
    /// Relative share of new work; 0 = none.
    pub weight: u32,
}

/// Timeouts, limits and retry policy of one port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortSettings {
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Limits.
    pub limits: Limits,
    /// Further backends tried after a failed connect.
    pub retries: u32,
    /// Skip time after failed connects.
    pub backoff: Backoff,
    /// Clients whose forwarding headers are trusted.
    pub trusted_proxies: Networks,
    /// Clients allowed to connect; empty: everyone.
    pub source_ranges: Networks,
}

/// All timeouts of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// Backend connect.
    #[serde(with = "duration_text")]
    pub connect: Duration,
    /// HTTP/1 request head, from its first byte.
    #[serde(with = "duration_text")]
    pub header_read: Duration,
    /// TLS handshake.
    #[serde(with = "duration_text")]
    pub tls_handshake: Duration,
    /// HTTP keep-alive wait for the next request.
    #[serde(with = "duration_text")]
    pub client_idle: Duration,
    /// Layer-4 connection with no traffic.
    #[serde(with = "duration_text")]
    pub tcp_idle: Duration,
    /// Backend response read.
    #[serde(with = "duration_text")]
    pub upstream_read: Duration,
    /// Pooled backend connection idle.
    #[serde(with = "duration_text")]
    pub upstream_idle: Duration,
    /// UDP flow idle, before its backend has answered.
    #[serde(with = "duration_text")]
    pub udp_idle: Duration,
    /// UDP flow idle, once datagrams have gone both ways.
    #[serde(with = "duration_text")]
    pub udp_stream_idle: Duration,
    /// Draining: an answered UDP flow quiet this long has nothing in flight and ends at once.
    #[serde(with = "duration_text")]
    pub udp_drain_quiet: Duration,
}

/// Client-facing limits of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Open client connections.
    pub max_connections: u32,
    /// HTTP request head size.
    pub max_header_bytes: u32,
    /// HTTP request header count.
    pub max_headers: u32,
    /// UDP flows per port.
    pub max_flows: u32,
    /// Largest UDP datagram relayed, bytes.
    pub max_datagram_bytes: u32,
}

/// Passive back-off after failed connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Backoff {
    /// First skip.
    #[serde(with = "duration_text")]
    pub initial: Duration,
    /// Longest skip.
    #[serde(with = "duration_text")]
    pub max: Duration,
}

/// Certificates of a TLS port.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TlsSettings {
    /// In file order; the first is the default.
    pub certificates: Vec<Certificate>,
}

/// A loaded, checked certificate chain with its key.
#[derive(Clone, Serialize)]
pub struct Certificate {
    /// Lowercase server names (exact or `*.` wildcard) this certificate answers.
    pub names: Vec<String>,
    /// Where the chain and key came from (the key itself is never serialized).
    #[serde(flatten)]
    pub source: CertificateSource,
    /// SHA-256 of the leaf certificate, hex: what operators compare with `openssl x509`.
    pub sha256: String,
    /// SHA-256 over the whole chain and the key, to tell a changed pair from an unchanged one.
    #[serde(skip)]
    pub(crate) material_digest: [u8; 32],
    /// The chain and signing key, ready for rustls.
    #[serde(skip)]
    pub certified_key: Arc<CertifiedKey>,
}

/// Where a certificate's chain and key came from. Shown in `/config` as `cert` and `key` (the
/// files) or `from` (a label such as `secret default/shop-tls`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum CertificateSource {
    /// PEM files, watched for changes.
    File {
        /// The chain's file.
        cert: PathBuf,
        /// The key's file.
        key: PathBuf,
    },
    /// PEM data handed over by a source that is not a file.
    Inline {
        /// What it came from, for people: `secret default/shop-tls`.
        from: String,
    },
}

impl fmt::Display for CertificateSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertificateSource::File { cert, .. } => write!(f, "{}", cert.display()),
            CertificateSource::Inline { from } => f.write_str(from),
        }
    }
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names
            && self.source == other.source
            && self.material_digest == other.material_digest
    }
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("names", &self.names)
            .field("source", &self.source)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// Durations print in `/config` the way they are written in the file.
pub(crate) mod duration_text {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}
