//! What one request did, told to whatever keeps count of it: the usage
//! history today, metrics next. The gateway and the decision service build
//! one [`RequestEvent`] at each step that counts (an admission, a refusal, a
//! settlement) and hand it to an [`EventSink`]; a sink must be cheap (no I/O,
//! no waiting: it is on the request's path) and must not keep the borrowed
//! names beyond the call without copying them.

/// One step of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestEvent<'a> {
    /// The tenant's id.
    pub tenant: &'a str,
    /// The model's id as the policy names it; empty when the request was
    /// decided before its model was known (a refusal before the body).
    pub model: &'a str,
    /// What happened.
    pub step: Step<'a>,
}

/// What happened to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Admitted: it goes ahead (and is settled later).
    Admitted,
    /// Refused (a 429) by the limit of this name.
    Refused {
        /// The name of the limit that refused it.
        limit: &'a str,
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
