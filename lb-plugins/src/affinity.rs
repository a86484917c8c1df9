//! Session affinity run by a plugin. A [`WasmAffinityFactory`] is an affinity plugin with one
//! port's parameters and the port's [`AffinityTable`], sized from what the plugin's
//! `configure` asked for. A fault (trap, deadline, an id outside the set, a header that is not
//! valid HTTP) leaves that request without affinity: it is balanced as if the port had none.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use lb_config::Backend;
use lb_policy::{
    Affinity, AffinityFactory, AffinityTable, BackendFigures, PickContext, ResponseHeader,
    Stickiness, Unanswered,
};

use super::bindings::{v1, v2, v3};
use super::convert::{to_v1, to_v2, to_v3};
use super::faults::FaultKind;
use super::policy::{Configured, Kind, PerThread};

/// The affinity kind. Its settings: the table's idle timeout, seconds (0: no table).
pub(crate) struct AffinityKind;

impl Kind for AffinityKind {
    const NAME: &'static str = "affinity";
    type V1 = v1::AffinityWorld;
    type V2 = v2::AffinityWorld;
    type V3 = v3::AffinityWorld;
    type Settings = u32;

    fn from_v1(settings: v1::TableSettings) -> u32 {
        settings.idle_timeout_seconds
    }

    fn from_v2(settings: v2::TableSettings) -> u32 {
        settings.idle_timeout_seconds
    }

    fn from_v3(settings: v3::TableSettings) -> u32 {
        settings.idle_timeout_seconds
    }
}

/// `stick` on a resource-based version's policy (0.2.0 and 0.3.0 differ only in names).
macro_rules! stick {
    ($version:ident, $convert:ident, $policy:expr, $cx:expr) => {{
        let request = $convert::request($cx);
        let answer = $policy.call($cx.headers, |bindings, store, affinity| {
            bindings
                .gantry_plugins_affinities()
                .affinity()
                .call_stick(store, affinity, &request)
        })?;
        Ok(match answer {
            $version::Stickiness::None => Answer::None,
            $version::Stickiness::Remembered(key) => Answer::Remembered(key),
            $version::Stickiness::Named(id) => Answer::Named(id),
        })
    }};
}

/// `assigned` on a resource-based version's policy.
macro_rules! assigned {
    ($version:ident, $convert:ident, $policy:expr, $cx:expr, $id:expr) => {{
        let request = $convert::request($cx);
        let header = $policy.call($cx.headers, |bindings, store, affinity| {
            bindings
                .gantry_plugins_affinities()
                .affinity()
                .call_assigned(store, affinity, &request, $id)
        })?;
        Ok(header.map(|h: $version::Header| Header {
            name: h.name,
            value: h.value,
        }))
    }};
}

/// An affinity plugin with one port's parameters, and the port's table.
pub(crate) struct WasmAffinityFactory {
    configured: Configured<AffinityKind>,
    table: Option<Arc<AffinityTable>>,
}

impl WasmAffinityFactory {
    pub(crate) fn new(configured: Configured<AffinityKind>, max_entries: u32) -> Self {
        let idle = configured.settings;
        WasmAffinityFactory {
            table: (idle > 0).then(|| {
                Arc::new(AffinityTable::new(
                    Duration::from_secs(u64::from(idle)),
                    max_entries,
                ))
            }),
            configured,
        }
    }
}

impl AffinityFactory for WasmAffinityFactory {
    fn name(&self) -> &str {
        self.configured.name()
    }

    fn build(&self, backends: &[Backend], figures: Arc<dyn BackendFigures>) -> Box<dyn Affinity> {
        Box::new(WasmAffinity {
            plugin: self.configured.per_thread(backends, figures),
            count: backends.len(),
            remembers: self.table.is_some(),
        })
    }

    fn table(&self) -> Option<&Arc<AffinityTable>> {
        self.table.as_ref()
    }

    fn reads_headers(&self) -> bool {
        self.configured.reads_headers
    }

    fn quarantined(&self) -> bool {
        self.configured.is_quarantined()
    }
}

/// The affinity of one backend set, answered by the plugin.
struct WasmAffinity {
    plugin: PerThread<AffinityKind>,
    count: usize,
    remembers: bool,
}

thread_local! {
    /// Whether this thread's last `stick` faulted. `stick` and the `assigned` that may follow
    /// run on one thread within one pool selection, so this carries the request's outcome.
    static STICK_FAULTED: Cell<bool> = const { Cell::new(false) };
}

/// What a plugin's `stick` answered, in either version.
enum Answer {
    None,
    Remembered(u64),
    Named(u32),
}

