//! The log's own series: warnings and errors seen, and lines the throttle left out
//! ([`crate::logging`]), process-wide counts shown by every registry.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntCounterVec, Opts};

use crate::logging::COUNTS;

/// Reads [`COUNTS`] at each scrape.
pub(super) struct LogMetrics {
    events: IntCounterVec,
    suppressed: IntCounter,
    descs: Vec<Desc>,
    /// One scrape at a time catches the counters up.
    scrape: Mutex<()>,
}

impl LogMetrics {
    pub(super) fn new() -> Self {
        let events = IntCounterVec::new(
            Opts::new(
                "gantry_log_events_total",
                "Warnings and errors, logged or left out by the log's rate limit.",
            ),
            &["level"],
        )
        .expect("static metric definition");
        let suppressed = IntCounter::new(
            "gantry_log_lines_suppressed_total",
            "Log lines left out by the rate limit (each call site logs at most 10 per 10 s).",
        )
        .expect("static metric definition");
        let descs = events
            .desc()
            .into_iter()
            .chain(suppressed.desc())
            .cloned()
            .collect();
        LogMetrics {
            events,
            suppressed,
            descs,
            scrape: Mutex::new(()),
        }
    }
}

/// Sets `counter` to `value` (the counts only grow).
fn catch_up(counter: &IntCounter, value: u64) {
    let behind = value.saturating_sub(counter.get());
    counter.inc_by(behind);
}

impl Collector for LogMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let warnings = COUNTS.warnings.load(Ordering::Relaxed);
        let errors = COUNTS.errors.load(Ordering::Relaxed);
        catch_up(&self.events.with_label_values(&["warn"]), warnings);
        catch_up(&self.events.with_label_values(&["error"]), errors);
        catch_up(&self.suppressed, COUNTS.suppressed.load(Ordering::Relaxed));
        let mut out = self.events.collect();
        out.extend(self.suppressed.collect());
        out
    }
}
