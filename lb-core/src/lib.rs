//! `lb-core`: the Gantry load-balancer appliance as a library; the `gantry` binary is a thin
//! command line over it.
//!
//! Data flow: a [`lb_config::Model`] built from the sources (the static file, [`reload`], and
//! the Kubernetes source, [`kubernetes`], combined by `app::sources`) is applied by [`Gantry`], which reconciles by the typed diff ([`app`]: build, then activate)
//! and keeps one `listener` per service port. Each accepted connection loads the port's
//! current [`route::Route`] (an immutable snapshot swapped whole on reload) and is served as
//! layer 4 ([`tcp`]), TLS-terminated layer 4, or HTTP ([`http`]: Gantry's own HTTP/1 relay and
//! HTTP/2 server, one exchange for both). Backends are
//! chosen through the pool's attempt loop ([`pool::attempt`]) by policies behind the
//! `lb-policy` traits, run as Wasm plugins by `lb-plugins`.

pub mod admin;
pub mod app;
mod bind;
pub mod coalesce;
mod connection;
pub mod demo;
pub mod fuzzing;
pub mod handover;
pub mod health;
pub mod http;
pub mod http_server;
pub mod kubernetes;
mod limiter;
mod listener;
pub mod logging;
pub mod metrics;
mod passthrough;
pub mod pool;
pub mod ports;
pub mod proxy_protocol;
pub mod reload;
pub mod route;
pub mod routing;
pub mod run;
pub mod sockets;
pub mod takeover;
pub mod tcp;
pub mod tls;
pub mod udp;
mod work;

#[cfg(test)]
mod test_certs;

pub use app::{ApplyError, FileApplyError, Gantry, PolicyError};
pub use reload::ReloadError;
