//! A Kubernetes cluster for end-to-end tests: the test API server (`lb_k8s_testing`, the real
//! HTTP API over TLS that kube-rs talks to unmodified) and Gantry started from a file whose
//! `kubernetes:` section points at it, with an address pool on loopback so the load
//! balancers' addresses are reachable. Endpoints are loopback origins, which the server only
//! accepts because these tests opt in (a real API server refuses them).

use std::net::{IpAddr, SocketAddr};

use gantry::Gantry;
use lb_k8s_testing::{Kind, ObjectId, Options, Part, Policy, TestApiServer};
use serde_json::{json, Value};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::client::read_until_closed;
use super::eventually;

pub struct Cluster {
    pub api: TestApiServer,
    pub gantry: Gantry,
    /// Holds the kubeconfig and Gantry's file.
    dir: tempfile::TempDir,
}

/// The pool the tests' load balancers get their addresses from: one /28 of loopback per test
/// (`pool` picks it), so tests running at once never share an address.
pub fn pool(n: u8) -> (IpAddr, String) {
    let first: IpAddr = format!("127.0.{n}.1").parse().expect("ip");
    (first, format!("127.0.{n}.1-127.0.{n}.14"))
}

impl Cluster {
    /// Gantry with `kubernetes:` extended by `section` (YAML lines indented by 2) and the pool
    /// `range`.
    pub async fn start(range: &str, section: &str) -> Cluster {
        Self::start_with_pools(&[("main", range)], section).await
    }

    /// [`Cluster::start`] with several pools, `(name, range)`.
    pub async fn start_with_pools(pools: &[(&str, &str)], section: &str) -> Cluster {
        Self::start_api(pools, section, true).await
    }

    /// [`Cluster::start`] with an API server that refuses loopback endpoints, as a real one
    /// does: the endpoints must have routable addresses.
    pub async fn start_faithful(range: &str, section: &str) -> Cluster {
        Self::start_api(&[("main", range)], section, false).await
    }

    async fn start_api(pools: &[(&str, &str)], section: &str, loopback_endpoints: bool) -> Cluster {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = Options {
            policy: Policy {
                allow_loopback_endpoints: loopback_endpoints,
            },
            ..Options::default()
        };
        let api = TestApiServer::start(options).await.expect("API server");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("kubeconfig"), api.kubeconfig()).expect("kubeconfig");
        let path = dir.path().join("gantry.yaml");
        let yaml = write_config(&path, pools, section);
        let builder = lb_config::load_builder(&path).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let gantry = Gantry::start_file(builder).await.expect("gantry");
        Cluster { api, gantry, dir }
    }

    pub fn create(&self, object: Value) -> Value {
        self.api
            .create(object)
            .unwrap_or_else(|e| panic!("create: {e:?}"))
    }

    pub fn patch(&self, kind: Kind, name: &str, patch: Value) -> Value {
        let id = id(kind, name);
        self.api
            .patch(&id, Part::Main, &patch)
            .unwrap_or_else(|e| panic!("patch: {e:?}"))
    }

    pub fn delete(&self, kind: Kind, name: &str) {
        let id = id(kind, name);
        self.api
            .delete(&id)
            .unwrap_or_else(|e| panic!("delete: {e:?}"));
    }

    pub fn get(&self, kind: Kind, name: &str) -> Option<Value> {
        self.api.get(&id(kind, name))
    }

    /// The address in the Service's status, once there is one.
    pub async fn ingress_ip(&self, service: &str) -> IpAddr {
        let mut ip = None;
        eventually(&format!("an address in the status of {service}"), || {
            ip = self.get(Kind::Service, service).and_then(|s| {
                s["status"]["loadBalancer"]["ingress"][0]["ip"]
                    .as_str()?
                    .parse()
                    .ok()
            });
            std::future::ready(ip.is_some())
        })
        .await;
        ip.expect("ip")
    }

    /// Events about `service` with `reason`.
    pub fn events(&self, service: &str, reason: &str) -> Vec<Value> {
        self.api
            .list(Kind::Event)
            .into_iter()
            .filter(|e| e["regarding"]["name"] == service && e["reason"] == reason)
            .collect()
    }

    /// Rewrites Gantry's file with `pools` and `section` and reloads it, as SIGHUP would.
    pub async fn reconfigure(&self, pools: &[(&str, &str)], section: &str) {
        let path = self.dir.path().join("gantry.yaml");
        write_config(&path, pools, section);
        gantry::reload::reload_from_file(&self.gantry, &path)
            .await
            .expect("the new file applies");
    }

    /// Stops Gantry and starts it again from the same file, as a process restart would.
    pub async fn restart(&mut self) {
        self.gantry
            .shutdown(std::time::Duration::from_secs(1))
            .await;
        let builder =
            lb_config::load_builder(&self.dir.path().join("gantry.yaml")).expect("config");
        self.gantry = Gantry::start_file(builder).await.expect("gantry restarts");
    }

    /// The address of Gantry's admin endpoint.
    pub fn admin(&self) -> SocketAddr {
        self.gantry.admin_addr().expect("admin")
    }

    pub async fn stop(self) {
        self.gantry
            .shutdown(std::time::Duration::from_secs(1))
            .await;
    }
}

