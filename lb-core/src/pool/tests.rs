//! Selection, back-off, state carried across rebuilds, the retry rule, and a plugin affinity
//! over a pool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lb_config::{Backend, Backoff, Protocol};
use lb_policy::{PickContext, RoundRobin};

use super::*;
use crate::metrics::PortMetrics;

const CX: PickContext<'static> = PickContext {
    client: None,
    authority: None,
    protocol: Protocol::Tcp,
    hash_key: 0,
    headers: None,
};

const BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(2),
    max: Duration::from_secs(30),
};

fn policies(retries: u32) -> Policies<'static> {
    Policies {
        balancer: &RoundRobin,
        affinity: None,
        affinity_counters: PortMetrics::new().affinity,
        retries,
        backoff: BACKOFF,
        observers: Vec::new(),
        shadow: ShadowPolicies::default(),
    }
}

fn backends(weights: &[u32]) -> Vec<Backend> {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| Backend {
            address: SocketAddr::from(([192, 0, 2, 1], 8000 + i as u16)),
            weight: *w,
        })
        .collect()
}

fn pool(weights: &[u32]) -> BackendPool {
    BackendPool::build(&backends(weights), policies(2), None)
}

fn index_of(pool: &BackendPool, attempt: &Attempt) -> usize {
    pool.backends()
        .iter()
        .position(|b| Arc::ptr_eq(b, attempt.backend()))
        .expect("a backend of the pool")
}

