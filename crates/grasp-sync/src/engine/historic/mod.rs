//! Historic sync of a batch, one kind of part per module: negentropy sessions
//! (`negentropy`), REQ+EOSE pages with `until` pagination (`req`), fetches of the ids
//! negentropy found missing (`fetch`), and batch completion (`batch`). Here: opening
//! queued parts into free slots, what arrives on live and historic subscriptions, and
//! the ways a part ends early (CLOSED, NOTICE, lost messages, deadlines).

mod batch;
mod fetch;
mod negentropy;
mod req;

use nostr::{Event, Filter, SubscriptionId};

use super::conn::{HistoricKind, HistoricSub, PartKind, QueuedPart};
use super::sync_plus::LookupEnd;
use super::{Command, SyncEngine};
use crate::classify::{classify_closed, classify_notice, RelaySignal};
use crate::matching::matches;
use crate::model::NegentropySupport;
use crate::model::{BatchId, RelayUrl, WallTime};
use crate::nip34::Nip34Kind;

/// A part refused by a rate limit this many times in a row, or started again after lost
/// messages this many times, fails its batch.
const MAX_PART_ATTEMPTS: u32 = 3;

/// Order in which events of one page are handed to the host: announcements before the
/// state and threads that depend on them, roots before replies, then oldest first. This
/// is what keeps a root event that came in the same batch as its announcement.
fn ingest_rank(event: &Event) -> (u8, nostr::Timestamp) {
    let rank = match Nip34Kind::of(event.kind) {
        Nip34Kind::Announcement | Nip34Kind::GraspList => 0,
        Nip34Kind::State => 1,
        Nip34Kind::Patch | Nip34Kind::PullRequest | Nip34Kind::Issue => 2,
        _ => 3,
    };
    (rank, event.created_at)
}

impl SyncEngine {
    /// Opens queued historic parts while the relay has free slots and may subscribe.
    pub(super) fn open_queued(&mut self, relay: &RelayUrl, now: WallTime) {
        if !self
            .relays
            .get(relay)
            .is_some_and(|s| s.status.is_connected())
        {
            return;
        }
        loop {
            let Some(conn) = self.conns.get_mut(relay) else {
                return;
            };
            if conn.historic.len() >= self.config.max_concurrent_historic
                || !conn.health.can_subscribe(now)
            {
                return;
            }
            let Some(mut part) = conn.queue.pop_front() else {
                return;
            };
            if part.kind == PartKind::Negentropy
                && conn.negentropy == NegentropySupport::Unsupported
            {
                // Queued after the relay refused NIP-77 (put back when messages were
                // lost): it and any other queued session go as grouped REQs.
                conn.queue.push_front(part);
                conn.sessions_to_reqs();
                continue;
            }
            let kind = part.kind;
            let id = self.next_subscription_id();
            let Some(conn) = self.conns.get_mut(relay) else {
                return;
            };
            let limits = conn.limits;
            let (historic_kind, deadline) = match kind {
                PartKind::Negentropy => self.open_negentropy(relay, &id, &part.filter, now),
                PartKind::Req => self.open_req(relay, &id, &mut part, limits, now),
                PartKind::Fetch { retried } => {
                    self.open_fetch(relay, &id, &part.filter, retried, now)
                }
            };
            if let Some(batch) = self.batch_mut(relay, part.batch) {
                batch.outstanding.insert(id.clone());
            }
            if let Some(conn) = self.conns.get_mut(relay) {
                conn.historic.insert(
                    id,
                    HistoricSub {
                        batch: part.batch,
                        filter: part.filter,
                        also: part.also,
                        kind: historic_kind,
                        deadline,
                        received: 0,
                        overflowed: false,
                        attempts: part.attempts,
                        restarts: part.restarts,
                        origin: part.origin,
                    },
                );
            }
        }
    }

    /// Says why history from `relay` is incomplete, for its status (`last_error`).
    fn note_history_problem(&mut self, relay: &RelayUrl, filter: &Filter, why: &str) {
        if let Some(conn) = self.conns.get_mut(relay) {
            let what = serde_json::to_string(filter).unwrap_or_default();
            let what: String = what.chars().take(160).collect();
            conn.last_error = Some(format!("history incomplete: {why} (filter {what})"));
        }
    }

