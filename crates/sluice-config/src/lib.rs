//! The policy file: TOML -> raw serde types -> a validated [`Config`].
//!
//! Following tensorzero's pattern, nothing the file says is trusted until it
//! has been converted: [`raw`] mirrors the file (unknown fields refused), and
//! validation checks every reference while the file's positions are still
//! known, so each error names the file, the line, the field, and what would be
//! accepted. A policy that loads is one the engine can run.
//!
//! ```
//! let text = r#"
//! [models."Llama-3.3-70B-Instruct"]
//!
//! [tiers.free.models]
//! "Llama-3.3-70B-Instruct" = { rpm = 10, tpm = 250000 }
//! "#;
//! let config = sluice_config::parse(text, "example.toml").unwrap();
//! assert_eq!(config.policy.limits().count(), 2);
//!
//! let err = sluice_config::parse("[tiers.free.models]\n\"nope\" = { rpm = 1 }\n", "bad.toml").unwrap_err();
//! assert!(err.to_string().starts_with("bad.toml:2:10: tiers.free.models.nope: model `nope` is not in [models]"));
//! ```
#![forbid(unsafe_code)]

pub mod counting;
pub mod decisions;
pub mod end_users;
mod error;
/// The `policy` fuzz target's body (`fuzz/`), which a test also runs on the
/// seeds (feature `fuzzing` or tests only; not an API).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod history;
pub mod listener;
pub mod observe;
pub mod raw;
pub mod report;
pub mod store;
mod validate;

use std::path::Path;

use sluice_core::{KeySpec, Policy, TenantSpec};

pub use error::{ConfigError, ConfigErrors};
pub use validate::DEFAULT_ENDPOINT_PATHS;

use error::Locator;

/// A validated policy file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The compiled policy.
    pub policy: Policy,
    /// What the policy describes.
    pub description: Option<String>,
    /// Where its numbers come from.
    pub sources: Vec<String>,
    /// Each endpoint and its request path, in file order.
    pub endpoint_paths: Vec<(String, Option<String>)>,
    /// Model -> developer, for tables.
    pub developers: Vec<(String, String)>,
    /// Tenants written in the file.
    pub tenants: Vec<TenantEntry>,
    /// The gateway's settings (`[server]`, `[tokens]`, `[upstreams]`).
    pub gateway: gateway::GatewayConfig,
    /// The decision service (`[decisions]`), when the file has one.
    pub decisions: Option<decisions::DecisionsConfig>,
}

impl Config {
    /// A file with `[decisions]` and no `[upstreams]`: Sluice runs the
    /// decision service alone (no model is proxied, and that is not an
    /// error).
    pub fn decisions_only(&self) -> bool {
        self.decisions.is_some() && self.gateway.upstreams.is_empty()
    }
}

/// A tenant from the file, with its keys.
#[derive(Debug, Clone)]
pub struct TenantEntry {
    /// The tenant.
    pub spec: TenantSpec,
    /// A display name.
    pub name: Option<String>,
    /// Its keys.
    pub keys: Vec<KeyEntry>,
}

/// A key from the file: never the secret, only its hash.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// Id and labels.
    pub spec: KeySpec,
    /// `sha256:<hex>`, lowercase.
    pub hash: String,
}

/// Reads and validates a policy file.
pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigErrors> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    parse(&text, path)
}

/// Validates policy text; `file` names it in errors.
pub fn parse(text: &str, file: impl AsRef<Path>) -> Result<Config, ConfigErrors> {
    let file = file.as_ref();
    let loc = Locator::new(file, text);
    let de = toml::Deserializer::parse(text)
        .map_err(|e| ConfigErrors(vec![loc.at(e.span(), "", toml_message(e.message()))]))?;
    let raw: raw::RawFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = clean_path(&e.path().to_string());
        ConfigErrors(vec![loc.at(e.inner().span(), &field, toml_message(e.inner().message()))])
    })?;
    validate::Validator::new(loc).run(&raw).map_err(ConfigErrors)
}

fn clean_path(path: &str) -> String {
    let p = path.replace(".$__serde_spanned_private_value", "");
    if p == "." { String::new() } else { p }
}

fn toml_message(m: &str) -> String {
    let m = m.trim();
    if m.starts_with("data did not match any variant of untagged enum RawOverride") {
        return "an override is an amount (`\"<limit>\" = 2000`) or a table (`{ amount = 2000, until = \"2026-12-31\" }`)".into();
    }
    if m.starts_with("data did not match any variant of untagged enum OneOrMany") {
        return "expected a string or a list of strings".into();
    }
    if m.starts_with("data did not match any variant of untagged enum RawUnless") {
        return "expected a condition table (`{ environment = \"sandbox\" }`) or a list of them"
            .into();
    }
    if m.starts_with("data did not match any variant of untagged enum RawEndpoint") {
        return "an endpoint is a path (`chat = \"/v1/chat/completions\"`) or a table with `path`"
            .into();
    }
    for (expected, what) in [
        ("expected i64", "a whole number"),
        ("expected u64", "a whole number"),
        ("expected f64", "a number"),
        ("expected a number", "a number"),
        ("expected a string", "a string (in quotes)"),
        ("expected a boolean", "true or false"),
    ] {
        if let Some(rest) = m.strip_prefix("invalid type: ")
            && let Some(got) = rest.strip_suffix(expected)
        {
            return format!("expected {what}, got {}", got.trim_end().trim_end_matches(','));
        }
    }
    if let Some(rest) = m.strip_prefix("invalid value: integer `")
        && rest.contains("expected u64")
    {
        return format!(
            "must be a positive whole number, got {}",
            rest.split('`').next().unwrap_or("")
        );
    }
    m.to_owned()
}

/// A tenant of the file resolved against its policy, with its keys.
pub type ResolvedTenant<'a> =
    (sluice_core::TenantFacts, Vec<(sluice_core::KeyFacts, &'a KeyEntry)>);

/// Reads the tenants of a file resolved against its policy: what the gateway
/// serves until a tenant store exists.
pub fn resolve_tenants(
    config: &Config,
) -> Result<Vec<ResolvedTenant<'_>>, sluice_core::FactsError> {
    config
        .tenants
        .iter()
        .map(|t| {
            let facts = config.policy.tenant(&t.spec)?;
            let keys = t
                .keys
                .iter()
                .map(|k| Ok((config.policy.key(&k.spec)?, k)))
                .collect::<Result<Vec<_>, sluice_core::FactsError>>()?;
            Ok((facts, keys))
        })
        .collect()
}

/// Whether `policy` knows the endpoint `name`.
pub fn has_endpoint(policy: &Policy, name: &str) -> bool {
    policy.endpoint(name).is_some()
}
