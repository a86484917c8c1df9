//! The configuration as an operator writes it (YAML). Every field is optional here so that
//! validation, not the parser, decides what is missing and can report all of it at once; the
//! defaults and ranges are documented on each field and applied by [`crate::ModelBuilder`].
//! Reference: `docs/configuration.md`.
//!
//! These are also the *spec* another source fills in from code (a Kubernetes Service becomes a
//! [`ServiceFile`]), so everything passes the same validation. A few values only code can give
//! are marked as such: a backend already resolved to an address ([`BackendFile::Resolved`])
//! and certificate material held in memory ([`CertificateFile::pem`]).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::lenient::{DurationText, Lenient};
use crate::model::Backend;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`, `/config`).
    pub admin: Option<Lenient<AdminFile>>,
    /// Process-wide settings.
    pub runtime: Option<Lenient<RuntimeFile>>,
    /// Port settings every port inherits unless it sets its own.
    pub defaults: Option<Lenient<PortSettingsFile>>,
    /// Policy plugins written by users, by the name ports refer to them with.
    pub plugins: Option<BTreeMap<String, Lenient<PluginFile>>>,
    /// Sandbox limits every plugin runs under.
    pub plugin_limits: Option<Lenient<PluginLimitsFile>>,
    /// The services Gantry exposes.
    #[serde(default)]
    pub services: Vec<Lenient<ServiceFile>>,
    /// The Kubernetes source: serve a cluster's LoadBalancer (and NodePort) Services. Without
    /// this section nothing about Kubernetes runs.
    pub kubernetes: Option<Lenient<KubernetesFile>>,
    /// Announcing the addresses Gantry serves to the network (BGP through BIRD), so that
    /// several appliances can serve them at once. Without this section nothing is announced.
    pub routing: Option<Lenient<RoutingFile>>,
}

/// `routing:`: Gantry tells a routing daemon running beside it which addresses to announce;
/// it never speaks BGP itself. Reference: `docs/routing.md`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingFile {
    /// The daemon: `bird` (BGP through BIRD 2) or `keepalived` (VRRP, for networks without
    /// BGP). Required.
    pub daemon: Option<String>,
    /// BIRD's control socket. Default `/run/bird/bird.ctl`.
    pub control_socket: Option<String>,
    /// The folder Gantry writes its part of the daemon's configuration to (BIRD's
    /// `gantry.conf`; keepalived's `addresses.conf` and `ready`) and keeps its locks in.
    /// Default `/run/gantry/bird` or `/run/gantry/keepalived`.
    pub directory: Option<String>,
    /// keepalived's pid file: Gantry has it reload (SIGHUP) when the addresses change.
    /// Default: none (something else reloads it: the appliance's path unit).
    pub pid_file: Option<String>,
    /// This appliance's AS number: 1 to 4294967294. Required with BIRD.
    pub asn: Option<u64>,
    /// The BGP router ID (an IPv4 address); default: BIRD's own (`router id` in its
    /// configuration, else the lowest IPv4 address of its interfaces).
    pub router_id: Option<String>,
    /// The routers to announce to: 1 to 32.
    #[serde(default)]
    pub peers: Vec<Lenient<PeerFile>>,
    /// When an address is announced: `always` while it is served (default), or `healthy`:
    /// only while at least one of its ports has a healthy backend.
    pub announce: Option<String>,
    /// How long a stopping Gantry keeps serving after it withdrew its routes, so routers stop
    /// sending before its sockets close: 0 to 5m, default 2s.
    pub withdraw_delay: Option<DurationText>,
    /// The BGP hold time, whole seconds, 3s to 65535s (default 9s); keepalives go every
    /// third of it. A dead appliance without BFD is routed around after this long.
    pub hold_time: Option<DurationText>,
    /// BFD timings for the peers that use it.
    pub bfd: Option<Lenient<BfdFile>>,
    /// Which served addresses are announced, and with which attributes. Default: every
    /// address of every `kubernetes.address_pools` pool, without attributes. At most 64.
    #[serde(default)]
    pub pools: Vec<Lenient<RoutedPoolFile>>,
}

/// A router Gantry's routes are announced to.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerFile {
    /// Its address (IPv4 peers get the IPv4 routes, IPv6 peers the IPv6 ones). Required.
    pub address: Option<String>,
    /// Its AS number (the same as `asn` for iBGP). Required.
    pub asn: Option<u64>,
    /// A file holding the session's TCP-MD5 password (surrounding whitespace removed; at most
    /// 80 printable ASCII characters, no `"` or `\\`). Relative to the configuration file.
    pub password_file: Option<String>,
    /// Track the session with BFD, so a dead appliance is routed around in about a second
    /// (`routing.bfd`). Default `false`: the router must run BFD too.
    pub bfd: Option<bool>,
}

