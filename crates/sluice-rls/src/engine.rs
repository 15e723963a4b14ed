//! One decision, whichever API asked: request facts -> tenant, key, model,
//! endpoint -> plan -> one all-or-nothing admission in the counter store.
//!
//! Everything a caller can get wrong is refused here, before the store is
//! touched, so bad input never charges anyone.

use std::borrow::Cow;
use std::sync::Arc;

use sluice_core::{
    Cost, CounterStore, Decision, EndUser, EndpointId, Fact, Instant, ModelId, ModelRef, Outcome,
    RequestEvent, Step,
};
use sluice_llm::error::ApiError;
use sluice_llm::headers::{HeaderOptions, render_headers};
use sluice_served::Runtime;
use sluice_served::runtime::KeyEntry;

/// Echoed client strings are cut to this many bytes.
const MAX_ECHO: usize = 128;

/// The facts of one request, as a caller gives them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Query<'a> {
    /// The tenant's id.
    pub tenant: Option<&'a str>,
    /// An API key (its secret, or `Bearer <secret>`), looked up by hash.
    pub api_key: Option<&'a str>,
    /// The model id.
    pub model: Option<&'a str>,
    /// The endpoint's name or request path (the configured default when
    /// absent).
    pub endpoint: Option<&'a str>,
    /// What the request is expected to cost (requests always count one).
    pub cost: Cost,
    /// The end user inside the tenant (OpenAI's `user`), if any: hashed,
    /// never kept.
    pub user: Option<&'a str>,
    /// The longest the caller lets a refused check wait for room (the
    /// policy's `max_wait` bounds it; zero: answer at once, as gRPC does).
    pub max_wait: std::time::Duration,
}

/// Why a decision could not be made. None of these charges anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    /// An RLS domain this service does not answer.
    #[error("unknown domain `{domain}`; this service answers {known}")]
    UnknownDomain {
        /// The domain asked for.
        domain: String,
        /// The configured ones.
        known: String,
    },
    /// No fact names a tenant.
    #[error(
        "no tenant: give the tenant id (descriptor key `{tenant_key}`) or an API key (descriptor key `{key_key}`)"
    )]
    NoTenant {
        /// The descriptor key of tenant ids.
        tenant_key: String,
        /// The descriptor key of API keys.
        key_key: String,
    },
    /// A tenant id that is not known.
    #[error("tenant `{0}` is not known")]
    UnknownTenant(String),
    /// An API key that is not known (never echoed).
    #[error("the API key is not known")]
    UnknownKey,
    /// An API key of another tenant than the one named.
    #[error("the API key does not belong to tenant `{0}`")]
    KeyOfAnotherTenant(String),
    /// Two descriptors that name different values for one fact.
    #[error(
        "the descriptors disagree on the {what}: `{first}` and `{second}`; one call decides one request"
    )]
    Conflict {
        /// Which fact.
        what: &'static str,
        /// One value.
        first: String,
        /// The other.
        second: String,
    },
    /// No descriptor names the model (gRPC).
    #[error(
        "the request names no model (descriptor key `{model_key}`), so its per-model limits cannot be checked"
    )]
    NoModel {
        /// The descriptor key of models.
        model_key: String,
    },
    /// A model the policy does not have, or that the tenant's tier may not
    /// use.
    #[error("the model `{0}` does not exist or the tenant may not use it")]
    UnknownModel(String),
    /// An endpoint that is neither a name nor a path of the policy.
    #[error("endpoint `{endpoint}` is not known; known: {known}")]
    UnknownEndpoint {
        /// The endpoint asked for.
        endpoint: String,
        /// The policy's endpoints.
        known: String,
    },
    /// A cost above `decisions.max_cost`, negative, or not a whole number.
    #[error("{0}")]
    BadCost(String),
    /// No end user and the policy requires one (`end_users.required`), or
    /// one longer than `end_users.max_length` (never echoed).
    #[error("{}", .0.message("`user`"))]
    EndUser(sluice_config::end_users::EndUserError),
    /// Malformed input (the JSON API).
    #[error("{message}")]
    Malformed {
        /// What is wrong.
        message: String,
        /// The field at fault.
        param: Option<&'static str>,
    },
    /// The counter store did not answer (and the policy fails closed).
    #[error("the counter store is unavailable: {0}")]
    Unavailable(String),
}

