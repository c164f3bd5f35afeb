//! Historic sync of a batch: negentropy sessions, REQ+EOSE pages with `until`
//! pagination, fetches of the ids negentropy found missing; what arrives on live and
//! historic subscriptions; CLOSED and NOTICE handling; batch completion.

use std::collections::BTreeSet;

use nostr::filter::MatchEventOptions;
use nostr::{Event, EventId, Filter, SubscriptionId};

use super::conn::{HistoricKind, HistoricSub, PageResume, PartKind, QueuedPart};
use super::{Command, NegentropyFailure, SubscriptionMode, SyncEngine};
use crate::classify::{classify_closed, classify_notice, RelaySignal};
use crate::filters::{ids_filters, items_named_by, with_page};
use crate::model::NegentropySupport;
use crate::model::{BatchId, PendingBatch, RelayUrl, SyncItems, WallTime};
use crate::nip34;
use crate::pagination::{IncompleteReason, PageDecision, PaginationConfig, Paginator};

/// The smallest `limit` cap we assume a relay may impose without saying so in NIP-11.
const MIN_PLAUSIBLE_CAP: usize = 10;

/// A part refused by a rate limit this many times in a row, or started again after lost
/// messages this many times, fails its batch.
const MAX_PART_ATTEMPTS: u32 = 3;

/// Order in which events of one page are handed to the host: announcements before the
/// state and threads that depend on them, roots before replies, then oldest first. This
/// is what keeps a root event that came in the same batch as its announcement.
fn ingest_rank(event: &Event) -> (u8, nostr::Timestamp) {
    let k = event.kind;
    let rank = if k == nip34::KIND_REPO_ANNOUNCEMENT || k == nip34::KIND_GRASP_LIST {
        0
    } else if k == nip34::KIND_REPO_STATE {
        1
    } else if nip34::is_root_kind(k) {
        2
    } else {
        3
    };
    (rank, event.created_at)
}

