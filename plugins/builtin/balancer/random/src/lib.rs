//! `builtin:random`: each pick draws a backend at random, in proportion to its weight. No
//! state shared between picks, so no coordination between worker threads is needed. Its plan
//! lists each backend as many times as its share of the weights (divided by their greatest
//! common divisor), so Gantry draws first picks itself without calling the plugin.

use gantry_plugin_sdk::{
    export_balancer, host, weight_divisor, weighted, Backend, Balancer, Params, PickPlan, Request,
    MAX_PLAN_IDS,
};

struct WeightedRandom {
    /// Backend ids with the running total of weights up to and including each.
    cumulative: Vec<(u64, u32)>,
    /// Each backend id repeated in proportion to its weight; empty when that would not fit
    /// in a plan.
    draws: Vec<u32>,
}

impl Balancer for WeightedRandom {
    fn configure(params: &Params) -> Result<Self, String> {
        params.reject_unknown(&[])?;
        Ok(WeightedRandom {
            cumulative: Vec::new(),
            draws: Vec::new(),
        })
    }

    fn set_backends(&mut self, backends: Vec<Backend>) {
        let mut total = 0u64;
        self.cumulative = weighted(&backends)
            .map(|(id, weight)| {
                total += u64::from(weight);
                (total, id)
            })
            .collect();
        let divisor = weight_divisor(&backends);
        self.draws.clear();
        if total / u64::from(divisor) <= MAX_PLAN_IDS as u64 {
            for (id, weight) in weighted(&backends) {
                let times = (weight / divisor) as usize;
                self.draws.extend(std::iter::repeat_n(id, times));
            }
        }
    }

    fn pick(&mut self, _request: &Request, _attempt: u32) -> Option<u32> {
        let total = self.cumulative.last()?.0;
        let draw = host::random() % total;
        let slot = self.cumulative.partition_point(|(upto, _)| *upto <= draw);
        self.cumulative.get(slot).map(|(_, id)| *id)
    }

    fn plan(&self) -> Option<PickPlan> {
        (!self.draws.is_empty()).then(|| PickPlan::ByRandom(self.draws.clone()))
    }
}

export_balancer!(WeightedRandom);
