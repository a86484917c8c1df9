//! `builtin:random`: each pick draws a backend at random, in proportion to its weight. No
//! state shared between picks, so no coordination between worker threads is needed.

use gantry_plugin_sdk::{export_balancer, host, weighted, Backend, Balancer, Params, Request};

struct WeightedRandom {
    /// Backend ids with the running total of weights up to and including each.
    cumulative: Vec<(u64, u32)>,
}

impl Balancer for WeightedRandom {
    fn configure(params: &Params) -> Result<Self, String> {
        params.reject_unknown(&[])?;
        Ok(WeightedRandom {
            cumulative: Vec::new(),
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
    }

    fn pick(&mut self, _request: &Request, _attempt: u32) -> Option<u32> {
        let total = self.cumulative.last()?.0;
        let draw = host::random() % total;
        let slot = self.cumulative.partition_point(|(upto, _)| *upto <= draw);
        self.cumulative.get(slot).map(|(_, id)| *id)
    }
}

export_balancer!(WeightedRandom);
