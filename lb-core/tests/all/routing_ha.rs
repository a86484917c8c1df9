//! Several appliances serving one address, proven in network namespaces
//! ([`support::fabric`](crate::support::fabric)): each runs BIRD and the `gantry` binary, which
//! announces the address through it; the router (BIRD with `merge paths`) spreads clients over
//! them by ECMP. An appliance whose Gantry is killed, or that vanishes with its link, is routed
//! around; a graceful stop withdraws before it drains; client-IP affinity gives a client the
//! same backend through any appliance. The figures measured are printed (`--nocapture`) and
//! documented in docs/routing.md.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::support::cluster::{load_balancer, slice};
use crate::support::fabric::{Fabric, Liveness, VIP};
use lb_k8s::testing::Kind;

/// How long a client waits for a connection or an answer before it counts a failure.
const PATIENCE: Duration = Duration::from_secs(1);

/// A request as the client saw it.
#[derive(Clone, Debug)]
struct Sent {
    /// When its connection was opened.
    connected: Instant,
    started: Instant,
    ended: Instant,
    /// The appliance (the address the backend saw) and the backend, or why it failed.
    answer: Result<(String, String), String>,
}

/// A client connection that sends requests one after another (keep-alive).
struct Connection {
    reader: BufReader<TcpStream>,
    opened: Instant,
}

impl Connection {
    async fn open() -> Result<Connection, String> {
        Connection::open_to(VIP).await
    }

    /// A connection to port 80 of `ip`.
    async fn open_to(ip: &str) -> Result<Connection, String> {
        let address: SocketAddr = format!("{ip}:80").parse().expect("addr");
        let stream = tokio::time::timeout(PATIENCE, TcpStream::connect(address))
            .await
            .map_err(|_| "connect: timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        Ok(Connection {
            reader: BufReader::new(stream),
            opened: Instant::now(),
        })
    }

    /// One GET; `Ok((appliance, backend, keep))`, `keep` false when the server closes.
    async fn get(&mut self, path: &str) -> Result<(String, String, bool), String> {
        let exchange = async {
            let request = format!("GET {path} HTTP/1.1\r\nhost: web\r\n\r\n");
            self.reader
                .get_mut()
                .write_all(request.as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            let status = self.line().await?;
            if !status.starts_with("HTTP/1.1 200") {
                return Err(format!("status: {status:?}"));
            }
            let (mut length, mut peer, mut origin, mut keep) =
                (0, String::new(), String::new(), true);
            let mut chunked = false;
            loop {
                let line = self.line().await?;
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.trim();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.parse().map_err(|_| "length")?,
                    "x-seen-peer" => peer = value.to_owned(),
                    "x-origin" => origin = value.to_owned(),
                    "connection" => keep = !value.eq_ignore_ascii_case("close"),
                    "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                    _ => {}
                }
            }
            if chunked {
                self.read_chunks().await?;
            } else {
                let mut body = vec![0; length];
                self.reader
                    .read_exact(&mut body)
                    .await
                    .map_err(|e| format!("body: {e}"))?;
            }
            Ok((peer, origin, keep))
        };
        tokio::time::timeout(PATIENCE * 3, exchange)
            .await
            .map_err(|_| "answer: timed out".to_owned())?
    }

    /// One line of the answer.
    async fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok(line)
    }

    /// A chunked body, up to its last chunk and the (empty) trailer.
    async fn read_chunks(&mut self) -> Result<(), String> {
        loop {
            let size = self.line().await?;
            let size = usize::from_str_radix(size.trim(), 16)
                .map_err(|_| format!("chunk size {size:?}"))?;
            // The chunk and its CRLF (or, after the last one, the trailer's empty line).
            let mut data = vec![0; size + 2];
            self.reader
                .read_exact(&mut data)
                .await
                .map_err(|e| format!("chunk: {e}"))?;
            if size == 0 {
                return Ok(());
            }
        }
    }
}

