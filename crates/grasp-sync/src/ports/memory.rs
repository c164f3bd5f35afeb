//! In-memory port implementations: for tests, the simulation and simple hosts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use nostr::{Event, EventId, Filter, SingleLetterTag, Timestamp};

use super::{EventStore, Ingestion, PortError, PurgatoryView, SyncStateStore};
use crate::matching::matches;
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
    /// Stored and refused events by the single-letter tag values they carry. Every
    /// filter of a sync beyond layer 1 names tag values (repo refs, root-event ids,
    /// identifiers): a negentropy session reads the events carrying one of them, not
    /// every event held (a scan per session made a large sync quadratic).
    by_tag: HashMap<SingleLetterTag, HashMap<String, Vec<EventId>>>,
}

impl MemoryInner {
    fn index(&mut self, event: &Event) {
        for tag in event.tags.iter() {
            if let (Some(letter), Some(value)) = (tag.single_letter_tag(), tag.content()) {
                self.by_tag
                    .entry(letter)
                    .or_default()
                    .entry(value.to_owned())
                    .or_default()
                    .push(event.id);
            }
        }
    }

    fn store(&mut self, event: Event) -> bool {
        if self.events.contains_key(&event.id) {
            return false;
        }
        self.index(&event);
        self.events.insert(event.id, event);
        true
    }

    /// The events (stored, and refused too with `with_rejected`) matching `filter`,
    /// read through the ids or a tag index when the filter names them.
    fn matching(&self, filter: &Filter, with_rejected: bool) -> Vec<&Event> {
        let lookup = |id: &EventId| {
            self.events
                .get(id)
                .or_else(|| with_rejected.then(|| self.rejected.get(id)).flatten())
        };
        // An empty `ids` set matches every id (as in nostr): not a lookup.
        let ids = filter.ids.as_ref().filter(|ids| !ids.is_empty());
        let mut candidates: Vec<EventId> = if let Some(ids) = ids {
            ids.iter().copied().collect()
        } else if let Some((letter, values)) = filter.generic_tags.iter().next() {
            let Some(index) = self.by_tag.get(letter) else {
                return Vec::new();
            };
            values
                .iter()
                .filter_map(|v| index.get(v.as_str()))
                .flatten()
                .copied()
                .collect()
        } else {
            let rejected = self
                .rejected
                .values()
                .filter(|e| with_rejected && !self.events.contains_key(&e.id));
            return self
                .events
                .values()
                .chain(rejected)
                .filter(|e| matches(filter, e))
                .collect();
        };
        // An event can carry several of the values, or be both refused and stored.
        candidates.sort_unstable();
        candidates.dedup();
        candidates
            .iter()
            .filter_map(lookup)
            .filter(|e| matches(filter, e))
            .collect()
    }
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
        self.lock().store(event)
    }

    /// Records an event as refused: it joins the negentropy have-set so sync does not
    /// download it again, and ingesting it again answers `Rejected`.
    pub fn reject(&self, event: Event) {
        let mut inner = self.lock();
        if !inner.rejected.contains_key(&event.id) {
            inner.index(&event);
            inner.rejected.insert(event.id, event);
        }
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
        // The whole have-set: `limit` plays no part (`matches` ignores it).
        let inner = self.lock();
        Ok(inner
            .matching(filter, true)
            .into_iter()
            .map(|e| (e.id, e.created_at))
            .collect())
    }

    async fn stored_events(&self, filter: &Filter) -> Result<Vec<Event>, PortError> {
        let inner = self.lock();
        Ok(inner.matching(filter, false).into_iter().cloned().collect())
    }
}

#[async_trait]
impl Ingestion for MemoryEventStore {
    async fn ingest(&self, event: Event, _from: &RelayUrl) -> Result<IngestOutcome, PortError> {
        let mut inner = self.lock();
        if inner.rejected.contains_key(&event.id) {
            return Ok(IngestOutcome::Rejected);
        }
        if inner.store(event) {
            Ok(IngestOutcome::Accepted)
        } else {
            Ok(IngestOutcome::Duplicate)
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use nostr::filter::MatchEventOptions;
    use nostr::{Alphabet, EventBuilder, Keys, Kind, Tag, TagKind};
    use proptest::prelude::*;

    fn letter(i: u8) -> SingleLetterTag {
        [
            SingleLetterTag::lowercase(Alphabet::E),
            SingleLetterTag::uppercase(Alphabet::E),
            SingleLetterTag::lowercase(Alphabet::A),
        ][usize::from(i % 3)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// The indexed read answers what a scan of everything held with nostr's own
        /// matching answers, for stored and refused events alike.
        #[test]
        fn indexed_reads_answer_as_a_scan(
            events in proptest::collection::vec(
                (1u16..3, proptest::collection::vec((0u8..3, 0u8..5), 0..4), 0u8..4), 0..12),
            filter_tags in proptest::collection::vec(
                (0u8..3, proptest::collection::btree_set(0u8..5, 0..3)), 0..3),
            kind in proptest::option::of(1u16..3),
            ids in proptest::option::of(proptest::collection::vec(0usize..12, 0..3)),
        ) {
            let keys = Keys::generate();
            let store = MemoryEventStore::new();
            let mut all = Vec::new();
            for (i, (k, tags, fate)) in events.into_iter().enumerate() {
                let tags = tags
                    .into_iter()
                    .map(|(l, v)| Tag::custom(TagKind::SingleLetter(letter(l)), [format!("v{v}")]));
                let e = EventBuilder::new(Kind::Custom(k), format!("{i}"))
                    .tags(tags)
                    .sign_with_keys(&keys)
                    .expect("sign");
                match fate {
                    0 => { store.insert(e.clone()); }
                    1 => store.reject(e.clone()),
                    2 => { store.insert(e.clone()); store.reject(e.clone()); }
                    _ => {}
                }
                all.push(e);
            }
            let mut f = Filter::new();
            if let Some(k) = kind {
                f = f.kind(Kind::Custom(k));
            }
            if let Some(ids) = ids {
                f.ids = Some(ids.iter().filter_map(|i| all.get(*i)).map(|e| e.id).collect());
            }
            for (l, values) in filter_tags {
                f.generic_tags
                    .insert(letter(l), values.into_iter().map(|v| format!("v{v}")).collect());
            }
            let inner = store.lock();
            let scan = |with_rejected: bool| -> Vec<EventId> {
                let mut ids: Vec<EventId> = inner
                    .events
                    .values()
                    .chain(inner.rejected.values().filter(|_| with_rejected))
                    .filter(|e| f.match_event(e, MatchEventOptions::new()))
                    .map(|e| e.id)
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                ids
            };
            for with_rejected in [true, false] {
                let mut got: Vec<EventId> =
                    inner.matching(&f, with_rejected).iter().map(|e| e.id).collect();
                got.sort_unstable();
                prop_assert_eq!(got, scan(with_rejected));
            }
        }
    }
}
