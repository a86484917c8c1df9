//! Host values as each contract version's WIT values: operator parameters, backends,
//! addresses and the request summary. The versions' types have the same shape; one
//! definition serves them all.

use std::net::{IpAddr, SocketAddr};

use lb_config::{Backend, Protocol};
use lb_policy::PickContext;

use super::bindings::{v1, v2, v3};

macro_rules! conversions {
    ($module:ident, $version:ident, $udp:ident) => {
        /// Conversions into this contract version's values.
        pub(crate) mod $module {
            use super::*;

            /// The operator's parameters of a port's policy.
            pub(crate) fn parameters(params: &[(String, String)]) -> Vec<$version::Parameter> {
                params
                    .iter()
                    .map(|(name, value)| $version::Parameter {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect()
            }

            /// A backend set, ids in order.
            pub(crate) fn backends(backends: &[Backend]) -> Vec<$version::Backend> {
                backends
                    .iter()
                    .enumerate()
                    .map(|(id, b)| $version::Backend {
                        id: u32::try_from(id).unwrap_or(u32::MAX),
                        address: ip(b.address.ip()),
                        port: b.address.port(),
                        weight: b.weight,
                    })
                    .collect()
            }

            fn ip(ip: IpAddr) -> $version::IpAddress {
                match ip {
                    IpAddr::V4(v4) => {
                        let [a, b, c, d] = v4.octets();
                        $version::IpAddress::V4((a, b, c, d))
                    }
                    IpAddr::V6(v6) => {
                        let [a, b, c, d, e, f, g, h] = v6.segments();
                        $version::IpAddress::V6((a, b, c, d, e, f, g, h))
                    }
                }
            }

            /// The request summary every per-request call takes.
            pub(crate) fn request(cx: &PickContext<'_>) -> $version::Request {
                let client = cx
                    .client
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                $version::Request {
                    client_address: ip(client.ip()),
                    client_port: client.port(),
                    authority: cx.authority.map(str::to_owned),
                    protocol: match cx.protocol {
                        Protocol::Tcp => $version::Protocol::Tcp,
                        Protocol::Tls => $version::Protocol::Tls,
                        Protocol::Http => $version::Protocol::Http,
                        Protocol::Https => $version::Protocol::Https,
                        Protocol::Udp => $version::Protocol::$udp,
                    },
                    hash_key: cx.hash_key,
                }
            }
        }
    };
}

// 0.1.0 has no `udp`; its plugins are refused on UDP ports when they load, so `Tcp` is
// never what a 0.1.0 plugin is told of a UDP flow.
conversions!(to_v1, v1, Tcp);
conversions!(to_v2, v2, Udp);
conversions!(to_v3, v3, Udp);
