//! Load balancing for gatehouse: which target of an upstream pool gets a request.
//!
//! - [`Policy`] and [`Balancer`]: selection among targets (weighted round robin,
//!   least connections, power of two choices, consistent hashing on the client
//!   address or a header, sticky cookies). A `Balancer` belongs to one worker
//!   thread, so its counters are never contended.
//! - [`Health`]: the state of one target, shared by all workers: active health
//!   checks set it, passive failures eject the target for a cooldown that doubles
//!   with each consecutive ejection.
//! - [`RetryBudget`]: caps retries at a fraction of requests, so retries cannot
//!   multiply the load on an upstream that is already failing.
//!
//! Architecture invariant: this crate knows nothing about HTTP connections or
//! config files; the edge feeds it facts (a failure, a success, a key) and asks
//! for a target index.

mod balancer;
mod hash;
mod health;
mod retry;
mod sticky;

pub use balancer::{Balancer, Choice, Policy, SelectKey, TargetSpec};
pub use hash::rendezvous_score;
pub use health::{Health, HealthState, PassiveConfig};
pub use retry::RetryBudget;
pub use sticky::StickyCookie;