/// Clients sending GET `path` until `stop`, each on a kept-alive connection (a new one after
/// a failure or when the server closes it), the first ones on `connections`; every request as
/// the client saw it.
async fn load(
    path: &'static str,
    connections: Vec<Option<Connection>>,
    stop: CancellationToken,
) -> Vec<Sent> {
    let mut tasks = tokio::task::JoinSet::new();
    for first in connections {
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut sent = Vec::new();
            let mut connection: Option<Connection> = first;
            while !stop.is_cancelled() {
                let started = Instant::now();
                let conn = match connection.take() {
                    Some(conn) => conn,
                    None => match Connection::open().await {
                        Ok(conn) => conn,
                        Err(error) => {
                            sent.push(Sent {
                                connected: started,
                                started,
                                ended: Instant::now(),
                                answer: Err(error),
                            });
                            continue;
                        }
                    },
                };
                let mut conn = conn;
                let answer = conn.get(path).await;
                let record = Sent {
                    connected: conn.opened,
                    started,
                    ended: Instant::now(),
                    answer: answer.clone().map(|(peer, origin, _)| (peer, origin)),
                };
                sent.push(record);
                if let Ok((_, _, true)) = answer {
                    connection = Some(conn);
                }
            }
            sent
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.expect("a client"));
    }
    all.sort_by_key(|s| s.started);
    all
}

/// A load running on the client's runtime.
struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<Sent>>,
}

impl Running {
    fn start(fabric: &Fabric, path: &'static str, workers: usize) -> Running {
        Running::on(fabric, path, (0..workers).map(|_| None).collect())
    }

    /// A load whose clients start on `connections`.
    fn on(fabric: &Fabric, path: &'static str, connections: Vec<Option<Connection>>) -> Running {
        let stop = CancellationToken::new();
        let task = fabric.client().spawn(load(path, connections, stop.clone()));
        Running { stop, task }
    }

    async fn finish(self) -> Vec<Sent> {
        self.stop.cancel();
        self.task.await.expect("the load")
    }
}

fn failures(sent: &[Sent]) -> Vec<&Sent> {
    sent.iter().filter(|s| s.answer.is_err()).collect()
}

/// From the first failure's start to the last one's end.
fn failing_for(sent: &[Sent]) -> Duration {
    let failed = failures(sent);
    match (failed.first(), failed.iter().map(|s| s.ended).max()) {
        (Some(first), Some(last)) => last.duration_since(first.started),
        _ => Duration::ZERO,
    }
}

/// Prints a failover's figures (`--nocapture`), as docs/routing.md reports them.
fn figure(what: &str, rerouted: Duration, after: &[Sent]) {
    eprintln!(
        "figure: {what}: route withdrawn after {rerouted:?}; {} of {} requests failed, for {:?}",
        failures(after).len(),
        after.len(),
        failing_for(after)
    );
}

fn served_by(sent: &[Sent]) -> BTreeSet<String> {
    sent.iter()
        .filter_map(|s| s.answer.as_ref().ok().map(|(peer, _)| peer.clone()))
        .collect()
}

fn backends(sent: &[Sent]) -> BTreeSet<String> {
    sent.iter()
        .filter_map(|s| s.answer.as_ref().ok().map(|(_, origin)| origin.clone()))
        .collect()
}

