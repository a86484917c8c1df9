//! The plugin worlds as the host drives them: how to check that a component exports one,
//! instantiate it, configure it and hand it a backend set. Each kind's own calls (`pick`,
//! `stick`, `probed`) are made by that kind's module.

use wasmtime::component::InstancePre;
use wasmtime::Store;

use super::bindings::{
    AffinityPre, AffinityWorld, BalancerPre, BalancerWorld, HealthPre, HealthSettings, HealthWorld,
    Parameter, TableSettings, WitBackend,
};
use super::host::HostState;

/// What every plugin world exports besides its own calls.
pub(crate) trait World: Sized + Send + 'static {
    /// The world's pre-instantiated form.
    type Pre: Clone + Send + Sync + 'static;
    /// What `configure` returns besides success.
    type Settings: Clone + Send + Sync + 'static;
    /// The world's name, for messages and built-in lookup.
    const NAME: &'static str;

    /// Checks that a compiled component exports this world.
    fn prepare(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre>;
    /// A new instance.
    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self>;
    /// Calls `configure`.
    fn configure(
        &self,
        store: &mut Store<HostState>,
        params: &[Parameter],
    ) -> wasmtime::Result<Result<Self::Settings, String>>;
    /// Calls `set-backends`.
    fn set_backends(
        &self,
        store: &mut Store<HostState>,
        backends: &[WitBackend],
    ) -> wasmtime::Result<()>;
}

/// The worlds' generated bindings have the same shape; one definition serves them all.
macro_rules! world {
    ($world:ty, $pre:ident, $settings:ty, $name:literal) => {
        impl World for $world {
            type Pre = $pre<HostState>;
            type Settings = $settings;
            const NAME: &'static str = $name;

            fn prepare(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
                $pre::new(pre)
            }
            fn instantiate(
                pre: &Self::Pre,
                store: &mut Store<HostState>,
            ) -> wasmtime::Result<Self> {
                pre.instantiate(store)
            }
            fn configure(
                &self,
                store: &mut Store<HostState>,
                params: &[Parameter],
            ) -> wasmtime::Result<Result<$settings, String>> {
                self.call_configure(store, params)
            }
            fn set_backends(
                &self,
                store: &mut Store<HostState>,
                backends: &[WitBackend],
            ) -> wasmtime::Result<()> {
                self.call_set_backends(store, backends)
            }
        }
    };
}

world!(BalancerWorld, BalancerPre, (), "balancer");
world!(AffinityWorld, AffinityPre, TableSettings, "affinity");
world!(HealthWorld, HealthPre, HealthSettings, "health");
