//! What happens to an appliance in the failover tests: it vanishes (link down, every process
//! killed), it stops gracefully under load, and two appliances get a second chance for each
//! other's connections.

use std::path::Path;
use std::time::{Duration, Instant};

use super::fabric::{Fabric, Mode};
use super::load::{answered, connection_through, Load, Sent};

/// Makes appliance `gone` (of two) vanish under load (its link down, then every process in
/// it killed: nothing can say goodbye); returns the requests sent from then on and when the
/// network stopped sending to it.
pub async fn vanish(fabric: &mut Fabric, gone: usize) -> (Vec<Sent>, Duration) {
    let survivor = fabric.appliances[1 - gone].address.clone();
    let load = Load::start(fabric, "/", 4);
    answered(fabric, 20).await;
    let vanished = Instant::now();
    let appliance = &mut fabric.appliances[gone];
    appliance.netns.ip(&["link", "set", "eth0", "down"]);
    kill_everything_in(appliance.netns.name());
    appliance.daemon.kill();
    if let Some(mut gantry) = appliance.gantry.take() {
        let _ = gantry.child.wait().await;
    }
    fabric
        .until_served_by(std::slice::from_ref(&survivor))
        .await;
    let rerouted = vanished.elapsed();
    answered(fabric, 20).await;
    let sent = load.finish().await;
    (
        sent.into_iter().filter(|s| s.started >= vanished).collect(),
        rerouted,
    )
}

/// Kills every process in the network namespace `name`.
pub fn kill_everything_in(name: &str) {
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
pub fn second_chance(fabric: &Fabric) {
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

/// Stops appliance `stopping` (of two) gracefully under a load of six kept-alive clients;
/// returns what the clients saw and when the network stopped sending to it. With BGP, three
/// clients start on each appliance; with L2, all are on the one holding the address.
pub async fn graceful_stop(fabric: &mut Fabric, stopping: usize) -> (Vec<Sent>, Instant) {
    let survivor = fabric.appliances[1 - stopping].address.clone();
    let connections = match fabric.mode {
        Mode::Bgp(_) => {
            let [a1, a2] = fabric.pair();
            let mut connections = Vec::new();
            for appliance in [&a1, &a2, &a1, &a2, &a1, &a2] {
                connections.push(Some(connection_through(fabric, appliance).await.0));
            }
            connections
        }
        Mode::L2 => (0..6).map(|_| None).collect(),
    };
    let load = Load::on(fabric, "/delay/20", connections);
    answered(fabric, 60).await;
    let mut gantry = fabric.appliances[stopping].gantry.take().expect("running");
    gantry.signal("TERM");
    fabric
        .until_served_by(std::slice::from_ref(&survivor))
        .await;
    let withdrawn = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(30), gantry.child.wait()).await;
    answered(fabric, 60).await;
    (load.finish().await, withdrawn)
}