/// `routing.bfd:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BfdFile {
    /// The interval BFD packets are sent and expected at: 10ms to 10s, default 100ms.
    pub interval: Option<DurationText>,
    /// Packets missed before the session is down: 1 to 255, default 3.
    pub multiplier: Option<u64>,
}

/// Addresses announced alike: a Kubernetes address pool by name, or addresses.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutedPoolFile {
    /// A `kubernetes.address_pools` pool.
    pub name: Option<String>,
    /// Or addresses (CIDRs, ranges, single addresses), such as the file's services'.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// BGP communities added to its routes: `65000:100` (standard) or `65000:1:2` (large).
    /// At most 32.
    #[serde(default)]
    pub communities: Vec<String>,
    /// `LOCAL_PREF` of its routes, 0 to 4294967295: iBGP peers only (eBGP drops it).
    pub local_preference: Option<u64>,
}

/// `kubernetes:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesFile {
    /// The kubeconfig file to reach the cluster with (its token, client certificate or exec
    /// plugin, and its CA). Default: the credentials of the pod Gantry runs in.
    pub kubeconfig: Option<String>,
    /// The kubeconfig context to use. Default: its current context.
    pub context: Option<String>,
    /// The `spec.loadBalancerClass` Gantry answers to. Default `gantry.io/lb`.
    pub load_balancer_class: Option<String>,
    /// Also take LoadBalancer Services that name no class: Gantry is then the cluster's
    /// default load-balancer provider (no other may be). Default `false`.
    pub default_provider: Option<bool>,
    /// Where a LoadBalancer Service's traffic goes unless its annotation says otherwise:
    /// `pods` (straight to the endpoints, default) or `nodes` (every eligible node's
    /// `nodePort`).
    pub backends: Option<String>,
    /// The address NodePort Services are served on, at their `nodePort`. Default: NodePort
    /// Services are not served.
    pub node_port_address: Option<String>,
    /// Addresses handed to LoadBalancer Services, in order. At most 64 pools.
    #[serde(default)]
    pub address_pools: Vec<Lenient<AddressPoolFile>>,
    /// The name Gantry reports Events under (`reportingInstance`), and the start of its
    /// identity as a Lease holder. Default: the host name.
    pub instance: Option<String>,
    /// Which of several replicas writes to the cluster: the holder of a Lease.
    pub leader_election: Option<Lenient<LeaderElectionFile>>,
    /// How long a burst of changes (many arriving at once: a rollout, a relist) is gathered
    /// into one apply, counted from its first change; a lone change is applied at once.
    /// 0s to 1s, default 10ms.
    pub batch_delay: Option<DurationText>,
}

/// `kubernetes.leader_election:`: replicas watching one cluster all serve, and the holder of
/// one `coordination.k8s.io/v1` Lease alone writes status, finalizers and Events.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderElectionFile {
    /// `false`: this Gantry writes without a Lease (one replica only). Default `true`.
    pub enabled: Option<bool>,
    /// The Lease's name (a DNS subdomain). Default `gantry`.
    pub lease_name: Option<String>,
    /// Its namespace. Default `gantry-system`, where `deploy/rbac.yaml` lets Gantry hold it.
    pub lease_namespace: Option<String>,
    /// How long a holder's last renewal holds the Lease against the others, in whole seconds.
    /// 1s to 1h, default 15s.
    pub lease_duration: Option<DurationText>,
    /// How long the holder goes on writing after its last renewal: below `lease_duration`,
    /// so it has stopped before another replica may take over. Default 10s.
    pub renew_deadline: Option<DurationText>,
    /// How often the Lease is tried or renewed: 100ms to 1h, default 2s, with
    /// `renew_deadline` above 1.2 times it.
    pub retry_period: Option<DurationText>,
}

