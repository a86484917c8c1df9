//! Session affinity run by a plugin. A [`WasmAffinityFactory`] is an affinity plugin with one
//! port's parameters and the port's [`AffinityTable`], sized from what the plugin's
//! `configure` asked for. A fault (trap, deadline, an id outside the set, a header that is not
//! valid HTTP) leaves that request without affinity: it is balanced as if the port had none.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use lb_config::Backend;

use super::bindings::{AffinityWorld, WitHeader, WitStickiness};
use super::faults::FaultKind;
use super::instances::{wit_request, Configured, Generation};
use lb_policy::{
    Affinity, AffinityFactory, AffinityTable, BackendFigures, PickContext, ResponseHeader,
    Stickiness,
};

/// An affinity plugin with one port's parameters, and the port's table.
pub(crate) struct WasmAffinityFactory {
    configured: Configured<AffinityWorld>,
    table: Option<Arc<AffinityTable>>,
}

impl WasmAffinityFactory {
    pub(crate) fn new(configured: Configured<AffinityWorld>, max_entries: u32) -> Self {
        let idle = configured.settings.idle_timeout_seconds;
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
        &self.configured.recipe.policy.name
    }

    fn build(&self, backends: &[Backend], figures: Arc<dyn BackendFigures>) -> Box<dyn Affinity> {
        Box::new(WasmAffinity {
            generation: self.configured.generation(backends, figures),
            count: backends.len(),
            remembers: self.table.is_some(),
        })
    }

    fn table(&self) -> Option<&Arc<AffinityTable>> {
        self.table.as_ref()
    }
}

/// The affinity of one backend set, answered by the plugin.
struct WasmAffinity {
    generation: Arc<Generation<AffinityWorld>>,
    count: usize,
    remembers: bool,
}

thread_local! {
    /// Whether this thread's last `stick` faulted. `stick` and the `assigned` that may follow
    /// run on one thread within one pool selection, so this carries the request's outcome.
    static STICK_FAULTED: Cell<bool> = const { Cell::new(false) };
}

impl Affinity for WasmAffinity {
    fn activate(&self) {
        self.generation.prepare();
    }

    fn stick(&self, cx: &PickContext<'_>) -> Stickiness {
        let faults = self.generation.faults();
        if faults.is_quarantined() {
            return Stickiness::None;
        }
        let request = wit_request(cx);
        let answer = self.generation.call(cx.headers, |bindings, store| {
            bindings.call_stick(store, &request)
        });
        let stickiness = match answer {
            Ok(WitStickiness::None) => Ok(Stickiness::None),
            Ok(WitStickiness::Remembered(key)) if self.remembers => Ok(Stickiness::Remembered(key)),
            Ok(WitStickiness::Named(id)) if (id as usize) < self.count => {
                Ok(Stickiness::Named(id as usize))
            }
            // A key without a table, or an id outside the set.
            Ok(_) => Err(FaultKind::InvalidAnswer),
            Err(kind) => Err(kind),
        };
        STICK_FAULTED.set(stickiness.is_err());
        match stickiness {
            Ok(stickiness) => {
                // Faults count per request: an unstuck HTTP request goes on to `assigned`,
                // which then speaks for the whole request, so a plugin failing in either call
                // on every request still reaches its quarantine.
                if !(cx.protocol.is_http() && stickiness == Stickiness::None) {
                    faults.success();
                }
                stickiness
            }
            Err(kind) => {
                faults.record(kind);
                Stickiness::None
            }
        }
    }

    fn assigned(&self, cx: &PickContext<'_>, index: usize) -> Option<ResponseHeader> {
        let faults = self.generation.faults();
        if !cx.protocol.is_http() || faults.is_quarantined() {
            return None;
        }
        let request = wit_request(cx);
        let id = u32::try_from(index).ok()?;
        let answer = self.generation.call(cx.headers, |bindings, store| {
            bindings.call_assigned(store, &request, id)
        });
        let header = match answer {
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
fn response_header(header: WitHeader) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        name: http::HeaderName::from_bytes(header.name.as_bytes()).ok()?,
        value: http::HeaderValue::from_str(&header.value).ok()?,
    })
}