#[test]
fn tried_backends_are_skipped() {
    let pool = pool(&[1, 1, 1]);
    let mut tried = Tried::default();
    for _ in 0..3 {
        let index = pool
            .select(&CX, &tried)
            .map(|s| s.index)
            .expect("a backend");
        assert!(!tried.contains(index));
        tried.push(index);
    }
    assert!(pool.select(&CX, &tried).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_failed_backend_backs_off_then_returns() {
    let pool = pool(&[1, 1]);
    let failed = pool.backends()[0].clone();
    failed.connect_failed(&BACKOFF);
    assert!(failed.is_backing_off());
    for _ in 0..4 {
        let i = pool
            .select(&CX, &Tried::default())
            .map(|s| s.index)
            .expect("a backend");
        assert_eq!(i, 1, "the backing-off backend is skipped");
    }
    tokio::time::advance(Duration::from_millis(2001)).await;
    assert!(!failed.is_backing_off());
    failed.connect_failed(&BACKOFF);
    tokio::time::advance(Duration::from_millis(2001)).await;
    assert!(
        failed.is_backing_off(),
        "the second failure backs off twice as long"
    );
    failed.connect_succeeded();
    assert!(!failed.is_backing_off());
}

#[tokio::test(start_paused = true)]
async fn when_every_backend_backs_off_the_soonest_back_is_tried() {
    let pool = pool(&[1, 1]);
    pool.backends()[1].connect_failed(&BACKOFF);
    tokio::time::advance(Duration::from_millis(500)).await;
    pool.backends()[0].connect_failed(&BACKOFF);
    let i = pool
        .select(&CX, &Tried::default())
        .map(|s| s.index)
        .expect("fail open");
    assert_eq!(i, 1);
}

#[test]
fn weight_zero_takes_no_new_work() {
    let pool = pool(&[0, 1]);
    for _ in 0..3 {
        assert_eq!(
            pool.select(&CX, &Tried::default()).map(|s| s.index),
            Some(1)
        );
    }
    let mut tried = Tried::default();
    tried.push(1);
    assert!(pool.select(&CX, &tried).is_none());
}

#[test]
fn state_survives_a_rebuild_for_addresses_that_remain() {
    let old = pool(&[1, 1]);
    old.backends()[1].connect_failed(&BACKOFF);
    let kept = [Backend {
        address: old.backends()[1].address,
        weight: 1,
    }];
    let new = BackendPool::build(&kept, policies(2), Some(&old));
    assert!(Arc::ptr_eq(&new.backends()[0], &old.backends()[1]));
    assert!(new.backends()[0].is_backing_off());
}

#[test]
fn a_failed_connect_is_retried_on_another_backend_within_the_budget() {
    // Three backends, one retry: two tries in all.
    let pool = BackendPool::build(&backends(&[1, 1, 1]), policies(1), None);
    let mut attempts = Attempts::new();
    let first = attempts.next(&pool, &CX).expect("a backend");
    let first_index = index_of(&pool, &first);
    assert!(
        attempts.failed(&pool, first, Outcome::ConnectFailed),
        "one retry left"
    );
    let second = attempts.next(&pool, &CX).expect("another backend");
    assert_ne!(index_of(&pool, &second), first_index);
    assert!(
        !attempts.failed(&pool, second, Outcome::TimedOut),
        "budget spent"
    );
    assert_eq!(attempts.failures(), 2);
    assert_eq!(pool.backends()[first_index].metrics.connect_errors.get(), 1);
    assert!(pool.backends()[first_index].is_backing_off());
}

#[test]
fn retries_stop_when_no_untried_backend_remains() {
    let pool = BackendPool::build(&backends(&[1, 1]), policies(16), None);
    let mut attempts = Attempts::new();
    let first = attempts.next(&pool, &CX).expect("a backend");
    assert!(attempts.failed(&pool, first, Outcome::ConnectFailed));
    let second = attempts.next(&pool, &CX).expect("the other backend");
    assert!(
        !attempts.failed(&pool, second, Outcome::ConnectFailed),
        "both backends failed: no third try, whatever the budget"
    );
    assert_eq!(attempts.next(&pool, &CX).err(), Some(NoBackend::Exhausted));
    let empty = BackendPool::build(&[], policies(2), None);
    assert_eq!(
        Attempts::new().next(&empty, &CX).err(),
        Some(NoBackend::Unavailable)
    );
}

#[test]
fn a_lease_counts_the_work_in_flight_until_dropped() {
    let pool = pool(&[1]);
    let attempts = Attempts::new();
    let attempt = attempts.next(&pool, &CX).expect("a backend");
    let backend = attempt.backend().clone();
    assert_eq!(backend.metrics.in_flight.get(), 1);
    attempts.connected(&attempt);
    drop(attempt.into_lease());
    assert_eq!(backend.metrics.in_flight.get(), 0);
}

/// A pool of `n` backends balanced by the native round-robin, with `builtin:client-ip`
/// affinity forgetting clients after `timeout_seconds`.
fn sticky_pool(n: usize, timeout_seconds: u32) -> BackendPool {
    let limits = lb_config::parse_str("", std::path::Path::new("/"))
        .expect("defaults")
        .plugin_limits;
    let host = lb_plugins::PluginHost::new(&limits, Arc::new(lb_plugins::NoTelemetry), 1)
        .expect("plugin host");
    let affinity = host
        .affinity_factory(
            &lb_config::AffinityPolicy {
                policy: lb_config::PolicySource::Builtin("client-ip".into()),
                params: vec![("timeout_seconds".into(), timeout_seconds.to_string())],
                max_entries: 1000,
            },
            Protocol::Tcp,
        )
        .expect("affinity factory");
    let mut policies = policies(2);
    policies.affinity = Some(affinity.as_ref());
    let pool = BackendPool::build(&backends(&vec![1; n]), policies, None);
    pool.activate();
    pool
}

#[tokio::test(start_paused = true)]
async fn client_ip_affinity_lasts_while_the_client_returns_within_its_timeout() {
    let pool = sticky_pool(3, 10);
    let from = |last: u8| PickContext {
        client: Some(SocketAddr::from(([203, 0, 113, last], 40_000))),
        authority: None,
        protocol: Protocol::Tcp,
        hash_key: 0,
        headers: None,
    };
    let pick = |last: u8| {
        pool.select(&from(last), &Tried::default())
            .expect("a backend")
            .index
    };
    // A new client gets the backend rendezvous hashing ranks first for it: the one every
    // replica would give it (a second pool, built apart, agrees).
    let home = pick(1);
    let elsewhere = sticky_pool(3, 10);
    let agreed = elsewhere
        .select(&from(1), &Tried::default())
        .expect("a backend")
        .index;
    assert_eq!(home, agreed);
    let clients: std::collections::BTreeSet<usize> = (1..=40).map(pick).collect();
    assert_eq!(clients.len(), 3, "new clients spread over every backend");
    // Its backend backs off: it moves, and stays where it moved while it comes back within
    // 10 s of its last visit, even once its first backend is usable again.
    pool.backends()[home].connect_failed(&BACKOFF);
    let moved = pick(1);
    assert_ne!(moved, home);
    let step = Duration::from_secs(9);
    for _ in 0..5 {
        tokio::time::advance(step).await;
        assert_eq!(pick(1), moved, "back within 10 s of its last visit");
    }
    // Idle for longer than the timeout: forgotten, so ranked afresh (its first backend).
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(pick(1), home);
}
