//! Health policies run by a plugin: one instance per port policy, shared by every thread (see
//! [`Exclusive`]). A fault leaves the verdict unchanged for that call; a quarantined health
//! plugin holds no backend out (`Verdict::Healthy` for every later result), so a broken
//! plugin cannot take a whole service down.

use std::sync::Arc;
use std::time::Duration;

use lb_config::Backend;
use wasmtime::Store;

use super::bindings::{HealthWorld, ProbeKind as WitProbeKind, WitOutcome, WitVerdict};
use super::faults::FaultKind;
use super::host::HostState;
use super::instances::{Configured, Exclusive};
use lb_policy::{
    BackendFigures, HealthPolicy, HealthSettings, Outcome, ProbeKind, ProbePlan, Verdict,
};

/// `probed` or `observed`: the same shape.
type Export =
    fn(&HealthWorld, &mut Store<HostState>, u32, WitOutcome) -> wasmtime::Result<WitVerdict>;

/// A health plugin with one port's parameters.
pub(crate) struct WasmHealthPolicy {
    instance: Exclusive<HealthWorld>,
    settings: HealthSettings,
}

impl WasmHealthPolicy {
    /// The policy, or why its probe plan cannot be sent (a path or host that would not be a
    /// single well-formed request line or header: the host never writes what a plugin
    /// smuggled into them).
    pub(crate) fn new(configured: Configured<HealthWorld>) -> Result<Self, String> {
        let wit = &configured.settings;
        if let Some(WitProbeKind::Http(http)) = wit.probe.as_ref().map(|plan| &plan.kind) {
            let visible =
                |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic());
            if !http.path.starts_with('/') || !visible(&http.path) {
                return Err(format!(
                    "asks to probe path {:?}, which is not a request path",
                    http.path
                ));
            }
            if let Some(host) = http.host.as_deref().filter(|h| !visible(h)) {
                return Err(format!(
                    "asks to probe with host {host:?}, which is not a host"
                ));
            }
        }
        let settings = HealthSettings {
            probe: wit.probe.as_ref().map(|plan| ProbePlan {
                kind: match &plan.kind {
                    WitProbeKind::TcpConnect => ProbeKind::TcpConnect,
                    WitProbeKind::Http(http) => ProbeKind::Http {
                        path: http.path.clone(),
                        host: http.host.clone(),
                        tls: http.tls,
                    },
                },
                // The contract's floor: a plugin cannot make the host probe in a busy loop.
                interval: Duration::from_millis(u64::from(plan.interval_ms.max(100))),
                timeout: Duration::from_millis(u64::from(plan.timeout_ms.max(1))),
            }),
            observe_traffic: wit.observe_traffic,
        };
        Ok(WasmHealthPolicy {
            instance: Exclusive::new(&configured),
            settings,
        })
    }

    /// Asks the plugin (`export`: `probed` or `observed`) about the backend at `index`.
    fn judge(&self, index: usize, outcome: Outcome, export: Export) -> Verdict {
        if self.instance.faults().is_quarantined() {
            return Verdict::Healthy;
        }
        let Ok(id) = u32::try_from(index) else {
            return Verdict::Unchanged;
        };
        let answer = self
            .instance
            .call(|bindings, store| export(bindings, store, id, wit_outcome(outcome)));
        self.verdict(answer)
    }

    fn verdict(&self, answer: Result<WitVerdict, FaultKind>) -> Verdict {
        let faults = self.instance.faults();
        match answer {
            Ok(verdict) => {
                faults.success();
                match verdict {
                    WitVerdict::Unchanged => Verdict::Unchanged,
                    WitVerdict::Healthy => Verdict::Healthy,
                    WitVerdict::Unhealthy => Verdict::Unhealthy,
                    WitVerdict::Eject(ms) => Verdict::Eject(Duration::from_millis(u64::from(ms))),
                }
            }
            Err(kind) => {
                faults.record(kind);
                if faults.is_quarantined() {
                    Verdict::Healthy
                } else {
                    Verdict::Unchanged
                }
            }
        }
    }
}

fn wit_outcome(outcome: Outcome) -> WitOutcome {
    match outcome {
        Outcome::Connected => WitOutcome::Connected,
        Outcome::Responded(status) => WitOutcome::Responded(status),
        Outcome::ConnectFailed => WitOutcome::ConnectFailed,
        Outcome::TimedOut => WitOutcome::TimedOut,
    }
}

impl HealthPolicy for WasmHealthPolicy {
    fn name(&self) -> &str {
        self.instance.name()
    }

    fn settings(&self) -> &HealthSettings {
        &self.settings
    }

    fn set_backends(&self, backends: &[Backend], figures: Arc<dyn BackendFigures>) {
        if let Err(kind) = self.instance.set_backends(backends, figures) {
            self.instance.faults().record(kind);
        }
    }

    fn probed(&self, index: usize, outcome: Outcome) -> Verdict {
        self.judge(index, outcome, |b, store, id, o| {
            b.call_probed(store, id, o)
        })
    }

    fn observed(&self, index: usize, outcome: Outcome) -> Verdict {
        self.judge(index, outcome, |b, store, id, o| {
            b.call_observed(store, id, o)
        })
    }
}
