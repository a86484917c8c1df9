//! Host bindings generated from `plugins-wit/`, one module per world; the `types` and `host`
//! interfaces are generated once (with the balancer world) and shared by the others. They stay
//! private to `plugins`; the names the host uses are re-exported here.

#[allow(missing_docs, unreachable_pub)]
mod balancer {
    wasmtime::component::bindgen!({
        world: "balancer",
        path: "../plugins-wit/wit",
    });
}

#[allow(missing_docs, unreachable_pub)]
mod affinity {
    wasmtime::component::bindgen!({
        world: "affinity",
        path: "../plugins-wit/wit",
        with: {
            "gantry:plugins/types": super::balancer::gantry::plugins::types,
            "gantry:plugins/host": super::balancer::gantry::plugins::host,
        },
    });
}

#[allow(missing_docs, unreachable_pub)]
mod health {
    wasmtime::component::bindgen!({
        world: "health",
        path: "../plugins-wit/wit",
        with: {
            "gantry:plugins/types": super::balancer::gantry::plugins::types,
            "gantry:plugins/host": super::balancer::gantry::plugins::host,
        },
    });
}

pub(crate) use affinity::{
    Affinity as AffinityWorld, AffinityPre, Header as WitHeader, Stickiness as WitStickiness,
    TableSettings,
};
pub(crate) use balancer::gantry::plugins::host::{
    Figures as WitFigures, Host as HostImports, Level,
};
pub(crate) use balancer::gantry::plugins::types::{
    Backend as WitBackend, Host as TypesImports, IpAddress, Parameter, Protocol as WitProtocol,
    Request as WitRequest,
};
pub(crate) use balancer::{Balancer as BalancerWorld, BalancerPre};
pub(crate) use health::{
    Health as HealthWorld, HealthPre, HealthSettings, Outcome as WitOutcome, ProbeKind,
    Verdict as WitVerdict,
};
