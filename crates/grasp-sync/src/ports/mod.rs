//! Ports: what the host relay provides, as traits. Only the part the tokio driver needs
//! lives here so far: the event store's negentropy have-set. The signatures match the
//! engine side's ports so the two merge into one module.

use async_trait::async_trait;
use nostr::{EventId, Filter, Timestamp};

/// A port call that failed. Ports are the host's code; the library only needs to know
/// that it failed and why, for logs.
#[derive(Debug, thiserror::Error)]
#[error("{port} port failed: {message}")]
pub struct PortError {
    /// Which port.
    pub port: &'static str,
    /// The host's explanation.
    pub message: String,
}

impl PortError {
    /// A port error with a message.
    pub fn new(port: &'static str, message: impl Into<String>) -> Self {
        Self {
            port,
            message: message.into(),
        }
    }
}

/// The host's events as sync sees them.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Ids and timestamps of every event matching `filter` that we hold *or refused*:
    /// stored ∪ purgatory ∪ rejected. This is the negentropy have-set, so a relay in sync
    /// with us costs almost nothing and refused events are not downloaded again.
    async fn negentropy_items(
        &self,
        filter: &Filter,
    ) -> Result<Vec<(EventId, Timestamp)>, PortError>;
}
