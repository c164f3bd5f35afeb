//! The periodic check and the pump: what happens with time rather than with a message —
//! connect attempts and their deadlines, historic deadlines, the end of a rate-limit
//! cooldown, held-back work, failed-history retries, NIP-77 re-probes, the daily fresh
//! start, dropping relays nothing needs, and leaving `Syncing` when history is done.
//! Which relays a check looks at is `timers`' business.

use super::{Command, SyncEngine};
use crate::diff::compute_actions_for_relay;
use crate::model::NegentropySupport;
use crate::model::{ConnectionStatus, RelayUrl, SyncItems, WallTime};

impl SyncEngine {
    /// Every `check_interval`: connects and retries, timeouts, rate-limit resumption,
    /// daily fresh starts, idle disconnects, historic completion — for the relays with
    /// something going on and those whose own deadline came. A relay found idle sleeps
    /// until its next deadline (or until something wakes it), so a check costs what is
    /// happening, not the number of relays.
    pub(super) fn periodic_check(&mut self, now: WallTime) {
        self.timers.wake_due(now);
        for relay in self.timers.watched() {
            self.check_relay(&relay, now);
            match self.idle_until(&relay, now) {
                // Due now (a connect attempt): stays watched, the pump after this
                // check opens it.
                Some(until) if until > now => self.timers.sleep(&relay, until),
                _ if self.conns.contains_key(&relay) => {}
                _ => self.timers.forget(&relay),
            }
        }
    }

    /// When `relay` next needs a look, if nothing is going on with it now: a
    /// disconnected relay at its next connect attempt; a connected one with nothing
    /// open, queued, held back or pending at its daily sync, history retry or NIP-77
    /// re-probe (or never, until something wakes it). `None` while anything is going on
    /// (or when it is gone or no longer wanted: the check drops it).
    fn idle_until(&self, relay: &RelayUrl, now: WallTime) -> Option<WallTime> {
        let wanted = self.is_wanted(relay);
        let conn = self.conns.get(relay).filter(|_| wanted)?;
        match self.relays.get(relay)?.status {
            ConnectionStatus::Disconnected => Some(conn.health.next_attempt_at(now)),
            ConnectionStatus::Connecting | ConnectionStatus::Syncing => None,
            ConnectionStatus::Connected | ConnectionStatus::ConnectedHistoricSyncFailures => {
                let lookup_due = self.lookup_due(relay);
                let busy = !conn.historic.is_empty()
                    || !conn.queue.is_empty()
                    || conn.deferred
                    || conn.needs_rebuild
                    || self.pending.has_pending(relay)
                    || !conn.health.can_subscribe(now)
                    || conn.lookup.is_some()
                    || lookup_due.is_some_and(|t| t <= now);
                if busy {
                    return None;
                }
                let reprobe = conn.reprobe_at(self.config.negentropy_reprobe_interval, now);
                let due = [conn.daily_due, conn.retry_at, reprobe, lookup_due]
                    .into_iter()
                    .flatten()
                    .min();
                Some(due.unwrap_or(WallTime(u64::MAX)))
            }
        }
    }

    fn check_relay(&mut self, relay: &RelayUrl, now: WallTime) {
        let wanted = self.is_wanted(relay);
        let status = self
            .relays
            .get(relay)
            .map_or(ConnectionStatus::Disconnected, |s| s.status);
        if !wanted {
            self.drop_idle(relay, status);
            return;
        }
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        match status {
            ConnectionStatus::Disconnected => {}
            ConnectionStatus::Connecting => {
                if conn.connect_deadline.is_some_and(|d| d <= now) {
                    self.commands.push_back(Command::Disconnect {
                        relay: relay.clone(),
                    });
                    self.on_connect_failed(relay, now);
                }
            }
            _ => {
                self.expire_historic(relay, now);
                self.expire_lookup(relay, now);
                let Some(conn) = self.conns.get_mut(relay) else {
                    return;
                };
                if conn.health.can_subscribe(now) {
                    if conn.daily_due.is_some_and(|d| d <= now)
                        && status != ConnectionStatus::Syncing
                    {
                        self.daily_fresh_start(relay, now);
                        return;
                    }
                    let Some(conn) = self.conns.get_mut(relay) else {
                        return;
                    };
                    if conn.needs_rebuild {
                        self.rebuild_live(relay, now);
                    }
                    self.retry_failed_history(relay, now);
                    self.reprobe_negentropy(relay, now);
                    let Some(conn) = self.conns.get_mut(relay) else {
                        return;
                    };
                    if std::mem::take(&mut conn.deferred) {
                        let (add, remove) = compute_actions_for_relay(
                            relay,
                            &self.targets,
                            &self.pending,
                            &self.relays,
                        );
                        if let Some(remove) = remove {
                            self.apply_removals(relay, &remove.items, now);
                        }
                        if let Some(add) = add {
                            self.start_items(relay, add.items, None, false, now);
                        }
                        self.consolidate_if_fragmented(relay, now);
                    }
                } else {
                    conn.deferred = true;
                }
                self.check_completion(relay, now);
            }
        }
    }

    /// Failed history is asked again once its backoff is over: historic parts only, the
    /// live subscriptions for those items are open already.
    fn retry_failed_history(&mut self, relay: &RelayUrl, now: WallTime) {
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        if conn.retry_at.is_none_or(|t| t > now) {
            return;
        }
        conn.retry_at = None;
        conn.retry_round += 1;
        // The failures stay recorded until a full-history batch succeeds: a retry cut
        // short by a disconnect must not forget them.
        let layer1 = conn.failed_layer1;
        let failed = conn.failed_items.clone();
        let items = self.still_confirmed(relay, failed);
        if layer1 {
            self.start_batch(relay, SyncItems::default(), None, false, now);
        }
        if !items.is_empty() {
            self.start_batch(relay, items, None, false, now);
        }
    }

