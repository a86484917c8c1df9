//! Host bindings generated from `plugins-wit/`, one module per contract version and world; in
//! each version the `types` and `host` interfaces are generated once (with the balancer world)
//! and shared by the others. They stay private to the crate; the names the host uses are
//! re-exported here, under `v1` (`gantry:plugins@0.1.0`, frozen: one instance per port), `v2`
//! (`gantry:plugins@0.2.0`: one instance per plugin, a resource per port) and `v3`
//! (`gantry:plugins@0.3.0`: 0.2.0 with the balancer's pick plan).

/// `gantry:plugins@0.1.0`.
pub(crate) mod v1 {
    #[allow(missing_docs, unreachable_pub)]
    mod balancer {
        wasmtime::component::bindgen!({
            world: "balancer",
            path: "../plugins-wit/0.1.0",
        });
    }

    #[allow(missing_docs, unreachable_pub)]
    mod affinity {
        wasmtime::component::bindgen!({
            world: "affinity",
            path: "../plugins-wit/0.1.0",
            with: {
                "gantry:plugins/types@0.1.0": super::balancer::gantry::plugins::types,
                "gantry:plugins/host@0.1.0": super::balancer::gantry::plugins::host,
            },
        });
    }

    #[allow(missing_docs, unreachable_pub)]
    mod health {
        wasmtime::component::bindgen!({
            world: "health",
            path: "../plugins-wit/0.1.0",
            with: {
                "gantry:plugins/types@0.1.0": super::balancer::gantry::plugins::types,
                "gantry:plugins/host@0.1.0": super::balancer::gantry::plugins::host,
            },
        });
    }

    pub(crate) use affinity::{
        Affinity as AffinityWorld, AffinityPre, Header, Stickiness, TableSettings,
    };
    pub(crate) use balancer::gantry::plugins::host::{Figures, Host as HostImports, Level};
    pub(crate) use balancer::gantry::plugins::types::{
        Backend, Host as TypesImports, IpAddress, Parameter, Protocol, Request,
    };
    pub(crate) use balancer::{Balancer as BalancerWorld, BalancerPre};
    pub(crate) use health::{
        Health as HealthWorld, HealthPre, HealthSettings, Outcome, ProbeKind, ProbePlan, Verdict,
    };
}

/// `gantry:plugins@0.2.0`.
pub(crate) mod v2 {
    #[allow(missing_docs, unreachable_pub)]
    mod balancer {
        wasmtime::component::bindgen!({
            world: "balancer",
            path: "../plugins-wit/0.2.0",
        });
    }

    #[allow(missing_docs, unreachable_pub)]
    mod affinity {
        wasmtime::component::bindgen!({
            world: "affinity",
            path: "../plugins-wit/0.2.0",
            with: {
                "gantry:plugins/types@0.2.0": super::balancer::gantry::plugins::types,
                "gantry:plugins/host@0.2.0": super::balancer::gantry::plugins::host,
            },
        });
    }

    #[allow(missing_docs, unreachable_pub)]
    mod health {
        wasmtime::component::bindgen!({
            world: "health",
            path: "../plugins-wit/0.2.0",
            with: {
                "gantry:plugins/types@0.2.0": super::balancer::gantry::plugins::types,
                "gantry:plugins/host@0.2.0": super::balancer::gantry::plugins::host,
            },
        });
    }

    pub(crate) use affinity::exports::gantry::plugins::affinities::{
        Header, Stickiness, TableSettings,
    };
    pub(crate) use affinity::{Affinity as AffinityWorld, AffinityPre};
    pub(crate) use balancer::gantry::plugins::host::{Figures, Host as HostImports, Level};
    pub(crate) use balancer::gantry::plugins::types::{
        Backend, Host as TypesImports, IpAddress, Parameter, Protocol, Request,
    };
    pub(crate) use balancer::{Balancer as BalancerWorld, BalancerPre};
    pub(crate) use health::exports::gantry::plugins::health_checks::{
        HealthSettings, HttpProbe, Outcome, ProbeKind, ProbePlan, Verdict,
    };
    pub(crate) use health::{Health as HealthWorld, HealthPre};
}

/// `gantry:plugins@0.3.0`.
pub(crate) mod v3 {
    #[allow(missing_docs, unreachable_pub)]
    mod balancer {
        wasmtime::component::bindgen!({
            world: "balancer",
            path: "../plugins-wit/0.3.0",
        });
    }

    #[allow(missing_docs, unreachable_pub)]
    mod affinity {
        wasmtime::component::bindgen!({
            world: "affinity",
            path: "../plugins-wit/0.3.0",
            with: {
                "gantry:plugins/types@0.3.0": super::balancer::gantry::plugins::types,
                "gantry:plugins/host@0.3.0": super::balancer::gantry::plugins::host,
            },
        });
    }

    #[allow(missing_docs, unreachable_pub)]
    mod health {
        wasmtime::component::bindgen!({
            world: "health",
            path: "../plugins-wit/0.3.0",
            with: {
                "gantry:plugins/types@0.3.0": super::balancer::gantry::plugins::types,
                "gantry:plugins/host@0.3.0": super::balancer::gantry::plugins::host,
            },
        });
    }

    pub(crate) use affinity::exports::gantry::plugins::affinities::{
        Header, Stickiness, TableSettings,
    };
    pub(crate) use affinity::{Affinity as AffinityWorld, AffinityPre};
    pub(crate) use balancer::exports::gantry::plugins::balancers::PickPlan;
    pub(crate) use balancer::gantry::plugins::host::{Figures, Host as HostImports, Level};
    pub(crate) use balancer::gantry::plugins::types::{
        Backend, Host as TypesImports, IpAddress, Parameter, Protocol, Request,
    };
    pub(crate) use balancer::{Balancer as BalancerWorld, BalancerPre};
    pub(crate) use health::exports::gantry::plugins::health_checks::{
        HealthSettings, Outcome, ProbeKind, ProbePlan, Verdict,
    };
    pub(crate) use health::{Health as HealthWorld, HealthPre};
}
