//! `builtin:tcp-check`: a backend is healthy while TCP connections to it open. Gantry connects
//! every `interval`; `unhealthy_threshold` failures in a row (refused, or not connected within
//! `timeout`) take the backend out, `healthy_threshold` successes in a row bring it back.
//!
//! Parameters: `interval` (5s), `timeout` (2s), `healthy_threshold` (2),
//! `unhealthy_threshold` (3), `port` (default: the backend's own).

use gantry_plugin_sdk::health::{
    probe_plan, Health, HealthSettings, Outcome, ProbeKind, Thresholds, Verdict,
};
use gantry_plugin_sdk::{export_health, Backend, Params};

struct TcpCheck(Thresholds);

impl Health for TcpCheck {
    fn configure(params: &Params) -> Result<(Self, HealthSettings), String> {
        params.reject_unknown(&[
            "interval",
            "port",
            "timeout",
            "healthy_threshold",
            "unhealthy_threshold",
        ])?;
        let settings = HealthSettings {
            probe: Some(probe_plan(params, ProbeKind::TcpConnect)?),
            observe_traffic: false,
        };
        Ok((TcpCheck(Thresholds::from_params(params)?), settings))
    }

    fn set_backends(&mut self, backends: Vec<Backend>) {
        self.0.set_backends(&backends);
    }

    fn probed(&mut self, backend: u32, outcome: Outcome) -> Verdict {
        self.0
            .record(backend, matches!(outcome, Outcome::Connected))
    }
}

export_health!(TcpCheck);