/// One address pool.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressPoolFile {
    /// Its name (a DNS label), as the pool annotation and the metrics name it. Required.
    pub name: Option<String>,
    /// CIDRs (`192.0.2.0/28`, `2001:db8::/120`), ranges (`192.0.2.10-192.0.2.20`) or single
    /// addresses. At least one; at most 256.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Leave out each CIDR's reserved addresses: IPv4's network and broadcast addresses, IPv6's
    /// subnet-router anycast address (all-zeros interface identifier). Default `true`.
    pub skip_reserved: Option<bool>,
}

/// `admin:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Address of the admin listener. Default `127.0.0.1:9901`: never a public address unless
    /// the operator writes one.
    pub listen: Option<String>,
    /// A file whose contents (surrounding whitespace removed) are the bearer token `/config`
    /// and `/metrics` ask for. Relative to the configuration file's folder.
    pub token_file: Option<String>,
    /// An environment variable holding that token instead (never the token itself: the
    /// configuration may be shown, copied and committed).
    pub token_env: Option<String>,
    /// Serve `/config` and `/metrics` without a token when `listen` is not a loopback address
    /// (off loopback, without a token, they answer 401). Default `false`.
    pub open: Option<bool>,
}

/// `runtime:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFile {
    /// Worker threads of the proxy. Default: one per CPU. Read at start only.
    pub workers: Option<usize>,
    /// How long SIGTERM (or a removed port) lets in-flight work finish. Default `30s`.
    pub shutdown_grace: Option<DurationText>,
    /// How often the config and certificate files are checked for changes. Default `2s`.
    pub watch_interval: Option<DurationText>,
    /// Log one line per request or TCP connection (target `gantry::access`). Default `false`.
    pub access_log: Option<bool>,
    /// Where compiled plugins are kept across restarts: a folder, `auto` (default: systemd's
    /// `$CACHE_DIRECTORY`, else `$XDG_CACHE_HOME/gantry`, else `~/.cache/gantry`) or `off`.
    /// Read at start only.
    pub plugin_cache: Option<String>,
}

/// One item of `services:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// Unique name, also the `service` label in metrics. Required.
    pub name: Option<String>,
    /// The address this service's ports listen on (its load-balancer IP). Default `0.0.0.0`.
    pub address: Option<String>,
    /// The ports of the service; at least one.
    #[serde(default)]
    pub ports: Vec<Lenient<PortFile>>,
}

/// One item of `services[].ports:`.
#[derive(Debug, Default, Deserialize)]
pub struct PortFile {
    /// Name, unique within the service. Required when the service has several ports; defaults
    /// to the port number.
    pub name: Option<String>,
    /// The port to listen on (0 = any free port, useful in tests). Required.
    pub port: Option<u16>,
    /// `tcp` (default), `tls`, `http` or `https`.
    pub protocol: Option<ProtocolFile>,
    /// Where traffic goes: `"ip:port"` or `{address: "ip:port", weight: N}`.
    #[serde(default)]
    pub backends: Vec<Lenient<BackendFile>>,
    /// Certificates, for `tls` and `https` ports.
    pub tls: Option<Lenient<TlsFile>>,
    /// Send a PROXY protocol header (`v1` or `v2`) to backends; `tcp` and `tls` ports only.
    pub proxy_protocol: Option<ProxyProtocolFile>,
    /// How `http`/`https` ports talk to backends: `http1` (default) or `h2c` (gRPC backends).
    pub backend_protocol: Option<BackendProtocolFile>,
    /// The balancing policy. Default: `builtin:round-robin`.
    pub balancer: Option<Lenient<BalancerFile>>,
    /// Session affinity. Default: none.
    pub affinity: Option<Lenient<AffinityFile>>,
    /// Health policies (active checks, passive outlier ejection). Default: none.
    pub health: Option<Vec<Lenient<HealthFile>>>,
    /// Settings that override `defaults:` for this port.
    #[serde(flatten)]
    pub settings: PortSettingsFile,
    /// Any other key: reported as unknown (serde cannot deny unknown fields with `flatten`).
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_yaml::Value>,
}

