//! The one place the WebAssembly engine and its sandbox are configured. Each knob says why.
//! (How each instance's store is made, and how its calls' deadlines are counted, is
//! [`super::stores`].)
//!
//! What a plugin can reach is decided twice: the linker offers only the `gantry:plugins` host
//! interface and the harmless parts of WASI a Rust `std` guest imports, implemented in
//! [`super::wasi`] (`wasi:cli` with no environment and no stdin, output to the log;
//! `wasi:io`; `wasi:random`), and
//! [`Sandbox::compile`] refuses any component that imports more (files, sockets, clocks),
//! naming the import, before it can run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::path::PathBuf;

use lb_config::{PluginCache, PluginLimits};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, OptLevel,
    PoolingAllocationConfig,
};

use super::bindings::{v1, v2, v3};
use super::host::HostState;
use super::stores::Stores;
use super::ticker::{CallActivity, EpochTicker};
use super::wasi::SandboxWorld;
use super::PluginError;

/// The folder `runtime.plugin_cache` names: `auto` is systemd's `CacheDirectory=`, else the
/// user's cache folder.
fn cache_folder(cache: &PluginCache) -> Option<PathBuf> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    match cache {
        PluginCache::Off => None,
        PluginCache::Folder(folder) => Some(folder.clone()),
        PluginCache::Auto => env("CACHE_DIRECTORY")
            .map(|dirs| {
                // systemd lists several folders separated by `:` when asked for several.
                let first = dirs.to_string_lossy().split(':').next().map(str::to_owned);
                PathBuf::from(first.unwrap_or_default())
            })
            .or_else(|| env("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("gantry")))
            .or_else(|| env("HOME").map(|d| PathBuf::from(d).join(".cache").join("gantry"))),
    }
}

/// Instance slots in the pool. Plugins built against 0.2.0 or later take one per worker
/// thread per plugin (and one briefly to check a port's parameters); 0.1.0 plugins, one per
/// worker thread per port. Beyond it instantiation fails, which the host treats as a fault
/// and answers with its native policy.
const POOLED_INSTANCES: u32 = 1000;

/// Interface prefixes a plugin may import.
const ALLOWED_IMPORTS: &[&str] = &["gantry:plugins/", "wasi:io/", "wasi:cli/", "wasi:random/"];

/// The engine, its linker, and compiled plugins by content hash.
pub struct Sandbox {
    engine: Engine,
    stores: Stores,
    linker: Linker<HostState>,
    compiled: Mutex<HashMap<String, InstancePre<HostState>>>,
    ticker: EpochTicker,
}

impl Sandbox {
    /// An engine for plugins under `limits` (the memory cap is fixed for the engine's life),
    /// keeping compiled code in `cache` across restarts.
    pub fn new(limits: &PluginLimits, cache: &PluginCache) -> Result<Sandbox, PluginError> {
        let memory = limits.memory_bytes;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOLED_INSTANCES)
            .total_core_instances(POOLED_INSTANCES * 4)
            .total_memories(POOLED_INSTANCES)
            .total_tables(POOLED_INSTANCES * 2)
            // The memory cap: growing past it fails inside the guest (its allocator traps).
            .max_memory_size(usize::try_from(memory).unwrap_or(usize::MAX));

        let mut config = Config::new();
        config
            // Plugins are components: typed WIT interfaces instead of raw pointers.
            .wasm_component_model(true)
            // Deadlines: an epoch check in loops and calls costs little, unlike fuel metering,
            // and a ticker thread moves the epoch for every store at once.
            .epoch_interruption(true)
            // Instantiation in microseconds from preallocated slots, and a hard bound on how
            // many instances and how much memory plugins can ever hold.
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            // Reserve only the cap (not 4 GiB per memory): bounds checks stay, but a thousand
            // slots do not claim terabytes of address space.
            .memory_reservation(memory)
            .memory_guard_size(64 << 10)
            .memory_reservation_for_growth(0)
            // Deep recursion traps instead of exhausting the worker thread's stack.
            .max_wasm_stack(256 << 10)
            .cranelift_opt_level(OptLevel::Speed);
        // Compiled code on disk, keyed by the component's bytes, the engine's settings and
        // wasmtime's version, so a restart does not recompile unchanged plugins. A cache that
        // cannot be used costs only compile time.
        if let Some(folder) = cache_folder(cache) {
            let mut settings = CacheConfig::new();
            settings.with_directory(folder.join("wasm"));
            match Cache::new(settings) {
                Ok(cache) => {
                    config.cache(Some(cache));
                }
                Err(err) => {
                    tracing::warn!(folder = %folder.display(), %err, "plugin compile cache not used")
                }
            }
        }
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(e.to_string()))?;

        let mut linker = Linker::new(&engine);
        SandboxWorld::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        // Adds the shared `types` and `host` imports, which every plugin world of a version
        // has, for every version (below 1.0 each minor version is its own import name).
        v1::BalancerWorld::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        v2::BalancerWorld::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        v3::BalancerWorld::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        let activity = Arc::new(CallActivity::default());
        let ticker = EpochTicker::start(engine.clone(), activity.clone());
        Ok(Sandbox {
            stores: Stores::new(engine.clone(), limits, activity),
            engine,
            linker,
            compiled: Mutex::new(HashMap::new()),
            ticker,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// What makes stores for the engine's instances.
    pub(crate) fn stores(&self) -> &Stores {
        &self.stores
    }

    /// Compiles (or finds already compiled) a component, checks what it imports, and prepares
    /// it for fast instantiation. Whether it exports the world its use needs is the caller's
    /// check.
    pub fn compile(
        &self,
        sha256: &str,
        name: &str,
        bytes: &[u8],
    ) -> Result<InstancePre<HostState>, PluginError> {
        if let Some(pre) = self
            .compiled
            .lock()
            .ok()
            .and_then(|c| c.get(sha256).cloned())
        {
            return Ok(pre);
        }
        let invalid = |message: String| PluginError::Invalid {
            plugin: name.to_owned(),
            message,
        };
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| invalid(format!("not a WebAssembly component: {e:#}")))?;
        // Every refused import is named at once: a component from another language's tool
        // chain often brings several (clocks, files, sockets), and fixing one at a time
        // would take as many builds.
        let refused: Vec<String> = component
            .component_type()
            .imports(&self.engine)
            .map(|(import, _)| import)
            .filter(|import| {
                !ALLOWED_IMPORTS
                    .iter()
                    .any(|prefix| import.starts_with(prefix))
            })
            .map(|import| format!("`{import}`"))
            .collect();
        if !refused.is_empty() {
            return Err(invalid(format!(
                "imports {}, which plugins cannot have (they may import only gantry:plugins, \
                 wasi:io, wasi:cli and wasi:random; a Python plugin is built with \
                 `componentize-py ... componentize --stub-wasi`, a JavaScript one with \
                 `jco componentize ... --backend-qjs-stub-wasi`)",
                refused.join(", ")
            )));
        }
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            invalid(format!(
                "imports what gantry:plugins@0.1.0, @0.2.0 and @0.3.0 do not provide: {e:#}"
            ))
        })?;
        if let Ok(mut compiled) = self.compiled.lock() {
            compiled.insert(sha256.to_owned(), pre.clone());
        }
        Ok(pre)
    }

    /// Keeps only the compiled plugins whose hashes are in `keep` (after a reload).
    pub fn retain(&self, keep: &[&str]) {
        if let Ok(mut compiled) = self.compiled.lock() {
            compiled.retain(|sha, _| keep.contains(&sha.as_str()));
        }
    }

    /// Whether the epoch ticker is parked, no call having run for a while.
    pub fn ticker_idle(&self) -> bool {
        self.ticker.idle()
    }
}

/// Whether a plugin can ask for the request's headers: whether its import of the
/// `gantry:plugins/host` interface includes `request-header` (a component imports only the
/// host functions its code calls). The HTTP path builds no header view for requests whose
/// policies cannot ask for one.
pub(crate) fn reads_headers(component: &Component) -> bool {
    let engine = component.engine();
    let component_type = component.component_type();
    let mut imports = component_type.imports(engine);
    imports.any(|(name, item)| {
        name.starts_with("gantry:plugins/host")
            && match item.ty {
                ComponentItem::ComponentInstance(host) => {
                    host.get_export(engine, "request-header").is_some()
                }
                _ => true,
            }
    })
}
