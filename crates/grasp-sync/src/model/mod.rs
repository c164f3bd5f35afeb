//! The data model: plain data, no locks, no IO. Newtypes make bad states
//! unrepresentable (a `RepoRef` is always a valid coordinate, a `RelayUrl` always a
//! normalised websocket URL), and the three indexes of the design live here, with the
//! types the engine and the ports share (the snapshot, the ingestion verdict), so
//! neither imports the other's.

mod items;
mod outcome;
mod pending;
mod relay_index;
mod relay_url;
mod repo_index;
mod repo_ref;
mod snapshot;
mod time;

pub use items::SyncItems;
pub use outcome::IngestOutcome;
pub use pending::{BatchFailure, BatchId, PendingBatch, PendingItems, PendingSyncIndex};
pub use relay_index::{ConnectionStatus, RelayState, RelaySyncIndex};
pub use relay_url::{RelayUrl, RelayUrlError, MAX_RELAY_URL_BYTES};
pub use repo_index::{RepoChange, RepoSyncIndex, RepoSyncNeeds, SyncLevel};
pub use repo_ref::{RepoRef, RepoRefError};
pub use snapshot::{
    NegentropySupport, PersistedRelay, PersistedRelayList, PersistedRepo, SyncStateSnapshot,
};
pub use time::WallTime;
