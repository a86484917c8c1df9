//! A network of namespaces the test makes (root, iproute2, BIRD 2, keepalived, nftables), in
//! one of two modes. With BGP, a router runs BIRD with ECMP (`merge paths`) and BFD, each
//! appliance runs BIRD and the `gantry` binary with a `routing:` section that peers with the
//! router, and the client is behind the router. With L2 (VRRP), each appliance runs
//! keepalived beside Gantry, and the client shares the appliances' segment. Two backends are
//! on that segment. Everything it starts is stopped when it is dropped; nothing touches the
//! host's network.
//!
//! ```text
//!   client 10.1.0.2 ── 10.1.0.1 router 10.0.0.1 ── br0 ─┬─ a1 10.0.0.11 (BIRD or keepalived, gantry)
//!   (L2: client 10.0.0.2 on br0)                        ├─ a2 10.0.0.12 (BIRD or keepalived, gantry)
//!                                                      ├─ b1 10.0.0.21:8080
//!                                                      └─ b2 10.0.0.22:8080
//! ```
//! Every appliance serves `VIP` (203.0.113.0/24 is local on each, AnyIP). With BGP each
//! announces it and the router has one next hop per appliance; with L2 one appliance at a time
//! holds it on its `eth0` and answers ARP for it.

mod configs;
mod daemon;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lb_k8s_testing::{Options, TestApiServer};
use tokio::runtime::Runtime;

use self::configs::{
    appliance_bird_config, gantry_config, keepalived_config, kubernetes_config, router_config,
};
pub use self::daemon::Daemon;
use super::binary::Running;
use super::netns::Netns;
use super::origin::{HttpOrigin, OriginProtocol};

/// The address every appliance serves.
pub const VIP: &str = "203.0.113.10";

/// The IPv6 address every appliance serves (BGP mode: announced to the router's IPv6 session).
pub const VIP6: &str = "2001:db8:100::10";

/// The router's address on the appliances' segment.
const ROUTER: &str = "10.0.0.1";

/// Long enough for BGP, BFD and a drain on a busy machine; never reached when all is well.
const WAIT: Duration = Duration::from_secs(60);

/// How the network reaches the appliances.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// BGP to a router, ECMP over every appliance; sessions watched as said.
    Bgp(Liveness),
    /// VRRP: one appliance at a time holds the addresses (keepalived, adverts every 100 ms).
    L2,
}

/// How the appliances' BGP sessions are watched.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// BFD, 100 ms × 3, on both ends.
    Bfd,
    /// The BGP hold time alone (9 s).
    HoldTime,
}

/// One appliance: its namespace, its daemon, its Gantry.
pub struct Appliance {
    /// `a1`, `a2`.
    pub name: String,
    /// Its address on the segment.
    pub address: String,
    pub netns: Netns,
    pub dir: PathBuf,
    /// BIRD or keepalived.
    pub daemon: Daemon,
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

    /// `kill -9` of its Gantry alone (its guard and daemon live on).
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
    pub mode: Mode,
    pub router: Netns,
    /// The router's BIRD (BGP only).
    router_bird: Option<Daemon>,
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
    /// Builds the network, starts the daemons, the backends, and Gantry on each of
    /// `appliances` appliances (at most 9); returns once the network reaches them: with BGP,
    /// every appliance's route is on the router (and BFD is up); with L2, one holds `VIP`.
    pub async fn start(appliances: usize, mode: Mode) -> Fabric {
        Fabric::start_with(appliances, mode, false).await
    }