/// What `filter` names of `batch`'s items and of what it also covers.
fn named_in_batch(batch: &PendingBatch, filter: &Filter) -> Option<SyncItems> {
    let mut scope = batch.items.clone();
    scope.merge(&batch.also_covers);
    items_named_by(filter, &scope)
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
            let kind = match part.kind {
                PartKind::Negentropy if conn.negentropy == NegentropySupport::Unsupported => {
                    PartKind::Req
                }
                k => k,
            };
            let id = self.next_subscription_id();
            let Some(conn) = self.conns.get_mut(relay) else {
                return;
            };
            let limits = conn.limits;
            let (historic_kind, deadline) = match kind {
                PartKind::Negentropy => {
                    self.metrics.negentropy_sessions += 1;
                    self.commands.push_back(Command::Negentropy {
                        relay: relay.clone(),
                        session: id.clone(),
                        filter: part.filter.clone(),
                    });
                    (
                        HistoricKind::Negentropy,
                        now + self.config.negentropy_total_timeout
                            + super::config::NEGENTROPY_ANSWER_GRACE,
                    )
                }
                PartKind::Req => {
                    let PageResume {
                        paginator,
                        until,
                        limit,
                    } = match part.resume.take() {
                        Some(resume) => *resume,
                        None => {
                            let paginator = Paginator::new(
                                limits.page_limit,
                                limits.max_limit,
                                PaginationConfig::default(),
                            );
                            let limit = paginator.limit();
                            PageResume {
                                paginator,
                                until: None,
                                limit,
                            }
                        }
                    };
                    self.metrics.reqs_sent += 1;
                    self.commands.push_back(Command::Subscribe {
                        relay: relay.clone(),
                        id: id.clone(),
                        filters: vec![with_page(part.filter.clone(), until, limit)],
                        mode: SubscriptionMode::Historic,
                    });
                    (
                        HistoricKind::Req {
                            buffer: Vec::new(),
                            page: PageResume {
                                paginator,
                                until,
                                limit,
                            },
                        },
                        now + self.config.subscription_timeout,
                    )
                }
                PartKind::Fetch { retried } => {
                    let asked: BTreeSet<EventId> = part.filter.ids.clone().unwrap_or_default();
                    self.metrics.reqs_sent += 1;
                    self.commands.push_back(Command::Subscribe {
                        relay: relay.clone(),
                        id: id.clone(),
                        filters: vec![part.filter.clone()],
                        mode: SubscriptionMode::Historic,
                    });
                    let kind = HistoricKind::Fetch {
                        asked,
                        got: BTreeSet::new(),
                        buffer: Vec::new(),
                        retried,
                    };
                    (kind, now + self.config.subscription_timeout)
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
                        kind: historic_kind,
                        deadline,
                        received: 0,
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

    pub(super) fn batch_mut(
        &mut self,
        relay: &RelayUrl,
        id: BatchId,
    ) -> Option<&mut crate::model::PendingBatch> {
        self.pending
            .batches_mut(relay)
            .iter_mut()
            .find(|b| b.id == id)
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
        let opts = MatchEventOptions::new();
        if let Some(live) = conn.live.get(sub) {
            // Live filters carry `limit: 0`, which says nothing about matching:
            // `match_event` ignores `limit`, so the filters are matched as they are
            // (no clone per event).
            if live.filters.iter().any(|f| f.match_event(&event, opts)) {
                self.ingest(relay, event, None, now);
            } else {
                self.metrics.dropped_unsolicited += 1;
                self.strike(relay, now);
            }
            return;
        }
        let Some(h) = conn.historic.get_mut(sub) else {
            self.metrics.dropped_unknown_subscription += 1;
            self.strike(relay, now);
            return;
        };
        if !h.filter.match_event(&event, opts) {
            self.metrics.dropped_unsolicited += 1;
            self.strike(relay, now);
            return;
        }
        h.received += 1;
        let kept = match &mut h.kind {
            HistoricKind::Negentropy => false,
            HistoricKind::Req { buffer, page } => {
                let within = h.received <= page.limit;
                if within {
                    buffer.push(*event);
                }
                within
            }
            HistoricKind::Fetch {
                asked, got, buffer, ..
            } => {
                let wanted = got.insert(event.id) && asked.contains(&event.id);
                if wanted {
                    buffer.push(*event);
                }
                wanted
            }
        };
        if !kept {
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
        match h.kind {
            HistoricKind::Negentropy => {
                // EOSE is not part of NIP-77; a relay sending it is confused. Fall back.
                self.requeue_as_req(relay, h.batch, h.filter, h.attempts);
                self.finish_part(relay, h.batch, sub, None, now);
            }
            HistoricKind::Req {
                buffer,
                page:
                    PageResume {
                        paginator: mut state,
                        until,
                        ..
                    },
            } => {
                let page: Vec<_> = buffer.iter().map(|e| (e.id, e.created_at)).collect();
                if self.batch_mut(relay, h.batch).is_none() {
                    self.ingest_sorted(relay, buffer, h.batch, now);
                    self.finish_part(relay, h.batch, sub, None, now);
                    return;
                }
                let outcome = state.on_page(until, &page);
                let fresh: BTreeSet<EventId> = outcome.new_ids.iter().copied().collect();
                self.ingest_sorted(
                    relay,
                    buffer
                        .into_iter()
                        .filter(|e| fresh.contains(&e.id))
                        .collect(),
                    h.batch,
                    now,
                );
                // What asking again by REQ cannot change: a tie group over the relay's
                // known cap, a relay that ignores `until` (after its largest page).
                let beyond_req = match outcome.incomplete {
                    Some(IncompleteReason::TieGroupLargerThanCap { .. }) => {
                        self.limits(relay).max_limit.is_some()
                    }
                    Some(IncompleteReason::RelayIgnoresUntil) => true,
                    _ => false,
                };
                if beyond_req {
                    if let Some(b) = self.batch_mut(relay, h.batch) {
                        if let Some(named) = named_in_batch(b, &h.filter) {
                            b.beyond_req.merge(&named);
                        }
                    }
                }
                let failed = match outcome.incomplete {
                    // A short page of one timestamp from a relay whose cap we do not
                    // know: "all there was" or "capped there". No relay caps `limit`
                    // below `MIN_PLAUSIBLE_CAP`, so a smaller page is the end, not a
                    // loss (a single comment must not fail a batch).
                    Some(IncompleteReason::TieGroupMayExceedUnknownCap { .. }) => {
                        page.len() >= MIN_PLAUSIBLE_CAP
                    }
                    Some(_) => true,
                    None => false,
                };
                if let (true, Some(reason)) = (failed, outcome.incomplete) {
                    self.note_history_problem(relay, &h.filter, &format!("{reason:?}"));
                }
                // Recorded as beyond REQ above, not as a failure to retry.
                let failed = failed && !beyond_req;
                match outcome.decision {
                    PageDecision::Done => {
                        self.finish_part(relay, h.batch, sub, failed.then_some(&h.filter), now)
                    }
                    PageDecision::Next { until, limit } => {
                        // The next page waits its turn like any part: a free slot and
                        // no rate-limit cooldown. A page arrived: the refusals count
                        // starts again.
                        if let Some(conn) = self.conns.get_mut(relay) {
                            conn.queue.push_front(QueuedPart {
                                batch: h.batch,
                                filter: h.filter.clone(),
                                kind: PartKind::Req,
                                attempts: 0,
                                restarts: h.restarts,
                                resume: Some(Box::new(PageResume {
                                    paginator: state,
                                    until: Some(until),
                                    limit,
                                })),
                                origin: None,
                            });
                        }
                        self.finish_part(relay, h.batch, sub, failed.then_some(&h.filter), now);
                        self.open_queued(relay, now);
                    }
                }
            }
            HistoricKind::Fetch {
                asked,
                got,
                buffer,
                retried,
            } => {
                self.ingest_sorted(relay, buffer, h.batch, now);
                let missing: Vec<EventId> = asked.difference(&got).copied().collect();
                if missing.is_empty() {
                    self.finish_part(relay, h.batch, sub, None, now);
                } else if !got.is_empty() || !retried {
                    // Progress (a relay capping `limit` below the chunk) or a first
                    // miss: ask again for what is missing. The set shrinks or the next
                    // empty answer ends it, so this terminates.
                    let limits = self.limits(relay);
                    if let Some(conn) = self.conns.get_mut(relay) {
                        for filter in ids_filters(&missing, &limits) {
                            let kind = PartKind::Fetch {
                                retried: got.is_empty(),
                            };
                            conn.queue.push_front(QueuedPart {
                                batch: h.batch,
                                filter,
                                kind,
                                attempts: h.attempts,
                                restarts: h.restarts,
                                resume: None,
                                origin: h.origin.clone(),
                            });
                        }
                    }
                    self.finish_part(relay, h.batch, sub, None, now);
                } else if let Some(origin) = h.origin {
                    // A retry that brought none of the ids asked: the relay will not
                    // by id. Ask for what its reconciliation covered by REQ+EOSE: once
                    // (that part has no origin), and once for all of the session's
                    // fetches.
                    let asked_already = self.conns.get(relay).is_some_and(|c| {
                        c.queue.iter().any(|q| {
                            q.batch == h.batch && q.kind == PartKind::Req && q.filter == *origin
                        }) || c.historic.values().any(|o| {
                            o.batch == h.batch
                                && matches!(o.kind, HistoricKind::Req { .. })
                                && o.filter == *origin
                        })
                    });
                    if !asked_already {
                        self.requeue_as_req(relay, h.batch, *origin, 0);
                    }
                    self.finish_part(relay, h.batch, sub, None, now);
                } else {
                    let why = "the relay returned none of the ids its reconciliation offered";
                    self.note_history_problem(relay, &h.filter, why);
                    self.finish_part(relay, h.batch, sub, Some(&h.filter), now);
                }
            }
        }
    }

    /// One subscription of a batch ended (failed or not); the batch finishes when none
    /// is left open or queued.
    ///
    /// `failed`: the filter of a part that failed — what it names of the batch's items
    /// is asked again later; a filter that names none (layer 1, an ids fetch) fails the
    /// whole batch.
    fn finish_part(
        &mut self,
        relay: &RelayUrl,
        batch: BatchId,
        sub: &SubscriptionId,
        failed: Option<&Filter>,
        now: WallTime,
    ) {
        if let Some(b) = self.batch_mut(relay, batch) {
            b.outstanding.remove(sub);
            if let Some(filter) = failed {
                let named = named_in_batch(b, filter);
                b.failure.add(named.as_ref());
            }
        }
        self.finish_batch_if_done(relay, batch, now);
    }

    /// Confirms a batch whose parts are all done and whose events all have the host's
    /// verdict: its items move to confirmed (even if a part failed: live subscriptions
    /// cover them, failed history is retried with backoff, and re-adding them now would
    /// loop).
    pub(super) fn finish_batch_if_done(&mut self, relay: &RelayUrl, batch: BatchId, now: WallTime) {
        if self.conns.get(relay).is_some_and(|c| c.batch_busy(batch)) {
            return;
        }
        let batches = self.pending.batches_mut(relay);
        let Some(pos) = batches.iter().position(|b| b.id == batch) else {
            return;
        };
        if batches[pos].awaiting > 0 {
            return;
        }
        let done = batches.remove(pos);
        let state = self.relays.entry(relay);
        if done.layer1 {
            // A `since` catch-up says nothing about older announcements.
            state.announcements_synced |= done.full_history;
        } else {
            state.confirmed.merge(&done.items);
        }
        let max_rounds = self.config.max_history_retries;
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        if done.failure.is_failed() || !done.beyond_req.is_empty() {
            self.metrics.batches_failed += 1;
            conn.last_failure_at = Some(now);
            if done.layer1 {
                conn.failed_layer1 = true;
            } else {
                // Only what the failed parts named is asked again (all of it when a
                // failure named nothing).
                let mut retry = done.failure.to_retry(&done.items);
                // A catch-up also covered pending items: their gap was not filled either.
                retry.merge(&done.failure.to_retry(&done.also_covers));
                // What REQ cannot deliver is not asked again by REQ, also where an
                // earlier failure had it waiting for a retry — unless another part
                // failed for it just now.
                let mut settled = done.beyond_req.clone();
                settled.subtract(&retry);
                conn.failed_items.subtract(&settled);
                conn.failed_items.merge(&retry);
                conn.beyond_req.merge(&done.beyond_req);
            }
            if conn.retry_round < max_rounds && conn.retry_at.is_none() {
                // 30 s, 1 min, 2 min ... capped at an hour: a relay that keeps failing
                // is asked rarely; the daily fresh start covers the rest.
                let backoff = std::time::Duration::from_secs(30)
                    .saturating_mul(1u32 << conn.retry_round.min(7))
                    .min(std::time::Duration::from_secs(3600));
                conn.retry_at = Some(now + backoff);
            }
        } else if done.full_history {
            self.metrics.batches_completed += 1;
            // A success clears only failures older than the batch: its parts may have
            // run before a later failure (a gap whose catch-up failed) and say nothing
            // about it.
            let clears = conn
                .last_failure_at
                .is_none_or(|failed| failed <= done.started_at);
            if clears && done.layer1 {
                conn.failed_layer1 = false;
            } else if clears {
                conn.failed_items.subtract(&done.items);
                conn.beyond_req.subtract(&done.items);
            }
        } else {
            self.metrics.batches_completed += 1;
        }
        self.dirty = true;
        self.check_completion(relay, now);
    }

    fn requeue_as_req(&mut self, relay: &RelayUrl, batch: BatchId, filter: Filter, attempts: u32) {
        self.metrics.negentropy_fallbacks += 1;
        if let Some(conn) = self.conns.get_mut(relay) {
            conn.queue.push_front(QueuedPart {
                batch,
                filter,
                kind: PartKind::Req,
                attempts,
                restarts: 0,
                resume: None,
                origin: None,
            });
        }
    }

    pub(super) fn on_negentropy_result(
        &mut self,
        relay: &RelayUrl,
        session: &SubscriptionId,
        need: Vec<EventId>,
        now: WallTime,
    ) {
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        if !matches!(
            conn.historic.get(session).map(|h| &h.kind),
            Some(HistoricKind::Negentropy)
        ) {
            return;
        }
        let Some(h) = conn.historic.remove(session) else {
            return;
        };
        conn.negentropy = NegentropySupport::Supported;
        let limits = conn.limits;
        let mut need = need;
        need.sort();
        need.dedup();
        for filter in ids_filters(&need, &limits).into_iter().rev() {
            conn.queue.push_front(QueuedPart {
                batch: h.batch,
                filter,
                kind: PartKind::Fetch { retried: false },
                attempts: 0,
                restarts: h.restarts,
                resume: None,
                origin: Some(Box::new(h.filter.clone())),
            });
        }
        self.finish_part(relay, h.batch, session, None, now);
    }

    pub(super) fn on_negentropy_failed(
        &mut self,
        relay: &RelayUrl,
        session: &SubscriptionId,
        reason: &NegentropyFailure,
        now: WallTime,
    ) {
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        if !matches!(
            conn.historic.get(session).map(|h| &h.kind),
            Some(HistoricKind::Negentropy)
        ) {
            return;
        }
        let Some(h) = conn.historic.remove(session) else {
            return;
        };
        if matches!(
            reason,
            NegentropyFailure::Unsupported | NegentropyFailure::Timeout
        ) {
            conn.refuse_negentropy(now);
        }
        self.requeue_as_req(relay, h.batch, h.filter, h.attempts);
        self.finish_part(relay, h.batch, session, None, now);
    }

    /// Every negentropy session on `relay` falls back to REQ+EOSE (the relay said it does
    /// not speak NIP-77, or went silent).
    fn abandon_negentropy(&mut self, relay: &RelayUrl, now: WallTime) {
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        conn.refuse_negentropy(now);
        for part in conn.queue.iter_mut() {
            if part.kind == PartKind::Negentropy {
                part.kind = PartKind::Req;
            }
        }
        let sessions: Vec<SubscriptionId> = conn
            .historic
            .iter()
            .filter(|(_, h)| matches!(h.kind, HistoricKind::Negentropy))
            .map(|(id, _)| id.clone())
            .collect();
        for session in sessions {
            self.on_negentropy_failed(relay, &session, &NegentropyFailure::Unsupported, now);
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
        if let Some(closed) = conn.live.remove(sub) {
            if signal == RelaySignal::TooManyFilters && closed.filters.len() > 1 {
                // A limit learnt from the refusal: half as many filters per REQ (the
                // rebuild below splits the same filters into more REQs).
                let fewer = (closed.filters.len() / 2).max(1);
                conn.limits.max_filters_per_req = conn.limits.max_filters_per_req.min(fewer);
            }
            conn.live_gap_since.get_or_insert(now);
            // What this subscription covered is no longer live: rebuild once allowed,
            // a bounded number of times per connection.
            if conn.live_resubscribes < self.config.max_live_resubscribes {
                conn.live_resubscribes += 1;
                conn.needs_rebuild = true;
            } else {
                conn.live_failed = true;
            }
            return;
        }
        let Some(h) = conn.historic.remove(sub) else {
            return;
        };
        match h.kind {
            HistoricKind::Negentropy => {
                conn.refuse_negentropy(now);
                self.requeue_as_req(relay, h.batch, h.filter, h.attempts);
                self.finish_part(relay, h.batch, sub, None, now);
            }
            HistoricKind::Req { .. } | HistoricKind::Fetch { .. } => {
                let refused = matches!(
                    signal,
                    RelaySignal::RateLimited | RelaySignal::TooManySubscriptions
                );
                self.end_part(relay, sub, h, refused, "closed before EOSE", now);
            }
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
            HistoricKind::Req { buffer, page } => (PartKind::Req, buffer, Some(Box::new(page))),
            HistoricKind::Fetch { buffer, .. } => {
                (PartKind::Fetch { retried: false }, buffer, None)
            }
        };
        self.ingest_sorted(relay, buffer, h.batch, now);
        if again {
            if let Some(conn) = self.conns.get_mut(relay) {
                conn.queue.push_front(QueuedPart {
                    batch: h.batch,
                    filter: h.filter,
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
            self.finish_part(relay, h.batch, sub, Some(&h.filter), now);
        }
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
            _ => {}
        }
    }

    /// Messages from `relay` were lost on the way in (after `since`): every historic
    /// part open there may be missing events or its EOSE, so each starts again from its
    /// first page (what it already brought is kept; a part that keeps losing fails its
    /// batch, which is then retried with backoff); live subscriptions may have missed
    /// events too, so the relay gets a `since` catch-up, as after a closed live
    /// subscription.
    pub(super) fn on_messages_lost(&mut self, relay: &RelayUrl, since: WallTime, now: WallTime) {
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        self.metrics.messages_lost += 1;
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
                HistoricKind::Fetch { buffer, .. } => (PartKind::Fetch { retried: false }, buffer),
            };
            let again = h.restarts < MAX_PART_ATTEMPTS;
            if again {
                conn.queue.push_front(QueuedPart {
                    batch: h.batch,
                    filter: h.filter.clone(),
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
        for sub in expired {
            let Some(conn) = self.conns.get_mut(relay) else {
                return;
            };
            let Some(h) = conn.historic.get(&sub) else {
                continue;
            };
            if matches!(h.kind, HistoricKind::Negentropy) {
                // No CLOSE: a negentropy session is no REQ subscription, and the executor
                // ends it itself (idle or total timeout) — this is only the backstop
                // for an answer that never came.
                self.on_negentropy_failed(relay, &sub, &NegentropyFailure::Timeout, now);
            } else {
                // A rate-limit NOTICE names no subscription: a REQ that brought nothing
                // and was open when one came was most likely the one refused. It
                // resumes at its page after the cooldown, like a REQ refused by CLOSED;
                // REQs the relay did accept are never closed early for it.
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
}
