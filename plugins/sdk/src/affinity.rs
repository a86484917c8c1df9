//! Session-affinity plugins: the [`Affinity`] trait and [`export_affinity!`](crate::export_affinity).

use crate::{IpAddress, Params, Request};

use crate::affinity_bindings::exports::gantry::plugins::affinities as generated;
pub use crate::affinity_bindings::exports::gantry::plugins::affinities::{
    Header, Stickiness, TableSettings,
};
use crate::Backend;
use crate::PolicyCell;

/// A session-affinity policy: says what a request sticks by. Gantry keeps the shared table of
/// remembered keys and does the balancing. Each worker thread holds its own instance.
pub trait Affinity: Sized + 'static {
    /// Builds the policy from the operator's parameters, with how Gantry should keep its
    /// table; an `Err` message is shown to the operator and the plugin is not used.
    fn configure(params: &Params) -> Result<(Self, TableSettings), String>;

    /// The full backend set, at start and on every change.
    fn set_backends(&mut self, backends: Vec<Backend>);

    /// What this request sticks by.
    fn stick(&mut self, request: &Request) -> Stickiness;

    /// The request was balanced to `backend`; a response header that brings the client back
    /// (HTTP only). The default adds none.
    fn assigned(&mut self, _request: &Request, _backend: u32) -> Option<Header> {
        None
    }
}

/// XXH3-64 of the client's IP address bytes (an IPv4-mapped IPv6 address counts as IPv4),
/// the same function the host uses for `hash-key`: a table key for client-IP affinity.
pub fn client_ip_key(request: &Request) -> u64 {
    use xxhash_rust::xxh3::xxh3_64;
    match request.client_address {
        IpAddress::V4((a, b, c, d)) => xxh3_64(&[a, b, c, d]),
        IpAddress::V6((a, b, c, d, e, f, g, h)) => {
            let ip = std::net::Ipv6Addr::new(a, b, c, d, e, f, g, h);
            match ip.to_ipv4_mapped() {
                Some(v4) => xxh3_64(&v4.octets()),
                None => xxh3_64(&ip.octets()),
            }
        }
    }
}

impl<A: Affinity> generated::GuestAffinity for PolicyCell<A> {
    fn set_backends(&self, backends: Vec<Backend>) {
        self.0.borrow_mut().set_backends(backends);
    }

    fn stick(&self, request: Request) -> Stickiness {
        self.0.borrow_mut().stick(&request)
    }

    fn assigned(&self, request: Request, backend: u32) -> Option<Header> {
        self.0.borrow_mut().assigned(&request, backend)
    }
}

/// The generated export interface of the `affinity` world.
#[doc(hidden)]
pub use crate::affinity_bindings::exports::gantry::plugins::affinities as __affinities;

/// Exports an [`Affinity`] implementation as the plugin's `affinity` world: each port gets its
/// own value of the type, made by its `configure`.
#[macro_export]
macro_rules! export_affinity {
    ($affinity:ty) => {
        #[doc(hidden)]
        struct __GantryAffinity;

        impl $crate::__affinities::Guest for __GantryAffinity {
            type Affinity = $crate::PolicyCell<$affinity>;

            fn configure(
                parameters: ::std::vec::Vec<
                    $crate::balancer_bindings::gantry::plugins::types::Parameter,
                >,
            ) -> ::std::result::Result<
                ($crate::__affinities::Affinity, $crate::TableSettings),
                ::std::string::String,
            > {
                let params = $crate::Params::from_pairs(
                    parameters.into_iter().map(|p| (p.name, p.value)).collect(),
                );
                let (policy, settings) = <$affinity as $crate::Affinity>::configure(&params)?;
                ::std::result::Result::Ok((
                    $crate::__affinities::Affinity::new($crate::PolicyCell::new(policy)),
                    settings,
                ))
            }
        }

        $crate::affinity_bindings::__export_affinity_world!(__GantryAffinity);
    };
}
