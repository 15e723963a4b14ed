//! The admin side of Sluice: the HTTP API operators use to manage tenants,
//! keys, tiers, overrides and usage ([`api`]), and the control that keeps the
//! gateway in step with the policy file and the tenant store ([`control`]).
#![forbid(unsafe_code)]

pub mod api;
mod audit;
pub mod control;
pub mod dashboard;
/// The `admin` fuzz target's body (`fuzz/`), which a test also runs on the
/// seeds (feature `fuzzing` or tests only; not an API).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;

use std::future::Future;
use std::sync::Arc;

use sluice_core::CounterStore;
use sluice_served::ListenerOptions;
use sluice_served::edge::RequestBody;
use sluice_store::TenantStore;
use tokio::net::TcpListener;

pub use api::{AdminState, OPENAPI, router};
pub use control::{Control, ReloadError};

/// Serves the admin API on `listener` (through Sluice's hardened accept
/// loop: `opts`' timeouts and caps) until `shutdown` completes, then lets
/// calls in flight finish for up to `opts.grace`.
pub async fn serve<S, T>(
    listener: TcpListener,
    state: Arc<AdminState<S, T>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    opts: ListenerOptions,
) -> std::io::Result<()>
where
    S: CounterStore + Clone + Unpin,
    T: TenantStore + Clone,
{
    let router = router(state);
    let service = hyper::service::service_fn(move |req: http::Request<RequestBody>| {
        let mut router = router.clone();
        async move { tower_service::Service::call(&mut router, req).await }
    });
    sluice_served::serve_connections(listener, service, shutdown, opts).await
}
