//! `lb-k8s`: the Kubernetes source of Gantry's model.
//!
//! Watches become updates of a pure [`index`]: plain Kubernetes objects in, services of the
//! model out (as `lb_config::file::ServiceFile` specs, checked by the same `ModelBuilder` as
//! the file), so the index is tested with plain objects and no server. What it does follows
//! the rules in `docs/dev/kubernetes-semantics.md`.

pub mod addresses;
pub mod client;
pub mod controller;
pub mod index;
pub mod plane;
pub mod settings;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use index::{Index, ObjectKey, Translation};
pub use settings::{BackendMode, Settings};