impl DecisionError {
    /// The JSON API's answer: status and OpenAI-shaped body.
    pub fn api_error(&self) -> ApiError {
        let message = self.to_string();
        match self {
            Self::UnknownModel(m) => ApiError::model_not_found(m),
            Self::NoModel { .. } => ApiError::bad_request(message, Some("model".into())),
            Self::Unavailable(_) => ApiError::store_unavailable(),
            Self::UnknownKey => {
                let mut e = ApiError::bad_request(message, Some("api_key".into()));
                e.code = Some(Cow::Borrowed("invalid_api_key"));
                e
            }
            Self::UnknownDomain { .. } => ApiError::bad_request(message, Some("domain".into())),
            Self::NoTenant { .. } | Self::UnknownTenant(_) | Self::KeyOfAnotherTenant(_) => {
                ApiError::bad_request(message, Some("tenant".into()))
            }
            Self::UnknownEndpoint { .. } => ApiError::bad_request(message, Some("endpoint".into())),
            Self::EndUser(_) => ApiError::bad_request(message, Some("user".into())),
            Self::Conflict { .. } | Self::BadCost(_) => ApiError::bad_request(message, None),
            Self::Malformed { param, .. } => {
                ApiError::bad_request(message, param.map(str::to_owned))
            }
        }
    }

    /// Whether the request's facts are at fault (no tenant, an unknown key,
    /// tenant, model or endpoint, facts that disagree), rather than the
    /// caller's setup (an unknown domain, a bad cost) or the store.
    pub fn is_about_the_request(&self) -> bool {
        matches!(
            self,
            Self::NoTenant { .. }
                | Self::UnknownTenant(_)
                | Self::UnknownKey
                | Self::KeyOfAnotherTenant(_)
                | Self::Conflict { .. }
                | Self::NoModel { .. }
                | Self::UnknownModel(_)
                | Self::UnknownEndpoint { .. }
                | Self::EndUser(_)
        )
    }

    /// The gRPC status: INVALID_ARGUMENT for bad input, UNAVAILABLE when the
    /// store failed (Envoy's `failure_mode_deny` then decides).
    pub fn grpc_status(&self) -> tonic::Status {
        match self {
            Self::Unavailable(_) => tonic::Status::unavailable(self.to_string()),
            _ => tonic::Status::invalid_argument(self.to_string()),
        }
    }
}

/// A client string cut to [`MAX_ECHO`] bytes.
pub(crate) fn echo(s: &str) -> String {
    if s.len() <= MAX_ECHO {
        return s.to_owned();
    }
    let mut end = MAX_ECHO;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Which request facts a limit looks at (split by, or conditioned on): a
/// descriptor that carries them all is one the limit is relevant to.
pub(crate) mod needs {
    /// The model (or its class).
    pub const MODEL: u8 = 1;
    /// The endpoint.
    pub const ENDPOINT: u8 = 2;
    /// The API key (or a key label).
    pub const KEY: u8 = 4;
    /// The end user.
    pub const USER: u8 = 8;
}

/// What is derived once per runtime: what each limit looks at.
pub(crate) struct RuntimeIndex {
    pub(crate) runtime: Arc<Runtime>,
    needs: Vec<u8>,
}

impl RuntimeIndex {
    pub(crate) fn new(runtime: Arc<Runtime>) -> Self {
        let mut needs = vec![0; runtime.policy.limits().count()];
        for (id, l) in runtime.policy.limits() {
            let facts = l.by.iter().chain(l.when_spec.iter().map(|c| &c.fact));
            let n = facts.fold(0, |n, f| {
                n | match f {
                    Fact::Model | Fact::ModelClass => needs::MODEL,
                    Fact::Endpoint => needs::ENDPOINT,
                    Fact::Key | Fact::KeyLabel(_) => needs::KEY,
                    Fact::User => needs::USER,
                    _ => 0,
                }
            });
            if let Some(slot) = needs.get_mut(id.index()) {
                *slot = n;
            }
        }
        Self { runtime, needs }
    }

    /// What limit `index` looks at.
    pub(crate) fn needs(&self, index: usize) -> u8 {
        self.needs.get(index).copied().unwrap_or(0)
    }
}

/// What an admission answered, with what is needed to render it.
pub struct Answer {
    /// The runtime it was decided under.
    pub(crate) index: Arc<RuntimeIndex>,
    /// When.
    pub now: Instant,
    /// The decision.
    pub decision: Decision,
    /// The tenant's index in the runtime.
    pub tenant: usize,
    /// What messages name: the model, else the endpoint.
    pub subject: String,
    /// The model, when the request named one.
    pub(crate) model: Option<ModelId>,
    /// How long the check waited for room (`max_wait`; zero if it did not).
    pub waited: std::time::Duration,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("now", &self.now)
            .field("decision", &self.decision)
            .field("tenant", &self.tenant)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// How a decision went, as metrics and the JSON API name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecisionKind {
    /// Admitted (and charged).
    Admitted,
    /// Denied until a limit frees up.
    Limited,
    /// Denied for good: the cost exceeds a limit's whole capacity.
    TooLarge,
}

impl DecisionKind {
    /// `admitted`, `limited`, `too_large`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admitted => "admitted",
            Self::Limited => "limited",
            Self::TooLarge => "too_large",
        }
    }
}