/// A header a plugin asked for, in either version.
pub(crate) struct Header {
    pub(crate) name: String,
    pub(crate) value: String,
}

impl WasmAffinity {
    fn call_stick(&self, cx: &PickContext<'_>) -> Result<Answer, FaultKind> {
        match &self.plugin {
            PerThread::V1(generation) => {
                let request = to_v1::request(cx);
                let answer = generation.call(cx.headers, |bindings, store| {
                    bindings.call_stick(store, &request)
                })?;
                Ok(match answer {
                    v1::Stickiness::None => Answer::None,
                    v1::Stickiness::Remembered(key) => Answer::Remembered(key),
                    v1::Stickiness::Named(id) => Answer::Named(id),
                })
            }
            PerThread::V2(policy) => stick!(v2, to_v2, policy, cx),
            PerThread::V3(policy) => stick!(v3, to_v3, policy, cx),
        }
    }

    fn call_assigned(&self, cx: &PickContext<'_>, id: u32) -> Result<Option<Header>, FaultKind> {
        match &self.plugin {
            PerThread::V1(generation) => {
                let request = to_v1::request(cx);
                let header = generation.call(cx.headers, |bindings, store| {
                    bindings.call_assigned(store, &request, id)
                })?;
                Ok(header.map(|h: v1::Header| Header {
                    name: h.name,
                    value: h.value,
                }))
            }
            PerThread::V2(policy) => assigned!(v2, to_v2, policy, cx, id),
            PerThread::V3(policy) => assigned!(v3, to_v3, policy, cx, id),
        }
    }

    /// The plugin's `stick`, checked, its faults recorded. `alone`: no `assigned` follows
    /// (a shadow's call), so an answer settles the request's fault record at once.
    fn ask_stick(&self, cx: &PickContext<'_>, alone: bool) -> Result<Stickiness, Unanswered> {
        let faults = self.plugin.faults();
        if faults.is_quarantined() {
            return Err(Unanswered::Quarantined);
        }
        let stickiness = match self.call_stick(cx) {
            Ok(Answer::None) => Ok(Stickiness::None),
            Ok(Answer::Remembered(key)) if self.remembers => Ok(Stickiness::Remembered(key)),
            Ok(Answer::Named(id)) if (id as usize) < self.count => {
                Ok(Stickiness::Named(id as usize))
            }
            // A key without a table, or an id outside the set.
            Ok(_) => Err(FaultKind::InvalidAnswer),
            Err(kind) => Err(kind),
        };
        if !alone {
            STICK_FAULTED.set(stickiness.is_err());
        }
        match stickiness {
            Ok(stickiness) => {
                // Faults count per request: an unstuck HTTP request goes on to `assigned`,
                // which then speaks for the whole request, so a plugin failing in either call
                // on every request still reaches its quarantine.
                if alone || !(cx.protocol.is_http() && stickiness == Stickiness::None) {
                    faults.success();
                }
                Ok(stickiness)
            }
            Err(kind) => {
                faults.record(kind);
                Err(Unanswered::Fault)
            }
        }
    }
}

impl Affinity for WasmAffinity {
    fn activate(&self) {
        self.plugin.prepare();
    }

    fn stick(&self, cx: &PickContext<'_>) -> Stickiness {
        self.ask_stick(cx, false).unwrap_or(Stickiness::None)
    }

    fn stick_answer(&self, cx: &PickContext<'_>) -> Result<Stickiness, Unanswered> {
        self.ask_stick(cx, true)
    }

    fn assigned(&self, cx: &PickContext<'_>, index: usize) -> Option<ResponseHeader> {
        let faults = self.plugin.faults();
        if !cx.protocol.is_http() || faults.is_quarantined() {
            return None;
        }
        let id = u32::try_from(index).ok()?;
        let header = match self.call_assigned(cx, id) {
            Ok(None) => Ok(None),
            Ok(Some(header)) => response_header(header)
                .map(Some)
                .ok_or(FaultKind::InvalidAnswer),
            Err(kind) => Err(kind),
        };
        match header {
            Ok(header) => {
                if !STICK_FAULTED.get() {
                    faults.success();
                }
                header
            }
            Err(kind) => {
                faults.record(kind);
                None
            }
        }
    }
}

/// The plugin's header, if it is valid HTTP.
pub(crate) fn response_header(header: Header) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        name: http::HeaderName::from_bytes(header.name.as_bytes()).ok()?,
        value: http::HeaderValue::from_str(&header.value).ok()?,
    })
}
