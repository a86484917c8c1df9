//! `builtin:outlier`: passive outlier ejection from real traffic (Envoy's outlier detection).
//! `consecutive_errors` failures in a row to one backend (connect refused or timed out, or an
//! HTTP 5xx) eject it for `base_ejection` × 2^(ejections so far), capped at `max_ejection`;
//! after a clean stretch as long as `max_ejection` its count starts over. Never more than
//! `max_ejected_percent` of the backends are ejected at once: a failure that would exceed it
//! ejects nobody (when everything fails, ejecting everything helps no one).
//!
//! Parameters: `consecutive_errors` (5), `base_ejection` (30s), `max_ejection` (5m),
//! `max_ejected_percent` (50).

use std::collections::HashMap;

use gantry_plugin_sdk::health::{Health, HealthSettings, Outcome, Verdict};
use gantry_plugin_sdk::{backend_key, export_health, host, Backend, Params};

struct Outlier {
    consecutive_errors: u32,
    base_ms: u32,
    max_ms: u32,
    max_percent: u32,
    keys: Vec<String>,
    state: HashMap<String, Record>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Record {
    errors: u32,
    ejections: u32,
    /// Monotonic nanoseconds until which the backend is ejected.
    ejected_until: u64,
}

const MS: u64 = 1_000_000;

impl Health for Outlier {
    fn configure(params: &Params) -> Result<(Self, HealthSettings), String> {
        params.reject_unknown(&[
            "consecutive_errors",
            "base_ejection",
            "max_ejection",
            "max_ejected_percent",
        ])?;
        let consecutive_errors: u32 = params.parse_or("consecutive_errors", 5)?;
        if !(1..=1000).contains(&consecutive_errors) {
            return Err(format!(
                "parameter `consecutive_errors`: {consecutive_errors} is out of range 1..=1000"
            ));
        }
        let base_ms = params.duration_ms_or("base_ejection", 30_000, 100..=3_600_000)?;
        let max_ms = params.duration_ms_or("max_ejection", 300_000, base_ms..=86_400_000)?;
        let max_percent: u32 = params.parse_or("max_ejected_percent", 50)?;
        if max_percent > 100 {
            return Err(format!(
                "parameter `max_ejected_percent`: {max_percent} is out of range 0..=100"
            ));
        }
        let outlier = Outlier {
            consecutive_errors,
            base_ms,
            max_ms,
            max_percent,
            keys: Vec::new(),
            state: HashMap::new(),
        };
        let settings = HealthSettings {
            probe: None,
            observe_traffic: true,
        };
        Ok((outlier, settings))
    }

    fn set_backends(&mut self, backends: Vec<Backend>) {
        let mut keys = vec![String::new(); backends.len()];
        for backend in &backends {
            if let Some(slot) = keys.get_mut(backend.id as usize) {
                *slot = backend_key(backend);
            }
        }
        self.state.retain(|key, _| keys.contains(key));
        self.keys = keys;
    }

    fn observed(&mut self, backend: u32, outcome: Outcome) -> Verdict {
        let now = host::monotonic_now();
        let failed = match outcome {
            Outcome::ConnectFailed | Outcome::TimedOut => true,
            Outcome::Responded(status) => status >= 500,
            Outcome::Connected => false,
        };
        let Some(key) = self.keys.get(backend as usize).cloned() else {
            return Verdict::Unchanged;
        };
        let ejected_now = self.ejected_count(now);
        let total = self.keys.len() as u64;
        let (max_ms, base_ms) = (u64::from(self.max_ms), u64::from(self.base_ms));
        let record = self.state.entry(key).or_default();
        if !failed {
            record.errors = 0;
            // A clean stretch as long as the longest ejection forgives past ejections.
            if record.ejections > 0 && now > record.ejected_until + max_ms * MS {
                record.ejections = 0;
            }
            return Verdict::Unchanged;
        }
        record.errors += 1;
        if record.errors < self.consecutive_errors || record.ejected_until > now {
            return Verdict::Unchanged;
        }
        if (ejected_now + 1) * 100 > u64::from(self.max_percent) * total {
            return Verdict::Unchanged;
        }
        let factor = 1u64 << record.ejections.min(20);
        let ms = (base_ms * factor).min(max_ms);
        record.ejections += 1;
        record.errors = 0;
        record.ejected_until = now + ms * MS;
        host::log(
            host::Level::Info,
            &format!("ejecting backend {backend} for {ms} ms"),
        );
        Verdict::Eject(u32::try_from(ms).unwrap_or(u32::MAX))
    }
}

impl Outlier {
    fn ejected_count(&self, now: u64) -> u64 {
        self.state
            .values()
            .filter(|r| r.ejected_until > now)
            .count() as u64
    }
}

export_health!(Outlier);