/// Writes Gantry's file: the admin on an ephemeral port, the `kubernetes:` section with the
/// test kubeconfig, `pools` (`(name, range)`), and `section` (more lines of it, or of the
/// file); returns the text.
fn write_config(path: &std::path::Path, pools: &[(&str, &str)], section: &str) -> String {
    let pools: String = pools
        .iter()
        .map(|(name, range)| format!("    - {{ name: {name}, addresses: [\"{range}\"] }}\n"))
        .collect();
    let yaml = format!(
        "admin:\n  listen: 127.0.0.1:0\nkubernetes:\n  kubeconfig: kubeconfig\n  instance: gantry-test\n  address_pools:\n{pools}{section}"
    );
    std::fs::write(path, &yaml).expect("config");
    yaml
}

/// The id of `name` of `kind`: in the `default` namespace, unless cluster-scoped.
fn id(kind: Kind, name: &str) -> ObjectId {
    let namespace = if kind.namespaced() { "default" } else { "" };
    (kind, namespace.into(), name.into())
}

/// A LoadBalancer Service of Gantry's class with TCP ports `(name, port)`.
pub fn load_balancer(name: &str, ports: &[(&str, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
           "spec": {"type": "LoadBalancer", "loadBalancerClass": "gantry.io/lb", "ports": ports}})
}

/// One EndpointSlice of `service` holding `origin` as a ready endpoint of port `port_name`
/// (one slice per origin: loopback origins listen on different ports, and a slice's port
/// number is the same for all its endpoints).
pub fn slice(service: &str, index: usize, port_name: &str, origin: SocketAddr) -> Value {
    endpoint_slice(
        service,
        index,
        port_name,
        origin,
        json!({"ready": true, "serving": true, "terminating": false}),
    )
}

/// [`slice`] with explicit endpoint conditions.
pub fn endpoint_slice(
    service: &str,
    index: usize,
    port_name: &str,
    origin: SocketAddr,
    conditions: Value,
) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
           "metadata": {"name": format!("{service}-{index}"), "namespace": "default",
                        "labels": {"kubernetes.io/service-name": service}},
           "ports": [{"name": port_name, "port": origin.port(), "protocol": "TCP"}],
           "endpoints": [{"addresses": [origin.ip().to_string()], "conditions": conditions}]})
}

/// A port number free on `ip` now (found by binding port 0): Service ports are fixed numbers,
/// so the tests pick ones nothing listens on.
pub fn free_port(ip: IpAddr) -> u16 {
    let listener = std::net::TcpListener::bind((ip, 0)).expect("bind");
    listener.local_addr().expect("addr").port()
}

/// One HTTP/1.0 request through `addr`: the answering origin's name, or `None` when the
/// connection was refused, reset or closed without an answer.
pub async fn origin_behind(addr: SocketAddr) -> Option<String> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    ask(stream).await
}

/// [`origin_behind`] over a connection already made (TLS, say).
pub async fn ask<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> Option<String> {
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: lb\r\n\r\n")
        .await
        .ok()?;
    let answer = read_until_closed(&mut stream).await;
    let origin = answer
        .lines()
        .find_map(|line| line.strip_prefix("x-origin: "))?
        .trim()
        .to_owned();
    Some(origin)
}