    pub(super) fn on_event(
        &mut self,
        relay: &RelayUrl,
        sub: &SubscriptionId,
        event: Box<Event>,
        now: WallTime,
    ) {
        self.metrics.events_received += 1;
        let Some(conn) = self.conns.get_mut(relay) else {
            self.metrics.dropped_unknown_subscription += 1;
            return;
        };
        conn.events_received += 1;
        if conn.misbehaviour >= self.config.max_misbehaviour_per_connection {
            // Dropped already; what is still in the pipe is ignored.
            return;
        }
        if conn.lookup.as_ref().is_some_and(|l| &l.id == sub) {
            self.on_lookup_event(relay, &event, now);
            return;
        }
        if let Some(live) = conn.live.get(sub) {
            // Live filters carry `limit: 0`, which says nothing about matching:
            // `matches` ignores `limit`, so the filters are matched as they are
            // (no clone per event).
            if live.filters.iter().any(|f| matches(f, &event)) {
                self.ingest(relay, event, None, now);
            } else {
                self.metrics.dropped_unsolicited += 1;
                self.strike(relay, now);
            }
            return;
        }
        let Some(h) = conn.historic.get_mut(sub) else {
            // A relay sends until it reads our CLOSE, and parts are closed early when
            // messages were lost: what arrives on a subscription we closed is taken
            // as a live event would be, where the relay's live filters want it —
            // rather than asked for again, and no misbehaviour. Anything else is.
            let wanted = conn
                .live
                .values()
                .any(|l| l.filters.iter().any(|f| matches(f, &event)));
            if wanted && self.issued(sub) {
                self.metrics.events_after_close += 1;
                self.ingest(relay, event, None, now);
            } else {
                self.metrics.dropped_unknown_subscription += 1;
                self.strike(relay, now);
            }
            return;
        };
        if !h.filters().any(|f| matches(f, &event)) {
            self.metrics.dropped_unsolicited += 1;
            self.strike(relay, now);
            return;
        }
        h.received += 1;
        // The same event twice on one subscription is a relay's (or the wire's) echo:
        // ignored, neither kept twice nor counted against the page.
        let kept = match &mut h.kind {
            HistoricKind::Negentropy => false,
            HistoricKind::Req { buffer, page, ids } => {
                if !ids.insert(event.id) {
                    return;
                }
                // `limit` holds per filter.
                let within = ids.len() <= page.limit * (1 + h.also.len());
                if within {
                    buffer.push(*event);
                }
                within
            }
            HistoricKind::Fetch(f) => {
                if f.got.contains(&event.id) {
                    return;
                }
                let wanted = f.asked.contains(&event.id);
                if wanted {
                    f.got.insert(event.id);
                    f.buffer.push(*event);
                }
                wanted
            }
        };
        if !kept {
            h.overflowed = true;
            self.metrics.dropped_flood += 1;
            self.strike(relay, now);
        }
    }

    /// Hands over what one page of `batch` brought, in dependency order.
    fn ingest_sorted(
        &mut self,
        relay: &RelayUrl,
        mut events: Vec<Event>,
        batch: BatchId,
        now: WallTime,
    ) {
        events.sort_by_key(ingest_rank);
        for event in events {
            self.ingest(relay, Box::new(event), Some(batch), now);
        }
    }

    pub(super) fn on_eose(&mut self, relay: &RelayUrl, sub: &SubscriptionId, now: WallTime) {
        if self.end_lookup(relay, sub, LookupEnd::Answered, now) {
            return;
        }
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        let Some(h) = conn.historic.remove(sub) else {
            return;
        };
        self.commands.push_back(Command::Unsubscribe {
            relay: relay.clone(),
            id: sub.clone(),
        });
        let (part, kind) = h.end();
        match kind {
            HistoricKind::Negentropy => {
                // EOSE is not part of NIP-77; a relay sending it is confused. Fall back.
                self.requeue_as_req(relay, part.batch, part.filter, part.attempts, part.restarts);
                self.finish_part(relay, part.batch, sub, None, now);
            }
            HistoricKind::Req { buffer, page, .. } => {
                self.on_req_page(relay, sub, part, buffer, page, now)
            }
            HistoricKind::Fetch(f) => self.on_fetch_answer(relay, sub, part, f, now),
        }
    }

