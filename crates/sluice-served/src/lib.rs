//! The served state: what the proxy (sluice-gateway), the admin API
//! (sluice-admin) and the decision service (sluice-rls) share, without any
//! of the proxy's forwarding.
//!
//! - [`Runtime`]: the policy, tenants and keys as served, resolved once from
//!   the policy file and the tenant store, swapped whole on a reload and
//!   copied on write by an admin change ([`tenants`]);
//! - [`Served`]: the runtime now served, the counter store, the clock, where
//!   request events go and the process's metrics;
//! - [`auth`]: the key table and the comparison of secrets by their hash;
//! - [`edge`]: the one accept loop every listener runs, with its timeouts,
//!   caps and body memory budget (docs/SECURITY.md);
//! - [`metrics`]: the registry every metric joins, the store's health and
//!   the listeners' gauges, and the token-guarded `/metrics` listener;
//! - [`settle`]: what a request that ran is charged, from the usage its
//!   upstream reported ([`settle::settled_usage`]);
//! - [`usage`]: what a tenant has used (its counters read by a dry run, and
//!   its usage history as JSON).
#![forbid(unsafe_code)]

pub mod auth;
pub mod body;
pub mod edge;
pub mod metrics;
pub mod runtime;
mod served;
pub mod settle;
pub mod tenants;
pub mod usage;

pub use edge::{BodyBudget, ListenerOptions, serve_connections};
pub use runtime::{Connect, Runtime, RuntimeError, Unconnected, Upstream};
pub use served::{Prepare, Served};
