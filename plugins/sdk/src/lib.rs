//! `gantry-plugin-sdk`: write a Gantry policy plugin in a few dozen lines.
//!
//! A balancer is a type implementing [`Balancer`], exported with [`export_balancer!`]:
//!
//! ```ignore
//! use gantry_plugin_sdk::{export_balancer, Backend, Balancer, Params, Request};
//!
//! struct First(Vec<u32>);
//!
//! impl Balancer for First {
//!     fn configure(params: &Params) -> Result<Self, String> {
//!         params.reject_unknown(&[])?;
//!         Ok(First(Vec::new()))
//!     }
//!     fn set_backends(&mut self, backends: Vec<Backend>) {
//!         self.0 = backends.iter().filter(|b| b.weight > 0).map(|b| b.id).collect();
//!     }
//!     fn pick(&mut self, _request: &Request, attempt: u32) -> Option<u32> {
//!         self.0.get(attempt as usize).copied()
//!     }
//! }
//!
//! export_balancer!(First);
//! ```
//!
//! A session-affinity policy implements [`Affinity`] and is exported with [`export_affinity!`];
//! a health policy implements [`health::Health`] and is exported with [`export_health!`].
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` file is the plugin.
//! The contract is the WIT package `gantry:plugins@0.3.0` in `plugins-wit/0.3.0`, where each
//! port's policy is a resource, so one plugin instance per worker thread serves every port;
//! its documentation says what each call means and promises. A value of your type is made
//! per port (and per backend set), so keep per-port state in it, never in statics.
//! `docs/plugins.md` walks through a whole plugin.

mod params;

pub use params::Params;

// The generated bindings name this crate by its external path, also from inside it.
extern crate self as gantry_plugin_sdk;

/// Generated bindings of the `balancer` world. Use the re-exports below instead.
#[doc(hidden)]
pub mod balancer_bindings {
    // Generated code: its shape is wit-bindgen's, not ours.
    #![allow(missing_docs, clippy::too_many_arguments)]
    wit_bindgen::generate!({
        world: "balancer",
        path: "../../plugins-wit/0.3.0",
        pub_export_macro: true,
        export_macro_name: "__export_balancer_world",
        default_bindings_module: "gantry_plugin_sdk::balancer_bindings",
        runtime_path: "gantry_plugin_sdk::__wit_bindgen::rt",
    });
}

/// Generated bindings of the `affinity` world, sharing the `types` and `host` bindings above.
#[doc(hidden)]
pub mod affinity_bindings {
    #![allow(missing_docs, clippy::too_many_arguments)]
    wit_bindgen::generate!({
        world: "affinity",
        path: "../../plugins-wit/0.3.0",
        with: {
            "gantry:plugins/types@0.3.0": crate::balancer_bindings::gantry::plugins::types,
            "gantry:plugins/host@0.3.0": crate::balancer_bindings::gantry::plugins::host,
        },
        pub_export_macro: true,
        export_macro_name: "__export_affinity_world",
        default_bindings_module: "gantry_plugin_sdk::affinity_bindings",
        runtime_path: "gantry_plugin_sdk::__wit_bindgen::rt",
    });
}

/// Generated bindings of the `health` world, sharing the `types` and `host` bindings above.
#[doc(hidden)]
pub mod health_bindings {
    #![allow(missing_docs, clippy::too_many_arguments)]
    wit_bindgen::generate!({
        world: "health",
        path: "../../plugins-wit/0.3.0",
        with: {
            "gantry:plugins/types@0.3.0": crate::balancer_bindings::gantry::plugins::types,
            "gantry:plugins/host@0.3.0": crate::balancer_bindings::gantry::plugins::host,
        },
        pub_export_macro: true,
        export_macro_name: "__export_health_world",
        default_bindings_module: "gantry_plugin_sdk::health_bindings",
        runtime_path: "gantry_plugin_sdk::__wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

mod affinity;
pub mod health;

#[doc(hidden)]
pub use affinity::__affinities;
pub use affinity::{client_ip_key, Affinity, Header, Stickiness, TableSettings};

pub use balancer_bindings::gantry::plugins::host;
pub use balancer_bindings::gantry::plugins::types::{Backend, IpAddress, Protocol, Request};

/// A balancing policy for one port. Each Gantry worker thread holds its own value for the
/// port, so `&mut self` is never shared; figures shared by all threads come from
/// [`host::backend_figures`].
pub trait Balancer: Sized + 'static {
    /// Builds the policy from the operator's parameters; an `Err` message is shown to the
    /// operator and the plugin is not used.
    fn configure(params: &Params) -> Result<Self, String>;

    /// The full backend set, at start and on every change: build tables here.
    fn set_backends(&mut self, backends: Vec<Backend>);

    /// The id of the backend for this request, or `None` to let Gantry choose. `attempt`
    /// counts earlier answers for the same request that Gantry could not use.
    fn pick(&mut self, request: &Request, attempt: u32) -> Option<u32>;

    /// How Gantry may place first picks itself, asked once after each `set_backends`: a
    /// [`PickPlan`] that is this policy's whole answer for `attempt` 0 (a rotation over
    /// `host::sequence`, a table indexed by the request's `hash_key`, or a random entry), so
    /// no call into the plugin is made per request; `pick` is still called for later
    /// attempts. The default, `None`, has `pick` called for every request: keep it for a
    /// policy that reads figures, headers or state of its own.
    fn plan(&self) -> Option<PickPlan> {
        None
    }
}

/// The generated export interface of the `balancer` world.
#[doc(hidden)]
pub use balancer_bindings::exports::gantry::plugins::balancers as __balancers;

/// How Gantry may place a balancer's first picks without calling it (see
/// [`Balancer::plan`]): `Rotation(ids)` takes `ids[host::sequence() mod len]`, `ByHash(ids)`
/// takes `ids[request.hash_key mod len]`, `ByRandom(ids)` takes `ids[random mod len]`. Weights
/// are repetitions of an id. At most 1,048,576 ids, each in the set; anything else is counted
/// as a fault and `pick` is called instead.
pub use balancer_bindings::exports::gantry::plugins::balancers::PickPlan;

/// The most ids a [`PickPlan`] may hold.
pub const MAX_PLAN_IDS: usize = 1 << 20;

/// One port's policy value inside its resource. The host never calls a plugin instance
/// re-entrantly, so the cell is never borrowed twice.
#[doc(hidden)]
pub struct PolicyCell<P>(pub std::cell::RefCell<P>);

impl<P> PolicyCell<P> {
    #[doc(hidden)]
    pub fn new(policy: P) -> Self {
        PolicyCell(std::cell::RefCell::new(policy))
    }
}

impl<B: Balancer> __balancers::GuestBalancer for PolicyCell<B> {
    fn set_backends(&self, backends: Vec<Backend>) {
        self.0.borrow_mut().set_backends(backends);
    }

    fn pick(&self, request: Request, attempt: u32) -> Option<u32> {
        self.0.borrow_mut().pick(&request, attempt)
    }

    fn plan(&self) -> Option<PickPlan> {
        self.0.borrow().plan()
    }
}

/// Exports a [`Balancer`] implementation as the plugin's `balancer` world: each port gets
/// its own value of the type, made by its `configure`.
#[macro_export]
macro_rules! export_balancer {
    ($balancer:ty) => {
        #[doc(hidden)]
        struct __GantryBalancer;

        impl $crate::__balancers::Guest for __GantryBalancer {
            type Balancer = $crate::PolicyCell<$balancer>;

            fn configure(
                parameters: ::std::vec::Vec<
                    $crate::balancer_bindings::gantry::plugins::types::Parameter,
                >,
            ) -> ::std::result::Result<$crate::__balancers::Balancer, ::std::string::String> {
                let params = $crate::Params::from_pairs(
                    parameters.into_iter().map(|p| (p.name, p.value)).collect(),
                );
                let policy = <$balancer as $crate::Balancer>::configure(&params)?;
                ::std::result::Result::Ok($crate::__balancers::Balancer::new(
                    $crate::PolicyCell::new(policy),
                ))
            }
        }

        $crate::balancer_bindings::__export_balancer_world!(__GantryBalancer);
    };
}

/// Backends that may take new work (weight above 0), with their weights.
pub fn weighted(backends: &[Backend]) -> impl Iterator<Item = (u32, u32)> + '_ {
    backends
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| (b.id, b.weight))
}

/// The greatest common divisor of the weights of the backends that take work (1 when none
/// do): dividing every weight by it keeps their proportions with the fewest repetitions, for
/// a rotation cycle or a random-draw table.
pub fn weight_divisor(backends: &[Backend]) -> u32 {
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    weighted(backends).fold(0, |g, (_, w)| gcd(g, w)).max(1)
}

/// `ip:port` of a backend: the identity consistent-hashing plugins hash, so that every replica
/// and every reload places a backend at the same points whatever its id.
pub fn backend_key(backend: &Backend) -> String {
    match backend.address {
        IpAddress::V4((a, b, c, d)) => format!("{a}.{b}.{c}.{d}:{}", backend.port),
        IpAddress::V6(segments) => {
            let (a, b, c, d, e, f, g, h) = segments;
            let ip = std::net::Ipv6Addr::new(a, b, c, d, e, f, g, h);
            format!("[{ip}]:{}", backend.port)
        }
    }
}
