//! `lb-policy`: the policy seam between Gantry's data plane and its policies.
//!
//! Three roles, each a pair of traits: a [`BalancerFactory`] builds a [`Balancer`] for each
//! backend set; an [`AffinityFactory`] builds an [`Affinity`] and owns the port's shared
//! [`AffinityTable`]; a [`HealthPolicy`] judges backends from probe and traffic [`Outcome`]s.
//! The Wasm plugin host (`lb-plugins`) implements them; the data plane (`lb-core`) calls them
//! with a [`PickContext`] and reads [`Figures`]. [`RoundRobin`] is the native balancer that
//! answers when a plugin cannot, and [`clock`] the clock every deadline counts in.
//!
//! Building a policy computes only; anything that must happen once it serves is its
//! `activate`, called when a reload commits (see `DESIGN.md`, build then activate).

mod affinity;
mod balancer;
pub mod clock;
mod health;
mod round_robin;

pub use affinity::{
    rendezvous, Affinity, AffinityFactory, AffinityTable, Peeked, ResponseHeader, Stickiness,
};
pub use balancer::{
    hash_key, BackendFigures, Balancer, BalancerFactory, Figures, PickContext, Unanswered,
};
pub use health::{HealthPolicy, HealthSettings, Outcome, ProbeKind, ProbePlan, Verdict};
pub use round_robin::RoundRobin;
