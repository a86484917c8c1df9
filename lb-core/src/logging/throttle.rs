//! Warnings and errors that anyone on the network can cause (a client that resets streams, a
//! backend that refuses every connection) must not fill the disk or drown the log: each call
//! site (each `log` record's file and line, for pingora's bridged records) may log
//! [`LINES_PER_WINDOW`] lines per [`WINDOW`]; the rest are counted, and once per window a
//! summary line says how many of which were left out. Every warning and error is counted in
//! `gantry_log_events_total`, and those left out in `gantry_log_lines_suppressed_total`.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::{Context, Layer};

/// How long a call site's allowance lasts.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Lines a call site may log per window.
pub const LINES_PER_WINDOW: u32 = 10;
/// The target of the summary lines (never throttled themselves).
const SUMMARY_TARGET: &str = "gantry::log";

/// Warnings and errors logged or left out, process-wide (`gantry_log_*` metrics).
pub struct Counts {
    /// Warnings seen, logged or not.
    pub warnings: AtomicU64,
    /// Errors seen, logged or not.
    pub errors: AtomicU64,
    /// Lines left out.
    pub suppressed: AtomicU64,
}

/// The process's counts.
pub static COUNTS: Counts = Counts {
    warnings: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    suppressed: AtomicU64::new(0),
};

/// One call site's allowance in the current window.
struct Site {
    /// Where: target and file:line.
    label: String,
    since: Instant,
    logged: u32,
    suppressed: u64,
}

/// The allowances of every call site that warned.
#[derive(Default)]
pub(super) struct Allowances {
    sites: Mutex<HashMap<u64, Site>>,
}

impl Allowances {
    /// Whether a line of call site `key` (described by `label`) may be logged at `now`.
    pub(super) fn admit(&self, key: u64, label: impl FnOnce() -> String, now: Instant) -> bool {
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let site = sites.entry(key).or_insert_with(|| Site {
            label: label(),
            since: now,
            logged: 0,
            suppressed: 0,
        });
        if now.duration_since(site.since) >= WINDOW && site.suppressed == 0 {
            // A window with nothing left out to report: start the next one here.
            site.since = now;
            site.logged = 0;
        }
        if site.logged < LINES_PER_WINDOW {
            site.logged += 1;
            true
        } else {
            site.suppressed += 1;
            COUNTS.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// The call sites whose window is over with lines left out: `(label, how many)`; their
    /// next window starts at `now`.
    pub(super) fn summaries(&self, now: Instant) -> Vec<(String, u64)> {
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        sites.retain(|_, site| {
            if now.duration_since(site.since) < WINDOW {
                return true;
            }
            if site.suppressed > 0 {
                out.push((site.label.clone(), site.suppressed));
            }
            // A call site quiet for a whole window is forgotten: the map stays small.
            let active = site.logged > 0 || site.suppressed > 0;
            site.since = now;
            site.logged = 0;
            site.suppressed = 0;
            active
        });
        out.sort();
        out
    }
}

/// The layer that throttles warnings and errors.
pub(super) struct Throttle {
    allowances: std::sync::Arc<Allowances>,
}

impl Throttle {
    /// The layer, and a thread that logs the summary of each window that left lines out.
    pub(super) fn start() -> Throttle {
        let allowances = std::sync::Arc::new(Allowances::default());
        let flushed = allowances.clone();
        let spawned = std::thread::Builder::new()
            .name("gantry-log-throttle".into())
            .spawn(move || loop {
                std::thread::sleep(WINDOW / 2);
                for (site, suppressed) in flushed.summaries(Instant::now()) {
                    tracing::warn!(
                        target: SUMMARY_TARGET,
                        site = %site,
                        suppressed,
                        "similar log lines left out (at most {LINES_PER_WINDOW} per {}s from one place)",
                        WINDOW.as_secs()
                    );
                }
            });
        if let Err(err) = spawned {
            eprintln!("log throttle: no summary thread: {err}");
        }
        Throttle { allowances }
    }
}

impl<S: Subscriber> Layer<S> for Throttle {
    fn event_enabled(&self, event: &Event<'_>, _cx: Context<'_, S>) -> bool {
        let normalized = event.normalized_metadata();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let level = *metadata.level();
        if level > Level::WARN || metadata.target() == SUMMARY_TARGET {
            return true;
        }
        let counter = if level == Level::ERROR {
            &COUNTS.errors
        } else {
            &COUNTS.warnings
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut hasher = DefaultHasher::new();
        (metadata.target(), metadata.file(), metadata.line()).hash(&mut hasher);
        let label = || {
            format!(
                "{} {}:{}",
                metadata.target(),
                metadata.file().unwrap_or("?"),
                metadata.line().unwrap_or(0)
            )
        };
        self.allowances
            .admit(hasher.finish(), label, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_site_logs_its_allowance_per_window_and_the_rest_is_summarized_once() {
        let allowances = Allowances::default();
        let start = Instant::now();
        let admitted = (0..100)
            .filter(|_| allowances.admit(1, || "a".into(), start))
            .count();
        assert_eq!(admitted, LINES_PER_WINDOW as usize);
        // Another call site has its own allowance.
        assert!(allowances.admit(2, || "b".into(), start));
        assert!(
            allowances.summaries(start + WINDOW / 2).is_empty(),
            "window not over"
        );
        let over = start + WINDOW;
        assert_eq!(allowances.summaries(over), vec![("a".to_owned(), 90)]);
        assert!(allowances.summaries(over).is_empty(), "reported once");
        assert!(allowances.admit(1, || "a".into(), over), "a new window");
    }
}
