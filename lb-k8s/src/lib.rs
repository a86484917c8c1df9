//! `lb-k8s`: the Kubernetes source of Gantry's model.
//!
//! - [`controller`]: kube-rs watches feed one task that owns the [`index`] and the
//!   [`addresses`], and reconciles each batch of changes: addresses, services of the model
//!   (handed to the appliance through [`plane::DataPlane`]), then status, finalizer and Events.
//! - [`index`]: pure: plain Kubernetes objects in, services of the model out (as
//!   `lb_config::file::ServiceFile` specs, checked by the same `ModelBuilder` as the file), so
//!   it is tested with plain objects and no server.
//! - [`client`]: the connection, from a kubeconfig or in-cluster.
//!
//! Its tests, and the gantry crate's, run against the API server of the `lb-k8s-testing` crate.
//!
//! What it does follows the rules in `docs/dev/kubernetes-semantics.md`; users' view is
//! `docs/kubernetes.md`.

pub mod addresses;
pub mod client;
pub mod controller;
pub mod fuzzing;
pub mod index;
mod jitter;
pub mod plane;
pub mod settings;
pub mod telemetry;

pub use index::{Index, ObjectKey, Translation};
pub use settings::{BackendMode, Settings};
