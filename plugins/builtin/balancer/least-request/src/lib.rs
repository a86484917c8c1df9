//! `builtin:least-request`: power of two choices. Each pick draws two distinct backends at
//! random (in proportion to weight) and takes the one with fewer requests in flight relative
//! to its weight, as the host counts them across all worker threads. Two random choices avoid
//! the herd that "always the least loaded" causes, at the cost of two figure reads.

use gantry_plugin_sdk::{export_balancer, host, weighted, Backend, Balancer, Params, Request};

struct LeastRequest {
    members: Vec<(u32, u32)>,
    total_weight: u64,
}

impl LeastRequest {
    fn draw(&self) -> usize {
        let mut point = host::random() % self.total_weight;
        for (i, (_, weight)) in self.members.iter().enumerate() {
            if point < u64::from(*weight) {
                return i;
            }
            point -= u64::from(*weight);
        }
        self.members.len() - 1
    }

    /// In-flight work per unit of weight, scaled to stay an integer; unhealthy is worst.
    fn load(&self, index: usize) -> u64 {
        let (id, weight) = self.members[index];
        match host::backend_figures(id) {
            Some(figures) if figures.healthy => {
                u64::from(figures.in_flight) * 1024 / u64::from(weight.max(1))
            }
            _ => u64::MAX,
        }
    }
}

impl Balancer for LeastRequest {
    fn configure(params: &Params) -> Result<Self, String> {
        params.reject_unknown(&[])?;
        Ok(LeastRequest {
            members: Vec::new(),
            total_weight: 0,
        })
    }

    fn set_backends(&mut self, backends: Vec<Backend>) {
        self.members = weighted(&backends).collect();
        self.total_weight = self.members.iter().map(|(_, w)| u64::from(*w)).sum();
    }

    fn pick(&mut self, _request: &Request, _attempt: u32) -> Option<u32> {
        match self.members.len() {
            0 => None,
            1 => Some(self.members[0].0),
            _ => {
                let first = self.draw();
                let mut second = self.draw();
                if second == first {
                    second = (first + 1) % self.members.len();
                }
                let chosen = if self.load(second) < self.load(first) {
                    second
                } else {
                    first
                };
                Some(self.members[chosen].0)
            }
        }
    }
}

export_balancer!(LeastRequest);
