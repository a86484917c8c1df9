//! A routed network of namespaces the test makes (root, iproute2, BIRD 2, nftables): a router
//! running BIRD with ECMP (`merge paths`) and BFD, appliances each running BIRD and the
//! `gantry` binary with a `routing:` section that peers with the router, two backends on the
//! appliances' segment, and a client behind the router. Everything it starts is stopped when
//! it is dropped; nothing touches the host's network.
//!
//! ```text
//!   client 10.1.0.2 ── 10.1.0.1 router 10.0.0.1 ── br0 ─┬─ a1 10.0.0.11 (BIRD, gantry)
//!                                                      ├─ a2 10.0.0.12 (BIRD, gantry)
//!                                                      ├─ b1 10.0.0.21:8080
//!                                                      └─ b2 10.0.0.22:8080
//! ```
//! Every appliance serves `VIP` (203.0.113.0/24 is local on each, AnyIP) and announces it;
//! the router has a route with one next hop per appliance that announces.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lb_k8s::testing::{Options, TestApiServer};
use tokio::runtime::Runtime;

use super::binary::Running;
use super::netns::Netns;
use super::origin::{HttpOrigin, OriginProtocol};

/// The address every appliance serves.
pub const VIP: &str = "203.0.113.10";

/// The router's address on the appliances' segment.
const ROUTER: &str = "10.0.0.1";

/// Long enough for BGP, BFD and a drain on a busy machine; never reached when all is well.
const WAIT: Duration = Duration::from_secs(60);

/// How the appliances' sessions are watched.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// BFD, 100 ms × 3, on both ends.
    Bfd,
    /// The BGP hold time alone (9 s).
    HoldTime,
}