/// Settings a port may set itself or inherit from `defaults:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSettingsFile {
    /// Timeouts.
    pub timeouts: Option<Lenient<TimeoutsFile>>,
    /// Limits that protect the proxy from clients.
    pub limits: Option<Lenient<LimitsFile>>,
    /// Further backends tried after a failed connect. Default 2.
    pub retries: Option<u32>,
    /// How long a backend whose connect failed is skipped.
    pub backoff: Option<Lenient<BackoffFile>>,
    /// Clients (CIDRs) whose `X-Forwarded-For`/`-Proto` headers are kept and appended to;
    /// from anyone else those headers are replaced. Default: none. At most 4096.
    pub trusted_proxies: Option<Vec<String>>,
    /// Clients (CIDRs or addresses) allowed to connect; any other connection is closed at
    /// once, before a byte reaches a backend, and counted. Default: everyone. At most 4096.
    pub source_ranges: Option<Vec<String>>,
}

/// `timeouts:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    /// Connecting to a backend. Default `5s`.
    pub connect: Option<DurationText>,
    /// Receiving a whole HTTP/1 request head, counted from its first byte. Default `10s`.
    pub header_read: Option<DurationText>,
    /// Completing a TLS handshake. Default `10s`.
    pub tls_handshake: Option<DurationText>,
    /// An HTTP client connection waiting for its next request. Default `60s`.
    pub client_idle: Option<DurationText>,
    /// A TCP or TLS-terminated connection with no bytes either way. Default `1h`.
    pub tcp_idle: Option<DurationText>,
    /// Waiting for a backend to send the next bytes of a response. Default `60s`.
    pub upstream_read: Option<DurationText>,
    /// A pooled keep-alive backend connection left unused. Default `60s`.
    pub upstream_idle: Option<DurationText>,
    /// A UDP flow whose backend has not answered, with no datagram either way. Default `30s`.
    pub udp_idle: Option<DurationText>,
    /// A UDP flow that has had datagrams both ways, with no datagram either way. Default
    /// `120s`.
    pub udp_stream_idle: Option<DurationText>,
    /// On a stop, or when the port is removed: a UDP flow whose backend has answered and that
    /// has had no datagram for this long ends at once instead of being waited for. Default
    /// `1s`.
    pub udp_drain_quiet: Option<DurationText>,
}

/// `limits:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Open client connections per port; more wait in the kernel's accept queue. Default 10000.
    pub max_connections: Option<u32>,
    /// Size of an HTTP request head (request line and headers). Default 65536; answer 431.
    pub max_header_bytes: Option<u32>,
    /// Number of HTTP request headers. Default 100, at most 256; answer 431.
    pub max_headers: Option<u32>,
    /// UDP flows per port (a flow: one client address and port); datagrams of new flows
    /// beyond it are dropped and counted. Default 65536.
    pub max_flows: Option<u32>,
    /// Largest UDP datagram relayed, bytes; a larger one is dropped and counted. Default 65507.
    pub max_datagram_bytes: Option<u32>,
}

/// `backoff:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffFile {
    /// First skip after a failed connect. Default `2s`.
    pub initial: Option<DurationText>,
    /// Longest skip; each further consecutive failure doubles it. Default `30s`.
    pub max: Option<DurationText>,
}

/// `ports[].balancer:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalancerFile {
    /// `builtin:NAME` or the name of an entry under `plugins:`. Default `builtin:round-robin`.
    pub policy: Option<String>,
    /// Parameters handed to the plugin's `configure`; values are scalars, passed as text.
    pub params: Option<BTreeMap<String, serde_yaml::Value>>,
    /// What the request's hash key is made of: `client_ip` (default), `header:NAME` or
    /// `cookie:NAME` (falling back to the client IP when absent).
    pub hash_key: Option<String>,
    /// A balancer run beside this one on the same picks, its answers only compared.
    pub shadow: Option<ShadowFile>,
}

/// `ports[].balancer.shadow:` and `ports[].affinity.shadow:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowFile {
    /// A policy of the same kind as the one it shadows. Required.
    pub policy: Option<String>,
    /// Parameters handed to its `configure`; values are scalars, passed as text.
    pub params: Option<BTreeMap<String, serde_yaml::Value>>,
    /// Share of the serving policy's calls the shadow also sees, percent (0.01 to 100).
    /// Default 100.
    pub sample_percent: Option<f64>,
}

