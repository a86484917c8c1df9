//! `gantry`: the load-balancer appliance on top of the data plane (`lb-core`). It applies a
//! [`lb_config::Model`] built from the sources (the static file, [`reload`], and the Kubernetes
//! source, [`kubernetes`], combined by `app::sources`): [`Gantry`] reconciles by the typed diff
//! ([`app`]: build, then activate) and keeps one `lb_core::listener::Listener` per service
//! port. Around it: the admin endpoint ([`admin`]), the handover of sockets and UDP flows to a
//! successor process ([`handover`], [`takeover`]), the announcement of addresses through a
//! routing daemon ([`routing`]), the demo ([`demo`]), and the process's run loop ([`run`]).
//! The `gantry` binary is a thin command line over it.

pub mod admin;
pub mod app;
pub mod build_info;
pub mod demo;
pub mod explain;
pub mod handover;
pub mod kube_metrics;
pub mod kubernetes;
pub mod reload;
pub mod routing;
pub mod run;
pub mod takeover;

pub use app::{ApplyError, FileApplyError, Gantry, PolicyError};
pub use reload::ReloadError;
