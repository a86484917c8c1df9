//! Keep-alive clients lose nothing to a drain: a draining listener keeps an idle HTTP/1
//! connection until its next request and answers that with `Connection: close` (HAProxy's
//! `idle-close-on-response`), within `runtime.shutdown_grace`, instead of closing it under a
//! client that may be sending. Clients that never retry see no error, on a removed port and on
//! a graceful stop. (A handover: `upgrade::keep_alive_clients_…`.)

use std::time::Duration;

use crate::support::addr;
use crate::support::keep_alive::{AfterClose, KeepAliveLoad};
use crate::support::origin::{HttpOrigin, OriginProtocol};
use crate::support::scenario::{Port, Scenario};

const CLIENTS: usize = 20;
/// Each client is idle between its requests most of the time, as real keep-alive clients are.
const PAUSE: Duration = Duration::from_millis(20);
const GRACE: &str = "runtime: { shutdown_grace: 30s }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_clients_of_a_removed_port_have_their_next_request_answered_then_closed() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gantry.yaml");
    Scenario::new()
        .section(GRACE)
        .port("web", Port::http("http").backends(&[origin.addr]))
        .write(&config);
    let gantry = gantry::Gantry::start_file(lb_config::load_builder(&config).expect("config"))
        .await
        .expect("gantry");
    let load = KeepAliveLoad::start(
        addr(&gantry, "web", "http"),
        CLIENTS,
        PAUSE,
        AfterClose::Stop,
    )
    .await;
    load.runs_on(100).await;

    Scenario::new().section(GRACE).write(&config);
    gantry::reload::reload_from_file(&gantry, &config)
        .await
        .expect("reload");
    let outcome = load.until_all_closed().await;
    assert!(outcome.errors.is_empty(), "{outcome:?}");
    assert_eq!(
        outcome.closed, CLIENTS,
        "each connection closed after an answer: {outcome:?}"
    );
    gantry.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_clients_of_a_stopping_gantry_have_their_next_request_answered_then_closed() {
    let origin = HttpOrigin::start("o", OriginProtocol::Http1).await;
    let gantry = Scenario::web(origin.addr).section(GRACE).start().await;
    let load = KeepAliveLoad::start(
        addr(&gantry, "web", "http"),
        CLIENTS,
        PAUSE,
        AfterClose::Stop,
    )
    .await;
    load.runs_on(100).await;

    let stopping = tokio::spawn({
        let gantry = gantry.clone();
        async move { gantry.shutdown(Duration::from_secs(30)).await }
    });
    let outcome = load.until_all_closed().await;
    assert!(outcome.errors.is_empty(), "{outcome:?}");
    assert_eq!(
        outcome.closed, CLIENTS,
        "each connection closed after an answer: {outcome:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the stop ends once every connection has closed")
        .expect("join");
}
