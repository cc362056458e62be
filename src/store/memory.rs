//! The embedded in-process store, the default for a single instance and the demo.

/// In-process store.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore {}
    }

    /// Always reachable: it lives in this process.
    pub fn ping(&self) -> Result<(), super::StoreError> {
        Ok(())
    }
}
