//! `lb-k8s-testing`: a Kubernetes API server for tests: the real HTTP API over TLS on
//! loopback, so kube-rs (and Gantry) talk to it unmodified, for the kinds Gantry uses. A
//! crate of its own so that `lb-k8s` is the source alone, and this can grow (more kinds)
//! without crowding it; only tests and benchmarks depend on it.
//!
//! It keeps what a real kube-apiserver promises and refuses what it refuses: LIST with a
//! resourceVersion and pages cut from one snapshot, WATCH streams that replay from a
//! resourceVersion (a deletion at its own), send bookmarks and end with `410 Gone` once that
//! version has expired; `409 Conflict` on a stale update;
//! the `status` subresource; merge and JSON patches (a failed `test` is `422`); finalizers
//! (`deletionTimestamp` set, the object kept until the list is empty); Service defaulting,
//! node port allocation and validation; EndpointSlices with `addressType` and routable
//! addresses only (loopback only when a test opts in, see [`Options`]); `events.k8s.io`
//! Events. It is not a complete server: no admission webhooks, no RBAC (one bearer token),
//! no strategic-merge or apply patches (`415`), no metadata-only responses (`406`).

mod http;
mod ops;
mod patch;
mod rules;
mod select;
mod store;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use self::http::{Fault, Seen};
pub use self::ops::{Part, PatchType};
pub use self::rules::Policy;
pub use self::store::{ApiError, Kind, ObjectId};

use self::http::Shared;
use self::ops::Api;
use self::store::Store;

/// The server's choices a test may make.
#[derive(Clone, Debug)]
pub struct Options {
    /// What writes may carry (loopback endpoints, for tests whose origins are on loopback).
    pub policy: Policy,
    /// How often a watch that allows bookmarks gets one.
    pub bookmark_every: Duration,
    /// The address it listens on (an ephemeral port); its certificate names it.
    pub address: IpAddr,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            policy: Policy::default(),
            bookmark_every: Duration::from_secs(1),
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }
}

/// A running test API server; dropping it stops it and ends every connection.
pub struct TestApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: String,
    acceptor: tokio_rustls::TlsAcceptor,
    tasks: JoinSet<()>,
}

/// The time now, as the API writes timestamps.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Binding or configuring the socket.
    #[error("test API server socket: {0}")]
    Io(#[from] std::io::Error),
    /// Making its certificate.
    #[error("test API server certificate: {0}")]
    Certificate(String),
}

impl TestApiServer {
    /// Starts a server on an ephemeral port of `options.address` (127.0.0.1 unless told),
    /// with its own CA and token.
    pub async fn start(options: Options) -> Result<Self, StartError> {
        let (ca_pem, tls) = certificates(options.address).map_err(StartError::Certificate)?;
        let listener = TcpListener::bind((options.address, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Store::default(),
            policy: options.policy,
            token: format!("gantry-test-{:x}", addr.port() as u64 * 0x9e37_79b9),
            bookmark_every: options.bookmark_every,
            seen: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
        });
        let mut server = TestApiServer {
            shared,
            addr,
            ca_pem,
            acceptor: tokio_rustls::TlsAcceptor::from(tls),
            tasks: JoinSet::new(),
        };
        server.serve(listener);
        Ok(server)
    }

    /// Accepts on `listener` until stopped (or paused).
    fn serve(&mut self, listener: TcpListener) {
        let serving = Arc::clone(&self.shared);
        let acceptor = self.acceptor.clone();
        self.tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let shared = Arc::clone(&serving);
                connections.spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        self::http::serve(Arc::clone(&shared), request)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
    }

    /// Goes away as a stopped API server does: the port refuses connections and every open
    /// one (watches included) ends. The objects are kept for [`TestApiServer::resume`].
    pub fn pause(&mut self) {
        self.tasks.abort_all();
    }

    /// Comes back on the same address after [`TestApiServer::pause`] with the same objects,
    /// but, as after an etcd restart or a compaction, without their history: a watch from a
    /// resourceVersion it had answers `410 Gone`, and its clients must list again.
    pub async fn resume(&mut self) -> std::io::Result<()> {
        while self.tasks.join_next().await.is_some() {}
        self.shared.store.compact();
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    /// `https://ADDRESS:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA certificate (PEM) that signed the server's.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The bearer token it accepts.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// A kubeconfig for it: the server, its CA, the token.
    pub fn kubeconfig(&self) -> String {
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: gantry\n  user:\n    token: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: gantry\n    namespace: default\ncurrent-context: test\n",
            self.url(),
            self.shared.token
        )
    }

    fn api(&self) -> Api<'_> {
        Api {
            store: &self.shared.store,
            policy: &self.shared.policy,
        }
    }

    /// Creates `object` (its `apiVersion` and `kind` say what it is), as a POST would.
    pub fn create(&self, object: Value) -> Result<Value, ApiError> {
        let id = identify(&object)?;
        self.api().create(&id, object)
    }

    /// Merge-patches the object `id` (through `part`), as a PATCH would.
    pub fn patch(&self, id: &ObjectId, part: Part, patch: &Value) -> Result<Value, ApiError> {
        self.api().patch(id, part, PatchType::Merge, patch)
    }

    /// Replaces the object with `object`, which carries the resourceVersion it was read at.
    pub fn replace(&self, object: Value) -> Result<Value, ApiError> {
        let id = identify(&object)?;
        self.api().replace(&id, Part::Main, object)
    }

    /// Deletes `id`, as a DELETE would (with finalizers it is only marked).
    pub fn delete(&self, id: &ObjectId) -> Result<Value, ApiError> {
        self.api().delete(id)
    }

    /// The object `id`, if it exists.
    pub fn get(&self, id: &ObjectId) -> Option<Value> {
        self.shared.store.get(id)
    }

    /// The objects of `kind`.
    pub fn list(&self, kind: Kind) -> Vec<Value> {
        self.shared.store.list(kind, None).0
    }

    /// The requests answered so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Answers the next requests matching `fault` with its status.
    pub fn inject(&self, fault: Fault) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(fault);
    }

    /// Forgets every fault not yet used up: requests are answered normally again.
    pub fn clear_faults(&self) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Ends every open watch with `410 Gone` and forgets the history, so clients must list
    /// again.
    pub fn expire_watches(&self) {
        self.shared.store.expire_watches();
    }

    /// Stops the server: no new connections, every open one ends.
    pub fn stop(mut self) {
        self.tasks.abort_all();
    }
}

/// The id of `object`, from its `apiVersion`, `kind` and metadata.
pub fn identify(object: &Value) -> Result<ObjectId, ApiError> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind_name = object["kind"].as_str().unwrap_or_default();
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.api_version() == api_version && k.name() == kind_name)
        .ok_or_else(|| {
            ApiError::bad_request(format!("no kind {kind_name} in {api_version} here"))
        })?;
    let namespace = if kind.namespaced() {
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned()
    } else {
        String::new()
    };
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok((kind, namespace, name))
}

/// A CA and a server certificate for 127.0.0.1 signed by it: the CA's PEM and the TLS config.
fn certificates(address: IpAddr) -> Result<(String, Arc<rustls::ServerConfig>), String> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let err = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).map_err(err)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    if !address.is_loopback() {
        params.subject_alt_names.push(SanType::IpAddress(address));
    }
    let cert = params.signed_by(&key, &ca, &ca_key).map_err(err)?;
    let key_der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der())?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key_der)
    .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((ca.pem(), Arc::new(config)))
}