/// A BIRD process in a namespace.
pub struct Bird {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Bird {
    fn start(netns: &Netns, dir: &Path, config: &str) -> Bird {
        let path = dir.join("bird.conf");
        std::fs::write(&path, config).expect("write bird.conf");
        let socket = dir.join("bird.ctl");
        let child = netns
            .command("bird")
            .arg("-f")
            .arg("-c")
            .arg(&path)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start bird (Debian package bird2)");
        let bird = Bird {
            child,
            socket,
            log: dir.join("bird.log"),
        };
        let started = Instant::now();
        while !bird.birdc("show status").contains("Daemon is up") {
            assert!(
                started.elapsed() < WAIT,
                "BIRD did not start: {}",
                bird.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        bird
    }

    /// `birdc COMMAND`'s output.
    pub fn birdc(&self, command: &str) -> String {
        let output = Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(command.split(' '))
            .output()
            .expect("run birdc");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// What BIRD logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One appliance: its namespace, its BIRD, its Gantry.
pub struct Appliance {
    /// `a1`, `a2`.
    pub name: String,
    /// Its address on the segment.
    pub address: String,
    pub netns: Netns,
    pub dir: PathBuf,
    pub bird: Bird,
    /// Its Gantry, while one runs.
    pub gantry: Option<Running>,
}

impl Appliance {
    /// Starts its Gantry and waits until it serves.
    pub async fn start_gantry(&mut self) {
        let mut gantry = Running::start_in(self.netns.name(), &self.dir.join("gantry.yaml"));
        gantry.log("ready").await;
        self.gantry = Some(gantry);
    }

    /// `kill -9` of its Gantry alone (its guard and BIRD live on).
    pub fn kill_gantry(&mut self) {
        self.gantry
            .as_mut()
            .expect("running")
            .child
            .start_kill()
            .expect("kill -9");
    }

    /// Its Gantry's routing folder.
    pub fn routes(&self) -> PathBuf {
        self.dir.join("routes")
    }

    /// Waits until no process holds its routing folder's guard lock: its guard has withdrawn
    /// (or was never needed) and is gone.
    pub async fn guard_gone(&self) {
        let path = self.routes().join("guard.lock");
        let deadline = Instant::now() + WAIT;
        loop {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .expect("guard lock");
            if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the guard lives on",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The whole network.
pub struct Fabric {
    pub router: Netns,
    pub router_bird: Bird,
    _client: Netns,
    /// Runs the client's tasks inside its namespace (taken when the fabric goes).
    client_runtime: Option<Runtime>,
    pub appliances: Vec<Appliance>,
    /// Each backend's namespace, runtime and origin.
    backends: Vec<(Netns, Runtime, HttpOrigin)>,
    /// A Kubernetes API server on the router (10.0.0.1), with the runtime it runs on, when
    /// the appliances serve a cluster.
    cluster: Option<(TestApiServer, Runtime)>,
    _dir: tempfile::TempDir,
}

impl Fabric {
    /// Builds the network, starts BIRD everywhere, the backends, and Gantry on each of
    /// `appliances` appliances (at most 9); returns once every appliance's route is on the
    /// router.
    pub async fn start(appliances: usize, liveness: Liveness) -> Fabric {
        Fabric::start_with(appliances, liveness, false).await
    }

    /// [`Fabric::start`], and with `cluster` a Kubernetes API server on the router that every
    /// appliance serves (`kubernetes:`, pool 203.0.113.32/28, the Lease in `default`).
    pub async fn start_with(appliances: usize, liveness: Liveness, cluster: bool) -> Fabric {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::tempdir().expect("tempdir");
        let router = Netns::create(&format!("ha{id}r"));
        router.ip(&["link", "add", "br0", "type", "bridge"]);
        router.ip(&["link", "set", "br0", "up"]);
        router.ip(&["addr", "add", &format!("{ROUTER}/24"), "dev", "br0"]);
        router.sysctl(&[
            "net.ipv4.ip_forward=1",
            // Each connection's 5-tuple picks its next hop, so one client's connections
            // spread over the appliances.
            "net.ipv4.fib_multipath_hash_policy=1",
        ]);
        let client = Netns::create(&format!("ha{id}c"));
        link(&router, "vc", &client);
        router.ip(&["addr", "add", "10.1.0.1/24", "dev", "vc"]);
        router.ip(&["link", "set", "vc", "up"]);
        host(&client, "10.1.0.2/24", "10.1.0.1");

        let router_dir = dir.path().join("router");
        std::fs::create_dir(&router_dir).expect("router dir");
        let names: Vec<String> = (1..=appliances).map(|i| format!("a{i}")).collect();
        let router_bird = Bird::start(
            &router,
            &router_dir,
            &router_config(&router_dir, &names, liveness),
        );

        let cluster = if cluster {
            let runtime = router.runtime();
            let server = runtime
                .spawn(async {
                    TestApiServer::start(Options {
                        address: ROUTER.parse().expect("ip"),
                        ..Options::default()
                    })
                    .await
                    .expect("API server")
                })
                .await
                .expect("API server");
            Some((server, runtime))
        } else {
            None
        };

        let mut backends = Vec::new();
        for i in 1..=2 {
            let netns = Netns::create(&format!("ha{id}b{i}"));
            segment(&router, &format!("vb{i}"), &netns, &format!("10.0.0.2{i}"));
            let runtime = netns.runtime();
            let bind: SocketAddr = format!("10.0.0.2{i}:8080").parse().expect("addr");
            let name = format!("b{i}");
            let origin = runtime
                .spawn(
                    async move { HttpOrigin::start_on(bind, &name, OriginProtocol::Http1).await },
                )
                .await
                .expect("origin");
            backends.push((netns, runtime, origin));
        }

        let mut started = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let netns = Netns::create(&format!("ha{id}{name}"));
            let address = format!("10.0.0.1{}", i + 1);
            segment(&router, &format!("v{name}"), &netns, &address);
            // The served addresses are local (AnyIP), as docs/routing.md sets them up.
            netns.ip(&["route", "add", "local", "203.0.113.0/24", "dev", "lo"]);
            let appliance_dir = dir.path().join(name);
            // BIRD's include pattern needs the folder (the appliance's tmpfiles.d makes it).
            std::fs::create_dir_all(appliance_dir.join("routes")).expect("appliance dir");
            let bird = Bird::start(
                &netns,
                &appliance_dir,
                &appliance_bird_config(&appliance_dir, &address),
            );
            let mut config = gantry_config(&appliance_dir, &address, liveness);
            if let Some((server, _)) = &cluster {
                std::fs::write(appliance_dir.join("kubeconfig"), server.kubeconfig())
                    .expect("kubeconfig");
                config.push_str(&kubernetes_config(&appliance_dir, name));
            }
            std::fs::write(appliance_dir.join("gantry.yaml"), config).expect("gantry.yaml");
            let mut appliance = Appliance {
                name: name.clone(),
                address,
                netns,
                dir: appliance_dir,
                bird,
                gantry: None,
            };
            appliance.start_gantry().await;
            started.push(appliance);
        }
        let client_runtime = client.runtime();
        let fabric = Fabric {
            router,
            router_bird,
            _client: client,
            client_runtime: Some(client_runtime),
            appliances: started,
            backends,
            cluster,
            _dir: dir,
        };
        let all: Vec<String> = fabric
            .appliances
            .iter()
            .map(|a| a.address.clone())
            .collect();
        fabric.until_next_hops(&all).await;
        if liveness == Liveness::Bfd {
            fabric.until_bfd_up().await;
        }
        fabric
    }

    /// The first two appliances' addresses.
    pub fn pair(&self) -> [String; 2] {
        [
            self.appliances[0].address.clone(),
            self.appliances[1].address.clone(),
        ]
    }

    /// The cluster's API server (with [`Fabric::start_with`]).
    pub fn cluster(&self) -> &TestApiServer {
        &self.cluster.as_ref().expect("a fabric with a cluster").0
    }

    /// The router's next hops to `address` now, sorted.
    pub fn next_hops_of(&self, address: &str) -> Vec<String> {
        let output = self
            .router
            .command("ip")
            .args(["route", "show", address])
            .output()
            .expect("ip route");
        let text = String::from_utf8_lossy(&output.stdout);
        let mut hops: Vec<String> = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_owned())
            .collect();
        hops.sort();
        hops
    }

    /// Waits until the router's next hops to `VIP` are `wanted` (addresses, any order).
    pub async fn until_next_hops(&self, wanted: &[String]) {
        self.until_next_hops_of(VIP, wanted).await;
    }

    /// Waits until the router's next hops to `address` are `wanted` (addresses, any order).
    pub async fn until_next_hops_of(&self, address: &str, wanted: &[String]) {
        let mut wanted = wanted.to_vec();
        wanted.sort();
        let deadline = Instant::now() + WAIT;
        while self.next_hops_of(address) != wanted {
            assert!(
                Instant::now() < deadline,
                "next hops {:?}, not {wanted:?}\nrouter: {}\nrouter log:\n{}\n{}",
                self.next_hops_of(address),
                self.router_bird.birdc("show protocols"),
                self.router_bird.log(),
                self.appliances
                    .iter()
                    .map(|a| format!(
                        "{}: {}\n{}\nroutes: {:?}",
                        a.name,
                        a.bird.birdc("show protocols"),
                        a.bird.log(),
                        std::fs::read_to_string(a.routes().join("gantry.conf"))
                    ))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the router's BFD session with every appliance is up (a session that never
    /// came up takes nothing down when it fails).
    async fn until_bfd_up(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let sessions = self.router_bird.birdc("show bfd sessions");
            let up = self.appliances.iter().all(|a| {
                sessions
                    .lines()
                    .any(|l| l.contains(&a.address) && l.contains("Up"))
            });
            if up {
                return;
            }
            assert!(Instant::now() < deadline, "BFD sessions: {sessions}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The client's runtime: tasks spawned on it run in the client's namespace.
    pub fn client(&self) -> &Runtime {
        self.client_runtime.as_ref().expect("the fabric runs")
    }

    /// Requests each backend has answered.
    pub fn backend_requests(&self) -> Vec<usize> {
        self.backends.iter().map(|(_, _, o)| o.requests()).collect()
    }

    /// Stops every Gantry (SIGTERM: it withdraws, then drains), then waits for their guards.
    pub async fn stop(mut self) {
        for appliance in &mut self.appliances {
            if let Some(mut gantry) = appliance.gantry.take() {
                gantry.signal("TERM");
                let _ = tokio::time::timeout(WAIT, gantry.child.wait()).await;
            }
            appliance.guard_gone().await;
        }
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        // Dropped from a test's runtime: runtimes are let go without blocking.
        for (_, runtime, _) in self.backends.drain(..) {
            runtime.shutdown_background();
        }
        if let Some(runtime) = self.client_runtime.take() {
            runtime.shutdown_background();
        }
        if let Some((server, runtime)) = self.cluster.take() {
            drop(server);
            runtime.shutdown_background();
        }
    }
}

/// A veth pair: `name` in `router` (a port of its bridge when `bridged`), `eth0` in `other`.
fn link(router: &Netns, name: &str, other: &Netns) {
    router.ip(&[
        "link",
        "add",
        name,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        other.name(),
    ]);
}

/// `other` on the appliances' segment (the router's bridge) with `address`.
fn segment(router: &Netns, port: &str, other: &Netns, address: &str) {
    link(router, port, other);
    router.ip(&["link", "set", port, "master", "br0"]);
    router.ip(&["link", "set", port, "up"]);
    host(other, &format!("{address}/24"), ROUTER);
}

/// `eth0` of `netns` up with `address`, and its default route.
fn host(netns: &Netns, address: &str, gateway: &str) {
    netns.ip(&["addr", "add", address, "dev", "eth0"]);
    netns.ip(&["link", "set", "eth0", "up"]);
    netns.ip(&["route", "add", "default", "via", gateway]);
}

fn router_config(dir: &Path, appliances: &[String], liveness: Liveness) -> String {
    let bfd = match liveness {
        Liveness::Bfd => "on",
        Liveness::HoldTime => "off",
    };
    let mut config = format!(
        "log \"{}/bird.log\" all;\nrouter id {ROUTER};\nprotocol device {{ scan time 1; }}\n\
         protocol bfd {{ interface \"*\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}\n\
         protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; merge paths on; }}\n\
         template bgp appliance {{ local {ROUTER} as 65000; hold time 9; keepalive time 3; \
         connect delay time 1; connect retry time 1; error wait time 1, 5; graceful restart off; bfd {bfd}; \
         ipv4 {{ import where net ~ [ 203.0.113.0/24{{32,32}} ]; export none; }}; }}\n",
        dir.display()
    );
    for (i, name) in appliances.iter().enumerate() {
        config.push_str(&format!(
            "protocol bgp {name} from appliance {{ neighbor 10.0.0.1{} as 65010; }}\n",
            i + 1
        ));
    }
    config
}

fn kubernetes_config(dir: &Path, instance: &str) -> String {
    format!(
        "kubernetes:\n  kubeconfig: {}/kubeconfig\n  instance: {instance}\n  leader_election: {{ lease_namespace: default, lease_duration: 2s, renew_deadline: 1500ms, retry_period: 300ms }}\n  address_pools: [{{ name: public, addresses: [203.0.113.32/28] }}]\n",
        dir.display()
    )
}

fn appliance_bird_config(dir: &Path, address: &str) -> String {
    format!(
        "log \"{dir}/bird.log\" all;\nrouter id {address};\nprotocol device {{ scan time 1; }}\n\
         protocol bfd {{}}\ninclude \"{dir}/routes/gantry.con[f]\";\n",
        dir = dir.display()
    )
}

fn gantry_config(dir: &Path, address: &str, liveness: Liveness) -> String {
    let bfd = liveness == Liveness::Bfd;
    format!(
        "admin: {{ listen: \"{address}:9901\", open: true }}\n\
         runtime: {{ shutdown_grace: 10s }}\n\
         services:\n  - name: web\n    address: {VIP}\n    ports:\n      - name: http\n        port: 80\n        protocol: http\n        backends: [\"10.0.0.21:8080\", \"10.0.0.22:8080\"]\n        affinity: {{ policy: \"builtin:client-ip\" }}\n\
         routing:\n  daemon: bird\n  control_socket: {dir}/bird.ctl\n  directory: {dir}/routes\n  asn: 65010\n  withdraw_delay: 1s\n  peers: [{{ address: {ROUTER}, asn: 65000, bfd: {bfd} }}]\n  pools: [{{ addresses: [203.0.113.0/24] }}]\n",
        dir = dir.display()
    )
}
