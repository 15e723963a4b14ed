//! The provider documents, replayed through the engine with the presets of
//! `examples/`: each scenario is a table of steps and what must happen.

use std::collections::HashMap;
use std::time::Duration;

use sluice_core::{Cost, EndUser, Outcome, TenantSpec};

use crate::harness::{Harness, StoreFactory, denied_by, preset, status};

#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect {
    Admitted,
    DeniedBy(&'static str),
    TooLarge(&'static str),
    /// Admitted, and the named limit then has this much remaining.
    Remaining(&'static str, u64),
    /// Admitted with no limit applying at all.
    Unlimited,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Step {
    /// `times` requests, each expected to come out as `expect`.
    Admit {
        tenant: &'static str,
        key: Option<&'static str>,
        /// The end user inside the tenant (`None`: the request names none).
        user: Option<&'static str>,
        endpoint: &'static str,
        model: &'static str,
        tokens: u64,
        times: u32,
        expect: Expect,
    },
    /// Let time pass.
    Wait(Duration),
    /// Move a tenant to another tier (a payment method was linked).
    Retier(&'static str, &'static str),
    /// The tier may (or may not) use the model.
    Allowed(&'static str, &'static str, bool),
    /// `users` end users never seen before (`end-user-1`, …) each send
    /// `times` chat requests, each expected to come out as `expect`.
    EndUsers { tenant: &'static str, model: &'static str, users: u32, times: u32, expect: Expect },
}

/// Where a scenario's policy comes from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Source {
    /// A preset of `examples/`.
    Preset(&'static str),
    /// Policy text.
    Text(&'static str),
}

/// id, tier, environment, groups
pub(crate) type TenantRow =
    (&'static str, Option<&'static str>, Option<&'static str>, &'static [&'static str]);

pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    pub(crate) policy: Source,
    pub(crate) start: &'static str,
    pub(crate) tenants: &'static [TenantRow],
    /// key id, labels
    pub(crate) keys: &'static [(&'static str, &'static [(&'static str, &'static str)])],
    pub(crate) steps: &'static [Step],
}

const fn chat(tenant: &'static str, model: &'static str, times: u32, expect: Expect) -> Step {
    Step::Admit { tenant, key: None, user: None, endpoint: "chat", model, tokens: 0, times, expect }
}

/// `times` chat requests of `tenant` for end user `user` (`None`: none).
pub(crate) const fn chat_as(
    tenant: &'static str,
    user: Option<&'static str>,
    model: &'static str,
    times: u32,
    expect: Expect,
) -> Step {
    Step::Admit { tenant, key: None, user, endpoint: "chat", model, tokens: 0, times, expect }
}

const fn tokens(tenant: &'static str, model: &'static str, tokens: u64, expect: Expect) -> Step {
    Step::Admit { tenant, key: None, user: None, endpoint: "chat", model, tokens, times: 1, expect }
}

const fn call(
    tenant: &'static str,
    key: &'static str,
    endpoint: &'static str,
    model: &'static str,
    times: u32,
    expect: Expect,
) -> Step {
    Step::Admit { tenant, key: Some(key), user: None, endpoint, model, tokens: 0, times, expect }
}

pub(crate) const MIN: Duration = Duration::from_secs(60);

use Expect::*;
use Source::*;
use Step::*;

const FREE_V31: &str = "DeepSeek-V3.1";
const SF_MODEL: &str = "sfdc_ai__DefaultGPT4Omni";

static SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "SambaNova free tier: the 21st request of a day on one model is denied, another model still admits",
        policy: Preset("sambanova-cloud.toml"),
        start: "2026-05-01T08:00:00Z",
        tenants: &[("acct", Some("free"), None, &[])],
        keys: &[],
        steps: &[
            // One a minute, so the 20 RPM never binds: the day does.
            chat("acct", FREE_V31, 1, Remaining("DeepSeek-V3.1/rpd", 19)),
            Wait(MIN),
            chat("acct", FREE_V31, 1, Admitted),
            Wait(MIN),
            chat("acct", FREE_V31, 1, Admitted),
            Wait(MIN),
            chat("acct", FREE_V31, 1, Admitted),
            Wait(MIN),
            chat("acct", FREE_V31, 1, Admitted),
            Wait(MIN),
            chat("acct", FREE_V31, 1, Admitted),
            Wait(MIN),
            chat("acct", FREE_V31, 1, Admitted),
            Wait(MIN),
            chat("acct", FREE_V31, 1, Admitted),
            Wait(MIN),
            chat("acct", FREE_V31, 1, Admitted),
            Wait(MIN),
            chat("acct", FREE_V31, 1, Admitted),
            Wait(MIN),
            chat("acct", FREE_V31, 1, Admitted),
            Wait(MIN),
            chat("acct", FREE_V31, 1, Admitted),
            Wait(MIN),
            chat("acct", FREE_V31, 1, Admitted),
            Wait(MIN),
            chat("acct", FREE_V31, 1, Admitted),
            Wait(MIN),
            chat("acct", FREE_V31, 1, Admitted),
            Wait(MIN),
            chat("acct", FREE_V31, 1, Admitted),
            Wait(MIN),
            chat("acct", FREE_V31, 1, Admitted),
            Wait(MIN),
            chat("acct", FREE_V31, 1, Admitted),
            Wait(MIN),
            chat("acct", FREE_V31, 1, Admitted),
            Wait(MIN),
            chat("acct", FREE_V31, 1, Remaining("DeepSeek-V3.1/rpd", 0)),
            Wait(MIN),
            chat("acct", FREE_V31, 1, DeniedBy("DeepSeek-V3.1/rpd")),
            chat("acct", "gpt-oss-120b", 1, Remaining("gpt-oss-120b/rpd", 19)),
            Allowed("free", "MiniMax-M2.7", false),
            // Midnight UTC: a new day.
            Wait(Duration::from_secs(16 * 3600)),
            chat("acct", FREE_V31, 1, Remaining("DeepSeek-V3.1/rpd", 19)),
        ],
    },
    Scenario {
        name: "SambaNova free tier: 200,000 tokens per day per model",
        policy: Preset("sambanova-cloud.toml"),
        start: "2026-05-01T08:00:00Z",
        tenants: &[("acct", Some("free"), None, &[])],
        keys: &[],
        steps: &[
            tokens("acct", FREE_V31, 150_000, Remaining("DeepSeek-V3.1/tpd", 50_000)),
            tokens("acct", FREE_V31, 60_000, DeniedBy("DeepSeek-V3.1/tpd")),
            tokens("acct", FREE_V31, 250_000, TooLarge("DeepSeek-V3.1/tpd")),
            tokens("acct", "gemma-4-31B-it", 60_000, Remaining("gemma-4-31B-it/tpd", 140_000)),
        ],
    },
    Scenario {
        name: "SambaNova developer tier: tokens on one model reduce the 20M daily budget of every model",
        policy: Preset("sambanova-cloud.toml"),
        start: "2026-05-01T08:00:00Z",
        tenants: &[("acct", Some("developer"), None, &[])],
        keys: &[],
        steps: &[
            tokens("acct", FREE_V31, 12_000_000, Remaining("tokens-per-day-all-models", 8_000_000)),
            tokens(
                "acct",
                "MiniMax-M2.7",
                7_999_000,
                Remaining("tokens-per-day-all-models", 1_000),
            ),
            tokens("acct", "gpt-oss-120b", 2_000, DeniedBy("tokens-per-day-all-models")),
            tokens("acct", "gemma-4-31B-it", 1_000, Remaining("tokens-per-day-all-models", 0)),
            tokens("acct", "gemma-4-31B-it", 20_000_001, TooLarge("tokens-per-day-all-models")),
        ],
    },
    Scenario {
        name: "SambaNova: an upgrade from Free to Developer applies at once and keeps today's counts",
        policy: Preset("sambanova-cloud.toml"),
        start: "2026-05-01T08:00:00Z",
        tenants: &[("acct", Some("free"), None, &[])],
        keys: &[],
        steps: &[
            chat("acct", FREE_V31, 20, Admitted),
            chat("acct", FREE_V31, 1, DeniedBy("DeepSeek-V3.1/rpd")),
            Retier("acct", "developer"),
            // 60 RPM now: 20 used in this minute, 40 left; 12,000 RPD with 21 used.
            chat("acct", FREE_V31, 1, Remaining("DeepSeek-V3.1/rpd", 11_979)),
            chat("acct", FREE_V31, 39, Admitted),
            chat("acct", FREE_V31, 1, DeniedBy("DeepSeek-V3.1/rpm")),
            Allowed("developer", "MiniMax-M2.7", true),
        ],
    },
    Scenario {
        name: "SambaNova 2025 page: RPM and RPD per model, whichever is reached first",
        policy: Preset("sambanova-cloud-2025.toml"),
        start: "2026-05-01T08:00:00Z",
        tenants: &[("acct", Some("developer"), None, &[])],
        keys: &[],
        steps: &[
            chat("acct", "Qwen3-32B", 30, Admitted),
            chat("acct", "Qwen3-32B", 1, DeniedBy("Qwen3-32B/rpm")),
            chat("acct", "Meta-Llama-3.1-8B-Instruct", 1440, Admitted),
            chat(
                "acct",
                "Meta-Llama-3.1-8B-Instruct",
                1,
                DeniedBy("Meta-Llama-3.1-8B-Instruct/rpm"),
            ),
        ],
    },
    Scenario {
        name: "Llama API: two keys of one team share 10 RPM; another team is untouched",
        policy: Preset("llama-api.toml"),
        start: "2026-05-01T08:00:00Z",
        tenants: &[("team-a", None, None, &[]), ("team-b", None, None, &[])],
        keys: &[("a1", &[]), ("a2", &[]), ("b1", &[])],
        steps: &[
            call("team-a", "a1", "chat", "Llama-3.3-70B-Instruct", 5, Admitted),
            call("team-a", "a2", "chat", "Llama-3.3-70B-Instruct", 5, Admitted),
            call(
                "team-a",
                "a2",
                "chat",
                "Llama-3.3-70B-Instruct",
                1,
                DeniedBy("Llama-3.3-70B-Instruct/rpm"),
            ),
            call(
                "team-a",
                "a1",
                "chat",
                "Llama-3.3-70B-Instruct",
                1,
                DeniedBy("Llama-3.3-70B-Instruct/rpm"),
            ),
            call(
                "team-b",
                "b1",
                "chat",
                "Llama-3.3-70B-Instruct",
                1,
                Remaining("Llama-3.3-70B-Instruct/rpm", 9),
            ),
            // Per model: the team's other models have their own 10.
            call(
                "team-a",
                "a1",
                "chat",
                "Llama-3.3-8B-Instruct",
                1,
                Remaining("Llama-3.3-8B-Instruct/rpm", 9),
            ),
            // "errors stop once the rate is no longer exceeded": one refills in 6 s.
            Wait(Duration::from_secs(6)),
            call("team-a", "a2", "chat", "Llama-3.3-70B-Instruct", 1, Admitted),
        ],
    },
    Scenario {
        name: "Llama API: 250,000 tokens per minute per team",
        policy: Preset("llama-api.toml"),
        start: "2026-05-01T08:00:00Z",
        tenants: &[("team-a", None, None, &[])],
        keys: &[],
        steps: &[
            tokens(
                "team-a",
                "Llama-4-Scout-17B-16E-Instruct-FP8",
                200_000,
                Remaining("Llama-4-Scout-17B-16E-Instruct-FP8/tpm", 50_000),
            ),
            tokens(
                "team-a",
                "Llama-4-Scout-17B-16E-Instruct-FP8",
                60_000,
                DeniedBy("Llama-4-Scout-17B-16E-Instruct-FP8/tpm"),
            ),
            Wait(Duration::from_secs(3)),
            // 12,500 tokens came back in 3 s (250,000 a minute).
            tokens(
                "team-a",
                "Llama-4-Scout-17B-16E-Instruct-FP8",
                60_000,
                Remaining("Llama-4-Scout-17B-16E-Instruct-FP8/tpm", 2_500),
            ),
        ],
    },
    Scenario {
        name: "Salesforce: a sandbox org's 201st Apex request in an hour is denied; its REST requests are not",
        policy: Preset("salesforce-models-api.toml"),
        start: "2026-05-01T08:00:00Z",
        tenants: &[("sandbox-org", None, Some("sandbox"), &[])],
        keys: &[("apex", &[("channel", "apex")]), ("rest", &[("channel", "rest")])],
        steps: &[
            call("sandbox-org", "apex", "chat-generations", SF_MODEL, 200, Admitted),
            call("sandbox-org", "apex", "embeddings", SF_MODEL, 1, DeniedBy("sandbox-apex-rph")),
            call(
                "sandbox-org",
                "rest",
                "chat-generations",
                SF_MODEL,
                1,
                Remaining("generation-rpm", 499),
            ),
            Wait(Duration::from_secs(3600)),
            call(
                "sandbox-org",
                "apex",
                "chat-generations",
                SF_MODEL,
                1,
                Remaining("sandbox-apex-rph", 199),
            ),
        ],
    },
    Scenario {
        name: "Salesforce: demo and trial orgs get 150 Apex requests per hour",
        policy: Preset("salesforce-models-api.toml"),
        start: "2026-05-01T08:00:00Z",
        tenants: &[("demo-org", None, Some("demo"), &[]), ("trial-org", None, Some("trial"), &[])],
        keys: &[("apex", &[("channel", "apex")])],
        steps: &[
            call("demo-org", "apex", "generations", SF_MODEL, 150, Admitted),
            call("demo-org", "apex", "generations", SF_MODEL, 1, DeniedBy("demo-trial-apex-rph")),
            call("trial-org", "apex", "generations", SF_MODEL, 150, Admitted),
            call("trial-org", "apex", "generations", SF_MODEL, 1, DeniedBy("demo-trial-apex-rph")),
        ],
    },
    Scenario {
        name: "Salesforce: embeddings have their own 1,000 RPM beside generation's 500, per endpoint",
        policy: Preset("salesforce-models-api.toml"),
        start: "2026-05-01T08:00:00Z",
        tenants: &[("prod-org", None, Some("production"), &[])],
        keys: &[("apex", &[("channel", "apex")])],
        steps: &[
            call("prod-org", "apex", "chat-generations", SF_MODEL, 500, Admitted),
            call("prod-org", "apex", "chat-generations", SF_MODEL, 1, DeniedBy("generation-rpm")),
            call("prod-org", "apex", "generations", SF_MODEL, 1, Remaining("generation-rpm", 499)),
            call(
                "prod-org",
                "apex",
                "embeddings",
                "sfdc_ai__DefaultOpenAITextEmbeddingAda_002",
                1000,
                Admitted,
            ),
            call(
                "prod-org",
                "apex",
                "embeddings",
                "sfdc_ai__DefaultOpenAITextEmbeddingAda_002",
                1,
                DeniedBy("embeddings-feedback-rpm"),
            ),
            call(
                "prod-org",
                "apex",
                "feedback",
                SF_MODEL,
                1,
                Remaining("embeddings-feedback-rpm", 999),
            ),
        ],
    },
    Scenario {
        name: "Salesforce: a model whose RPM differs; production Apex has no hourly limit",
        policy: Preset("salesforce-models-api.toml"),
        start: "2026-05-01T08:00:00Z",
        tenants: &[("prod-org", None, Some("production"), &[])],
        keys: &[("apex", &[("channel", "apex")])],
        steps: &[
            call(
                "prod-org",
                "apex",
                "chat-generations",
                "sfdc_ai__DefaultBedrockAnthropicClaude3Haiku",
                250,
                Admitted,
            ),
            call(
                "prod-org",
                "apex",
                "chat-generations",
                "sfdc_ai__DefaultBedrockAnthropicClaude3Haiku",
                1,
                DeniedBy("model-rpm"),
            ),
            call(
                "prod-org",
                "apex",
                "chat-generations",
                SF_MODEL,
                1,
                Remaining("generation-rpm", 499),
            ),
        ],
    },
    Scenario {
        name: "Salesforce: the Agentforce reasoning engine is not limited in a sandbox",
        policy: Preset("salesforce-models-api.toml"),
        start: "2026-05-01T08:00:00Z",
        tenants: &[
            ("sandbox-org", None, Some("sandbox"), &[]),
            ("prod-org", None, Some("production"), &[]),
        ],
        keys: &[("agentforce", &[("channel", "apex"), ("caller", "agentforce-reasoning-engine")])],
        steps: &[
            call("sandbox-org", "agentforce", "chat-generations", SF_MODEL, 600, Unlimited),
            // Only in a sandbox: in production the same caller is limited.
            call(
                "prod-org",
                "agentforce",
                "chat-generations",
                SF_MODEL,
                1,
                Remaining("generation-rpm", 499),
            ),
        ],
    },
    Scenario {
        name: "SambaStack: no limits until an administrator applies them to a user group",
        policy: Preset("sambastack.toml"),
        start: "2026-05-01T08:00:00Z",
        tenants: &[
            ("alice", None, None, &[]),
            ("intern", None, None, &["interns"]),
            ("batch", None, None, &["batch-jobs"]),
        ],
        keys: &[],
        steps: &[
            chat("alice", "DeepSeek-V3.1", 500, Unlimited),
            chat("intern", "DeepSeek-V3.1", 5, Admitted),
            chat("intern", "DeepSeek-V3.1", 1, DeniedBy("DeepSeek-V3.1/rpm")),
            chat("intern", "gpt-oss-120b", 1, Remaining("gpt-oss-120b/rpd", 499)),
            tokens("batch", "gpt-oss-120b", 40_000_000, Remaining("tokens-per-day", 10_000_000)),
        ],
    },
];

pub(crate) fn run_scenario<F: StoreFactory>(f: &F, s: &Scenario) {
    let policy = match s.policy {
        Preset(name) => preset(name),
        Text(text) => crate::harness::policy(text),
    };
    let h = Harness::new(f, policy, s.start);
    let mut specs: HashMap<&str, TenantSpec> = HashMap::new();
    for &(id, tier, env, groups) in s.tenants {
        specs.insert(
            id,
            TenantSpec {
                id: id.into(),
                tier: tier.map(Into::into),
                environment: env.map(Into::into),
                groups: groups.iter().map(|g| (*g).into()).collect(),
                ..TenantSpec::default()
            },
        );
    }
    let keys: HashMap<&str, sluice_core::KeyFacts> =
        s.keys.iter().map(|&(id, labels)| (id, h.key(id, labels))).collect();
    for (i, step) in s.steps.iter().enumerate() {
        let at = format!("{}: step {} ({step:?})", s.name, i + 1);
        match *step {
            Wait(d) => h.advance(d),
            Retier(t, tier) => {
                if let Some(spec) = specs.get_mut(t) {
                    spec.tier = Some(tier.into());
                }
            }
            Allowed(tier, model, allowed) => {
                let tid = h.policy.tier(tier).unwrap_or_else(|| panic!("{at}: no tier"));
                assert_eq!(h.policy.model_allowed(tid, h.policy.model_ref(model)), allowed, "{at}");
            }
            Admit { tenant, key, user, endpoint, model, tokens, times, expect } => {
                let facts = h.tenant(&specs[tenant]);
                let key = key.map(|k| &keys[k]);
                for n in 0..times {
                    let mut req = h.request(&facts, key, endpoint, model, Cost::tokens(tokens, 0));
                    req.end_user = user.map_or(EndUser::NONE, EndUser::of);
                    let at = format!("{at}, request {} of {times}", n + 1);
                    check(&h, &h.admit_req(&req), expect, &at);
                }
            }
            EndUsers { tenant, model, users, times, expect } => {
                let facts = h.tenant(&specs[tenant]);
                for u in 1..=users {
                    let user = format!("end-user-{u}");
                    for n in 0..times {
                        let mut req = h.request(&facts, None, "chat", model, Cost::REQUEST);
                        req.end_user = EndUser::of(&user);
                        let at = format!("{at}, {user}, request {} of {times}", n + 1);
                        check(&h, &h.admit_req(&req), expect, &at);
                    }
                }
            }
        }
    }
}

/// Whether decision `d` came out as `expect`.
fn check<S: sluice_core::CounterStore + Clone>(
    h: &Harness<S>,
    d: &sluice_core::Decision,
    expect: Expect,
    at: &str,
) {
    match expect {
        Admitted => assert!(d.is_admitted(), "{at}: {d:?}"),
        Unlimited => {
            assert!(d.is_admitted() && d.statuses.is_empty(), "{at}: {d:?}");
        }
        DeniedBy(limit) => {
            assert!(matches!(d.outcome, Outcome::Limited { .. }), "{at}: {d:?}");
            assert_eq!(denied_by(&h.policy, d), limit, "{at}");
        }
        TooLarge(limit) => {
            assert!(matches!(d.outcome, Outcome::TooLarge { .. }), "{at}: {d:?}");
            assert_eq!(denied_by(&h.policy, d), limit, "{at}");
        }
        Remaining(limit, left) => {
            assert!(d.is_admitted(), "{at}: {d:?}");
            assert_eq!(status(&h.policy, d, limit).remaining, left, "{at}");
        }
    }
}

/// Every scenario, on one store.
pub fn provider_documents_replay<F: StoreFactory>(f: &F) {
    for s in SCENARIOS {
        run_scenario(f, s);
    }
}
