//! What every listener serves from: the runtime now served (swapped whole
//! on a reload, replaced by an admin change), the counter store, the clock,
//! where request events go, and the process's metrics. The proxy's
//! `Gateway` wraps one; the admin API and the decision service take one.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use http::HeaderValue;
use sluice_core::{Clock, CounterStore, EventSink, RequestEvent};
use sluice_store::History;

use crate::metrics::Metrics;
use crate::runtime::Runtime;

/// What a runtime goes through before it is served in place of another
/// ([`Served::replace_runtime`], [`Served::swap_runtime`]): the proxy binds
/// its metrics to it.
pub type Prepare = Box<dyn Fn(Runtime) -> Runtime + Send + Sync>;

/// The served state.
pub struct Served<S> {
    runtime: ArcSwap<Runtime>,
    /// The counter store.
    pub store: S,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
    /// Who counts what requests do (set once, at start).
    events: OnceLock<Events>,
    /// The registry, the store's health and the listeners' gauges.
    metrics: Metrics,
    prepare: Option<Prepare>,
}

/// Where the events of requests go.
struct Events {
    /// Every event.
    sink: Arc<dyn EventSink>,
    /// The usage history (also a sink), for `/v1/usage`.
    history: Arc<History>,
}

impl<S> Served<S> {
    /// Serves `runtime` with `store`, with metrics of its own.
    pub fn new(runtime: Runtime, store: S, clock: Arc<dyn Clock>) -> Arc<Self> {
        Self::with_metrics(runtime, store, clock, Metrics::default(), None)
    }

    /// Serves `runtime` with `store` and `metrics`; `prepare`, if given,
    /// goes over `runtime` now and over each runtime that
    /// [`Served::replace_runtime`] or [`Served::swap_runtime`] serves.
    pub fn with_metrics(
        runtime: Runtime,
        store: S,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
        prepare: Option<Prepare>,
    ) -> Arc<Self> {
        let runtime = match &prepare {
            Some(p) => p(runtime),
            None => runtime,
        };
        Arc::new(Self {
            runtime: ArcSwap::from_pointee(runtime),
            store,
            clock,
            events: OnceLock::new(),
            metrics,
            prepare,
        })
    }

    /// The runtime now being served.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Serves `runtime` from now on (requests under way keep the old one).
    pub fn replace_runtime(&self, runtime: Runtime) {
        drop(self.swap_runtime(runtime));
    }

    /// Serves `runtime` from now on (after `prepare`, as every runtime
    /// served); the one served until now, for the caller to drop where its
    /// freeing holds up no request.
    pub fn swap_runtime(&self, runtime: Runtime) -> Arc<Runtime> {
        let runtime = match &self.prepare {
            Some(p) => p(runtime),
            None => runtime,
        };
        self.runtime.swap(Arc::new(runtime))
    }

    /// Records usage in `history` from now on (once; later calls are
    /// ignored).
    pub fn set_history(&self, history: Arc<History>) {
        let _ = self.events.set(Events { sink: history.clone(), history });
    }

    /// The usage history, if usage is recorded.
    pub fn history(&self) -> Option<&Arc<History>> {
        self.events.get().map(|e| &e.history)
    }

    /// Where events go, if anywhere (for a settlement that happens later).
    pub fn event_sink(&self) -> Option<&Arc<dyn EventSink>> {
        self.events.get().map(|e| &e.sink)
    }

    /// Tells every sink what a request did (memory only: cheap).
    #[inline]
    pub fn record(&self, event: &RequestEvent<'_>) {
        if let Some(e) = self.events.get() {
            e.sink.record(event);
        }
    }

    /// The metrics every instance has (the registry the others join).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

impl<S: CounterStore> Served<S> {
    /// The metrics' text in the format `accept` asks for, with the store's
    /// health as of now; and its `Content-Type`.
    pub fn metrics_text(&self, accept: Option<&HeaderValue>) -> (String, &'static str) {
        let format = crate::metrics::negotiate(accept);
        let text =
            self.metrics.encode(!self.store.degraded(), self.store.pending_settlements(), format);
        (text, format)
    }
}
