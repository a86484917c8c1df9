//! Host bindings generated from `plugins-wit/`. They stay private to `plugins`; the names the
//! host uses are re-exported here.

#[allow(missing_docs, unreachable_pub)]
mod generated {
    wasmtime::component::bindgen!({
        world: "balancer",
        path: "../plugins-wit/wit",
    });
}

pub(crate) use generated::gantry::plugins::host::{
    Figures as WitFigures, Host as HostImports, Level,
};
pub(crate) use generated::gantry::plugins::types::{
    Backend as WitBackend, Host as TypesImports, IpAddress, Parameter, Protocol as WitProtocol,
    Request as WitRequest,
};
pub(crate) use generated::{Balancer as BalancerWorld, BalancerPre};
