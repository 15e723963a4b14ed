//! Where Sluice keeps its counters: the embedded [`MemoryStore`] (one
//! process, its counters saved in the data file by [`SavedCounters`]), and
//! shared stores for many instances.
#![forbid(unsafe_code)]

pub mod guarded;
pub mod history;
pub mod memory;
pub mod queue;
pub mod redis;
pub mod saved_counters;
pub mod tenants;

pub use guarded::{GuardOptions, Guarded, OnFailure, Unavailable};
pub use history::{History, HistorySettings, RedisHistory};
pub use memory::{MemoryStats, MemoryStore};
pub use queue::{Pause, QueueBounds, TokioPause, WaitQueue, Waited, Waiter};
pub use redis::{RedisStore, RedisStoreError, TimeSource, Topology};
pub use saved_counters::{SavedCounters, SavedCountersError};
pub use tenants::{
    FileTenants, KeyRecord, OverrideRecord, RedisTenants, TenantRecord, TenantSnapshot,
    TenantStore, TenantStoreError,
};
