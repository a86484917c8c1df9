//! Properties of the built-in policies, measured through the plugin host (the same path
//! requests take, minus the sockets): Maglev's balance and disruption, ring hash's disruption.

use std::net::SocketAddr;
use std::sync::Arc;

use lb_config::{AffinityPolicy, Backend, BalancerPolicy, HashKey, PolicySource, Protocol};

use lb_policy::{BackendFigures, Balancer, Figures, PickContext};

use super::{NoTelemetry, PluginHost};

struct Idle;

impl BackendFigures for Idle {
    fn figures(&self, _index: usize) -> Option<Figures> {
        Some(Figures {
            in_flight: 0,
            latency_micros: 0,
            healthy: true,
        })
    }
}

fn backends(n: usize) -> Vec<Backend> {
    (0..n)
        .map(|i| Backend {
            address: SocketAddr::from(([198, 51, 100, (i % 250) as u8], 8000 + (i / 250) as u16)),
            weight: 1,
        })
        .collect()
}

fn balancer(name: &str, backends: &[Backend]) -> Box<dyn Balancer> {
    balancer_with(name, &[], backends)
}

fn host() -> PluginHost {
    let limits = lb_config::parse_str("", std::path::Path::new("/"))
        .expect("defaults")
        .plugin_limits;
    PluginHost::new(&limits, Arc::new(NoTelemetry), 1).expect("plugin host")
}

fn balancer_with(name: &str, params: &[(&str, &str)], backends: &[Backend]) -> Box<dyn Balancer> {
    let host = host();
    let policy = BalancerPolicy {
        policy: PolicySource::Builtin(name.into()),
        params: params
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        hash_key: HashKey::ClientIp,
    };
    let factory = host.factory(&policy, Protocol::Tcp).expect("factory");
    factory.build(backends, Arc::new(Idle))
}

/// The backend address each key in `keys` goes to.
fn placements(balancer: &dyn Balancer, set: &[Backend], keys: u64) -> Vec<SocketAddr> {
    (0..keys)
        .map(|key| {
            let cx = PickContext {
                client: None,
                authority: None,
                protocol: Protocol::Tcp,
                hash_key: key,
                headers: None,
            };
            set[balancer.pick(&cx, 0).expect("a backend")].address
        })
        .collect()
}

#[test]
fn only_policies_whose_code_asks_for_headers_are_said_to_read_them() {
    let host = host();
    for name in lb_config::BUILTIN_BALANCERS {
        let policy = BalancerPolicy {
            policy: PolicySource::Builtin((*name).into()),
            params: Vec::new(),
            hash_key: HashKey::ClientIp,
        };
        let factory = host.factory(&policy, Protocol::Http).expect("factory");
        assert!(!factory.reads_headers(), "{name} calls no request-header");
    }
    let affinity = |name: &str| {
        let policy = AffinityPolicy {
            policy: PolicySource::Builtin(name.into()),
            params: Vec::new(),
            max_entries: 16,
        };
        let factory = host.affinity_factory(&policy, Protocol::Http);
        factory.expect("affinity factory").reads_headers()
    };
    assert!(affinity("cookie"), "the cookie affinity reads `cookie`");
    assert!(!affinity("client-ip"));
}

#[test]
fn the_embedded_builtins_are_exactly_those_the_configuration_accepts() {
    for (kind, accepted) in [
        ("balancer", lb_config::BUILTIN_BALANCERS),
        ("affinity", lb_config::BUILTIN_AFFINITIES),
    ] {
        let mut embedded: Vec<&str> = super::builtin_names(kind).collect();
        let mut accepted = accepted.to_vec();
        embedded.sort_unstable();
        accepted.sort_unstable();
        assert_eq!(embedded, accepted, "{kind}");
    }
}

/// Fills a Maglev table of `size` for 100 backends, checks its balance, and returns how many
/// times the ideal share of keys moves when one backend leaves.
fn maglev_disruption(size: u64) -> f64 {
    let table = size.to_string();
    let params = [("table_size", table.as_str())];
    let all = backends(100);
    let before = placements(balancer_with("maglev", &params, &all).as_ref(), &all, size);
    let mut slots = std::collections::HashMap::<SocketAddr, u64>::new();
    for address in &before {
        *slots.entry(*address).or_default() += 1;
    }
    let mean = size as f64 / 100.0;
    let max = *slots.values().max().expect("slots") as f64;
    assert_eq!(slots.len(), 100);
    assert!(max / mean <= 1.01, "max/mean slot share {}", max / mean);

    let leaving = all[37].address;
    let rest: Vec<Backend> = all
        .iter()
        .copied()
        .filter(|b| b.address != leaving)
        .collect();
    let after = placements(
        balancer_with("maglev", &params, &rest).as_ref(),
        &rest,
        size,
    );
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count() as f64 / size as f64;
    moved / (1.0 / 100.0)
}

#[test]
fn maglev_fills_its_table_evenly_and_moves_little_when_one_of_100_backends_leaves() {
    // Standard Maglev's disruption shrinks as the table grows: over all 100 possible removals
    // it is 1.49-1.61x the ideal share at the default 65537 slots, 1.33-1.41x at 131071.
    let at_default = maglev_disruption(65_537);
    assert!(at_default <= 1.65, "{at_default:.3}x the ideal share moved");
    let at_double = maglev_disruption(131_071);
    assert!(at_double <= 1.5, "{at_double:.3}x the ideal share moved");
}

#[test]
fn ring_hash_moves_only_the_keys_of_the_backend_that_left() {
    let all = backends(20);
    let keys = 20_000;
    let spread = |i: u64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let hashed = |balancer: &dyn Balancer, set: &[Backend]| -> Vec<SocketAddr> {
        (0..keys)
            .map(|k| {
                let cx = PickContext {
                    client: None,
                    authority: None,
                    protocol: Protocol::Tcp,
                    hash_key: spread(k),
                    headers: None,
                };
                set[balancer.pick(&cx, 0).expect("a backend")].address
            })
            .collect()
    };
    let before = hashed(balancer("ring-hash", &all).as_ref(), &all);
    let leaving = all[3].address;
    let rest: Vec<Backend> = all
        .iter()
        .copied()
        .filter(|b| b.address != leaving)
        .collect();
    let after = hashed(balancer("ring-hash", &rest).as_ref(), &rest);
    for (b, a) in before.iter().zip(&after) {
        if *b != leaving {
            assert_eq!(a, b, "a key moved between backends that both stayed");
        }
    }
    let share = before.iter().filter(|a| **a == leaving).count() as f64 / keys as f64;
    assert!(
        (0.02..0.09).contains(&share),
        "the leaving backend held {share}"
    );
}
