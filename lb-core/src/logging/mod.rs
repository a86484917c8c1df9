//! Log setup: `tracing` to stderr, human-readable by default or one JSON object per line.
//! The filter comes from `RUST_LOG` when set, else from the level given; pingora's own `log`
//! records are bridged in, kept at `warn` because Gantry reports request failures itself, and
//! rustls at `error`: it warns once per handshake about things clients control (an IP address
//! sent as SNI), which would let any client flood the log.
//! Access log lines use the target `gantry::access` and are enabled by `runtime.access_log`.
//! Durations are logged in milliseconds rounded to the microsecond ([`millis`]). Warnings and
//! errors are rate-limited per call site ([`throttle`]).

mod throttle;

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use throttle::{Counts, COUNTS, LINES_PER_WINDOW, WINDOW};

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber; call once, first thing in `main`.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},pingora_core=warn,pingora_proxy=warn,pingora=warn,rustls=error"
        ))
    });
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
    };
    // Also bridges pingora's `log` records in.
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(throttle::Throttle::start())
        .with(lines)
        .try_init();
    if let Err(err) = result {
        eprintln!("logging already initialised: {err}");
    }
}

/// `duration` in milliseconds for a log line, rounded to the microsecond: `4.518`, not
/// `4.517999999999999`.
pub fn millis(duration: std::time::Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn durations_are_logged_in_milliseconds_to_the_microsecond() {
        assert_eq!(super::millis(Duration::from_nanos(4_517_999)), 4.518);
        assert_eq!(super::millis(Duration::from_nanos(4_518)), 0.005);
        assert_eq!(super::millis(Duration::from_secs(2)), 2000.0);
        assert_eq!(super::millis(Duration::ZERO), 0.0);
    }
}
