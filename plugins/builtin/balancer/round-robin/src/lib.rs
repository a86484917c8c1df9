//! `builtin:round-robin`: smooth weighted round-robin (nginx's algorithm). The whole cycle is
//! computed when the backend set changes, so a pick is an index into it, chosen by the host's
//! shared `sequence` so that the rotation runs across all worker threads, not per thread.
//! Weights 5, 1, 1 give `a a b a c a a`: interleaved, never bunched. The cycle is also the
//! balancer's plan, so Gantry places first picks from it without calling the plugin.

use gantry_plugin_sdk::{
    export_balancer, host, weight_divisor, weighted, Backend, Balancer, Params, PickPlan, Request,
    MAX_PLAN_IDS,
};

struct RoundRobin {
    cycle: Vec<u32>,
}

impl Balancer for RoundRobin {
    fn configure(params: &Params) -> Result<Self, String> {
        params.reject_unknown(&[])?;
        Ok(RoundRobin { cycle: Vec::new() })
    }

    fn set_backends(&mut self, backends: Vec<Backend>) {
        let members: Vec<(u32, u32)> = weighted(&backends).collect();
        let divisor = weight_divisor(&backends);
        let weights: Vec<i64> = members
            .iter()
            .map(|(_, w)| i64::from(w / divisor))
            .collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; members.len()];
        self.cycle.clear();
        for _ in 0..total {
            let mut best = 0;
            for (i, weight) in weights.iter().enumerate() {
                current[i] += weight;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            self.cycle.push(members[best].0);
        }
    }

    fn pick(&mut self, _request: &Request, _attempt: u32) -> Option<u32> {
        if self.cycle.is_empty() {
            return None;
        }
        let turn = host::sequence() % self.cycle.len() as u64;
        Some(self.cycle[turn as usize])
    }

    fn plan(&self) -> Option<PickPlan> {
        let fits = !self.cycle.is_empty() && self.cycle.len() <= MAX_PLAN_IDS;
        fits.then(|| PickPlan::Rotation(self.cycle.clone()))
    }
}

export_balancer!(RoundRobin);