impl Answer {
    /// The runtime it was decided under.
    pub fn runtime(&self) -> &Runtime {
        &self.index.runtime
    }

    /// Admitted, limited, or too large.
    pub fn kind(&self) -> DecisionKind {
        match self.decision.outcome {
            Outcome::Admitted { .. } => DecisionKind::Admitted,
            Outcome::Limited { .. } => DecisionKind::Limited,
            Outcome::TooLarge { .. } => DecisionKind::TooLarge,
        }
    }

    /// The event the usage history (and whatever else counts requests) is
    /// told: admitted, or refused by a limit (`None` if the runtime has
    /// lost the tenant or the limit).
    pub fn event(&self) -> Option<RequestEvent<'_>> {
        let rt = self.runtime();
        let tenant = &rt.tenants.get(self.tenant)?.facts;
        let model = self.model.and_then(|m| rt.policy.model_info(m));
        let step = match self.decision.denied_by() {
            None => Step::Admitted,
            Some(s) => Step::Refused { limit: &rt.policy.limit(s.limit)?.name },
        };
        Some(RequestEvent {
            tenant: tenant.shared_id(),
            tenant_hash: tenant.hash(),
            model: model.map_or(RequestEvent::no_model(), |m| &m.name),
            model_hash: model.map_or(0, |m| m.hash),
            step,
        })
    }

    /// The wire contract's headers (`x-ratelimit-*`, `retry-after`, …).
    pub fn headers(&self) -> Vec<(http::HeaderName, http::HeaderValue)> {
        let rt = self.runtime();
        let opts = HeaderOptions { no_retry_after: rt.settings.no_retry_after };
        render_headers(&self.decision, &rt.policy, self.now, &opts)
    }

    /// The 429 error a client of the asking gateway should see (`None` when
    /// admitted).
    pub fn error(&self) -> Option<ApiError> {
        if self.decision.is_admitted() {
            return None;
        }
        let rt = self.runtime();
        let tenant = rt.tenants.get(self.tenant).map_or("", |t| t.facts.id());
        Some(
            ApiError::rate_limited(&self.decision, &rt.policy, &self.subject, tenant, self.now)
                .unwrap_or_else(ApiError::insufficient_quota),
        )
    }
}

/// Resolves a query against a runtime: who, which key, which model and
/// endpoint. Pure: no store, no clock.
pub(crate) struct Resolved<'r> {
    pub(crate) tenant: usize,
    pub(crate) key: Option<&'r KeyEntry>,
    pub(crate) model: ModelRef,
    pub(crate) endpoint: EndpointId,
    pub(crate) subject: String,
    pub(crate) end_user: EndUser,
}

pub(crate) fn resolve<'r>(
    index: &'r RuntimeIndex,
    q: &Query<'_>,
    config: &sluice_config::decisions::DecisionsConfig,
    now: Instant,
) -> Result<Resolved<'r>, DecisionError> {
    let rt = &*index.runtime;
    let key = match q.api_key {
        Some(k) => {
            let secret = strip_bearer(k);
            let key = rt.keys.find(secret).ok_or(DecisionError::UnknownKey)?;
            if key.expires.is_some_and(|e| now >= e) {
                return Err(DecisionError::UnknownKey);
            }
            Some(key)
        }
        None => None,
    };
    let tenant = match (q.tenant, key) {
        (Some(id), key) => {
            let t =
                *rt.tenant_index.get(id).ok_or_else(|| DecisionError::UnknownTenant(echo(id)))?;
            if key.is_some_and(|k| k.tenant != t) {
                return Err(DecisionError::KeyOfAnotherTenant(echo(id)));
            }
            t
        }
        (None, Some(k)) => k.tenant,
        (None, None) => {
            return Err(DecisionError::NoTenant {
                tenant_key: config.descriptors.tenant.clone(),
                key_key: config.descriptors.api_key.clone(),
            });
        }
    };
    let facts = &rt.tenants.get(tenant).ok_or(DecisionError::UnknownKey)?.facts;
    let endpoint_name = q.endpoint.unwrap_or(&config.default_endpoint);
    let endpoint = rt
        .policy
        .endpoint(endpoint_name)
        .or_else(|| {
            let path = endpoint_name.split('?').next().unwrap_or(endpoint_name);
            rt.endpoints.get(path).map(|e| e.id)
        })
        .ok_or_else(|| DecisionError::UnknownEndpoint {
            endpoint: echo(endpoint_name),
            known: rt
                .policy
                .endpoints()
                .map(|(_, e)| format!("`{}`", e.name))
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let (model, subject) = match q.model {
        Some(name) => {
            let m = rt.policy.model_ref(name);
            if m.id.is_none() || !rt.policy.model_allowed(facts.tier(), m) {
                return Err(DecisionError::UnknownModel(echo(name)));
            }
            (m, name.to_owned())
        }
        None => (
            ModelRef::NONE,
            rt.policy.endpoint_info(endpoint).map_or_else(String::new, |e| e.name.to_string()),
        ),
    };
    let end_user = rt
        .settings
        .end_users
        .end_user(q.user.map(str::as_bytes))
        .map_err(DecisionError::EndUser)?;
    Ok(Resolved { tenant, key, model, endpoint, subject, end_user })
}

/// `Bearer <secret>` or the secret itself.
fn strip_bearer(value: &str) -> &str {
    let v = value.trim();
    match v.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => v,
    }
}

