//! Persistence behind `[store].url`.
//!
//! This first cut carries only what the admin listener needs (a liveness ping); the
//! directory and session traits, with their conformance suite, build on it.

mod memory;
mod redis;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

use crate::config::{StoreConfig, StoreUrl};

/// Errors from a store backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or answered with an error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// The configured store. An enum rather than a trait object: there are exactly two
/// backends, and static dispatch keeps the hot path free of boxing.
#[derive(Clone)]
pub enum Store {
    /// In-process store (one replica only).
    Memory(MemoryStore),
    /// Redis, standalone or Cluster.
    Redis(RedisStore),
}

impl Store {
    /// Creates the backend. Redis connects lazily, so idgate starts (and reports "not
    /// ready") while Redis is still coming up, rather than crash-looping.
    pub fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        match &config.url {
            StoreUrl::Memory => {
                tracing::warn!(
                    "store is memory://: state lives in this process only; run exactly one replica"
                );
                Ok(Store::Memory(MemoryStore::new()))
            }
            StoreUrl::Redis(url) => Ok(Store::Redis(RedisStore::standalone(url)?)),
            StoreUrl::Cluster(nodes) => Ok(Store::Redis(RedisStore::cluster(nodes)?)),
        }
    }

    /// Whether the backend answers right now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.ping(),
            Store::Redis(r) => r.ping().await,
        }
    }
}