    /// A relay that refused NIP-77 a re-probe interval ago is offered it again: the
    /// next history from the start tries it, and what REQ could not deliver from this
    /// relay (kept out of REQ retries) is asked by negentropy now.
    fn reprobe_negentropy(&mut self, relay: &RelayUrl, now: WallTime) {
        let interval = self.config.negentropy_reprobe_interval;
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        if conn.reprobe_at(interval, now).is_none_or(|at| at > now) {
            return;
        }
        conn.negentropy = NegentropySupport::Unknown;
        conn.negentropy_refused_at = None;
        self.metrics.negentropy_reprobes += 1;
        let beyond_req = conn.beyond_req.clone();
        let items = self.still_confirmed(relay, beyond_req);
        if !items.is_empty() {
            self.start_batch(relay, items, None, true, now);
        }
    }

    /// `items` less what is no longer confirmed for `relay`: removed items are not
    /// asked again.
    fn still_confirmed(&mut self, relay: &RelayUrl, mut items: SyncItems) -> SyncItems {
        let confirmed = &self.relays.entry(relay).confirmed;
        items
            .repos
            .retain(|repo, level| confirmed.repos.get(repo) == Some(level));
        items
            .root_events
            .retain(|id| confirmed.root_events.contains(id));
        items
    }

    /// The daily fresh start on a live connection: not counted as a disconnect.
    fn daily_fresh_start(&mut self, relay: &RelayUrl, now: WallTime) {
        if let Some(conn) = self.conns.get_mut(relay) {
            let ids: Vec<_> = conn
                .live
                .keys()
                .chain(conn.historic.keys())
                .cloned()
                .collect();
            conn.reset_wire();
            for id in ids {
                self.commands.push_back(Command::Unsubscribe {
                    relay: relay.clone(),
                    id,
                });
            }
        }
        self.pending.clear(relay);
        let state = self.relays.entry(relay);
        state.status = ConnectionStatus::Syncing;
        state.historic_sync_completed = false;
        self.fresh_start(relay, now);
    }

    /// A relay nobody lists any more: disconnect it once its historic sync is over, then
    /// forget it.
    fn drop_idle(&mut self, relay: &RelayUrl, status: ConnectionStatus) {
        if status == ConnectionStatus::Syncing && self.pending.has_pending(relay) {
            return;
        }
        if status != ConnectionStatus::Disconnected {
            self.commands.push_back(Command::Disconnect {
                relay: relay.clone(),
            });
        }
        self.conns.remove(relay);
        self.relays.remove(relay);
        self.pending.clear(relay);
        if let Some(sp) = &mut self.sync_plus {
            sp.forget_relay(relay);
        }
        self.timers.forget(relay);
        self.dirty = true;
    }

    /// Syncing → Connected (or ConnectedHistoricSyncFailures) once no batch is pending,
    /// nothing is held back, and no accepted event waits that could add items.
    pub(super) fn check_completion(&mut self, relay: &RelayUrl, now: WallTime) {
        if !self.accepted.is_empty() {
            return;
        }
        let Some(conn) = self.conns.get(relay) else {
            return;
        };
        if conn.deferred
            || conn.needs_rebuild
            || !conn.queue.is_empty()
            || !conn.historic.is_empty()
        {
            return;
        }
        if self.pending.has_pending(relay) {
            return;
        }
        if compute_actions_for_relay(relay, &self.targets, &self.pending, &self.relays)
            .0
            .is_some()
        {
            return;
        }
        let settled = if conn.has_failures() {
            ConnectionStatus::ConnectedHistoricSyncFailures
        } else {
            ConnectionStatus::Connected
        };
        let Some(state) = self.relays.get_mut(relay) else {
            return;
        };
        match state.status {
            ConnectionStatus::Syncing => {
                state.status = settled;
                state.historic_sync_completed = true;
                state.historic_sync_completed_at = Some(now);
                self.dirty = true;
            }
            ConnectionStatus::ConnectedHistoricSyncFailures | ConnectionStatus::Connected
                if state.status != settled =>
            {
                state.status = settled;
                self.dirty = true;
            }
            _ => {}
        }
    }

    /// Whether anything still needs `relay`: a repo lists it, or it is a bootstrap relay.
    fn is_wanted(&self, relay: &RelayUrl) -> bool {
        self.targets.get(relay).is_some() || self.config.bootstrap_relays.contains(relay)
    }

    /// Opens what can be opened now on `relays`: connections due, queued historic parts
    /// into free slots. Called after every input (with the relays it woke) and timeout
    /// (with the watched relays).
    pub(super) fn pump<'a>(&mut self, relays: impl Iterator<Item = &'a RelayUrl>, now: WallTime) {
        for relay in relays {
            let wanted = self.is_wanted(relay);
            let Some(conn) = self.conns.get_mut(relay).filter(|_| wanted) else {
                continue;
            };
            let Some(state) = self.relays.get_mut(relay) else {
                continue;
            };
            if state.status == ConnectionStatus::Disconnected
                && conn.health.next_attempt_at(now) <= now
            {
                state.status = ConnectionStatus::Connecting;
                conn.health.on_connect_attempt(now);
                conn.connect_deadline = Some(now + self.config.health.connection_timeout());
                self.metrics.connection_attempts += 1;
                self.commands.push_back(Command::Connect {
                    relay: relay.clone(),
                });
            }
            self.open_queued(relay, now);
            self.open_lookup(relay, now);
        }
    }
}
