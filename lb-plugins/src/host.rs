//! What a plugin instance's store holds, and the `gantry:plugins/host` functions it may call:
//! log (rate-limited), monotonic time, random bits, the live figures of its backends, and the
//! current request's headers.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};

use super::bindings::{HostImports, Level, TypesImports, WitFigures};
use lb_policy::BackendFigures;

/// Log lines one instance may write per second; the rest are dropped (and counted in the
/// last line of the next second).
const LOG_LINES_PER_SECOND: u32 = 20;

scoped_tls::scoped_thread_local! {
    /// The headers of the HTTP request being placed, while a `pick` runs.
    pub(crate) static CURRENT_HEADERS: http::HeaderMap
}

/// The state of one plugin instance.
pub struct HostState {
    /// The instance's WASI resources (streams, pollables).
    pub(super) table: ResourceTable,
    pub(crate) limits: StoreLimits,
    plugin: Arc<str>,
    figures: Arc<dyn BackendFigures>,
    sequence: Arc<AtomicU64>,
    random: u64,
    log_window: Instant,
    log_lines: u32,
    log_dropped: u32,
}

impl HostState {
    /// State for an instance of `plugin` reading `figures` and sharing `sequence` with the
    /// other instances of its backend set, with at most `memory_bytes` of linear memory.
    pub fn new(
        plugin: Arc<str>,
        figures: Arc<dyn BackendFigures>,
        sequence: Arc<AtomicU64>,
        memory_bytes: u64,
    ) -> Self {
        HostState {
            table: ResourceTable::new(),
            // One component instance holds several core instances (the guest and its WASI
            // adapter), so only memory is capped here; the pool bounds instance counts.
            limits: StoreLimitsBuilder::new()
                .memory_size(usize::try_from(memory_bytes).unwrap_or(usize::MAX))
                .build(),
            plugin,
            figures,
            sequence,
            // Seeded per instance from the process's random keys; xorshift after that.
            random: RandomState::new().hash_one(Instant::now()) | 1,
            log_window: Instant::now(),
            log_lines: 0,
            log_dropped: 0,
        }
    }
}

impl HostState {
    /// Points `backend-figures` at a new backend set (for a single instance kept across sets).
    pub(super) fn set_figures(&mut self, figures: Arc<dyn BackendFigures>) {
        self.figures = figures;
    }

    /// The next bits of the instance's fast generator (xorshift64*): plenty for spreading
    /// load; not for secrets.
    pub(super) fn next_random(&mut self) -> u64 {
        let mut x = self.random;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.random = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
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
}

impl TypesImports for HostState {}

impl HostImports for HostState {
    fn log(&mut self, level: Level, message: String) {
        if !self.may_log() {
            return;
        }
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn monotonic_now(&mut self) -> u64 {
        u64::try_from(lb_policy::clock::since_origin().as_nanos()).unwrap_or(u64::MAX)
    }

    fn random(&mut self) -> u64 {
        self.next_random()
    }

    fn sequence(&mut self) -> u64 {
        // Relaxed: a rotation needs distinct values, not ordering with other memory.
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }

    fn backend_figures(&mut self, id: u32) -> Option<WitFigures> {
        let figures = self.figures.figures(usize::try_from(id).ok()?)?;
        Some(WitFigures {
            in_flight: figures.in_flight,
            latency_micros: figures.latency_micros,
            healthy: figures.healthy,
        })
    }

    fn request_header(&mut self, name: String) -> Option<String> {
        if !CURRENT_HEADERS.is_set() {
            return None;
        }
        CURRENT_HEADERS.with(|headers| {
            // HTTP/2 clients may split `cookie` into one field per cookie (RFC 9113 §8.2.3).
            let separator = if name.eq_ignore_ascii_case("cookie") {
                "; "
            } else {
                ", "
            };
            let mut values = headers
                .get_all(name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok());
            let first = values.next()?.to_owned();
            Some(values.fold(first, |mut all, value| {
                all.push_str(separator);
                all.push_str(value);
                all
            }))
        })
    }
}