    pub(super) fn on_closed(
        &mut self,
        relay: &RelayUrl,
        sub: &SubscriptionId,
        message: &str,
        now: WallTime,
    ) {
        let signal = classify_closed(message);
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        if signal == RelaySignal::RateLimited {
            conn.health.on_rate_limited(now);
        }
        if self.end_lookup(relay, sub, LookupEnd::Refused, now) {
            return;
        }
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        if let Some(closed) = conn.live.remove(sub) {
            if signal == RelaySignal::TooManyFilters {
                // The rebuild below splits the same filters into more REQs.
                conn.learn_max_filters(closed.filters.len());
            }
            conn.live_gap_since.get_or_insert(now);
            // What this subscription covered is no longer live: rebuild once allowed,
            // a bounded number of times per connection. Several subscriptions closed
            // before the rebuild (a relay refusing each REQ of one rebuild) count once.
            let rebuild_pending = conn.needs_rebuild;
            if !rebuild_pending && conn.live_resubscribes < self.config.max_live_resubscribes {
                conn.live_resubscribes += 1;
                conn.needs_rebuild = true;
            } else if !rebuild_pending {
                conn.live_failed = true;
            }
            return;
        }
        let refused = matches!(
            signal,
            RelaySignal::RateLimited | RelaySignal::TooManySubscriptions
        );
        if conn.is_open_session(sub) && !refused {
            // A relay closing a NEG-OPEN for another reason than a limit does not speak
            // NIP-77 for us: every open and queued session becomes grouped REQs.
            self.abandon_negentropy(relay, now);
            return;
        }
        let Some(h) = conn.historic.remove(sub) else {
            return;
        };
        if signal == RelaySignal::TooManyFilters && matches!(h.kind, HistoricKind::Req { .. }) {
            self.split_group(relay, sub, h, now);
        } else {
            // A session refused by a limit is asked again as a session.
            self.end_part(relay, sub, h, refused, "closed before EOSE", now);
        }
    }

    /// Ends historic part `h` (subscription `sub`, already removed from the relay's
    /// open set) that did not reach EOSE: what it brought is handed over; a part
    /// `refused` by a rate limit is queued again — a REQ from the page it was on, with
    /// the ids it has seen — until it was refused [`MAX_PART_ATTEMPTS`] times in a row;
    /// otherwise its batch counts as failed (retried with backoff), `why` in the
    /// relay's status.
    fn end_part(
        &mut self,
        relay: &RelayUrl,
        sub: &SubscriptionId,
        h: HistoricSub,
        refused: bool,
        why: &str,
        now: WallTime,
    ) {
        let again = refused && h.attempts < MAX_PART_ATTEMPTS;
        let (kind, buffer, resume) = match h.kind {
            HistoricKind::Negentropy => (PartKind::Negentropy, Vec::new(), None),
            HistoricKind::Req { buffer, page, .. } => (PartKind::Req, buffer, Some(Box::new(page))),
            HistoricKind::Fetch(f) => (PartKind::Fetch { retried: false }, f.buffer, None),
        };
        self.ingest_sorted(relay, buffer, h.batch, now);
        if again {
            if let Some(conn) = self.conns.get_mut(relay) {
                conn.queue.push_front(QueuedPart {
                    batch: h.batch,
                    filter: h.filter,
                    also: h.also,
                    kind,
                    attempts: h.attempts + 1,
                    restarts: h.restarts,
                    resume,
                    origin: h.origin,
                });
            }
            self.finish_part(relay, h.batch, sub, None, now);
        } else {
            let why = if refused {
                "refused by a rate limit too many times in a row"
            } else {
                why
            };
            self.note_history_problem(relay, &h.filter, why);
            self.fail_also(relay, h.batch, &h.also);
            self.finish_part(relay, h.batch, sub, Some(&h.filter), now);
        }
    }

    /// A grouped REQ the relay refused for its number of filters: later groups are
    /// halved, what it brought is handed over and each filter queued alone, from its
    /// first page. A lone filter refused so fails its batch.
    fn split_group(
        &mut self,
        relay: &RelayUrl,
        sub: &SubscriptionId,
        h: HistoricSub,
        now: WallTime,
    ) {
        if h.also.is_empty() {
            self.end_part(relay, sub, h, false, "refused as too many filters", now);
            return;
        }
        if let Some(conn) = self.conns.get_mut(relay) {
            conn.learn_max_filters(1 + h.also.len());
        }
        let HistoricSub {
            batch,
            filter,
            also,
            kind,
            attempts,
            restarts,
            ..
        } = h;
        if let HistoricKind::Req { buffer, .. } = kind {
            self.ingest_sorted(relay, buffer, batch, now);
        }
        if let Some(conn) = self.conns.get_mut(relay) {
            let filters = std::iter::once(filter).chain(also).collect();
            conn.queue_alone(batch, filters, attempts, restarts);
        }
        self.finish_part(relay, batch, sub, None, now);
    }

    pub(super) fn on_notice(&mut self, relay: &RelayUrl, message: &str, now: WallTime) {
        self.strike(relay, now);
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        match classify_notice(message) {
            RelaySignal::RateLimited => conn.health.on_rate_limited(now),
            RelaySignal::TooManySubscriptions => {
                conn.health.on_rate_limited(now);
                conn.needs_rebuild = true;
            }
            RelaySignal::NegentropyUnsupported => self.abandon_negentropy(relay, now),
            RelaySignal::TooManyFilters => self.split_unanswered_groups(relay, now),
            _ => {}
        }
    }

