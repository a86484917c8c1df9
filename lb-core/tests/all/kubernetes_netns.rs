//! The Kubernetes source with routable addresses, as in a real cluster: the whole scenario
//! (API server, Gantry, pods) runs inside a network namespace this test makes, where the
//! pods have addresses of a pod network and the load-balancer pool is routed to the
//! host as the docs say (`ip route add local POOL dev lo`), not configured on any interface.
//! The API server refuses loopback endpoints, as a real one does.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use lb_k8s::testing::Kind;
use serde_json::json;

use crate::support::cluster::{free_port, load_balancer, origin_behind, slice, Cluster};
use crate::support::eventually;
use crate::support::origin::{HttpOrigin, OriginProtocol};

/// A network namespace, deleted when dropped.
struct Netns {
    name: String,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("run `ip` (iproute2)");
    assert!(status.success(), "ip {}: {status}", args.join(" "));
}

impl Netns {
    /// `pods`: an interface (a veth pair, both ends inside) with 10.200.0.2 and .3; the pool 10.201.0.0/28 routed to
    /// the namespace's own host.
    fn create() -> Netns {
        let netns = Netns {
            name: format!("gantry-k8s-{}", std::process::id()),
        };
        let n = netns.name.as_str();
        ip(&["netns", "add", n]);
        ip(&["-n", n, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            n,
            "link",
            "add",
            "pods",
            "type",
            "veth",
            "peer",
            "name",
            "pods-peer",
        ]);
        ip(&["-n", n, "addr", "add", "10.200.0.2/24", "dev", "pods"]);
        ip(&["-n", n, "addr", "add", "10.200.0.3/24", "dev", "pods"]);
        ip(&["-n", n, "link", "set", "pods", "up"]);
        ip(&["-n", n, "link", "set", "pods-peer", "up"]);
        ip(&[
            "-n",
            n,
            "route",
            "add",
            "local",
            "10.201.0.0/28",
            "dev",
            "lo",
        ]);
        netns
    }

    /// Moves the calling thread into the namespace (threads it starts are born there).
    fn enter(&self) {
        let file =
            std::fs::File::open(format!("/var/run/netns/{}", self.name)).expect("netns file");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn routable_pod_addresses_and_a_routed_pool_serve_as_in_a_real_cluster() {
    let netns = Netns::create();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                netns.enter();
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(scenario());
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    });
}

async fn scenario() {
    let first: IpAddr = "10.201.0.1".parse().expect("ip");
    let cluster = Cluster::start_faithful("10.201.0.0/28", "").await;
    let pods = [
        HttpOrigin::start_on(
            "10.200.0.2:0".parse().expect("addr"),
            "pod-2",
            OriginProtocol::Http1,
        )
        .await,
        HttpOrigin::start_on(
            "10.200.0.3:0".parse().expect("addr"),
            "pod-3",
            OriginProtocol::Http1,
        )
        .await,
    ];
    let port = free_port(IpAddr::from([127, 0, 0, 1]));
    cluster.create(load_balancer("web", &[("http", port)]));
    // A real API server refuses loopback endpoints; this one does too.
    let refused = cluster.api.create(slice(
        "web",
        9,
        "http",
        "127.0.0.1:8080".parse().expect("addr"),
    ));
    assert!(
        matches!(&refused, Err(e) if e.code == 422 && e.message.contains("loopback")),
        "{refused:?}"
    );
    for (i, pod) in pods.iter().enumerate() {
        cluster.create(slice("web", i, "http", pod.addr));
    }
    let ip = cluster.ingress_ip("web").await;
    assert_eq!(
        ip, first,
        "the pool's first address (10.201.0.0/28 leaves out .0)"
    );
    let addr = SocketAddr::new(ip, port);
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    eventually("both pods answer through the routed address", || async {
        let origin = origin_behind(addr).await;
        let mut seen = seen.lock().expect("lock");
        seen.extend(origin);
        seen.len() == 2
    })
    .await;
    // One pod goes: no new request reaches it.
    cluster.delete(Kind::EndpointSlice, "web-0");
    eventually("only pod-3 serves", || async {
        let mut only = true;
        for _ in 0..4 {
            only &= origin_behind(addr).await.as_deref() == Some("pod-3");
        }
        only
    })
    .await;
    let status = cluster.get(Kind::Service, "web").expect("web")["status"]["loadBalancer"]
        ["ingress"][0]
        .clone();
    assert_eq!(status["ipMode"], json!("Proxy"));
    cluster.stop().await;
}
