//! Health policies run by a plugin: one state per port policy, shared by every thread (a
//! single instance of its own for a 0.1.0 plugin, one resource in a shared instance for a
//! 0.2.0 or 0.3.0 one). A fault leaves the verdict unchanged for that call; a quarantined health plugin
//! holds no backend out (`Verdict::Healthy` for every later result), so a broken plugin
//! cannot take a whole service down.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lb_config::Backend;
use lb_policy::{
    BackendFigures, HealthPolicy, HealthSettings, Outcome, ProbeKind, ProbePlan, Verdict,
};

use super::bindings::{v1, v2, v3};
use super::faults::FaultKind;
use super::policy::{Configured, Kind, Single};

/// The health kind. Its settings: what the host must do for the policy, or why the plugin's
/// answer cannot be used.
pub(crate) struct HealthKind;

/// A plugin's health settings, checked: a probe path or host that would not be a single
/// well-formed request line or header is refused (the host never writes what a plugin
/// smuggled into them).
macro_rules! health_settings {
    ($version:ident, $settings:expr, $port:expr) => {{
        let wit: $version::HealthSettings = $settings;
        let visible = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic());
        let probe = match wit.probe {
            None => Ok(None),
            Some(plan) => {
                let port: Option<u16> = $port(&plan);
                let kind = match plan.kind {
                    $version::ProbeKind::TcpConnect => Ok(ProbeKind::TcpConnect),
                    $version::ProbeKind::Http(http) => {
                        if !http.path.starts_with('/') || !visible(&http.path) {
                            Err(format!(
                                "asks to probe path {:?}, which is not a request path",
                                http.path
                            ))
                        } else if let Some(host) = http.host.as_deref().filter(|h| !visible(h)) {
                            Err(format!(
                                "asks to probe with host {host:?}, which is not a host"
                            ))
                        } else {
                            Ok(ProbeKind::Http {
                                path: http.path,
                                host: http.host,
                                tls: http.tls,
                            })
                        }
                    }
                };
                kind.map(|kind| {
                    Some(ProbePlan {
                        kind,
                        port: port.filter(|p| *p != 0),
                        // The contract's floor: a plugin cannot make the host probe in a
                        // busy loop.
                        interval: Duration::from_millis(u64::from(plan.interval_ms.max(100))),
                        timeout: Duration::from_millis(u64::from(plan.timeout_ms.max(1))),
                    })
                })
            }
        };
        probe.map(|probe| HealthSettings {
            probe,
            observe_traffic: wit.observe_traffic,
        })
    }};
}

impl Kind for HealthKind {
    const NAME: &'static str = "health";
    type V1 = v1::HealthWorld;
    type V2 = v2::HealthWorld;
    type V3 = v3::HealthWorld;
    type Settings = Result<HealthSettings, String>;

    fn from_v1(settings: v1::HealthSettings) -> Self::Settings {
        // 0.1.0 plans always probe the backend's own port.
        health_settings!(v1, settings, |_: &v1::ProbePlan| None)
    }

    fn from_v2(settings: v2::HealthSettings) -> Self::Settings {
        health_settings!(v2, settings, |plan: &v2::ProbePlan| plan.port)
    }

    fn from_v3(settings: v3::HealthSettings) -> Self::Settings {
        health_settings!(v3, settings, |plan: &v3::ProbePlan| plan.port)
    }
}

/// An outcome as a version's WIT value.
macro_rules! to_wit {
    ($version:ident, $outcome:expr) => {
        match $outcome {
            Outcome::Connected => $version::Outcome::Connected,
            Outcome::Responded(status) => $version::Outcome::Responded(status),
            Outcome::ConnectFailed => $version::Outcome::ConnectFailed,
            Outcome::TimedOut => $version::Outcome::TimedOut,
        }
    };
}

/// A version's verdict as the host's.
macro_rules! from_wit {
    ($version:ident, $verdict:expr) => {
        match $verdict {
            $version::Verdict::Unchanged => Verdict::Unchanged,
            $version::Verdict::Healthy => Verdict::Healthy,
            $version::Verdict::Unhealthy => Verdict::Unhealthy,
            $version::Verdict::Eject(ms) => Verdict::Eject(Duration::from_millis(u64::from(ms))),
        }
    };
}

/// `probed` or `observed` on a resource-based version's checker (0.2.0 and 0.3.0 differ only
/// in names).
macro_rules! judged {
    ($version:ident, $policy:expr, $call:expr, $id:expr, $outcome:expr) => {{
        let outcome = to_wit!($version, $outcome);
        let verdict = $policy.call(None, |bindings, store, checker| {
            let checks = bindings.gantry_plugins_health_checks();
            match $call {
                Call::Probed => checks.checker().call_probed(store, checker, $id, outcome),
                Call::Observed => checks.checker().call_observed(store, checker, $id, outcome),
            }
        })?;
        Ok(from_wit!($version, verdict))
    }};
}

/// A health plugin with one port's parameters.
pub(crate) struct WasmHealthPolicy {
    plugin: Single<HealthKind>,
    settings: HealthSettings,
}

/// `probed` or `observed`.
#[derive(Clone, Copy)]
enum Call {
    Probed,
    Observed,
}

impl WasmHealthPolicy {
    /// The policy, or why the plugin's settings cannot be used.
    pub(crate) fn new(configured: Configured<HealthKind>) -> Result<Self, String> {
        // Spread the ports' health policies over the plugin's shared instances.
        static NEXT_HOME: AtomicUsize = AtomicUsize::new(0);
        let settings = configured.settings.clone()?;
        Ok(WasmHealthPolicy {
            plugin: configured.single(NEXT_HOME.fetch_add(1, Ordering::Relaxed)),
            settings,
        })
    }

    fn call(&self, call: Call, id: u32, outcome: Outcome) -> Result<Verdict, FaultKind> {
        match &self.plugin {
            Single::V1(exclusive) => {
                let outcome = to_wit!(v1, outcome);
                let verdict = exclusive.call(|bindings, store| match call {
                    Call::Probed => bindings.call_probed(store, id, outcome),
                    Call::Observed => bindings.call_observed(store, id, outcome),
                })?;
                Ok(from_wit!(v1, verdict))
            }
            Single::V2(policy) => judged!(v2, policy, call, id, outcome),
            Single::V3(policy) => judged!(v3, policy, call, id, outcome),
        }
    }

    /// Asks the plugin about the backend at `index`.
    fn judge(&self, call: Call, index: usize, outcome: Outcome) -> Verdict {
        let faults = self.plugin.faults();
        if faults.is_quarantined() {
            return Verdict::Healthy;
        }
        let Ok(id) = u32::try_from(index) else {
            return Verdict::Unchanged;
        };
        match self.call(call, id, outcome) {
            Ok(verdict) => {
                faults.success();
                verdict
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

impl HealthPolicy for WasmHealthPolicy {
    fn name(&self) -> &str {
        self.plugin.name()
    }

    fn settings(&self) -> &HealthSettings {
        &self.settings
    }

    fn set_backends(&self, backends: &[Backend], figures: Arc<dyn BackendFigures>) {
        if let Err(kind) = self.plugin.set_backends(backends, figures) {
            self.plugin.faults().record(kind);
        }
    }

    fn probed(&self, index: usize, outcome: Outcome) -> Verdict {
        self.judge(Call::Probed, index, outcome)
    }

    fn observed(&self, index: usize, outcome: Outcome) -> Verdict {
        self.judge(Call::Observed, index, outcome)
    }
}
