//! `builtin:http-check`: a backend is healthy while it answers `GET path` with an expected
//! status. Gantry sends the request every `interval` (over TLS with `tls: true`, without
//! verifying the certificate); `unhealthy_threshold` failures in a row (unexpected status,
//! refused, or no status line within `timeout`) take the backend out, `healthy_threshold`
//! passes in a row bring it back.
//!
//! Parameters: `path` (`/`), `host` (default: the backend's address), `tls` (false),
//! `expected_statuses` (`200-399`; a list like `200,204,300-308`), `interval` (5s),
//! `timeout` (2s), `healthy_threshold` (2), `unhealthy_threshold` (3), `port` (default: the
//! backend's own; probe another port, such as a Kubernetes node's health port).

use gantry_plugin_sdk::health::{
    probe_plan, Health, HealthSettings, HttpProbe, Outcome, ProbeKind, Thresholds, Verdict,
};
use gantry_plugin_sdk::{export_health, Backend, Params};

struct HttpCheck {
    expected: Vec<(u16, u16)>,
    thresholds: Thresholds,
}

impl Health for HttpCheck {
    fn configure(params: &Params) -> Result<(Self, HealthSettings), String> {
        params.reject_unknown(&[
            "path",
            "host",
            "tls",
            "expected_statuses",
            "interval",
            "port",
            "timeout",
            "healthy_threshold",
            "unhealthy_threshold",
        ])?;
        let path = params.get("path").unwrap_or("/").to_owned();
        if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "parameter `path`: `{path}` is not an absolute request path"
            ));
        }
        let host = params.get("host").map(str::to_owned);
        if host
            .as_deref()
            .is_some_and(|h| h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err("parameter `host`: not a valid Host header value".into());
        }
        let expected = status_ranges(params.get("expected_statuses").unwrap_or("200-399"))?;
        let probe = HttpProbe {
            path,
            host,
            tls: params.parse_or("tls", false)?,
        };
        let settings = HealthSettings {
            probe: Some(probe_plan(params, ProbeKind::Http(probe))?),
            observe_traffic: false,
        };
        let check = HttpCheck {
            expected,
            thresholds: Thresholds::from_params(params)?,
        };
        Ok((check, settings))
    }

    fn set_backends(&mut self, backends: Vec<Backend>) {
        self.thresholds.set_backends(&backends);
    }

    fn probed(&mut self, backend: u32, outcome: Outcome) -> Verdict {
        let passed = match outcome {
            Outcome::Responded(status) => self
                .expected
                .iter()
                .any(|(low, high)| (*low..=*high).contains(&status)),
            _ => false,
        };
        self.thresholds.record(backend, passed)
    }
}

/// `200,204,300-399` as inclusive ranges.
fn status_ranges(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let refuse = || {
        format!(
            "parameter `expected_statuses`: `{text}` is not a list of statuses or ranges like 200-399"
        )
    };
    text.split(',')
        .map(|part| {
            let part = part.trim();
            let (low, high) = part.split_once('-').unwrap_or((part, part));
            let low: u16 = low.trim().parse().map_err(|_| refuse())?;
            let high: u16 = high.trim().parse().map_err(|_| refuse())?;
            if (100..=599).contains(&low) && (low..=599).contains(&high) {
                Ok((low, high))
            } else {
                Err(refuse())
            }
        })
        .collect()
}

export_health!(HttpCheck);