/// `ports[].affinity:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffinityFile {
    /// `builtin:client-ip`, `builtin:cookie`, or the name of an entry under `plugins:`.
    /// Required.
    pub policy: Option<String>,
    /// Parameters handed to the plugin's `configure`; values are scalars, passed as text.
    pub params: Option<BTreeMap<String, serde_yaml::Value>>,
    /// Most keys the port's affinity table remembers (1 to 16777216). Default 262144.
    pub max_entries: Option<u32>,
    /// An affinity run beside this one on the same requests, its answers only compared.
    pub shadow: Option<ShadowFile>,
}

/// One entry of `ports[].health:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    /// `builtin:tcp-check`, `builtin:http-check`, `builtin:outlier`, or the name of an entry
    /// under `plugins:`. Required.
    pub policy: Option<String>,
    /// Parameters handed to the plugin's `configure`; values are scalars, passed as text.
    pub params: Option<BTreeMap<String, serde_yaml::Value>>,
}

/// One entry of `plugins:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginFile {
    /// The component file (`.wasm`). Required.
    pub file: Option<String>,
    /// Expected SHA-256 of the file, hex; a different file is refused.
    pub sha256: Option<String>,
}

/// `plugin_limits:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginLimitsFile {
    /// Longest a `pick` may run before it is interrupted. Default `2ms`.
    pub call_deadline: Option<DurationText>,
    /// Longest `configure` or `set-backends` (table building) may run. Default `1s`.
    pub setup_deadline: Option<DurationText>,
    /// Linear memory one plugin instance may grow to, MiB (1 to 4096). Default 16.
    pub memory_mib: Option<u32>,
    /// Consecutive faults after which a plugin is no longer called until its file changes.
    /// Default 10.
    pub quarantine_after: Option<u32>,
}

/// `ports[].protocol`
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolFile {
    /// Layer-4 proxy.
    Tcp,
    /// TLS terminated by Gantry, then layer-4.
    Tls,
    /// HTTP/1.1 (and h2c prior knowledge) proxy.
    Http,
    /// TLS terminated by Gantry, HTTP/1.1 and HTTP/2 by ALPN.
    Https,
    /// UDP datagrams, by flow.
    Udp,
}

/// `ports[].proxy_protocol`
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocolFile {
    /// Text header.
    V1,
    /// Binary header.
    V2,
}

/// `ports[].backend_protocol`
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendProtocolFile {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 over cleartext, prior knowledge.
    H2c,
}

/// One backend: `"ip:port"` or a map.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum BackendFile {
    /// `"10.0.0.1:8080"`
    Address(String),
    /// `{address: "10.0.0.1:8080", weight: 2}`
    Detailed(BackendDetailFile),
    /// An address and weight a source already knows as values (never read from a file).
    #[serde(skip_deserializing)]
    Resolved(Backend),
}

/// The map form of a backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendDetailFile {
    /// `ip:port`. Required.
    pub address: Option<String>,
    /// Relative share of new connections, 0 to 256 (0 = no new traffic). Default 1.
    pub weight: Option<u32>,
}

/// `ports[].tls:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// Certificates offered by SNI; the first is the default for clients that send no (or an
    /// unknown) server name.
    #[serde(default)]
    pub certificates: Vec<Lenient<CertificateFile>>,
}

/// One item of `tls.certificates:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    /// PEM file with the certificate chain, leaf first. Required.
    pub cert: Option<String>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1). Required.
    pub key: Option<String>,
    /// Server names this certificate answers (`*.example.com` allowed). Default: the DNS names
    /// in the certificate's subjectAltName.
    pub names: Option<Vec<String>>,
    /// The chain and key as PEM data instead of files (never read from a file: a source such
    /// as a Kubernetes Secret gives them); `cert` and `key` are then left out.
    #[serde(skip)]
    pub pem: Option<PemMaterial>,
}

/// A certificate chain and its key as PEM data, with the name of where they came from.
#[derive(Clone, Default)]
pub struct PemMaterial {
    /// For people and for `/config`: `secret default/shop-tls`.
    pub from: String,
    /// The chain, leaf first.
    pub cert: Vec<u8>,
    /// The private key.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for PemMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("PemMaterial")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}
