//! Several appliances serving one address, proven in network namespaces
//! ([`support::fabric`](crate::support::fabric)): each runs BIRD and the `gantry` binary, which
//! announces the address through it; the router (BIRD with `merge paths`) spreads clients over
//! them by ECMP. An appliance whose Gantry is killed, or that vanishes with its link, is routed
//! around; a graceful stop withdraws before it drains; client-IP affinity gives a client the
//! same backend through any appliance. The figures measured are printed (`--nocapture`) and
//! documented in docs/routing.md.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lb_k8s_testing::Kind;

use crate::support::cluster::{load_balancer, slice};
use crate::support::fabric::{Fabric, Liveness, Mode, VIP6};
use crate::support::failover::{graceful_stop, second_chance, vanish};
use crate::support::load::{
    answered, backends, connection_through, failing_for, failures, figure, served_by,
    still_answers, Connection, Load, Sent,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appliances_share_an_address_by_ecmp_and_one_that_dies_is_routed_around() {
    let mut fabric = Fabric::start(2, Mode::Bgp(Liveness::Bfd)).await;
    let [a1, a2] = fabric.pair();

    // Each new connection picks an appliance by its 5-tuple: both serve. Client-IP affinity
    // gives this one client the same backend through either.
    let (_, through_a1) = connection_through(&fabric, &a1).await;
    let (_, through_a2) = connection_through(&fabric, &a2).await;
    assert_eq!(through_a1, through_a2, "one client, one backend");
    let home = BTreeSet::from([through_a1]);

    // Gantry on a1 is killed: its guard withdraws its route; a connection on a2 never notices.
    let (kept, _) = connection_through(&fabric, &a2).await;
    let load = Load::start(&fabric, "/", 4);
    answered(&fabric, 20).await;
    let killed = Instant::now();
    fabric.appliances[0].kill_gantry();
    fabric.until_served_by(std::slice::from_ref(&a2)).await;
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
    fabric.until_served_by(&[a1.clone(), a2.clone()]).await;

    // The whole of a1 vanishes: its link goes down, then every process in it is killed
    // (nothing can say goodbye). BFD notices.
    let (after, rerouted) = vanish(&mut fabric, 0).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_bfd_a_vanished_appliance_is_routed_around_when_its_hold_time_ends() {
    let mut fabric = Fabric::start(2, Mode::Bgp(Liveness::HoldTime)).await;
    let (after, rerouted) = vanish(&mut fabric, 0).await;
    figure("appliance gone, no BFD (hold time 9 s)", rerouted, &after);
    // The router gives up on the session when it has heard nothing for the hold time.
    assert!(
        rerouted > Duration::from_secs(3),
        "{rerouted:?}: not the hold time"
    );
    fabric.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_withdraws_first_and_a_second_chance_keeps_its_connections() {
    let mut fabric = Fabric::start(2, Mode::Bgp(Liveness::HoldTime)).await;
    let [a1, a2] = fabric.pair();

    // Plain ECMP: once a1's route is withdrawn, the router sends a1's connections to a2,
    // which resets them. No connection opened after the withdraw fails.
    let (sent, withdrawn) = graceful_stop(&mut fabric, 0).await;
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
    fabric.until_served_by(&[a1.clone(), a2.clone()]).await;
    let (sent, _) = graceful_stop(&mut fabric, 0).await;
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
    let mut fabric = Fabric::start_with(2, Mode::Bgp(Liveness::Bfd), true).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_address_goes_to_the_ipv6_peer_and_is_routed_around_a_dead_gantry() {
    let mut fabric = Fabric::start(2, Mode::Bgp(Liveness::Bfd)).await;
    let v6 = ["fd00::11".to_owned(), "fd00::12".to_owned()];
    fabric.until_next_hops_of(VIP6, &v6).await;
    // Both appliances answer on it (each connection's 5-tuple picks one).
    let mut through = BTreeSet::new();
    for _ in 0..64 {
        let answer = fabric
            .client()
            .spawn(async {
                let mut conn = Connection::open_to(VIP6).await?;
                conn.get("/").await
            })
            .await
            .expect("request")
            .expect("an answer over IPv6");
        through.insert(answer.0);
        if through.len() == 2 {
            break;
        }
    }
    assert_eq!(through.len(), 2, "both appliances serve it: {through:?}");
    // Gantry on a1 is killed: its guard withdraws the IPv6 route too.
    fabric.appliances[0].kill_gantry();
    fabric
        .until_next_hops_of(VIP6, std::slice::from_ref(&v6[1]))
        .await;
    fabric.stop().await;
}
