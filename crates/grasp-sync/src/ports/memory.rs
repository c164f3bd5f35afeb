//! In-memory port implementations: for tests, the simulation and simple hosts.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use nostr::filter::MatchEventOptions;
use nostr::{Event, EventId, Filter, Timestamp};

use super::{EventStore, Ingestion, PortError, PurgatoryView, SyncStateStore};
use crate::model::{IngestOutcome, RelayUrl, SyncStateSnapshot};

/// Events in a map, plus the ids refused: both the [`EventStore`] and the [`Ingestion`]
/// port (pass the same `Arc` twice). Accepts every event it is handed (a host with a
/// policy wraps or replaces it); refused ids can be added for the have-set.
#[derive(Debug, Default)]
pub struct MemoryEventStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    events: BTreeMap<EventId, Event>,
    /// Refused events, kept whole so they match the filters of the have-set.
    rejected: BTreeMap<EventId, Event>,
}

impl MemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panic elsewhere while holding the lock leaves plain data behind: keep going.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores an event directly (as if a user had published it).
    pub fn insert(&self, event: Event) -> bool {
        self.lock().events.insert(event.id, event).is_none()
    }

    /// Records an event as refused: it joins the negentropy have-set so sync does not
    /// download it again, and ingesting it again answers `Rejected`.
    pub fn reject(&self, event: Event) {
        self.lock().rejected.insert(event.id, event);
    }

    /// Number of events stored.
    pub fn len(&self) -> usize {
        self.lock().events.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an event is stored.
    pub fn contains(&self, id: &EventId) -> bool {
        self.lock().events.contains_key(id)
    }

    /// All stored events.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.values().cloned().collect()
    }
}

#[async_trait]
impl EventStore for MemoryEventStore {
    async fn negentropy_items(
        &self,
        filter: &Filter,
    ) -> Result<Vec<(EventId, Timestamp)>, PortError> {
        let inner = self.lock();
        let filter = filter.clone().remove_limit();
        Ok(inner
            .events
            .values()
            .chain(inner.rejected.values())
            .filter(|e| filter.match_event(e, MatchEventOptions::new()))
            .map(|e| (e.id, e.created_at))
            .collect())
    }

    async fn stored_events(&self, filter: &Filter) -> Result<Vec<Event>, PortError> {
        let inner = self.lock();
        Ok(inner
            .events
            .values()
            .filter(|e| filter.match_event(e, MatchEventOptions::new()))
            .cloned()
            .collect())
    }
}

#[async_trait]
impl Ingestion for MemoryEventStore {
    async fn ingest(&self, event: Event, _from: &RelayUrl) -> Result<IngestOutcome, PortError> {
        let mut inner = self.lock();
        if inner.rejected.contains_key(&event.id) {
            return Ok(IngestOutcome::Rejected);
        }
        if inner.events.contains_key(&event.id) {
            return Ok(IngestOutcome::Duplicate);
        }
        inner.events.insert(event.id, event);
        Ok(IngestOutcome::Accepted)
    }
}

/// The announcements a host holds back until their git data arrives, in memory: a
/// host without a purgatory uses it empty (every repo is synced in full), one with a
/// purgatory keeps it in step with [`MemoryPurgatoryView::hold`] and
/// [`MemoryPurgatoryView::release`].
#[derive(Debug, Default)]
pub struct MemoryPurgatoryView {
    held: Mutex<BTreeMap<EventId, Event>>,
}

impl MemoryPurgatoryView {
    /// Nothing held.
    pub fn new() -> Self {
        Self::default()
    }

    /// An announcement now waits for its git data (synced at state level meanwhile).
    pub fn hold(&self, announcement: Event) {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(announcement.id, announcement);
    }

    /// It left purgatory (accepted: tell the sync handle; or expired).
    pub fn release(&self, id: &EventId) {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }
}

#[async_trait]
impl PurgatoryView for MemoryPurgatoryView {
    async fn announcements(&self) -> Result<Vec<Event>, PortError> {
        Ok(self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect())
    }
}

/// Keeps the last snapshot in memory (survives an engine restart, not a process one).
#[derive(Debug, Default)]
pub struct MemorySyncStateStore {
    snapshot: Mutex<Option<SyncStateSnapshot>>,
}

impl MemorySyncStateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SyncStateStore for MemorySyncStateStore {
    async fn load(&self) -> Result<Option<SyncStateSnapshot>, PortError> {
        Ok(self
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone())
    }

    async fn save(&self, snapshot: &SyncStateSnapshot) -> Result<(), PortError> {
        *self
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(snapshot.clone());
        Ok(())
    }
}

/// Permits every relay URL. For tests on loopback; hosts use the URL policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAllRelays;

impl super::RelayUrlPolicy for AllowAllRelays {
    fn permits_relay(&self, _url: &RelayUrl) -> bool {
        true
    }

    fn check_address(&self, _host: &str, _addr: std::net::IpAddr) -> Result<(), String> {
        Ok(())
    }
}
