//! grasp-sync's ports implemented on the host, and the two nostr-relay-builder hooks:
//! the write policy (user writes → GRASP rules) and a database wrapper that feeds every
//! event the relay stored from a user to the sync engine (`SyncHandle::accepted`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use grasp_sync::engine::SyncStateSnapshot;
use grasp_sync::ports::{
    EventStore, HuntHost, Ingestion, PortError, PurgatoryView, SyncStateStore,
};
use grasp_sync::{IngestOutcome, RelayUrl, RepoRef};
use nostr::util::BoxedFuture;
use nostr::{Event, EventId, Filter, Timestamp};
use nostr_database::{
    Backend, DatabaseError, DatabaseEventStatus, Events, NostrDatabase, SaveEventStatus,
};
use nostr_relay_builder::builder::{PolicyResult, WritePolicy};

use crate::host::Host;

/// The git hunt's port: release what it found data for, run the purgatory's expiry.
#[async_trait]
impl HuntHost for Host {
    async fn release(&self, repo: &RepoRef, events: &[EventId]) {
        Host::release(self, repo, events).await
    }

    async fn tick(&self) {
        self.tick_purgatory().await
    }

    async fn rechecks(&self) -> Vec<grasp_sync::git::HuntRequest> {
        Host::rechecks(self).await
    }
}

/// The `EventStore`, `Ingestion` and `PurgatoryView` ports on the host.
#[derive(Clone)]
pub struct HostPorts(pub Arc<Host>);

#[async_trait]
impl EventStore for HostPorts {
    async fn negentropy_items(
        &self,
        filter: &Filter,
    ) -> Result<Vec<(EventId, Timestamp)>, PortError> {
        let mut items = self
            .0
            .db
            .negentropy_items(filter.clone())
            .await
            .map_err(|e| PortError::new("event store", e.to_string()))?;
        items.extend(self.0.held_and_rejected_items(filter));
        items.sort();
        items.dedup();
        Ok(items)
    }

    async fn stored_events(&self, filter: &Filter) -> Result<Vec<Event>, PortError> {
        let events = self
            .0
            .db
            .query(filter.clone())
            .await
            .map_err(|e| PortError::new("event store", e.to_string()))?;
        Ok(events.into_iter().collect())
    }
}

#[async_trait]
impl Ingestion for HostPorts {
    async fn ingest(&self, event: Event, _from: &RelayUrl) -> Result<IngestOutcome, PortError> {
        self.0
            .apply_sync(&event)
            .await
            .map_err(|e| PortError::new("ingestion", e))
    }
}

#[async_trait]
impl PurgatoryView for HostPorts {
    async fn announcements(&self) -> Result<Vec<Event>, PortError> {
        Ok(self.0.held_announcements())
    }
}

/// Sync state as JSON in the data directory (written to a temp file, then renamed).
pub struct JsonStateStore {
    /// The file.
    pub path: PathBuf,
}

#[async_trait]
impl SyncStateStore for JsonStateStore {
    async fn load(&self) -> Result<Option<SyncStateSnapshot>, PortError> {
        match tokio::fs::read(&self.path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                PortError::new(
                    "sync state",
                    format!("{} is not a sync state: {e}", self.path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PortError::new(
                "sync state",
                format!("{}: {e}", self.path.display()),
            )),
        }
    }

    async fn save(&self, snapshot: &SyncStateSnapshot) -> Result<(), PortError> {
        let bytes = serde_json::to_vec(snapshot)
            .map_err(|e| PortError::new("sync state", e.to_string()))?;
        write_atomically(&self.path, &bytes)
            .await
            .map_err(|e| PortError::new("sync state", format!("{}: {e}", self.path.display())))
    }
}

/// Writes `bytes` to `path` via a temp file and a rename.
pub async fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}

/// The websocket write policy: GRASP acceptance for user writes.
pub struct GraspWritePolicy(pub Weak<Host>);

impl std::fmt::Debug for GraspWritePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GraspWritePolicy")
    }
}

impl WritePolicy for GraspWritePolicy {
    fn admit_event<'a>(
        &'a self,
        event: &'a Event,
        addr: &'a SocketAddr,
    ) -> BoxedFuture<'a, PolicyResult> {
        Box::pin(async move {
            let Some(host) = self.0.upgrade() else {
                return PolicyResult::Reject("error: relay shutting down".into());
            };
            match host.admit_user(event).await {
                Ok(()) => {
                    tracing::info!(id = %event.id, kind = event.kind.as_u16(), from = %addr, "accepted an event from a client");
                    PolicyResult::Accept
                }
                Err(reason) => {
                    tracing::info!(id = %event.id, kind = event.kind.as_u16(), from = %addr, %reason, "refused or held an event from a client");
                    PolicyResult::Reject(reason)
                }
            }
        })
    }
}

/// The database the websocket relay writes to: the real one, plus the accepted-event
/// feed (every event stored from a user goes to `SyncHandle::accepted`).
pub struct FeedingDatabase {
    /// The real database.
    pub inner: Arc<dyn NostrDatabase>,
    /// The host (for the sync handle and bookkeeping).
    pub host: Weak<Host>,
}

impl std::fmt::Debug for FeedingDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FeedingDatabase")
    }
}

impl NostrDatabase for FeedingDatabase {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }

    fn save_event<'a>(
        &'a self,
        event: &'a Event,
    ) -> BoxedFuture<'a, Result<SaveEventStatus, DatabaseError>> {
        Box::pin(async move {
            let status = self.inner.save_event(event).await?;
            if status.is_success() {
                if let Some(host) = self.host.upgrade() {
                    host.on_stored(event).await;
                    if let Some(sync) = host.sync.get() {
                        sync.accepted(event.clone());
                    }
                }
            }
            Ok(status)
        })
    }

    fn check_id<'a>(
        &'a self,
        event_id: &'a EventId,
    ) -> BoxedFuture<'a, Result<DatabaseEventStatus, DatabaseError>> {
        self.inner.check_id(event_id)
    }

    fn event_by_id<'a>(
        &'a self,
        event_id: &'a EventId,
    ) -> BoxedFuture<'a, Result<Option<Event>, DatabaseError>> {
        self.inner.event_by_id(event_id)
    }

    fn count(&self, filter: Filter) -> BoxedFuture<'_, Result<usize, DatabaseError>> {
        self.inner.count(filter)
    }

    fn query(&self, filter: Filter) -> BoxedFuture<'_, Result<Events, DatabaseError>> {
        self.inner.query(filter)
    }

    fn negentropy_items(
        &self,
        filter: Filter,
    ) -> BoxedFuture<'_, Result<Vec<(EventId, Timestamp)>, DatabaseError>> {
        self.inner.negentropy_items(filter)
    }

    fn delete(&self, filter: Filter) -> BoxedFuture<'_, Result<(), DatabaseError>> {
        self.inner.delete(filter)
    }

    fn wipe(&self) -> BoxedFuture<'_, Result<(), DatabaseError>> {
        self.inner.wipe()
    }
}
