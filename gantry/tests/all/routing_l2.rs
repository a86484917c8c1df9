//! The L2 mode, keepalived's VRRP, proven in network namespaces
//! ([`support::fabric`](crate::support::fabric) with `Mode::L2`): one appliance at a time holds
//! the address on the segment the client shares. When its Gantry is killed, the guard says
//! it no longer serves and keepalived hands the address over. When the appliance vanishes,
//! the other misses its adverts and takes it, announcing it by gratuitous ARP. A graceful stop
//! hands it over before draining, and a second chance keeps the connections that moved. The
//! figures are printed (`--nocapture`) and documented in docs/routing.md.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::fabric::{Fabric, Mode};
use crate::support::failover::{graceful_stop, second_chance, vanish};
use crate::support::load::{answered, failing_for, failures, figure, served_by, Load, Sent};

/// Which appliance holds the address now: its index.
fn holder(fabric: &Fabric) -> usize {
    let holders = fabric.holders();
    assert_eq!(holders.len(), 1, "{holders:?}");
    fabric
        .appliances
        .iter()
        .position(|a| a.address == holders[0])
        .expect("an appliance")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_appliance_holds_the_address_and_the_other_takes_it_over() {
    let mut fabric = Fabric::start(2, Mode::L2).await;
    let first = holder(&fabric);
    let other = 1 - first;
    let [first_address, other_address] = [
        fabric.appliances[first].address.clone(),
        fabric.appliances[other].address.clone(),
    ];

    // Only the holder is reached.
    let load = Load::start(&fabric, "/", 2);
    answered(&fabric, 20).await;
    let sent = load.finish().await;
    assert!(failures(&sent).is_empty(), "{:?}", failures(&sent));
    assert_eq!(served_by(&sent), BTreeSet::from([first_address.clone()]));

    // Its Gantry is killed: the guard marks it as not serving, keepalived gives the address
    // up, and the other appliance takes it.
    let load = Load::start(&fabric, "/", 4);
    answered(&fabric, 20).await;
    let killed = Instant::now();
    fabric.appliances[first].kill_gantry();
    fabric
        .until_served_by(std::slice::from_ref(&other_address))
        .await;
    let moved = killed.elapsed();
    answered(&fabric, 20).await;
    let sent = load.finish().await;
    let after: Vec<Sent> = sent
        .iter()
        .filter(|s| s.started >= killed)
        .cloned()
        .collect();
    figure("L2: gantry killed, keepalived alive", moved, &after);
    assert!(
        failing_for(&after) < Duration::from_secs(3),
        "{:?}",
        failures(&after)
    );
    assert!(served_by(&after).contains(&other_address));

    // It comes back and waits (nopreempt): the address stays where it is.
    fabric.appliances[first].guard_gone().await;
    fabric.appliances[first].start_gantry().await;
    let load = Load::start(&fabric, "/", 2);
    answered(&fabric, 20).await;
    let sent = load.finish().await;
    assert_eq!(served_by(&sent), BTreeSet::from([other_address.clone()]));

    // The holder vanishes: the other misses three adverts (0.1 s each) and takes over.
    let (after, moved) = vanish(&mut fabric, other).await;
    figure("L2: appliance gone, adverts every 100 ms", moved, &after);
    assert!(moved < Duration::from_secs(3), "{moved:?}");
    assert!(served_by(&after).contains(&first_address));
    fabric.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_hands_the_address_over_first_and_a_second_chance_keeps_its_connections() {
    let mut fabric = Fabric::start(2, Mode::L2).await;
    let first = holder(&fabric);

    // Without a second chance, the kept-alive connections that move with the address are
    // reset by the new holder; no connection opened after the handover fails.
    let (sent, handed) = graceful_stop(&mut fabric, first).await;
    let late: Vec<&Sent> = failures(&sent)
        .into_iter()
        .filter(|s| s.connected >= handed)
        .collect();
    assert!(late.is_empty(), "failed after the handover: {late:?}");
    eprintln!(
        "figure: L2 graceful stop, no second chance: {} of {} requests failed",
        failures(&sent).len(),
        sent.len()
    );
    fabric.appliances[first].guard_gone().await;

    // With a second chance, the new holder hands them to the old one, which finishes them.
    second_chance(&fabric);
    fabric.appliances[first].start_gantry().await;
    let second = holder(&fabric);
    let (sent, _) = graceful_stop(&mut fabric, second).await;
    eprintln!(
        "figure: L2 graceful stop with second chance: {} of {} requests failed",
        failures(&sent).len(),
        sent.len()
    );
    assert!(failures(&sent).is_empty(), "{:?}", failures(&sent));
    fabric.stop().await;
}
