//! Hand-over to the host, and waiting for its verdict. This is where "confirmation
//! follows durability" lives:
//!
//! - An event handed over with [`Command::Ingest`] is *in flight* until the host answers
//!   with an [`IngestOutcome`]. Every batch that brought a copy of it stays pending until
//!   then, so no item is confirmed on a relay before every event its batch brought is
//!   stored, durably held, refused or known.
//! - A relay's cursor (what a quick reconnect asks `since`) never passes the oldest
//!   event from that relay still in flight: a crash loses the hand-over, and the
//!   restart asks for it again.
//! - `Failed` (the host could not process it) forgets the hand-over: the batch that
//!   brought it fails and is retried; a live copy reopens the relay's live gap from the
//!   moment it arrived, so a `since` catch-up fetches it again.
//!
//! An event two relays deliver is handed over once; the second copy only waits for the
//! first one's verdict.

use std::collections::{HashMap, HashSet, VecDeque};

use nostr::{Event, EventId};

use super::{Command, IngestOutcome, SyncEngine};
use crate::model::{BatchId, RelayUrl, WallTime};

/// Ids already handed to the host, bounded (oldest forgotten first): an event that two
/// relays deliver is handed over once; past the bound the host answers `Duplicate`.
pub(super) struct Dedupe {
    set: HashSet<EventId>,
    order: VecDeque<EventId>,
    capacity: usize,
}

impl Dedupe {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// True if `id` is new (and now remembered).
    fn insert(&mut self, id: EventId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    /// Forgets `id` so that the next copy is handed over again. Its slot in `order`
    /// stays until it ages out; if the id was handed over again meanwhile, aging out
    /// forgets that hand-over early, which costs at most one more hand-over (the host
    /// answers `Duplicate`): in-flight copies are tracked apart, never overwritten.
    fn forget(&mut self, id: &EventId) {
        self.set.remove(id);
    }
}

/// One copy of an in-flight event: which relay sent it, when, and for which batch
/// (`None`: a live subscription).
#[derive(Debug, Clone)]
struct Copy {
    relay: RelayUrl,
    at: WallTime,
    batch: Option<BatchId>,
}

/// Events handed over whose verdict has not come back.
#[derive(Default)]
pub(super) struct InFlight {
    copies: HashMap<EventId, Vec<Copy>>,
}

impl InFlight {
    pub(super) fn is_empty(&self) -> bool {
        self.copies.is_empty()
    }

    /// Per relay, when its oldest copy still in flight arrived.
    pub(super) fn oldest_per_relay(&self) -> HashMap<&RelayUrl, WallTime> {
        let mut out: HashMap<&RelayUrl, WallTime> = HashMap::new();
        for copy in self.copies.values().flatten() {
            out.entry(&copy.relay)
                .and_modify(|t| *t = (*t).min(copy.at))
                .or_insert(copy.at);
        }
        out
    }

    /// When `relay`'s oldest copy still in flight arrived.
    pub(super) fn oldest_from(&self, relay: &RelayUrl) -> Option<WallTime> {
        self.copies
            .values()
            .flatten()
            .filter(|c| &c.relay == relay)
            .map(|c| c.at)
            .min()
    }
}

impl SyncEngine {
    /// Hands an event to the host unless an earlier copy was handed over already; the
    /// batch (if any) waits for the verdict either way.
    pub(super) fn ingest(
        &mut self,
        relay: &RelayUrl,
        event: Box<Event>,
        batch: Option<BatchId>,
        now: WallTime,
    ) {
        let id = event.id;
        let copy = Copy {
            relay: relay.clone(),
            at: now,
            batch,
        };
        if let Some(copies) = self.in_flight.copies.get_mut(&id) {
            // Handed over already; wait for that verdict.
            self.metrics.events_deduplicated += 1;
            copies.push(copy);
        } else if self.handed.insert(id) {
            self.metrics.events_handed += 1;
            self.commands.push_back(Command::Ingest {
                relay: relay.clone(),
                event,
            });
            self.in_flight.copies.insert(id, vec![copy]);
        } else {
            // The verdict is in already: nothing to wait for.
            self.metrics.events_deduplicated += 1;
            return;
        }
        if let Some(b) = batch.and_then(|b| self.batch_mut(relay, b)) {
            b.awaiting += 1;
        }
    }

    /// The host's verdict on a hand-over: count it, release the batches that waited for
    /// it, and ask again for what the host could not take.
    pub(super) fn on_ingest_outcome(&mut self, id: EventId, outcome: IngestOutcome, now: WallTime) {
        let m = &mut self.metrics;
        match outcome {
            IngestOutcome::Accepted => m.events_accepted += 1,
            IngestOutcome::Purgatory => m.events_purgatory += 1,
            IngestOutcome::Rejected => m.events_rejected += 1,
            IngestOutcome::Duplicate => m.events_duplicate += 1,
            IngestOutcome::Failed => m.events_failed += 1,
        }
        // Unknown ids: a verdict for a previous engine (before a restart) or a repeat.
        let Some(copies) = self.in_flight.copies.remove(&id) else {
            return;
        };
        let failed = outcome == IngestOutcome::Failed;
        if failed {
            self.handed.forget(&id);
        }
        for copy in copies {
            self.wake(&copy.relay);
            match copy.batch {
                Some(batch) => {
                    if let Some(b) = self.batch_mut(&copy.relay, batch) {
                        b.awaiting = b.awaiting.saturating_sub(1);
                        if failed {
                            // Which item the event was for is not known here: all.
                            b.failure.add(None);
                        }
                    }
                    self.finish_batch_if_done(&copy.relay, batch, now);
                }
                None if failed => {
                    if let Some(conn) = self.conns.get_mut(&copy.relay) {
                        let gap = conn.live_gap_since.map_or(copy.at, |g| g.min(copy.at));
                        conn.live_gap_since = Some(gap);
                        conn.needs_rebuild = true;
                    }
                }
                None => {}
            }
        }
    }

    /// How far `relay`'s history is known complete: every event it published before
    /// this moment (less the overlap) that we want has a durable verdict here. The
    /// quick reconnect asks `since` this; it is what a snapshot persists.
    pub(super) fn cursor(&self, relay: &RelayUrl, now: WallTime) -> WallTime {
        self.cursor_with(relay, now, self.in_flight.oldest_from(relay))
    }

    /// [`Self::cursor`] with the oldest in-flight copy already looked up.
    pub(super) fn cursor_with(
        &self,
        relay: &RelayUrl,
        now: WallTime,
        oldest_in_flight: Option<WallTime>,
    ) -> WallTime {
        let mut cursor = now;
        let connected = self
            .relays
            .get(relay)
            .is_some_and(|s| s.status.is_connected());
        if !connected {
            // Not listening: complete only up to where the last connection left it.
            if let Some(c) = self.relays.get(relay).and_then(|s| s.complete_until) {
                cursor = cursor.min(c);
            }
        }
        if let Some(t) = oldest_in_flight {
            cursor = cursor.min(t);
        }
        if let Some(conn) = self.conns.get(relay) {
            if let Some(gap) = conn.live_gap_since {
                cursor = cursor.min(gap);
            }
            let catching_up = self.pending.batches(relay).iter().any(|b| !b.full_history);
            if catching_up {
                if let Some(from) = conn.catchup_from {
                    cursor = cursor.min(from);
                }
            }
        }
        cursor
    }
}
