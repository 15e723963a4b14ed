//! `sluice serve`: an OpenAI-compatible reverse proxy that enforces a
//! policy's limits in front of any inference server.
//!
//! For each request: the bearer key names a tenant (401 otherwise, before
//! anything is counted); the body gives the model, the output asked for and
//! the text to count (400 if it cannot be read, 413 if too large, 404 for a
//! model the tenant may not use); the estimated cost is admitted against
//! every limit that applies, all or nothing (429 with the wire contract's
//! headers and body when not); the request goes upstream with the
//! upstream's own key; the response streams back as it arrives; and the
//! reservation is settled with the usage the response reports, once, however
//! the response ends.
//!
//! The state it serves (runtime, store, metrics) and the accept loop it runs
//! on are sluice-served's, shared with the admin API and the decision
//! service; this crate is the proxying.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod background;
pub mod body;
mod hop;
pub mod metrics;
mod proxy;
mod request_id;
pub mod reservation;
mod server;
pub mod upstream;
mod usage;

pub use server::{Gateway, serve, tokio_runtime};
pub use upstream::{Connector, MockUrls};