/// Waits until the backends have answered `n` more requests: the load provably runs.
async fn answered(fabric: &Fabric, n: usize) {
    let before: usize = fabric.backend_requests().iter().sum();
    let deadline = Instant::now() + Duration::from_secs(30);
    while fabric.backend_requests().iter().sum::<usize>() < before + n {
        assert!(Instant::now() < deadline, "the load is not running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A kept-alive connection served through `appliance` (new ones are opened until one lands
/// there: the router picks by 5-tuple), with the backend that answered on it.
async fn connection_through(fabric: &Fabric, appliance: &str) -> (Connection, String) {
    let wanted = appliance.to_owned();
    fabric
        .client()
        .spawn(async move {
            for _ in 0..64 {
                let mut conn = Connection::open().await.expect("connect");
                let (peer, origin, keep) = conn.get("/").await.expect("a first answer");
                if peer == wanted && keep {
                    return (conn, origin);
                }
            }
            panic!("no connection landed on {wanted}");
        })
        .await
        .expect("connect")
}

async fn still_answers(fabric: &Fabric, mut conn: Connection) -> Connection {
    fabric
        .client()
        .spawn(async move {
            conn.get("/").await.expect("the kept connection answers");
            conn
        })
        .await
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appliances_share_an_address_by_ecmp_and_one_that_dies_is_routed_around() {
    let mut fabric = Fabric::start(2, Liveness::Bfd).await;
    let [a1, a2] = fabric.pair();

    // Each new connection picks an appliance by its 5-tuple: both serve. Client-IP affinity
    // gives this one client the same backend through either.
    let (_, through_a1) = connection_through(&fabric, &a1).await;
    let (_, through_a2) = connection_through(&fabric, &a2).await;
    assert_eq!(through_a1, through_a2, "one client, one backend");
    let home = BTreeSet::from([through_a1]);

    // Gantry on a1 is killed: its guard withdraws its route; a connection on a2 never notices.
    let (kept, _) = connection_through(&fabric, &a2).await;
    let load = Running::start(&fabric, "/", 4);
    answered(&fabric, 20).await;
    let killed = Instant::now();
    fabric.appliances[0].kill_gantry();
    fabric.until_next_hops(std::slice::from_ref(&a2)).await;
    let rerouted = killed.elapsed();
    answered(&fabric, 20).await;
    let sent = load.finish().await;
    let kept = still_answers(&fabric, kept).await;
    let after: Vec<Sent> = sent
        .iter()
        .filter(|s| s.started >= killed)
        .cloned()
        .collect();
    figure("gantry killed (kill -9), BIRD alive", rerouted, &after);
    assert!(
        failing_for(&after) < Duration::from_secs(3),
        "{:?}",
        failures(&after)
    );
    assert_eq!(backends(&sent), home, "the client kept its backend");
    fabric.appliances[0].guard_gone().await;

    // a1 comes back and announces again.
    fabric.appliances[0].start_gantry().await;
    fabric.until_next_hops(&[a1.clone(), a2.clone()]).await;

    // The whole of a1 vanishes: its link goes down, then every process in it is killed
    // (nothing can say goodbye). BFD notices.
    let (after, rerouted) = vanish(&mut fabric).await;
    let kept = still_answers(&fabric, kept).await;
    figure(
        "appliance gone (link down, every process killed), BFD 100 ms x 3",
        rerouted,
        &after,
    );
    assert!(rerouted < Duration::from_secs(3), "BFD: {rerouted:?}");
    assert_eq!(backends(&after), home, "the client kept its backend");
    drop(kept);
    fabric.stop().await;
}

/// Makes a1 vanish under load (its link down, then every process in it killed: nothing can
/// say goodbye); returns the requests sent from then on and when the router stopped sending to
/// it.
async fn vanish(fabric: &mut Fabric) -> (Vec<Sent>, Duration) {
    let a2 = fabric.appliances[1].address.clone();
    let load = Running::start(fabric, "/", 4);
    answered(fabric, 20).await;
    let gone = Instant::now();
    let appliance = &mut fabric.appliances[0];
    appliance.netns.ip(&["link", "set", "eth0", "down"]);
    kill_everything_in(appliance.netns.name());
    appliance.bird.kill();
    if let Some(mut gantry) = appliance.gantry.take() {
        let _ = gantry.child.wait().await;
    }
    fabric.until_next_hops(std::slice::from_ref(&a2)).await;
    let rerouted = gone.elapsed();
    answered(fabric, 20).await;
    let sent = load.finish().await;
    (
        sent.into_iter().filter(|s| s.started >= gone).collect(),
        rerouted,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_bfd_a_vanished_appliance_is_routed_around_when_its_hold_time_ends() {
    let mut fabric = Fabric::start(2, Liveness::HoldTime).await;
    let (after, rerouted) = vanish(&mut fabric).await;
    figure("appliance gone, no BFD (hold time 9 s)", rerouted, &after);
    // The router gives up on the session when it has heard nothing for the hold time.
    assert!(
        rerouted > Duration::from_secs(3),
        "{rerouted:?}: not the hold time"
    );
    fabric.stop().await;
}

/// Kills every process in the network namespace `name`.
fn kill_everything_in(name: &str) {
    let output = std::process::Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .expect("ip netns pids");
    for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
        let _ = std::process::Command::new("kill")
            .args(["-9", pid])
            .status();
    }
}

/// Applies the second-chance rules of `appliance/files/gantry-second-chance` on both
/// appliances, each the other's partner.
fn second_chance(fabric: &Fabric) {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../appliance/files/gantry-second-chance");
    let addresses: Vec<String> = fabric
        .appliances
        .iter()
        .map(|a| a.address.clone())
        .collect();
    for (i, appliance) in fabric.appliances.iter().enumerate() {
        let partner = &addresses[1 - i];
        let status = appliance
            .netns
            .command("sh")
            .arg(&script)
            .args([
                "apply",
                "--partner",
                partner,
                "--addresses",
                "203.0.113.0/24",
            ])
            .status()
            .expect("run gantry-second-chance");
        assert!(
            status.success(),
            "gantry-second-chance on {}",
            appliance.name
        );
    }
}

/// Stops a1 gracefully under a load of kept-alive clients; returns what the clients saw and
/// when the router stopped sending to a1.
async fn graceful_stop(fabric: &mut Fabric) -> (Vec<Sent>, Instant) {
    let [a1, a2] = fabric.pair();
    // Three clients on each appliance.
    let mut connections = Vec::new();
    for appliance in [&a1, &a2, &a1, &a2, &a1, &a2] {
        connections.push(Some(connection_through(fabric, appliance).await.0));
    }
    let load = Running::on(fabric, "/delay/20", connections);
    answered(fabric, 60).await;
    let mut gantry = fabric.appliances[0].gantry.take().expect("running");
    gantry.signal("TERM");
    fabric.until_next_hops(std::slice::from_ref(&a2)).await;
    let withdrawn = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(30), gantry.child.wait()).await;
    answered(fabric, 60).await;
    (load.finish().await, withdrawn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_withdraws_first_and_a_second_chance_keeps_its_connections() {
    let mut fabric = Fabric::start(2, Liveness::HoldTime).await;
    let [a1, a2] = fabric.pair();

    // Plain ECMP: once a1's route is withdrawn, the router sends a1's connections to a2,
    // which resets them. No connection opened after the withdraw fails.
    let (sent, withdrawn) = graceful_stop(&mut fabric).await;
    let late: Vec<&Sent> = failures(&sent)
        .into_iter()
        .filter(|s| s.connected >= withdrawn)
        .collect();
    assert!(
        late.is_empty(),
        "failed on connections opened after the withdraw: {late:?}"
    );
    let after = sent
        .iter()
        .filter(|s| s.started >= withdrawn && s.answer.is_ok())
        .count();
    assert!(after > 0, "the clients went on after the withdraw");
    let lost = failures(&sent).len();
    eprintln!(
        "figure: graceful stop, plain ECMP: {lost} of {} requests failed (those on a1's connections when the route went)",
        sent.len()
    );
    assert!(served_by(&sent).contains(&a1) && served_by(&sent).contains(&a2));
    fabric.appliances[0].guard_gone().await;

    // With a second chance, a2 hands a1's connections back to a1, which finishes them.
    second_chance(&fabric);
    fabric.appliances[0].start_gantry().await;
    fabric.until_next_hops(&[a1.clone(), a2.clone()]).await;
    let (sent, _) = graceful_stop(&mut fabric).await;
    eprintln!(
        "figure: graceful stop with second chance: {} of {} requests failed",
        failures(&sent).len(),
        sent.len()
    );
    assert!(served_by(&sent).contains(&a1), "the load reached a1");
    assert!(failures(&sent).is_empty(), "{:?}", failures(&sent));
    fabric.stop().await;
}

/// The backend answering through `address`, once one does: a new Service's listener may
/// serve before its EndpointSlice has arrived (a TCP port with no backend closes).
async fn served_through(fabric: &Fabric, address: &'static str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = fabric
            .client()
            .spawn(async move {
                let mut conn = Connection::open_to(address).await?;
                conn.get("/").await.map(|(_, origin, _)| origin)
            })
            .await
            .expect("request");
        match answer {
            Ok(origin) => return origin,
            Err(error) => assert!(Instant::now() < deadline, "{address}: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One GET through `address` from the client: the backend that answered.
async fn get_through(fabric: &Fabric, address: &'static str) -> String {
    fabric
        .client()
        .spawn(async move {
            let mut conn = Connection::open_to(address)
                .await
                .unwrap_or_else(|e| panic!("{address}: {e}"));
            conn.get("/")
                .await
                .unwrap_or_else(|e| panic!("{address}: {e}"))
                .1
        })
        .await
        .expect("request")
}

/// The Lease's holder, as its record names it (`INSTANCE_PID_NANOS`), once there is one.
fn holder(fabric: &Fabric) -> Option<String> {
    let lease = fabric
        .cluster()
        .get(&(Kind::Lease, "default".into(), "gantry".into()))?;
    lease["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
}

/// Creates a LoadBalancer Service `name` (port 80) backed by b1; returns the address its
/// status shows once it has one.
async fn provision(fabric: &Fabric, name: &str) -> String {
    let backend: SocketAddr = "10.0.0.21:8080".parse().expect("addr");
    let cluster = fabric.cluster();
    cluster
        .create(load_balancer(name, &[("http", 80)]))
        .expect("service");
    cluster
        .create(slice(name, 0, "http", backend))
        .expect("slice");
    until(&format!("{name}'s address"), || address(fabric, name)).await
}

/// The address the status of Service `default/name` shows.
fn address(fabric: &Fabric, name: &str) -> Option<String> {
    let service = fabric
        .cluster()
        .get(&(Kind::Service, "default".into(), name.into()))?;
    service["status"]["loadBalancer"]["ingress"][0]["ip"]
        .as_str()
        .map(str::to_owned)
}

/// `EnsuredLoadBalancer` Events about Service `default/name`.
fn ensured(fabric: &Fabric, name: &str) -> usize {
    fabric
        .cluster()
        .list(Kind::Event)
        .iter()
        .filter(|e| e["reason"] == "EnsuredLoadBalancer" && e["regarding"]["name"] == name)
        .count()
}

async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_moves_to_the_surviving_appliance_and_what_was_right_stays_written() {
    let mut fabric = Fabric::start_with(2, Liveness::Bfd, true).await;
    let names = ["a1", "a2"];
    let addresses = fabric.pair();
    let first = until("a holder", || holder(&fabric)).await;
    let leader = names
        .iter()
        .position(|n| first.starts_with(&format!("{n}_")))
        .expect("a1 or a2 holds it");
    let survivor = 1 - leader;

    // The holder gives the Service an address; both appliances serve it and announce it.
    assert_eq!(provision(&fabric, "web").await, "203.0.113.33");
    fabric.until_next_hops_of("203.0.113.33", &addresses).await;
    assert_eq!(served_through(&fabric, "203.0.113.33").await, "b1");
    until("web announced", || {
        (ensured(&fabric, "web") == 1).then_some(())
    })
    .await;

    // The holder's Gantry is killed: its routes go (its guard), and the other appliance takes
    // the Lease once the holder's last renewal has aged a lease duration (2 s).
    let killed = Instant::now();
    fabric.appliances[leader].kill_gantry();
    fabric
        .until_next_hops_of("203.0.113.33", std::slice::from_ref(&addresses[survivor]))
        .await;
    let taken = until("the survivor holds the Lease", || {
        holder(&fabric).filter(|h| h.starts_with(&format!("{}_", names[survivor])))
    })
    .await;
    let took = killed.elapsed();
    eprintln!("figure: Lease holder killed; the other appliance took the Lease after {took:?} (lease_duration 2 s)");
    assert_ne!(taken, first);
    assert!(took < Duration::from_secs(10), "{took:?}");

    // The new holder gives a new Service its address and status; the old one's are kept.
    assert_eq!(provision(&fabric, "late").await, "203.0.113.34");
    fabric
        .until_next_hops_of("203.0.113.34", std::slice::from_ref(&addresses[survivor]))
        .await;
    assert_eq!(served_through(&fabric, "203.0.113.34").await, "b1");
    assert_eq!(get_through(&fabric, "203.0.113.33").await, "b1");
    until("late announced", || {
        (ensured(&fabric, "late") == 1).then_some(())
    })
    .await;
    let rewrites = fabric
        .cluster()
        .seen()
        .iter()
        .filter(|s| s.method == http::Method::PATCH && s.path.ends_with("/services/web/status"))
        .count();
    assert_eq!(rewrites, 1, "web's status was right: written once");
    assert_eq!(ensured(&fabric, "web"), 1, "web was not announced again");
    fabric.stop().await;
}
