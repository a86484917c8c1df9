//! The clock policies and backend state count in: milliseconds on tokio's clock since a fixed
//! origin, so deadlines fit in one atomic and paused-time tests move them.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// The instant all deadlines count from.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Milliseconds since the origin, plus one: every real deadline is above 0, which callers use
/// to mean "no deadline".
pub fn now_ms() -> u64 {
    duration_ms(Instant::now().saturating_duration_since(origin())).saturating_add(1)
}

/// `d` in whole milliseconds, saturating.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The deadline `d` after `now_ms`, saturating (never wraps past the end of time).
pub fn deadline_ms(now_ms: u64, d: Duration) -> u64 {
    now_ms.saturating_add(duration_ms(d))
}

/// Time since the origin, for monotonic readings such as a plugin's `monotonic-now`.
pub fn since_origin() -> Duration {
    Instant::now().saturating_duration_since(origin())
}

/// The instant `d` from now on tokio's clock, saturating: a deadline past the end of the
/// clock's range becomes one about thirty years away (never an overflow).
pub fn instant_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(30 * 365 * 24 * 3600)))
        .unwrap_or(now)
}
