//! The connection lifecycle of a relay, as its messages drive it: registration, fresh
//! start versus quick reconnect, starting batches for new items, live subscriptions
//! (opening, rebuilding, consolidation), removals, connect failures, misbehaviour and
//! disconnects. What happens with time is in `check`.

use std::time::Duration;

use nostr::Filter;

use super::conn::{Conn, LiveSub, PartKind, QueuedPart};
use super::{Command, SubscriptionMode, SyncEngine};
use crate::diff::compute_actions_for_relay;
use crate::filters::{build_sync_level_aware_filters, layer1_filters, live, split_into_reqs};
use crate::health::RelayHealth;
use crate::model::NegentropySupport;
use crate::model::{BatchId, ConnectionStatus, PendingBatch, RelayUrl, SyncItems, WallTime};

impl SyncEngine {
    /// Registers a relay once; the websocket comes and goes, the registration stays.
    pub(super) fn ensure_relay(&mut self, relay: &RelayUrl) {
        if !self.conns.contains_key(relay) {
            let health = RelayHealth::new(self.config.health);
            self.conns
                .insert(relay.clone(), Conn::new(health, self.config.default_limits));
            self.relays.entry(relay);
            self.wake(relay);
            self.dirty = true;
        }
    }

    fn daily_jitter(&mut self) -> Duration {
        let min = self.config.daily_min.as_millis() as u64;
        let span = (self.config.daily_max.as_millis() as u64).saturating_sub(min);
        let extra = if span == 0 {
            0
        } else {
            self.rng.next_u64() % (span + 1)
        };
        Duration::from_millis(min + extra)
    }

    pub(super) fn on_connected(&mut self, relay: &RelayUrl, now: WallTime) {
        let Some(conn) = self.conns.get_mut(relay) else {
            // Dropped while connecting: nothing to sync there.
            self.commands.push_back(Command::Disconnect {
                relay: relay.clone(),
            });
            return;
        };
        conn.health.on_connected(now);
        conn.last_error = None;
        conn.misbehaviour = 0;
        conn.reset_wire();
        conn.live_resubscribes = 0;
        conn.live_failed = false;
        conn.retry_round = 0;
        conn.retry_at = conn.has_failures().then_some(now);
        let daily_due = conn.daily_due.is_some_and(|d| d <= now);
        let state = self.relays.entry(relay);
        // The cursor, not the disconnect: history is complete only up to the oldest
        // event that was still waiting for the host's verdict when the connection ended
        // (or when the snapshot was taken, after a restart).
        let cursor = state.complete_until;
        let away = cursor.map(|d| now.saturating_since(d));
        let fresh = daily_due
            || state.last_connected.is_none()
            || away.is_none_or(|d| d > self.config.quick_reconnect_window);
        let since = cursor.map(|d| (d - self.config.since_overlap).as_timestamp());
        conn.catchup_from = if fresh { None } else { cursor };
        state.status = ConnectionStatus::Syncing;
        state.last_connected = Some(now);
        state.disconnected_at = None;
        state.historic_sync_completed = false;
        self.pending.clear(relay);
        self.dirty = true;
        match since {
            Some(since) if !fresh => self.quick_reconnect(relay, since, now),
            _ => self.fresh_start(relay, now),
        }
        if let Some(conn) = self.conns.get_mut(relay) {
            conn.note_live_baseline();
        }
    }

    /// Never connected, away too long, or the daily timer: forget what was confirmed and
    /// sync everything again, with negentropy where the relay has it.
    pub(super) fn fresh_start(&mut self, relay: &RelayUrl, now: WallTime) {
        self.metrics.fresh_starts += 1;
        let jitter = self.daily_jitter();
        if let Some(conn) = self.conns.get_mut(relay) {
            conn.daily_due = Some(now + jitter);
            conn.clear_failures();
            if conn.negentropy == NegentropySupport::Unsupported {
                // Relays get upgraded: give NIP-77 one more chance per fresh start.
                conn.negentropy = NegentropySupport::Unknown;
                conn.negentropy_refused_at = None;
            }
        }
        let state = self.relays.entry(relay);
        state.confirmed = SyncItems::default();
        state.announcements_synced = false;
        self.sync_plus_refresh(relay);
        self.open_layer1(relay, None, now, true);
        if let (Some(add), _) =
            compute_actions_for_relay(relay, &self.targets, &self.pending, &self.relays)
        {
            self.start_items(relay, add.items, None, true, now);
        }
    }

