//! What a plugin instance's store holds, and the `gantry:plugins/host` functions it may call
//! (the same in every contract version): log (rate-limited), monotonic time, random bits, the
//! live figures of the running policy's backends, the policy's shared sequence, and the
//! current request's headers. Also the state of the running call's CPU deadline.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lb_policy::{BackendFigures, Figures};
use tokio::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};

use super::bindings::{v1, v2, v3};
use super::ticker::CallActivity;

/// Log lines one instance may write per second; the rest are dropped (and counted in the
/// last line of the next second).
const LOG_LINES_PER_SECOND: u32 = 20;
/// Longest log line kept, in bytes; the rest of a longer one is cut (and the cut said).
const MAX_LOG_LINE_BYTES: usize = 1024;
/// Longest header name looked up; no real header name comes near it.
const MAX_HEADER_NAME_BYTES: usize = 256;

/// `line`, cut to at most `max` bytes at a character boundary.
fn clipped(line: &str, max: usize) -> (&str, bool) {
    if line.len() <= max {
        return (line, false);
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    (&line[..end], true)
}

scoped_tls::scoped_thread_local! {
    /// The headers of the HTTP request being placed, while a `pick` runs.
    pub(crate) static CURRENT_HEADERS: http::HeaderMap
}

/// What the host functions answer for: the backend set (live figures) and the shared
/// sequence of the policy being called.
pub(crate) struct CallContext {
    pub(crate) figures: Arc<dyn BackendFigures>,
    pub(crate) sequence: AtomicU64,
}

impl CallContext {
    pub(crate) fn new(figures: Arc<dyn BackendFigures>) -> Arc<Self> {
        Arc::new(CallContext {
            figures,
            sequence: AtomicU64::new(0),
        })
    }

    /// The next value of the shared counter `host.sequence` answers.
    pub(crate) fn next_in_sequence(&self) -> u64 {
        // Relaxed: a rotation needs distinct values, not ordering with other memory.
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }

    /// A context with no backends (configuring, before any set is given).
    pub(crate) fn empty() -> Arc<Self> {
        Self::new(Arc::new(NoFigures))
    }
}

struct NoFigures;

impl BackendFigures for NoFigures {
    fn figures(&self, _index: usize) -> Option<Figures> {
        None
    }
}

/// A fresh random seed (never 0) from the process's random keys.
pub(crate) fn random_seed() -> u64 {
    RandomState::new().hash_one(Instant::now()) | 1
}

/// The next bits of a xorshift64* generator whose state is `state` (never 0).
pub(crate) fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// The state of one plugin instance.
pub struct HostState {
    /// The instance's WASI resources (streams, pollables).
    pub(super) table: ResourceTable,
    pub(crate) limits: StoreLimits,
    plugin: Arc<str>,
    context: Arc<CallContext>,
    /// CPU time the running call may use (see [`crate::cpu`]).
    pub(crate) budget: Duration,
    /// The thread's CPU time when the running call first outlived its wall deadline.
    pub(crate) cpu_mark: Option<Duration>,
    random: u64,
    log_window: Instant,
    log_lines: u32,
    log_dropped: u32,
    /// Calls in flight on the engine, for the epoch ticker.
    pub(crate) activity: Arc<CallActivity>,
}

impl HostState {
    /// State for an instance of `plugin` with at most `memory_bytes` of linear memory.
    pub(crate) fn new(plugin: Arc<str>, memory_bytes: u64, activity: Arc<CallActivity>) -> Self {
        HostState {
            table: ResourceTable::new(),
            // One component instance holds several core instances (the guest and its WASI
            // adapter), so only memory is capped here; the pool bounds instance counts.
            limits: StoreLimitsBuilder::new()
                .memory_size(usize::try_from(memory_bytes).unwrap_or(usize::MAX))
                .build(),
            plugin,
            context: CallContext::empty(),
            budget: Duration::ZERO,
            cpu_mark: None,
            // Seeded per instance from the process's random keys; xorshift after that.
            random: random_seed(),
            log_window: Instant::now(),
            log_lines: 0,
            log_dropped: 0,
            activity,
        }
    }

    /// Host functions answer for `context` from now on (cheap when it already does).
    pub(crate) fn set_context(&mut self, context: &Arc<CallContext>) {
        if !Arc::ptr_eq(&self.context, context) {
            self.context = context.clone();
        }
    }

    /// The next bits of the instance's fast generator (xorshift64*): plenty for spreading
    /// load; not for secrets.
    pub(super) fn next_random(&mut self) -> u64 {
        xorshift(&mut self.random)
    }

    /// Whether one more log line fits this second's allowance.
    fn may_log(&mut self) -> bool {
        if self.log_window.elapsed().as_secs() >= 1 {
            self.log_window = Instant::now();
            self.log_lines = 0;
            if self.log_dropped > 0 {
                tracing::warn!(plugin = %self.plugin, dropped = self.log_dropped, "plugin log lines dropped (rate limit)");
                self.log_dropped = 0;
            }
        }
        if self.log_lines >= LOG_LINES_PER_SECOND {
            self.log_dropped += 1;
            return false;
        }
        self.log_lines += 1;
        true
    }

    /// A line the plugin wrote to stdout or stderr (a panic message, say).
    pub(super) fn log_output(&mut self, stderr: bool, line: &str) {
        if !self.may_log() {
            return;
        }
        let plugin = &*self.plugin;
        if stderr {
            tracing::warn!(plugin, stream = "stderr", "{line}");
        } else {
            tracing::info!(plugin, stream = "stdout", "{line}");
        }
    }

    fn log_line(&mut self, level: tracing::Level, message: &str) {
        if !self.may_log() {
            return;
        }
        let (message, cut) = clipped(message, MAX_LOG_LINE_BYTES);
        let message: std::borrow::Cow<'_, str> = if cut {
            format!("{message}… (cut at {MAX_LOG_LINE_BYTES} bytes)").into()
        } else {
            message.into()
        };
        let plugin = &*self.plugin;
        match level {
            tracing::Level::TRACE => tracing::trace!(plugin, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(plugin, "{message}"),
            tracing::Level::INFO => tracing::info!(plugin, "{message}"),
            tracing::Level::WARN => tracing::warn!(plugin, "{message}"),
            tracing::Level::ERROR => tracing::error!(plugin, "{message}"),
        }
    }

    fn monotonic_nanos() -> u64 {
        u64::try_from(lb_policy::clock::since_origin().as_nanos()).unwrap_or(u64::MAX)
    }

    fn next_in_sequence(&self) -> u64 {
        self.context.next_in_sequence()
    }

    fn figures_of(&self, id: u32) -> Option<Figures> {
        self.context.figures.figures(usize::try_from(id).ok()?)
    }

    fn request_header(name: &str) -> Option<String> {
        if name.len() > MAX_HEADER_NAME_BYTES || !CURRENT_HEADERS.is_set() {
            return None;
        }
        CURRENT_HEADERS.with(|headers| {
            // HTTP/2 clients may split `cookie` into one field per cookie (RFC 9113 §8.2.3).
            let separator = if name.eq_ignore_ascii_case("cookie") {
                "; "
            } else {
                ", "
            };
            let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
            let first = values.next()?.to_owned();
            Some(values.fold(first, |mut all, value| {
                all.push_str(separator);
                all.push_str(value);
                all
            }))
        })
    }
}

/// The host interface is the same in every version; each version's generated trait is
/// implemented by the one body above.
macro_rules! host_imports {
    ($version:ident) => {
        impl $version::TypesImports for HostState {}

        impl $version::HostImports for HostState {
            fn log(&mut self, level: $version::Level, message: String) {
                let level = match level {
                    $version::Level::Trace => tracing::Level::TRACE,
                    $version::Level::Debug => tracing::Level::DEBUG,
                    $version::Level::Info => tracing::Level::INFO,
                    $version::Level::Warn => tracing::Level::WARN,
                    $version::Level::Error => tracing::Level::ERROR,
                };
                self.log_line(level, &message);
            }

            fn monotonic_now(&mut self) -> u64 {
                Self::monotonic_nanos()
            }

            fn random(&mut self) -> u64 {
                self.next_random()
            }

            fn sequence(&mut self) -> u64 {
                self.next_in_sequence()
            }

            fn backend_figures(&mut self, id: u32) -> Option<$version::Figures> {
                let figures = self.figures_of(id)?;
                Some($version::Figures {
                    in_flight: figures.in_flight,
                    latency_micros: figures.latency_micros,
                    healthy: figures.healthy,
                })
            }

            fn request_header(&mut self, name: String) -> Option<String> {
                Self::request_header(&name)
            }
        }
    };
}

host_imports!(v1);
host_imports!(v2);
host_imports!(v3);

#[cfg(test)]
mod tests {
    use super::clipped;

    #[test]
    fn long_log_lines_are_cut_at_a_character_boundary() {
        assert_eq!(clipped("short", 1024), ("short", false));
        let long = "é".repeat(1000); // 2,000 bytes
        let (cut, was_cut) = clipped(&long, 1023);
        assert!(was_cut);
        assert_eq!(cut.len(), 1022, "the last whole character before the limit");
    }
}