    /// "Too many filters" as a NOTICE names no subscription: the grouped REQs that have
    /// brought nothing yet were most likely refused. They are closed and split, and the
    /// filters per REQ halved (as for a CLOSED saying so).
    fn split_unanswered_groups(&mut self, relay: &RelayUrl, now: WallTime) {
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        let refused: Vec<SubscriptionId> = conn
            .historic
            .iter()
            .filter(|(_, h)| !h.also.is_empty() && h.received == 0)
            .map(|(id, _)| id.clone())
            .collect();
        for sub in refused {
            let Some(conn) = self.conns.get_mut(relay) else {
                return;
            };
            let Some(h) = conn.historic.remove(&sub) else {
                continue;
            };
            self.commands.push_back(Command::Unsubscribe {
                relay: relay.clone(),
                id: sub.clone(),
            });
            self.split_group(relay, &sub, h, now);
        }
    }

    /// Messages from `relay` were lost on the way in (after `since`): every historic
    /// part open there may be missing events or its EOSE, so each starts again from its
    /// first page (what it already brought is kept; a part that keeps losing fails its
    /// batch, which is then retried with backoff); live subscriptions may have missed
    /// events too, so the relay gets a `since` catch-up, as after a closed live
    /// subscription; Sync+ asks about its participants again.
    pub(super) fn on_messages_lost(&mut self, relay: &RelayUrl, since: WallTime, now: WallTime) {
        if !self.conns.contains_key(relay) {
            return;
        }
        self.metrics.messages_lost += 1;
        self.sync_plus_messages_lost(relay);
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        let gap = conn.live_gap_since.map_or(since, |g| g.min(since));
        conn.live_gap_since = Some(gap);
        conn.needs_rebuild = true;
        let open: Vec<SubscriptionId> = conn.historic.keys().cloned().collect();
        for sub in open {
            let Some(conn) = self.conns.get_mut(relay) else {
                return;
            };
            let Some(h) = conn.historic.remove(&sub) else {
                continue;
            };
            let (kind, buffer) = match h.kind {
                HistoricKind::Negentropy => (PartKind::Negentropy, Vec::new()),
                HistoricKind::Req { buffer, .. } => (PartKind::Req, buffer),
                HistoricKind::Fetch(f) => (PartKind::Fetch { retried: false }, f.buffer),
            };
            let again = h.restarts < MAX_PART_ATTEMPTS;
            if again {
                conn.queue.push_front(QueuedPart {
                    batch: h.batch,
                    filter: h.filter.clone(),
                    also: h.also.clone(),
                    kind,
                    attempts: h.attempts,
                    restarts: h.restarts + 1,
                    resume: None,
                    origin: h.origin.clone(),
                });
            }
            if kind != PartKind::Negentropy {
                self.commands.push_back(Command::Unsubscribe {
                    relay: relay.clone(),
                    id: sub.clone(),
                });
            }
            self.ingest_sorted(relay, buffer, h.batch, now);
            if !again {
                self.fail_also(relay, h.batch, &h.also);
            }
            let failed = (!again).then_some(&h.filter);
            self.finish_part(relay, h.batch, &sub, failed, now);
        }
    }

    /// Historic subscriptions past their deadline: negentropy falls back, REQs fail.
    pub(super) fn expire_historic(&mut self, relay: &RelayUrl, now: WallTime) {
        let Some(conn) = self.conns.get(relay) else {
            return;
        };
        let expired: Vec<SubscriptionId> = conn
            .historic
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        // No CLOSE for a negentropy session: it is no REQ subscription, and the
        // executor ends it itself (idle or total timeout) — this is only the backstop
        // for an answer that never came. Sessions expiring together fall back together,
        // so a chunk's `#e`/`#E`/`#q` still share a REQ.
        let (sessions, reqs): (Vec<_>, Vec<_>) = expired
            .into_iter()
            .partition(|sub| conn.is_open_session(sub));
        if !sessions.is_empty() {
            self.fall_back_to_req(relay, sessions, now);
        }
        for sub in reqs {
            let Some(conn) = self.conns.get_mut(relay) else {
                return;
            };
            let Some(h) = conn.historic.get(&sub) else {
                continue;
            };
            // A rate-limit NOTICE names no subscription: a REQ that brought nothing and
            // was open when one came was most likely the one refused. It resumes at its
            // page after the cooldown, like a REQ refused by CLOSED; REQs the relay did
            // accept are never closed early for it.
            let opened = h.deadline - self.config.subscription_timeout;
            let refused = h.received == 0 && conn.health.rate_limited_since(opened);
            let Some(h) = conn.historic.remove(&sub) else {
                continue;
            };
            self.commands.push_back(Command::Unsubscribe {
                relay: relay.clone(),
                id: sub.clone(),
            });
            self.end_part(relay, &sub, h, refused, "no EOSE in time", now);
        }
    }
}
