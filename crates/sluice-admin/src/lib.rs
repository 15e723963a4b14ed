//! The admin side of Sluice: the HTTP API operators use to manage tenants,
//! keys, tiers, overrides and usage ([`api`]), and the control that keeps the
//! gateway in step with the policy file and the tenant store ([`control`]).
#![forbid(unsafe_code)]

pub mod api;
pub mod control;
pub mod dashboard;

use std::future::Future;
use std::sync::Arc;

use sluice_core::CounterStore;
use sluice_store::TenantStore;
use tokio::net::TcpListener;

pub use api::{AdminState, OPENAPI, router};
pub use control::{Control, MockUrls, ReloadError};

/// Serves the admin API on `listener` until `shutdown` completes.
pub async fn serve<S, T>(
    listener: TcpListener,
    state: Arc<AdminState<S, T>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: CounterStore + Clone + Unpin,
    T: TenantStore + Clone,
{
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
