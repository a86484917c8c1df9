//! Session-affinity plugins: the [`Affinity`] trait and [`export_affinity!`](crate::export_affinity).

use crate::{IpAddress, Params, Request};

pub use crate::affinity_bindings::{Header, Stickiness, TableSettings};
use crate::Backend;

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

/// Exports an [`Affinity`] implementation as the plugin's `affinity` world.
#[macro_export]
macro_rules! export_affinity {
    ($affinity:ty) => {
        #[doc(hidden)]
        struct __GantryAffinity;

        ::std::thread_local! {
            static __GANTRY_AFFINITY: ::std::cell::RefCell<::std::option::Option<$affinity>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }

        impl $crate::affinity_bindings::Guest for __GantryAffinity {
            fn configure(
                parameters: ::std::vec::Vec<
                    $crate::balancer_bindings::gantry::plugins::types::Parameter,
                >,
            ) -> ::std::result::Result<$crate::TableSettings, ::std::string::String> {
                let params = $crate::Params::from_pairs(
                    parameters.into_iter().map(|p| (p.name, p.value)).collect(),
                );
                let (policy, settings) = <$affinity as $crate::Affinity>::configure(&params)?;
                __GANTRY_AFFINITY
                    .with(|slot| *slot.borrow_mut() = ::std::option::Option::Some(policy));
                ::std::result::Result::Ok(settings)
            }

            fn set_backends(backends: ::std::vec::Vec<$crate::Backend>) {
                __GANTRY_AFFINITY.with(|slot| {
                    if let ::std::option::Option::Some(policy) = slot.borrow_mut().as_mut() {
                        $crate::Affinity::set_backends(policy, backends);
                    }
                });
            }

            fn stick(request: $crate::Request) -> $crate::Stickiness {
                __GANTRY_AFFINITY.with(|slot| match slot.borrow_mut().as_mut() {
                    ::std::option::Option::Some(policy) => {
                        $crate::Affinity::stick(policy, &request)
                    }
                    ::std::option::Option::None => $crate::Stickiness::None,
                })
            }

            fn assigned(
                request: $crate::Request,
                backend: u32,
            ) -> ::std::option::Option<$crate::Header> {
                __GANTRY_AFFINITY.with(|slot| {
                    slot.borrow_mut()
                        .as_mut()
                        .and_then(|policy| $crate::Affinity::assigned(policy, &request, backend))
                })
            }
        }

        $crate::affinity_bindings::__export_affinity_world!(__GantryAffinity);
    };
}