    /// Back within the window: layer 1 and the confirmed items again with `since`, live
    /// rebuilt from confirmed state, then whatever is new. No negentropy.
    fn quick_reconnect(&mut self, relay: &RelayUrl, since: nostr::Timestamp, now: WallTime) {
        self.metrics.quick_reconnects += 1;
        if let Some(conn) = self.conns.get_mut(relay) {
            if conn.daily_due.is_none() {
                let jitter = self.daily_jitter();
                if let Some(conn) = self.conns.get_mut(relay) {
                    conn.daily_due = Some(now + jitter);
                }
            }
        }
        // Layer 1 history that never completed (cut by the disconnect or a restart) is
        // asked in full: `since` would skip what was in flight.
        let layer1_since = self
            .relays
            .get(relay)
            .is_some_and(|s| s.announcements_synced)
            .then_some(since);
        self.open_layer1(relay, layer1_since, now, false);
        let confirmed = self.relays.entry(relay).confirmed.clone();
        if !confirmed.is_empty() {
            let limits = self.limits(relay);
            self.open_live(
                relay,
                live(build_sync_level_aware_filters(&confirmed, &limits, None)),
                now,
            );
            self.start_batch(relay, confirmed, Some(since), false, now);
        }
        if let (Some(add), _) =
            compute_actions_for_relay(relay, &self.targets, &self.pending, &self.relays)
        {
            self.start_items(relay, add.items, None, false, now);
        }
    }

    /// Layer 1, live and historic from `since`, on a relay that carries it.
    fn open_layer1(
        &mut self,
        relay: &RelayUrl,
        since: Option<nostr::Timestamp>,
        now: WallTime,
        negentropy: bool,
    ) {
        if !self.carries_layer1(relay) {
            return;
        }
        if let Some(conn) = self.conns.get_mut(relay) {
            conn.layer1 = true;
        }
        self.open_live(relay, live(layer1_filters(None)), now);
        self.start_batch(relay, SyncItems::default(), since, negentropy, now);
    }

    /// Whether a relay is asked for layer 1 (every announcement and GRASP list it has):
    /// all relays but those carrying only participants' conversations (GRASP-03), which
    /// may be big public relays no announcement lists.
    fn carries_layer1(&self, relay: &RelayUrl) -> bool {
        self.sync_plus.is_none()
            || self.config.bootstrap_relays.contains(relay)
            || self.targets.get(relay).is_none_or(|t| t.is_listed())
    }

    /// A connected relay without layer 1 that now carries it (an outbox relay a new
    /// announcement lists): layer 1 opens, in full. One with layer 1 that carries only
    /// conversations now (no announcement lists it any more) closes it.
    pub(super) fn open_layer1_if_now_carried(&mut self, relay: &RelayUrl, now: WallTime) {
        let connected = self
            .relays
            .get(relay)
            .is_some_and(|s| s.status.is_connected());
        let carried = self.carries_layer1(relay);
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        if connected && carried && !conn.layer1 {
            self.open_layer1(relay, None, now, true);
        } else if conn.layer1 && !carried {
            // No announcement lists it any more, only participants write there: its
            // live layer 1 closes at the rebuild (which keeps the conversations).
            conn.layer1 = false;
            conn.needs_rebuild = true;
        }
    }

    pub(super) fn limits(&self, relay: &RelayUrl) -> crate::filters::RelayLimits {
        self.conns
            .get(relay)
            .map_or_else(|| self.config.default_limits, |c| c.limits)
    }

