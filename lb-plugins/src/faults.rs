//! Plugin faults: what can go wrong in a call, and the record that counts faults per loaded
//! plugin and quarantines it after too many in a row (until its file changes, which makes it a
//! new plugin with a fresh record).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};

/// What went wrong in one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The plugin trapped (a panic, an out-of-memory, an invalid operation).
    Trap,
    /// The call ran past its deadline and was interrupted.
    Deadline,
    /// The plugin answered an id that is not in the set.
    InvalidAnswer,
    /// No instance could be made (instantiation, `configure` or `set-backends` failed).
    Instantiate,
}

/// What a failed call's error means: an interrupted call overran its deadline; anything else
/// is a trap.
pub(crate) fn classify(err: &wasmtime::Error) -> FaultKind {
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => FaultKind::Deadline,
        _ => FaultKind::Trap,
    }
}

impl FaultKind {
    /// All kinds, in metric order.
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Trap,
        FaultKind::Deadline,
        FaultKind::InvalidAnswer,
        FaultKind::Instantiate,
    ];

    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            FaultKind::Trap => "trap",
            FaultKind::Deadline => "deadline",
            FaultKind::InvalidAnswer => "invalid_answer",
            FaultKind::Instantiate => "instantiate",
        }
    }
}

/// The metric handles of one loaded plugin: a fault counter per [`FaultKind`] (in
/// [`FaultKind::ALL`] order) and its quarantine gauge. Made detached, with the plugin; shown by
/// the [`PluginTelemetry`] only while a running configuration uses the plugin, so a plugin
/// loaded for a reload that was then refused leaves no series behind.
#[derive(Clone)]
pub struct FaultHandles {
    /// Faults by kind.
    pub counters: [IntCounter; 4],
    /// 1 while quarantined.
    pub quarantined: IntGauge,
}

impl FaultHandles {
    fn new() -> Self {
        // Detached handles: the names only satisfy the constructor; the telemetry shows them
        // under its own family names and labels.
        let counter = || IntCounter::new("plugin_faults", "faults").expect("a static name");
        FaultHandles {
            counters: [counter(), counter(), counter(), counter()],
            quarantined: IntGauge::new("plugin_quarantined", "quarantined").expect("a static name"),
        }
    }
}

/// Where the plugin host shows the fault metrics of the plugins in use: the appliance's
/// metrics registry (`gantry_plugin_faults_total`, `gantry_plugin_quarantined`). A handle
/// pointing down from the host, so the host never imports the appliance.
pub trait PluginTelemetry: Send + Sync {
    /// Shows `plugin`'s handles (replacing any shown under that name).
    fn show(&self, plugin: &str, handles: &FaultHandles);
    /// Stops showing `plugin`.
    fn hide(&self, plugin: &str);
}

/// Telemetry that shows nothing (`gantry check`, tests of the host alone).
pub struct NoTelemetry;

impl PluginTelemetry for NoTelemetry {
    fn show(&self, _plugin: &str, _handles: &FaultHandles) {}
    fn hide(&self, _plugin: &str) {}
}

/// The fault record of one loaded policy, shared by every port and thread using it.
pub struct Faults {
    plugin: Arc<str>,
    consecutive: AtomicU32,
    quarantined: AtomicBool,
    quarantine_after: AtomicU32,
    handles: FaultHandles,
}

impl Faults {
    pub(crate) fn new(plugin: Arc<str>, after: u32) -> Self {
        Faults {
            plugin,
            consecutive: AtomicU32::new(0),
            quarantined: AtomicBool::new(false),
            quarantine_after: AtomicU32::new(after),
            handles: FaultHandles::new(),
        }
    }

    /// The record's metric handles.
    pub fn handles(&self) -> &FaultHandles {
        &self.handles
    }

    /// Quarantine after this many faults in a row from now on.
    pub(crate) fn set_quarantine_after(&self, after: u32) {
        self.quarantine_after.store(after, Ordering::Relaxed);
    }

    /// True once the policy is no longer called.
    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Relaxed)
    }

    pub(crate) fn success(&self) {
        // Read first: writing on every call would bounce the cache line between threads.
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn record(&self, kind: FaultKind) {
        let index = FaultKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.handles.counters[index].inc();
        let in_a_row = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if in_a_row == 1 {
            tracing::warn!(plugin = %self.plugin, fault = kind.label(), "plugin fault; the host answered this call without the plugin");
        }
        if in_a_row >= self.quarantine_after.load(Ordering::Relaxed)
            && !self.quarantined.swap(true, Ordering::Relaxed)
        {
            self.handles.quarantined.set(1);
            tracing::error!(
                plugin = %self.plugin,
                faults_in_a_row = in_a_row,
                "plugin quarantined: the host serves its ports without it until the plugin changes"
            );
        }
    }
}