/// Checks a cost against `max_cost`.
pub(crate) fn check_cost(cost: Cost, max: u64) -> Result<(), DecisionError> {
    let total = cost.input_tokens.saturating_add(cost.output_tokens);
    if total > max {
        return Err(DecisionError::BadCost(format!(
            "a cost of {total} tokens is more than one decision may carry ({max} at most); send the request's real estimate"
        )));
    }
    Ok(())
}

/// Plans and admits a resolved query at `now`.
/// Where a refused check may wait for room: the service's lines, its
/// clock, and how long the caller allows.
pub(crate) struct Waiting<'w, C: ?Sized> {
    pub(crate) queue: &'w sluice_store::WaitQueue,
    pub(crate) clock: &'w C,
    pub(crate) max_wait: std::time::Duration,
}

pub(crate) async fn admit<S: CounterStore, C: sluice_core::Clock + ?Sized>(
    store: &S,
    now: Instant,
    index: Arc<RuntimeIndex>,
    r: Resolved<'_>,
    cost: Cost,
    waiting: Waiting<'_, C>,
) -> Result<Answer, DecisionError> {
    let rt = &index.runtime;
    let Some(tenant) = rt.tenants.get(r.tenant) else {
        return Err(DecisionError::UnknownKey);
    };
    let ask = sluice_core::Ask {
        tenant: &tenant.facts,
        key: r.key.map(|k| &k.facts),
        endpoint: r.endpoint,
        model: r.model,
        cost,
        end_user: r.end_user,
    };
    let plan = rt.policy.plan(&ask, now);
    let failed = |e: S::Error| {
        tracing::error!(error = %e, "counter store failed");
        DecisionError::Unavailable(e.to_string())
    };
    let mut decision = store.admit(&plan).await.map_err(failed)?;
    let mut now = now;
    let mut waited = std::time::Duration::ZERO;
    // Refused by limits that allow a short wait, and the caller waits too:
    // in the tenant's line, as the proxy does.
    let wait = rt.policy.allowed_wait(tenant.facts.tier(), &decision).min(waiting.max_wait);
    if !decision.is_admitted() && !wait.is_zero() {
        let who = sluice_store::Waiter { tenant: tenant.facts.hash(), bytes: 0, wait };
        let w = waiting
            .queue
            .wait_for_room(who, (store, waiting.clock, &sluice_store::TokioPause), decision, |at| {
                rt.policy.plan(&ask, at)
            })
            .await
            .map_err(failed)?;
        decision = w.decision;
        waited = w.waited;
        now = waiting.clock.now();
    }
    let (tenant, subject, model) = (r.tenant, r.subject, r.model.id);
    Ok(Answer { index, now, decision, tenant, subject, model, waited })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_is_optional() {
        assert_eq!(strip_bearer("Bearer sk-1"), "sk-1");
        assert_eq!(strip_bearer("bearer   sk-1 "), "sk-1");
        assert_eq!(strip_bearer("sk-1"), "sk-1");
    }

    #[test]
    fn echo_is_bounded() {
        let long = "é".repeat(200);
        let e = echo(&long);
        assert!(e.len() <= MAX_ECHO + 3, "{}", e.len());
        assert!(e.ends_with('…'));
        assert_eq!(echo("m"), "m");
    }

    #[test]
    fn costs_over_the_maximum_are_refused() {
        assert!(check_cost(Cost::tokens(10, 10), 20).is_ok());
        let e = check_cost(Cost::tokens(10, 11), 20).unwrap_err();
        assert!(e.to_string().starts_with("a cost of 21 tokens is more than"), "{e}");
        assert!(check_cost(Cost::tokens(u64::MAX, u64::MAX), 20).is_err());
    }
}