    /// Opens live subscriptions for `filters`, as few REQs as the relay allows.
    fn open_live(&mut self, relay: &RelayUrl, filters: Vec<Filter>, now: WallTime) {
        if filters.is_empty() {
            return;
        }
        // A rate-limit cooldown outlives the websocket: a relay that said "slow down"
        // and dropped us gets no REQ on reconnect until the cooldown ends. The rebuild
        // at the next check after it reopens layer 1 and everything held.
        if let Some(conn) = self.conns.get_mut(relay) {
            if !conn.health.can_subscribe(now) {
                conn.needs_rebuild = true;
                return;
            }
        }
        let limits = self.limits(relay);
        for req in split_into_reqs(filters, &limits) {
            let id = self.next_subscription_id();
            self.metrics.reqs_sent += 1;
            self.commands.push_back(Command::Subscribe {
                relay: relay.clone(),
                id: id.clone(),
                filters: req.clone(),
                mode: SubscriptionMode::Live,
            });
            if let Some(conn) = self.conns.get_mut(relay) {
                conn.live.insert(id, LiveSub { filters: req });
            }
        }
    }

    /// New items for a connected relay: live subscriptions now, historic as a batch.
    /// Held back (and retried at the next check) while rate-limited or at the batch cap.
    pub(super) fn start_items(
        &mut self,
        relay: &RelayUrl,
        items: SyncItems,
        since: Option<nostr::Timestamp>,
        negentropy: bool,
        now: WallTime,
    ) {
        if items.is_empty() {
            return;
        }
        let at_cap = self.pending.batches(relay).len() >= self.config.max_pending_batches_per_relay;
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        if at_cap || !conn.health.can_subscribe(now) {
            conn.deferred = true;
            return;
        }
        let limits = conn.limits;
        self.open_live(
            relay,
            live(build_sync_level_aware_filters(&items, &limits, None)),
            now,
        );
        self.start_batch(relay, items, since, negentropy, now);
        self.consolidate_if_fragmented(relay, now);
    }

    /// Starts the historic sync of `items` (layer 1 when empty) from `since`: one
    /// queued part per filter, opened by `pump` as slots free up.
    pub(super) fn start_batch(
        &mut self,
        relay: &RelayUrl,
        items: SyncItems,
        since: Option<nostr::Timestamp>,
        negentropy: bool,
        now: WallTime,
    ) {
        let cover = items.clone();
        self.start_batch_covering(relay, items, &cover, since, negentropy, now);
    }

    /// A batch whose filters cover `cover` but which confirms only `items` when done:
    /// the live-gap catch-up covers pending items too, without confirming them before
    /// their own full-history batch finishes.
    fn start_batch_covering(
        &mut self,
        relay: &RelayUrl,
        items: SyncItems,
        cover: &SyncItems,
        since: Option<nostr::Timestamp>,
        negentropy: bool,
        now: WallTime,
    ) {
        self.next_id += 1;
        let id = BatchId(self.next_id);
        if !self.conns.contains_key(relay) {
            return;
        }
        self.wake(relay);
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        // A `since` catch-up is small: REQ. History from the start goes by negentropy
        // wherever the relay has it, also for items found during a sync — in fewer,
        // larger sessions than a REQ's chunks: a session costs a round trip before its
        // ids are known, and its answer is ids, not events.
        let use_negentropy = since.is_none() && conn.negentropy_for(negentropy);
        let limits = if use_negentropy {
            conn.limits.for_negentropy()
        } else {
            conn.limits
        };
        let filters = if cover.is_empty() {
            layer1_filters(since)
        } else {
            build_sync_level_aware_filters(cover, &limits, since)
        };
        // A negentropy session takes one filter. REQs take the relay's filters-per-REQ,
        // so an event matching several of them (a comment's `#e` and `#E`) comes once —
        // where the relay says its `limit` cap: only then does a grouped page tell each
        // filter's end (see `historic/req.rs`).
        if use_negentropy {
            for filter in filters {
                conn.queue.push_back(QueuedPart {
                    kind: PartKind::Negentropy,
                    ..QueuedPart::first_page(id, filter, 0, 0)
                });
            }
        } else {
            conn.queue_grouped(id, filters, 0, 0);
        }
        let mut also_covers = cover.clone();
        also_covers.subtract(&items);
        self.pending.batches_mut(relay).push(PendingBatch {
            id,
            items,
            outstanding: Default::default(),
            awaiting: 0,
            also_covers,
            failure: Default::default(),
            beyond_req: Default::default(),
            asked_by_req: Vec::new(),
            fetch_asked: Default::default(),
            fetch_shared: false,
            layer1: cover.is_empty(),
            full_history: since.is_none(),
            started_at: now,
        });
        self.finish_batch_if_done(relay, id, now);
    }

