//! The domain and the algorithms of Sluice: limits, windows, admission plans
//! and decisions, with no I/O and no async runtime.
//!
//! The flow of one admission:
//!
//! 1. a [`Policy`] (built by [`PolicyBuilder`], usually from a policy file by
//!    `sluice-config`) resolves the tenant and key ([`Policy::tenant`],
//!    [`Policy::key`]);
//! 2. [`Policy::plan`] finds every limit that applies to an [`Ask`] (one
//!    request, as admission sees it) and the counter each one charges;
//! 3. a [`CounterStore`] runs [`decide`] on the plan atomically and writes
//!    back the new states: every limit is charged, or none;
//! 4. when the request ends, the reservation is settled with the real usage.
//!
//! Time comes from a [`Clock`]; tests use [`FakeClock`].
//!
//! ```
//! use sluice_core::*;
//!
//! let mut b = PolicyBuilder::new("demo");
//! b.model("small-model", None);
//! b.limit(LimitSpec {
//!     name: "rpm".into(),
//!     scope: Scope::Global,
//!     metric: Metric::Requests,
//!     amount: 2,
//!     burst: None,
//!     window: Some(Window::rolling("1m".parse().unwrap())),
//!     by: vec![Fact::Model],
//!     when: vec![],
//!     unless: vec![],
//!     shadow: false,
//!     counter: None,
//!     origin: None,
//!     max_wait: None,
//!     hard: false,
//! });
//! let policy = b.build().unwrap();
//! let tenant = policy.tenant(&TenantSpec { id: "acme".into(), ..Default::default() }).unwrap();
//! let req = Ask {
//!     tenant: &tenant,
//!     key: None,
//!     endpoint: policy.endpoint("chat").unwrap(),
//!     model: policy.model_ref("small-model"),
//!     cost: Cost::REQUEST,
//!     end_user: EndUser::NONE,
//! };
//! let plan = policy.plan(&req, Instant::from_secs(1_000));
//! // No counter has been charged yet: the request fits.
//! let eval = decide(&plan, &[None]);
//! assert!(eval.decision.is_admitted());
//! assert_eq!(eval.decision.statuses[0].remaining, 1);
//! ```
#![forbid(unsafe_code)]

mod compile;
pub mod counter;
pub mod event;
pub mod facts;
pub mod metric;
pub mod money;
pub mod plan;
pub mod policy;
pub mod store;
pub mod time;
pub mod window;

pub use compile::{DEFAULT_LEASE, DEFAULT_TIER, MAX_PARTITION_FACTS};
pub use counter::{ChargedAs, CounterState, Rule, Verdict};
pub use event::{EventSink, RequestEvent, Step};
pub use facts::NOT_BY_KEY;
pub use facts::{
    Ask, Cost, EndUser, FactsError, KeyFacts, KeySpec, ModelRef, OverrideSpec, TenantFacts,
    TenantSpec,
};
pub use metric::Metric;
pub use money::{Billed, Money, Price};
pub use plan::{
    ChargeRecord, CounterKey, Decision, Evaluation, GroupKey, LimitStatus, Outcome, Plan,
    PlannedCharge, ReservationId, Settlement, Usage, decide, decide_into, records,
};
pub use policy::{
    ClauseSpec, ConditionSpec, EndpointId, ExemptionSpec, Fact, HeaderFamily, HeaderMetric,
    HeaderProfile, HeaderSpan, Limit, LimitId, LimitSet, LimitSpec, ModelId, Policy, PolicyBuilder,
    PolicyError, ResetFormat, Scope, TierId, TierSpec, describe_period,
};
pub use store::CounterStore;
pub use time::{Clock, FakeClock, Instant, SystemClock};
pub use window::{Period, Slot, Window, WindowKind, Zone};
