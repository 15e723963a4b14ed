//! What one request did, told to whatever keeps count of it: the usage
//! history today, metrics next. The gateway and the decision service build
//! one [`RequestEvent`] at each step that counts (an admission, a refusal, a
//! settlement) and hand it to an [`EventSink`]; a sink must be cheap (no I/O,
//! no waiting: it is on the request's path). Names come shared (cloning one
//! allocates nothing) and with their stable hashes, so that a sink can key
//! what it counts by integers and copy a name only when it first sees it.

use std::sync::{Arc, LazyLock};

use crate::policy::name_hash;

/// The model of a request decided before its model was known.
static NO_MODEL: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));

/// One step of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestEvent<'a> {
    /// The tenant's id.
    pub tenant: &'a Arc<str>,
    /// Its stable hash ([`crate::TenantFacts::hash`]).
    pub tenant_hash: u64,
    /// The model's id as the policy names it; empty ([`RequestEvent::no_model`])
    /// when the request was decided before its model was known (a refusal
    /// before the body).
    pub model: &'a Arc<str>,
    /// Its stable hash (the policy's `Model::hash`; 0 for no model).
    pub model_hash: u64,
    /// What happened.
    pub step: Step<'a>,
}

impl<'a> RequestEvent<'a> {
    /// An event, hashing the names here (tests and callers off the hot
    /// path; the gateway passes the hashes it has).
    pub fn new(tenant: &'a Arc<str>, model: &'a Arc<str>, step: Step<'a>) -> Self {
        let model_hash = if model.is_empty() { 0 } else { name_hash(model) };
        Self { tenant, tenant_hash: name_hash(tenant), model, model_hash, step }
    }

    /// The model of a request decided before its model was known.
    pub fn no_model() -> &'static Arc<str> {
        &NO_MODEL
    }
}

/// What happened to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Admitted: it goes ahead (and is settled later).
    Admitted,
    /// Refused (a 429) by a limit.
    Refused {
        /// The name of the limit that refused it.
        limit: &'a Arc<str>,
    },
    /// Settled with what it really used.
    Settled {
        /// Prompt tokens.
        input_tokens: u64,
        /// Completion tokens.
        output_tokens: u64,
    },
}

/// Something that counts requests: called on the request's path.
pub trait EventSink: Send + Sync + 'static {
    /// Takes note of one event. Must not block or do I/O.
    fn record(&self, event: &RequestEvent<'_>);
}