    /// Live filters fragmented (see `Conn::live_fragmented`) while fewer would do:
    /// close them all and reopen from confirmed ∪ pending items in as few filters as
    /// possible. Unlike the anchor, in-flight batches are kept (their items are covered
    /// by the rebuild), so a consolidation never repeats historic work.
    pub(super) fn consolidate_if_fragmented(&mut self, relay: &RelayUrl, now: WallTime) {
        let Some(conn) = self.conns.get(relay) else {
            return;
        };
        if !conn.live_fragmented() {
            return;
        }
        let open = conn.live_filter_count();
        let minimal =
            1 + build_sync_level_aware_filters(&self.held_items(relay), &conn.limits, None).len();
        if open > minimal {
            self.rebuild_live(relay, now);
        }
    }

    fn held_items(&self, relay: &RelayUrl) -> SyncItems {
        let mut items = self
            .relays
            .get(relay)
            .map(|s| s.confirmed.clone())
            .unwrap_or_default();
        items.merge(&self.pending.items(relay));
        items
    }

    /// Closes every live subscription and reopens layer 1 plus confirmed ∪ pending items.
    pub(super) fn rebuild_live(&mut self, relay: &RelayUrl, now: WallTime) {
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        if !conn.health.can_subscribe(now) {
            conn.needs_rebuild = true;
            return;
        }
        conn.needs_rebuild = false;
        let old: Vec<_> = std::mem::take(&mut conn.live).into_keys().collect();
        let limits = conn.limits;
        let layer1 = conn.layer1;
        self.metrics.consolidations += 1;
        for id in old {
            self.commands.push_back(Command::Unsubscribe {
                relay: relay.clone(),
                id,
            });
        }
        let gap = conn.live_gap_since.take();
        if let Some(gap) = gap {
            // Keep an earlier start only while its catch-up is still running.
            let running = self.pending.batches(relay).iter().any(|b| !b.full_history);
            let earlier = conn.catchup_from.filter(|_| running);
            conn.catchup_from = Some(earlier.map_or(gap, |c| c.min(gap)));
        }
        let mut filters = if layer1 {
            live(layer1_filters(None))
        } else {
            Vec::new()
        };
        filters.extend(live(build_sync_level_aware_filters(
            &self.held_items(relay),
            &limits,
            None,
        )));
        self.open_live(relay, filters, now);
        if let Some(conn) = self.conns.get_mut(relay) {
            conn.note_live_baseline();
        }
        if let Some(gap) = gap {
            // A live subscription was closed under us: what was published while it was
            // down comes by history, as on a quick reconnect.
            let since = (gap - self.config.since_overlap).as_timestamp();
            let confirmed = self.relays.entry(relay).confirmed.clone();
            let held = self.held_items(relay);
            if layer1 {
                self.start_batch(relay, SyncItems::default(), Some(since), false, now);
            }
            if !held.is_empty() {
                self.start_batch_covering(relay, confirmed, &held, Some(since), false, now);
            }
        }
    }

