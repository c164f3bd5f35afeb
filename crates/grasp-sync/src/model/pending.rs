//! `PendingSyncIndex`: what is in flight, per relay. A batch is a set of items whose
//! historic sync runs over one or more subscriptions; when the last subscription
//! finishes and the host has reported a verdict for every event the batch brought, the
//! batch's items move to confirmed (or the batch is marked failed).

use std::collections::{BTreeMap, BTreeSet};

use nostr::SubscriptionId;

use super::{RelayUrl, SyncItems, WallTime};

/// Identifies a batch within one engine.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct BatchId(pub u64);

/// Items of a pending batch: the same shape as targets and confirmed state.
pub type PendingItems = SyncItems;

/// Which of a batch's items must be asked again because something failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BatchFailure {
    /// Nothing failed.
    #[default]
    None,
    /// Parts failed whose filters named these items (of the batch's items and of what
    /// it also covers): only they are asked again.
    Items(PendingItems),
    /// Something failed that names no item (an event the host could not take, an ids
    /// fetch, a connection-level part): all of the batch again.
    Whole,
}

impl BatchFailure {
    /// True when anything failed.
    pub fn is_failed(&self) -> bool {
        *self != Self::None
    }

    /// Records a failure of a part covering `items` (`None`: it names none).
    pub fn add(&mut self, items: Option<&PendingItems>) {
        *self = match (std::mem::take(self), items) {
            (Self::Whole, _) | (_, None) => Self::Whole,
            (Self::None, Some(new)) => Self::Items(new.clone()),
            (Self::Items(mut had), Some(new)) => {
                had.merge(new);
                Self::Items(had)
            }
        };
    }

    /// Of `items`, those to ask again.
    pub fn to_retry(&self, items: &PendingItems) -> PendingItems {
        match self {
            Self::None => PendingItems::default(),
            Self::Whole => items.clone(),
            Self::Items(failed) => {
                let mut untouched = items.clone();
                untouched.subtract(failed);
                let mut retry = items.clone();
                retry.subtract(&untouched);
                retry
            }
        }
    }
}

/// One batch in flight.
#[derive(Debug, Clone)]
pub struct PendingBatch {
    /// Batch id.
    pub id: BatchId,
    /// What this batch syncs; empty for a layer 1 (connection level) batch.
    pub items: PendingItems,
    /// Subscriptions (or negentropy sessions) not finished yet.
    pub outstanding: BTreeSet<SubscriptionId>,
    /// Events this batch brought whose verdict the host has not reported yet: the
    /// batch is still in flight until it is zero.
    pub awaiting: usize,
    /// Items a `since` catch-up covers without confirming them (they are pending in
    /// their own full-history batch): if the catch-up fails, they are retried too.
    pub also_covers: PendingItems,
    /// What failed, if anything: the batch still finishes (into
    /// `ConnectedHistoricSyncFailures`) and what failed is asked again with backoff.
    pub failure: BatchFailure,
    /// Of what failed, the items REQ cannot deliver in full from this relay (a tie
    /// group over its known cap, a relay ignoring `until`): not asked again by REQ on
    /// this connection; they stay recorded until the next fresh start (which tries
    /// NIP-77 again), and are not persisted as confirmed (a restart asks once more).
    pub beyond_req: PendingItems,
    /// Filters of negentropy sessions whose offered ids the relay would not return by
    /// id, asked by REQ+EOSE instead: each once per batch.
    pub asked_by_req: Vec<nostr::Filter>,
    /// Ids its negentropy sessions have queued for fetching already: a comment matching
    /// several of the batch's filters (`#e` and `#E`) is needed by several sessions and
    /// asked once. Safe within one batch only: if that fetch fails, so does the batch.
    pub fetch_asked: BTreeSet<nostr::EventId>,
    /// Some session left an id it needed to another session's fetch: a part of this
    /// batch that fails (or ends beyond what REQ can deliver) then names all of it, since
    /// the id it stood for may belong to items the failed part does not name.
    pub fetch_shared: bool,
    /// The connection-level batch (announcements and GRASP lists), which has no items.
    pub layer1: bool,
    /// False for a `since`-limited batch (quick reconnect, live gap): its success says
    /// nothing about older history, so it does not clear an earlier failure.
    pub full_history: bool,
    /// When it started: a success clears only failures recorded before it.
    pub started_at: WallTime,
}

/// Relay → batches in flight.
#[derive(Debug, Clone, Default)]
pub struct PendingSyncIndex {
    relays: BTreeMap<RelayUrl, Vec<PendingBatch>>,
    /// A batch left (done, cancelled or cleared) since [`PendingSyncIndex::take_left`]
    /// was last asked: the moment a sync round may have ended.
    left: bool,
}

impl PendingSyncIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Batches of one relay.
    pub fn batches(&self, relay: &RelayUrl) -> &[PendingBatch] {
        self.relays.get(relay).map_or(&[], Vec::as_slice)
    }

    /// Batches of one relay, mutable (created empty).
    pub fn batches_mut(&mut self, relay: &RelayUrl) -> &mut Vec<PendingBatch> {
        self.relays.entry(relay.clone()).or_default()
    }

    /// Everything pending for one relay, merged.
    pub fn items(&self, relay: &RelayUrl) -> SyncItems {
        let mut all = SyncItems::default();
        for b in self.batches(relay) {
            all.merge(&b.items);
        }
        all
    }

    /// Drops every batch of a relay (fresh start, reconnect, consolidation).
    pub fn clear(&mut self, relay: &RelayUrl) -> Vec<PendingBatch> {
        let gone = self.relays.remove(relay).unwrap_or_default();
        self.left |= !gone.is_empty();
        gone
    }

    /// Takes one batch of a relay out (done or cancelled).
    pub fn remove(&mut self, relay: &RelayUrl, batch: BatchId) -> Option<PendingBatch> {
        let batches = self.relays.get_mut(relay)?;
        let pos = batches.iter().position(|b| b.id == batch)?;
        self.left = true;
        Some(batches.remove(pos))
    }

    /// Whether a batch left since the last call (and forgets it).
    pub fn take_left(&mut self) -> bool {
        std::mem::take(&mut self.left)
    }

    /// Relays with at least one batch.
    pub fn relays(&self) -> impl Iterator<Item = &RelayUrl> {
        self.relays
            .iter()
            .filter(|(_, b)| !b.is_empty())
            .map(|(r, _)| r)
    }

    /// Whether no batch is in flight on any relay.
    pub fn is_empty(&self) -> bool {
        self.relays().next().is_none()
    }

    /// Whether any batch is in flight for `relay`.
    pub fn has_pending(&self, relay: &RelayUrl) -> bool {
        !self.batches(relay).is_empty()
    }
}
