//! Sluice inside an axum service: one route behind `SluiceLayer`, the
//! policy from an inline TOML string, the counters in this process's
//! memory.
//!
//! ```sh
//! cargo run -p sluice-tower --example axum
//! curl -i http://127.0.0.1:3000/summarize -H 'x-tenant: acme' -d 'Sluice counts requests and tokens'
//! ```
//!
//! `POST /summarize` answers the first ten words of its body, and reports
//! what it used: a word of the text is an input token, a word of the
//! summary an output token. Each tenant may make 3 requests and use 1,000
//! tokens a minute; the fourth request within a minute gets a 429.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, header};
use axum::routing::post;
use axum::{Extension, Router};
use sluice_tower::sluice_core::{Policy, SystemClock};
use sluice_tower::sluice_store::MemoryStore;
use sluice_tower::{
    Admission, ApiError, Classification, Cost, Error, SluiceLayer, TenantFacts, Usage, UsageReport,
};

/// The policy: a tier with one model's limits, and two tenants.
pub const POLICY: &str = r#"
[policy]
name = "summarizer"
default_tier = "free"

[headers]
families = ["requests", "tokens"]

[endpoints]
summarize = "/summarize"

[models.summarizer]

[tiers.free.models]
summarizer = { rpm = 3, tpm = 1_000 }

[tenants.acme]
[tenants.globex]
"#;

/// The most words a summary has.
pub const SUMMARY_WORDS: usize = 10;

/// The longest text taken, in bytes.
pub const MAX_TEXT_BYTES: u64 = 64 * 1024;

/// The service, without limits.
pub fn routes() -> Router {
    Router::new().route("/summarize", post(summarize))
}

/// The service behind its limits.
pub fn app() -> Result<Router, Error> {
    Ok(routes().layer(limits()?))
}

/// The limits: the policy, its tenants, the store, and what each request
/// is.
pub fn limits() -> Result<SluiceLayer<MemoryStore, impl sluice_tower::Classify<Body>>, Error> {
    let config = sluice_tower::sluice_config::parse(POLICY, "summarizer.toml")?;
    let tenants = sluice_tower::tenants(&config)?;
    let policy = Arc::new(config.policy);
    let classify = classifier(&policy, tenants)?;
    let store = MemoryStore::new(SystemClock);
    Ok(SluiceLayer::new(policy, store, classify))
}

/// What a request is: its tenant (here named by a header; behind your own
/// authentication, take it from what that established), the endpoint, the
/// model, and the most it can cost.
fn classifier(
    policy: &Policy,
    tenants: HashMap<String, Arc<TenantFacts>>,
) -> Result<impl Fn(&Request<Body>) -> Classification + Send + Sync + 'static + use<>, Error> {
    let endpoint = sluice_tower::endpoint(policy, "summarize")?;
    let model = policy.model_ref("summarizer");
    let tenants = Arc::new(tenants);
    Ok(move |req: &Request<Body>| {
        let tenant = req.headers().get("x-tenant").and_then(|v| v.to_str().ok());
        let Some(tenant) = tenant.and_then(|id| tenants.get(id)) else {
            return Classification::Refuse(ApiError::invalid_api_key());
        };
        let length = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
        let Some(length) = length.and_then(|v| v.parse::<u64>().ok()) else {
            return Classification::Refuse(ApiError::bad_request(
                "Send the text with a Content-Length.",
                None,
            ));
        };
        if length > MAX_TEXT_BYTES {
            return Classification::Refuse(ApiError::body_too_large(MAX_TEXT_BYTES));
        }
        // A word takes two bytes at least (a letter and a space): the text
        // has at most half its length in words, the summary ten.
        let cost = Cost::tokens(length.div_ceil(2), SUMMARY_WORDS as u64);
        Classification::Admit(Admission::new(tenant.clone(), endpoint).model(model).cost(cost))
    })
}

/// The first words of the text; reports what it used.
async fn summarize(Extension(report): Extension<UsageReport>, text: String) -> String {
    let words = text.split_whitespace();
    let read = words.clone().count();
    let summary: Vec<&str> = words.take(SUMMARY_WORDS).collect();
    report.set(Usage::tokens(read as u64, summary.len() as u64));
    summary.join(" ")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app()?).await?;
    Ok(())
}
