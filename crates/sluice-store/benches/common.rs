//! The benchmark workload: the SambaNova Developer preset, with a per-model
//! tokens-per-day limit added so that one request touches four limits (RPM,
//! RPD and TPD of its model, and the tier's 20M tokens per day across models),
//! over 10,000 tenants and 6 models.

use std::path::PathBuf;

use sluice_core::{Ask, Cost, EndpointId, ModelRef, Policy, TenantFacts, TenantSpec};

pub const TENANTS: usize = 10_000;

pub struct Workload {
    pub policy: Policy,
    pub tenants: Vec<TenantFacts>,
    pub models: Vec<ModelRef>,
    pub chat: EndpointId,
}

impl Workload {
    pub fn new(n_tenants: usize) -> Self {
        Self::build(n_tenants, false)
    }

    /// The workload with a fifth limit on every request: a budget in money
    /// ($50 a day across models, every model at the default price).
    #[allow(dead_code)]
    pub fn with_budget(n_tenants: usize) -> Self {
        Self::build(n_tenants, true)
    }

    fn build(n_tenants: usize, budget: bool) -> Self {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/sambanova-cloud.toml");
        let mut text = std::fs::read_to_string(&path).expect("the preset");
        if budget {
            text = text.replacen(
                "[policy]\n",
                "[policy]\ndefault_price = { input = 0.60, output = 1.20 }\n",
                1,
            );
            text.push_str(
                r#"
[[tiers.developer.limits]]
name = "daily-budget"
metric = "cost"
amount = 50
window = "1d"
"#,
            );
        }
        text.push_str(
            r#"
[[tiers.developer.limits]]
name = "tokens-per-day-per-model"
metric = "tokens"
amount = 5_000_000
window = "1d"
by = ["model"]
"#,
        );
        let policy = sluice_config::parse(&text, &path).expect("the preset parses").policy;
        let tenants = (0..n_tenants)
            .map(|i| {
                policy
                    .tenant(&TenantSpec {
                        id: format!("org-{i:05}"),
                        tier: Some("developer".into()),
                        ..TenantSpec::default()
                    })
                    .expect("tenant")
            })
            .collect();
        let models = policy.models().map(|(_, m)| policy.model_ref(&m.name)).collect();
        let chat = policy.endpoint("chat").expect("chat");
        Self { policy, tenants, models, chat }
    }

    /// The i-th request of the workload: tenants and models interleaved so
    /// that consecutive requests touch different counters.
    pub fn request(&self, i: usize) -> Ask<'_> {
        Ask {
            tenant: &self.tenants[i % self.tenants.len()],
            key: None,
            endpoint: self.chat,
            model: self.models[(i / self.tenants.len() + i) % self.models.len()],
            cost: Cost::tokens(200, 300),
            end_user: sluice_core::EndUser::NONE,
        }
    }
}
