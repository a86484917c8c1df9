use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::*;
use crate::limiter::ConnLimiter;

/// An owner whose route is a `udp` port with these backends.
fn owner(backends: &[&str]) -> Arc<FlowOwner> {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    let yaml = format!(
        "services:\n  - name: s\n    address: 127.0.0.1\n    ports:\n      - {{ name: u, port: 5353, protocol: udp, backends: [{}] }}\n",
        list.join(", ")
    );
    let model = lb_config::parse_str(&yaml, std::path::Path::new("/")).expect("model");
    let route = Route::standalone(model.ports().next().expect("port")).expect("route");
    let (_, drain) = watch::channel(false);
    Arc::new(FlowOwner::new(Arc::new(ListenerShared {
        route: Arc::new(ArcSwap::from_pointee(route)),
        drain,
        limiter: ConnLimiter::new(10),
    })))
}

async fn flow_of(owner: &Arc<FlowOwner>) -> Arc<Flow> {
    let route = owner.route();
    let lease = route.pool.backends()[0].lease();
    let upstream = UdpSocket::bind("127.0.0.1:0").await.expect("socket");
    Arc::new(Flow::new(
        "127.0.0.1:5353".parse().expect("addr"),
        owner.clone(),
        lease,
        route.pool.clone(),
        upstream,
        None,
        &route.metrics,
    ))
}

/// The idle timeouts on tokio's clock, paused: the flow lives `udp_idle` after its last
/// datagram until its backend answers, and `udp_stream_idle` after.
#[tokio::test(start_paused = true)]
async fn a_flow_expires_on_its_idle_timeout_measured_from_its_last_datagram() {
    let (idle, stream_idle) = (Duration::from_secs(30), Duration::from_secs(120));
    let flow = flow_of(&owner(&["127.0.0.1:9"])).await;
    let born = Instant::now();
    assert_eq!(flow.expires_at(idle, stream_idle), born + idle);
    tokio::time::advance(Duration::from_secs(20)).await;
    flow.touch();
    assert_eq!(
        flow.expires_at(idle, stream_idle),
        born + Duration::from_secs(50)
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    flow.answered();
    assert_eq!(
        flow.expires_at(idle, stream_idle),
        born + Duration::from_secs(150)
    );
    tokio::time::advance(Duration::from_secs(121)).await;
    assert!(flow.expires_at(idle, stream_idle) <= Instant::now());
}

#[tokio::test]
async fn the_table_keeps_one_flow_per_client_and_removes_only_its_own() {
    let owner = owner(&["127.0.0.1:9"]);
    let table = FlowTable::new();
    let (first, second) = (flow_of(&owner).await, flow_of(&owner).await);
    table.insert(first.clone());
    table.insert(second.clone());
    assert_eq!(table.len(), 1);
    assert!(first.done.is_cancelled(), "the replaced flow ends");
    table.remove(&first);
    assert_eq!(table.len(), 1, "a replaced flow removes nothing");
    table.remove(&second);
    assert_eq!(table.len(), 0);
    assert!(table.get(&second.client).is_none());
}

#[tokio::test]
async fn a_flow_moves_to_the_owner_taking_its_port_over_if_that_one_has_its_backend() {
    let old = owner(&["127.0.0.1:9", "127.0.0.1:10"]);
    let flow = flow_of(&old).await;
    assert_eq!(old.open(), 1);
    let elsewhere = owner(&["127.0.0.1:11"]);
    let new = owner(&["127.0.0.1:10", "127.0.0.1:9"]);

    // A new owner without the flow's backend leaves it to the draining one.
    assert!(!flow.move_to(&elsewhere, &elsewhere.route(), None));
    assert!(flow.move_to(&new, &new.route(), None));
    assert_eq!((old.open(), new.open()), (0, 1), "the count moved");
    tokio::time::timeout(Duration::from_secs(1), old.all_ended())
        .await
        .expect("the old owner has nothing left to wait for");
    assert!(flow.is_owned_by(&new));
    let live = flow.live().expect("the flow goes on");
    assert!(Arc::ptr_eq(&live.route.pool, &new.route().pool));
    assert_eq!(live.backend.address, "127.0.0.1:9".parse().expect("addr"));
    assert_eq!(new.route().metrics.flows_active.get(), 1);

    flow.unbind();
    assert_eq!(new.open(), 0);
    assert!(flow.live().is_none(), "an ended flow is not live");
    assert!(!flow.move_to(&old, &old.route(), None), "nor does it move");
}
