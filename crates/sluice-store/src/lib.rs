//! Where Sluice keeps its counters: the embedded [`MemoryStore`] (one
//! process), and shared stores for many instances.
#![forbid(unsafe_code)]

pub mod memory;

pub use memory::{MemoryStats, MemoryStore};
