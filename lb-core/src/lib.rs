//! `lb-core`: Gantry's data plane. Listeners and their protocols, routes and pools, the
//! health runner, metrics; no knowledge of where the configuration comes from, nor of the
//! binary (the appliance on top is the `gantry` crate, which applies a [`lb_config::Model`]
//! by keeping one [`listener::Listener`] per service port). Each accepted connection loads the port's
//! current [`route::Route`] (an immutable snapshot swapped whole on reload) and is served as
//! layer 4 ([`tcp`]), TLS-terminated layer 4, or HTTP ([`http`]: Gantry's own HTTP/1 relay and
//! HTTP/2 server, one exchange for both). Backends are
//! chosen through the pool's attempt loop ([`pool::attempt`]) by policies behind the
//! `lb-policy` traits, run as Wasm plugins by `lb-plugins`.

mod bind;
pub mod coalesce;
pub mod connection;
pub mod fuzzing;
pub mod health;
pub mod http;
pub mod http_server;
mod limiter;
pub mod listener;
pub mod logging;
pub mod metrics;
mod passthrough;
pub mod pool;
pub mod ports;
pub mod proxy_protocol;
pub mod route;
pub mod sockets;
pub mod tcp;
pub mod tls;
pub mod udp;
mod work;

#[cfg(test)]
mod test_certs;
