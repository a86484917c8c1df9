//! Balancers run by a plugin. A [`WasmBalancerFactory`] is a balancer plugin with one port's
//! parameters; for each backend set it builds a balancer whose picks are the plugin's. A
//! trap, a missed deadline or an id outside the set is a fault: that call is answered by the
//! native round-robin, and after `quarantine_after` faults in a row the plugin is not called
//! again. A 0.3.0 plugin may state a pick plan for the set ([`crate::plan`]): first picks are
//! then placed by the host from it, and only later attempts call the plugin.

use std::sync::{Arc, OnceLock};

use lb_config::Backend;
use lb_policy::{BackendFigures, Balancer, BalancerFactory, PickContext, RoundRobin, Unanswered};

use super::bindings::{v1, v2, v3};
use super::convert::{to_v1, to_v2, to_v3};
use super::faults::FaultKind;
use super::plan::{PickPlan, Rule};
use super::policy::{Configured, Kind, PerThread};

/// The balancer kind.
pub(crate) struct BalancerKind;

impl Kind for BalancerKind {
    const NAME: &'static str = "balancer";
    type V1 = v1::BalancerWorld;
    type V2 = v2::BalancerWorld;
    type V3 = v3::BalancerWorld;
    type Settings = ();

    fn from_v1(_settings: ()) {}
    fn from_v2(_settings: ()) {}
    fn from_v3(_settings: ()) {}
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
            plan: OnceLock::new(),
        })
    }

    fn reads_headers(&self) -> bool {
        self.0.reads_headers
    }

    fn quarantined(&self) -> bool {
        self.0.is_quarantined()
    }
}

/// A balancer for one backend set, answered by the plugin.
struct WasmBalancer {
    plugin: PerThread<BalancerKind>,
    fallback: Box<dyn Balancer>,
    count: usize,
    /// The plugin's pick plan for this set, asked once (at activation, or by the first pick).
    plan: OnceLock<Option<PickPlan>>,
}

/// `pick` on a resource-based version's balancer (0.2.0 and 0.3.0 differ only in names).
macro_rules! pick {
    ($convert:ident, $policy:expr, $cx:expr, $attempt:expr) => {{
        let request = $convert::request($cx);
        $policy.call($cx.headers, |bindings, store, balancer| {
            bindings
                .gantry_plugins_balancers()
                .balancer()
                .call_pick(store, balancer, &request, $attempt)
        })
    }};
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
            PerThread::V2(policy) => pick!(to_v2, policy, cx, attempt),
            PerThread::V3(policy) => pick!(to_v3, policy, cx, attempt),
        }
    }

    /// The plan for this set, asking the plugin the first time. Only 0.3.0 plugins have
    /// plans; a fault or an unusable plan is recorded, and leaves the set without one.
    fn plan(&self) -> Option<&PickPlan> {
        self.plan.get_or_init(|| self.ask_plan()).as_ref()
    }

    fn ask_plan(&self) -> Option<PickPlan> {
        let PerThread::V3(policy) = &self.plugin else {
            return None;
        };
        let faults = self.plugin.faults();
        if faults.is_quarantined() {
            return None;
        }
        let answer = policy.call_once_per_set(|bindings, store, balancer| {
            bindings
                .gantry_plugins_balancers()
                .balancer()
                .call_plan(store, balancer)
        });
        let (rule, ids) = match answer {
            Ok(None) => {
                faults.success();
                return None;
            }
            Ok(Some(v3::PickPlan::Rotation(ids))) => (Rule::Rotation, ids),
            Ok(Some(v3::PickPlan::ByHash(ids))) => (Rule::ByHash, ids),
            Ok(Some(v3::PickPlan::ByRandom(ids))) => (Rule::ByRandom, ids),
            Err(kind) => {
                faults.record(kind);
                return None;
            }
        };
        let plan = PickPlan::checked(rule, ids, self.count, policy.context());
        if let Some(plan) = &plan {
            faults.success();
            tracing::debug!(plugin = %self.plugin.name(), ?rule, ids = plan.len(), "first picks are placed from the plugin's plan");
        } else {
            tracing::warn!(plugin = %self.plugin.name(), "plugin answered a pick plan it cannot use (empty, too long, or naming a backend outside the set); it is asked every pick instead");
            faults.record(FaultKind::InvalidAnswer);
        }
        plan
    }
}

impl Balancer for WasmBalancer {
    fn name(&self) -> &str {
        self.plugin.name()
    }

    fn activate(&self) {
        self.plugin.prepare();
        // Asked here, off the request path, so no request waits for it.
        let _ = self.plan();
    }

    fn pick(&self, cx: &PickContext<'_>, attempt: u32) -> Option<usize> {
        self.answer(cx, attempt)
            .unwrap_or_else(|_| self.fallback.pick(cx, attempt))
    }

    fn answer(&self, cx: &PickContext<'_>, attempt: u32) -> Result<Option<usize>, Unanswered> {
        let faults = self.plugin.faults();
        if faults.is_quarantined() {
            return Err(Unanswered::Quarantined);
        }
        if attempt == 0 {
            if let Some(plan) = self.plan() {
                return Ok(Some(plan.pick(cx.hash_key)));
            }
        }
        let kind = match self.call_pick(cx, attempt) {
            Ok(Some(id)) if (id as usize) < self.count => {
                faults.success();
                return Ok(Some(id as usize));
            }
            Ok(None) => {
                faults.success();
                return Ok(None);
            }
            Ok(Some(_)) => FaultKind::InvalidAnswer,
            Err(kind) => kind,
        };
        faults.record(kind);
        Err(Unanswered::Fault)
    }
}
