//! Balancers run by a plugin. A [`WasmBalancerFactory`] is a balancer plugin with one port's
//! parameters; for each backend set it builds a balancer whose picks are the plugin's. A
//! trap, a missed deadline or an id outside the set is a fault: that call is answered by the
//! native round-robin, and after `quarantine_after` faults in a row the plugin is not called
//! again.

use std::sync::Arc;

use lb_config::Backend;
use lb_policy::{BackendFigures, Balancer, BalancerFactory, PickContext, RoundRobin};

use super::bindings::{v1, v2};
use super::convert::{to_v1, to_v2};
use super::faults::FaultKind;
use super::policy::{Configured, Kind, PerThread};

/// The balancer kind.
pub(crate) struct BalancerKind;

impl Kind for BalancerKind {
    const NAME: &'static str = "balancer";
    type V1 = v1::BalancerWorld;
    type V2 = v2::BalancerWorld;
    type Settings = ();

    fn from_v1(_settings: ()) {}
    fn from_v2(_settings: ()) {}
}

/// A balancer plugin with one port's parameters.
pub(crate) struct WasmBalancerFactory(pub(crate) Configured<BalancerKind>);

impl BalancerFactory for WasmBalancerFactory {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn build(&self, backends: &[Backend], figures: Arc<dyn BackendFigures>) -> Box<dyn Balancer> {
        Box::new(WasmBalancer {
            plugin: self.0.per_thread(backends, figures.clone()),
            fallback: RoundRobin.build(backends, figures),
            count: backends.len(),
        })
    }

    fn reads_headers(&self) -> bool {
        self.0.reads_headers
    }
}

/// A balancer for one backend set, answered by the plugin.
struct WasmBalancer {
    plugin: PerThread<BalancerKind>,
    fallback: Box<dyn Balancer>,
    count: usize,
}

impl WasmBalancer {
    fn call_pick(&self, cx: &PickContext<'_>, attempt: u32) -> Result<Option<u32>, FaultKind> {
        match &self.plugin {
            PerThread::V1(generation) => {
                let request = to_v1::request(cx);
                generation.call(cx.headers, |bindings, store| {
                    bindings.call_pick(store, &request, attempt)
                })
            }
            PerThread::V2(policy) => {
                let request = to_v2::request(cx);
                policy.call(cx.headers, |bindings, store, balancer| {
                    bindings
                        .gantry_plugins_balancers()
                        .balancer()
                        .call_pick(store, balancer, &request, attempt)
                })
            }
        }
    }
}

impl Balancer for WasmBalancer {
    fn name(&self) -> &str {
        self.plugin.name()
    }

    fn activate(&self) {
        self.plugin.prepare();
    }

    fn pick(&self, cx: &PickContext<'_>, attempt: u32) -> Option<usize> {
        let faults = self.plugin.faults();
        if faults.is_quarantined() {
            return self.fallback.pick(cx, attempt);
        }
        match self.call_pick(cx, attempt) {
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