    /// [`Fabric::start`], and with `cluster` a Kubernetes API server on the router that every
    /// appliance serves (`kubernetes:`, pool 203.0.113.32/28, the Lease in `default`).
    pub async fn start_with(appliances: usize, mode: Mode, cluster: bool) -> Fabric {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::tempdir().expect("tempdir");
        let router = Netns::create(&format!("ha{id}r"));
        router.ip(&["link", "add", "br0", "type", "bridge"]);
        router.ip(&["link", "set", "br0", "up"]);
        router.ip(&["addr", "add", &format!("{ROUTER}/24"), "dev", "br0"]);
        let names: Vec<String> = (1..=appliances).map(|i| format!("a{i}")).collect();
        let client = Netns::create(&format!("ha{id}c"));
        let router_bird = match mode {
            Mode::Bgp(liveness) => {
                router.sysctl(&[
                    "net.ipv4.ip_forward=1",
                    "net.ipv6.conf.all.forwarding=1",
                    // Each connection's 5-tuple picks its next hop, so one client's
                    // connections spread over the appliances.
                    "net.ipv4.fib_multipath_hash_policy=1",
                    "net.ipv6.fib_multipath_hash_policy=1",
                ]);
                router.ip(&["addr", "add", "fd00::1/64", "dev", "br0", "nodad"]);
                link(&router, "vc", &client);
                router.ip(&["addr", "add", "10.1.0.1/24", "dev", "vc"]);
                router.ip(&["addr", "add", "fd01::1/64", "dev", "vc", "nodad"]);
                router.ip(&["link", "set", "vc", "up"]);
                host(&client, "10.1.0.2/24", "10.1.0.1");
                client.ip(&["addr", "add", "fd01::2/64", "dev", "eth0", "nodad"]);
                client.ip(&["-6", "route", "add", "default", "via", "fd01::1"]);
                let router_dir = dir.path().join("router");
                std::fs::create_dir(&router_dir).expect("router dir");
                Some(Daemon::bird(
                    &router,
                    &router_dir,
                    &router_config(&router_dir, &names, liveness),
                ))
            }
            Mode::L2 => {
                segment(&router, "vc", &client, "10.0.0.2");
                // The served addresses are on the segment: the client asks by ARP who holds
                // them, as the segment's router would.
                client.ip(&["route", "add", "203.0.113.0/24", "dev", "eth0"]);
                None
            }
        };

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
            // The served addresses are local (AnyIP), as docs/routing.md sets them up; IPv6
            // binds them by `ip_nonlocal_bind`, as the appliance's sysctls allow.
            netns.ip(&["route", "add", "local", "203.0.113.0/24", "dev", "lo"]);
            netns.sysctl(&["net.ipv6.ip_nonlocal_bind=1"]);
            if let Mode::Bgp(_) = mode {
                // Dual stack: an IPv6 session to the router, and IPv6 addresses served.
                let v6 = format!("fd00::1{}/64", i + 1);
                netns.ip(&["addr", "add", &v6, "dev", "eth0", "nodad"]);
                netns.ip(&["-6", "route", "add", "default", "via", "fd00::1"]);
                netns.ip(&[
                    "-6",
                    "route",
                    "add",
                    "local",
                    "2001:db8:100::/64",
                    "dev",
                    "lo",
                ]);
            }
            let appliance_dir = dir.path().join(name);
            // The daemons' includes need the folder (the appliance's tmpfiles.d makes it).
            std::fs::create_dir_all(appliance_dir.join("routes")).expect("appliance dir");
            let daemon = match mode {
                Mode::Bgp(_) => Daemon::bird(
                    &netns,
                    &appliance_dir,
                    &appliance_bird_config(&appliance_dir, &address),
                ),
                Mode::L2 => {
                    // Only the appliance holding an address on eth0 answers ARP for it.
                    netns.sysctl(&["net.ipv4.conf.all.arp_ignore=1"]);
                    let priority = u8::try_from(150 - 10 * i).expect("priority");
                    Daemon::keepalived(
                        &netns,
                        &appliance_dir,
                        &keepalived_config(&appliance_dir, priority),
                    )
                }
            };
            let mut config = gantry_config(&appliance_dir, &address, mode);
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
                daemon,
                gantry: None,
            };
            appliance.start_gantry().await;
            started.push(appliance);
        }
        let client_runtime = client.runtime();
        let fabric = Fabric {
            mode,
            router,
            router_bird,
            _client: client,
            client_runtime: Some(client_runtime),
            appliances: started,
            backends,
            cluster,
            _dir: dir,
        };
        match mode {
            Mode::Bgp(liveness) => {
                let all: Vec<String> = fabric
                    .appliances
                    .iter()
                    .map(|a| a.address.clone())
                    .collect();
                fabric.until_served_by(&all).await;
                if liveness == Liveness::Bfd {
                    fabric.until_bfd_up().await;
                }
            }
            Mode::L2 => {
                fabric.until(|f| f.holders().len() == 1).await;
            }
        }
        fabric
    }

    /// With L2, the appliances that hold `VIP` on their `eth0` now, with the link up.
    pub fn holders(&self) -> Vec<String> {
        self.appliances
            .iter()
            .filter(|a| {
                let output = a
                    .netns
                    .command("ip")
                    .args(["-br", "addr", "show", "eth0"])
                    .output()
                    .expect("ip addr");
                // `eth0@ifN  UP  10.0.0.11/24 203.0.113.10/32 ...`: an appliance whose link is
                // down reaches nobody, whatever addresses its killed keepalived left on it.
                let text = String::from_utf8_lossy(&output.stdout);
                let mut fields = text.split_whitespace();
                let up = fields.nth(1) == Some("UP");
                up && fields.any(|field| field == format!("{VIP}/32"))
            })
            .map(|a| a.address.clone())
            .collect()
    }

    /// Waits until the network sends `VIP`'s clients to exactly the appliances at `wanted`
    /// (addresses, any order): the router's next hops with BGP, the holder with L2.
    pub async fn until_served_by(&self, wanted: &[String]) {
        let mut wanted = wanted.to_vec();
        wanted.sort();
        match self.mode {
            Mode::Bgp(_) => self.until_next_hops_of(VIP, &wanted).await,
            Mode::L2 => self.until(|f| f.holders() == wanted).await,
        }
    }

    /// Waits until `done`, reporting the daemons' state if it does not come.
    async fn until(&self, done: impl Fn(&Fabric) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            assert!(Instant::now() < deadline, "{}", self.report());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What the daemons say, for a failure message.
    fn report(&self) -> String {
        let router = self.router_bird.as_ref().map_or(String::new(), |bird| {
            format!(
                "router: {}\n{}\nrouter log:\n{}\n",
                bird.birdc("show protocols"),
                bird.birdc("show route"),
                bird.log()
            )
        });
        let appliances: Vec<String> = self
            .appliances
            .iter()
            .map(|a| {
                format!(
                    "{}: {}\n{}\nfolder: {:?}",
                    a.name,
                    a.daemon.birdc("show protocols"),
                    a.daemon.log(),
                    std::fs::read_dir(a.routes()).map(|d| d
                        .filter_map(Result::ok)
                        .map(|e| e.file_name())
                        .collect::<Vec<_>>())
                )
            })
            .collect();
        let routes = self
            .router
            .command("ip")
            .args(["-6", "route", "show", "root", "2001:db8:100::/48"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        format!(
            "holders {:?}, next hops {:?}, IPv6 routes:\n{routes}\n{router}{}",
            self.holders(),
            self.next_hops_of(VIP),
            appliances.join("\n")
        )
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
        let family = if address.contains(':') { "-6" } else { "-4" };
        let output = self
            .router
            .command("ip")
            .args([family, "route", "show", address])
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

    /// Waits until the router's next hops to `address` are `wanted` (addresses, any order).
    pub async fn until_next_hops_of(&self, address: &str, wanted: &[String]) {
        let mut wanted = wanted.to_vec();
        wanted.sort();
        self.until(|f| f.next_hops_of(address) == wanted).await;
    }

    /// Waits until the router's BFD session with every appliance is up (a session that never
    /// came up takes nothing down when it fails).
    async fn until_bfd_up(&self) {
        self.until(|f| {
            let sessions = f
                .router_bird
                .as_ref()
                .map(|bird| bird.birdc("show bfd sessions"))
                .unwrap_or_default();
            f.appliances.iter().all(|a| {
                sessions
                    .lines()
                    .any(|l| l.contains(&a.address) && l.contains("Up"))
            })
        })
        .await;
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