    /// Drops items no longer targeted from confirmed and pending state and closes what
    /// covered them.
    pub(super) fn apply_removals(&mut self, relay: &RelayUrl, items: &SyncItems, now: WallTime) {
        let target = self.targets.get(relay);
        let strip = |held: &mut SyncItems| {
            held.repos.retain(|repo, level| {
                let wanted = target.and_then(|t| t.level(repo)) == Some(*level);
                wanted || !items.repos.contains_key(repo)
            });
            held.root_events
                .retain(|id| !items.root_events.contains(id));
        };
        if let Some(state) = self.relays.get_mut(relay) {
            strip(&mut state.confirmed);
        }
        let mut emptied = Vec::new();
        for batch in self.pending.batches_mut(relay).iter_mut() {
            let was_empty = batch.items.is_empty();
            strip(&mut batch.items);
            if !was_empty && batch.items.is_empty() {
                emptied.push(batch.id);
            }
        }
        for batch in emptied {
            self.cancel_batch(relay, batch);
        }
        self.dirty = true;
        if self
            .relays
            .get(relay)
            .is_some_and(|s| s.status.is_connected())
        {
            self.rebuild_live(relay, now);
        }
    }

    /// Stops every part of a batch and forgets it, without confirming anything.
    fn cancel_batch(&mut self, relay: &RelayUrl, batch: BatchId) {
        if let Some(conn) = self.conns.get_mut(relay) {
            conn.queue.retain(|q| q.batch != batch);
            let ids: Vec<_> = conn
                .historic
                .iter()
                .filter(|(_, h)| h.batch == batch)
                .map(|(id, _)| id.clone())
                .collect();
            for id in ids {
                conn.historic.remove(&id);
                self.commands.push_back(Command::Unsubscribe {
                    relay: relay.clone(),
                    id,
                });
            }
        }
        self.pending.remove(relay, batch);
    }

    pub(super) fn on_connect_failed(&mut self, relay: &RelayUrl, now: WallTime) {
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        conn.health.on_connect_failed(now);
        conn.connect_deadline = None;
        self.metrics.connection_failures += 1;
        let state = self.relays.entry(relay);
        if state.status == ConnectionStatus::Connecting {
            state.status = ConnectionStatus::Disconnected;
        }
    }

    /// Counts one protocol-breaking message from `relay`. Past
    /// `max_misbehaviour_per_connection` the relay is dropped and backed off as a
    /// failure (it degrades, then dies, like a relay that refuses connections); other
    /// relays are not touched.
    pub(super) fn strike(&mut self, relay: &RelayUrl, now: WallTime) {
        let max = self.config.max_misbehaviour_per_connection;
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        conn.misbehaviour = conn.misbehaviour.saturating_add(1);
        if conn.misbehaviour != max {
            return;
        }
        self.metrics.relays_misbehaving += 1;
        self.wake(relay);
        self.commands.push_back(Command::Disconnect {
            relay: relay.clone(),
        });
        self.on_disconnected(relay, now);
        if let Some(conn) = self.conns.get_mut(relay) {
            conn.health.on_connect_failed(now);
            conn.last_error = Some(format!(
                "dropped for misbehaving: {max} unsolicited or flooding messages on one connection"
            ));
        }
    }

    pub(super) fn on_disconnected(&mut self, relay: &RelayUrl, now: WallTime) {
        let status = self
            .relays
            .get(relay)
            .map_or(ConnectionStatus::Disconnected, |s| s.status);
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        if status == ConnectionStatus::Disconnected {
            // Already known: we asked for it, or the report came twice.
            return;
        }
        let was_connected = status.is_connected();
        if was_connected {
            conn.health.on_disconnected(now);
        } else {
            conn.health.on_connect_failed(now);
            self.metrics.connection_failures += 1;
        }
        // Before the wire state and the pending batches go: they bound the cursor.
        let cursor = was_connected.then(|| self.cursor(relay, now));
        self.requeue_lookup(relay);
        if let Some(conn) = self.conns.get_mut(relay) {
            conn.reset_wire();
        }
        let state = self.relays.entry(relay);
        if was_connected {
            state.disconnected_at = Some(now);
            state.complete_until = cursor;
        }
        state.status = ConnectionStatus::Disconnected;
        self.pending.clear(relay);
        self.dirty = true;
    }
}
