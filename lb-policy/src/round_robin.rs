//! The native balancer: smooth weighted round-robin (nginx's algorithm), precomputed into a
//! schedule when the set changes so that a pick is one atomic increment and one array read. It
//! answers when a plugin faults or is quarantined, and is the baseline a plugin's cost is
//! measured against (`native:round-robin`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use lb_config::Backend;

use crate::balancer::{BackendFigures, Balancer, BalancerFactory, PickContext};

/// Smooth weighted round-robin, as a factory of schedules.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoundRobin;

impl BalancerFactory for RoundRobin {
    fn name(&self) -> &str {
        "round-robin"
    }

    fn build(&self, backends: &[Backend], _figures: Arc<dyn BackendFigures>) -> Box<dyn Balancer> {
        Box::new(Schedule {
            order: smooth_weighted_schedule(backends),
            next: AtomicUsize::new(0),
        })
    }

    fn reads_headers(&self) -> bool {
        false
    }
}

struct Schedule {
    order: Vec<u32>,
    next: AtomicUsize,
}

impl Balancer for Schedule {
    fn name(&self) -> &str {
        "round-robin"
    }

    fn pick(&self, _cx: &PickContext<'_>, _attempt: u32) -> Option<usize> {
        if self.order.is_empty() {
            return None;
        }
        // Relaxed: the counter only spreads work; no other memory depends on its value.
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.order[turn % self.order.len()] as usize)
    }
}

/// One full cycle of smooth weighted round-robin: each backend appears `weight / gcd` times,
/// interleaved (weights 5,1,1 give a a b a c a a, not a a a a a b c). Weights are capped at
/// [`lb_config::MAX_WEIGHT`], so a cycle holds at most 256 entries per backend.
fn smooth_weighted_schedule(backends: &[Backend]) -> Vec<u32> {
    let divisor = backends
        .iter()
        .map(|b| b.weight)
        .filter(|w| *w > 0)
        .fold(0, gcd);
    if divisor == 0 {
        return Vec::new();
    }
    let weights: Vec<i64> = backends
        .iter()
        .map(|b| i64::from(b.weight / divisor))
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, weight) in weights.iter().enumerate() {
            current[i] += weight;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best as u32);
    }
    order
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackendFigures, Figures, PickContext};
    use lb_config::Protocol;
    use std::net::SocketAddr;

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

    struct NoFigures;

    impl BackendFigures for NoFigures {
        fn figures(&self, _index: usize) -> Option<Figures> {
            None
        }
    }

    fn picks(weights: &[u32], n: usize) -> Vec<usize> {
        let balancer = RoundRobin.build(&backends(weights), Arc::new(NoFigures));
        let cx = PickContext {
            client: None,
            authority: None,
            protocol: Protocol::Tcp,
            hash_key: 0,
            headers: None,
        };
        (0..n).filter_map(|_| balancer.pick(&cx, 0)).collect()
    }

    #[test]
    fn equal_weights_rotate() {
        assert_eq!(picks(&[1, 1, 1], 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_are_interleaved_not_bunched() {
        assert_eq!(picks(&[5, 1, 1], 7), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn common_factors_shrink_the_cycle_and_zero_weight_is_never_picked() {
        assert_eq!(
            smooth_weighted_schedule(&backends(&[200, 100, 0])),
            [0, 1, 0]
        );
    }

    #[test]
    fn an_empty_or_all_zero_set_has_no_answer() {
        assert!(picks(&[], 3).is_empty());
        assert!(picks(&[0, 0], 3).is_empty());
    }
}
