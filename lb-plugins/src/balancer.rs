//! Balancers run by a plugin. A [`WasmBalancerFactory`] is a balancer plugin with one port's
//! parameters; for each backend set it builds a balancer whose picks are the plugin's. A
//! trap, a missed deadline or an id outside the set is a fault: that call is answered by the
//! native round-robin, and after `quarantine_after` faults in a row the plugin is not called
//! again.

use std::sync::Arc;

use lb_config::Backend;

use super::bindings::BalancerWorld;
use super::faults::FaultKind;
use super::instances::{wit_request, Configured, Generation};
use lb_policy::{BackendFigures, Balancer, BalancerFactory, PickContext, RoundRobin};

/// A balancer plugin with one port's parameters.
pub(crate) struct WasmBalancerFactory(pub(crate) Configured<BalancerWorld>);

impl BalancerFactory for WasmBalancerFactory {
    fn name(&self) -> &str {
        &self.0.recipe.policy.name
    }

    fn build(&self, backends: &[Backend], figures: Arc<dyn BackendFigures>) -> Box<dyn Balancer> {
        Box::new(WasmBalancer {
            generation: self.0.generation(backends, figures.clone()),
            fallback: RoundRobin.build(backends, figures),
            count: backends.len(),
        })
    }
}

/// A balancer for one backend set, answered by the plugin.
struct WasmBalancer {
    generation: Arc<Generation<BalancerWorld>>,
    fallback: Box<dyn Balancer>,
    count: usize,
}

impl Balancer for WasmBalancer {
    fn name(&self) -> &str {
        self.generation.name()
    }

    fn activate(&self) {
        self.generation.prepare();
    }

    fn pick(&self, cx: &PickContext<'_>, attempt: u32) -> Option<usize> {
        let faults = self.generation.faults();
        if faults.is_quarantined() {
            return self.fallback.pick(cx, attempt);
        }
        let request = wit_request(cx);
        let answer = self.generation.call(cx.headers, |bindings, store| {
            bindings.call_pick(store, &request, attempt)
        });
        match answer {
            Ok(Some(id)) if (id as usize) < self.count => {
                faults.success();
                Some(id as usize)
            }
            Ok(None) => {
                faults.success();
                None
            }
            Ok(Some(_)) => {
                faults.record(FaultKind::InvalidAnswer);
                self.fallback.pick(cx, attempt)
            }
            Err(kind) => {
                faults.record(kind);
                self.fallback.pick(cx, attempt)
            }
        }
    }
}
