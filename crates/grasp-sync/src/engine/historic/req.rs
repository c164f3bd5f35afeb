//! A batch's parts run by REQ+EOSE: opening a page (the first, or where a paginated
//! part stands) and, at EOSE, handing over what is new, asking the next page or ending
//! the part — complete, incomplete, or beyond what REQ can deliver from this relay.

use std::collections::BTreeSet;

use nostr::{Event, EventId, Filter, SubscriptionId};

use super::super::conn::{EndedPart, HistoricKind, PageResume, PartKind, QueuedPart};
use super::super::{Command, SubscriptionMode, SyncEngine};
use super::batch::named_in_batch;
use crate::filters::{with_page, RelayLimits};
use crate::matching::matches;
use crate::model::{BatchId, RelayUrl, WallTime};
use crate::pagination::{IncompleteReason, PageDecision, PaginationConfig, Paginator};

/// The smallest `limit` cap we assume a relay may impose without saying so in NIP-11.
const MIN_PLAUSIBLE_CAP: usize = 10;

impl SyncEngine {
    /// Sends the REQ for `part`'s next page: where it stands if it was paginated (or
    /// refused by a rate limit), else its first page.
    pub(super) fn open_req(
        &mut self,
        relay: &RelayUrl,
        id: &SubscriptionId,
        part: &mut QueuedPart,
        limits: RelayLimits,
        now: WallTime,
    ) -> (HistoricKind, WallTime) {
        let page = match part.resume.take() {
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
            filters: std::iter::once(&part.filter)
                .chain(&part.also)
                .map(|f| with_page(f.clone(), page.until, page.limit))
                .collect(),
            mode: SubscriptionMode::Historic,
        });
        (
            HistoricKind::Req {
                buffer: Vec::new(),
                page,
                ids: Default::default(),
            },
            now + self.config.subscription_timeout,
        )
    }

    /// EOSE of a page: hands over what is new on it, then asks the next page or ends
    /// the part.
    pub(super) fn on_req_page(
        &mut self,
        relay: &RelayUrl,
        sub: &SubscriptionId,
        part: EndedPart,
        buffer: Vec<Event>,
        page: PageResume,
        now: WallTime,
    ) {
        if self.batch_mut(relay, part.batch).is_none() {
            self.ingest_sorted(relay, buffer, part.batch, now);
            self.finish_part(relay, part.batch, sub, None, now);
            return;
        }
        if !part.also.is_empty() {
            self.on_grouped_page(relay, sub, part, buffer, page, now);
            return;
        }
        let seen: Vec<_> = buffer.iter().map(|e| (e.id, e.created_at)).collect();
        let (fresh, failed) =
            self.paginate(relay, part.batch, &part.filter, part.restarts, &seen, page);
        let fresh: BTreeSet<EventId> = fresh.into_iter().collect();
        let events = buffer
            .into_iter()
            .filter(|e| fresh.contains(&e.id))
            .collect();
        self.ingest_sorted(relay, events, part.batch, now);
        self.finish_part(relay, part.batch, sub, failed.then_some(&part.filter), now);
        self.open_queued(relay, now);
    }

    /// EOSE of a grouped first page (several filters on one REQ, sent only to a relay
    /// that says its `limit` cap). `limit` holds per filter (NIP-01, and every relay we
    /// know), but a relay capping the whole REQ — at our `limit` or at its own cap —
    /// would end the page at exactly that many events, and one dropped as a flood cuts
    /// it anywhere. So only what is proven counts: such a page proves nothing, and each
    /// filter is asked again alone from its first page; fewer events than `limit` in
    /// all end every filter; more (and no REQ-wide cut) means the cap is per filter, and
    /// each filter's own page — its newest `limit` matches — goes through its planner,
    /// continuing alone. Without a known cap (limits changed since) only a page shorter
    /// than any cap a relay sets proves the end.
    fn on_grouped_page(
        &mut self,
        relay: &RelayUrl,
        sub: &SubscriptionId,
        part: EndedPart,
        events: Vec<Event>,
        page: PageResume,
        now: WallTime,
    ) {
        // One of each: repeats were ignored on arrival.
        let cap = self.limits(relay).max_limit;
        let n = events.len();
        let maybe_cut = part.overflowed || n == page.limit || cap == Some(n);
        let filters: Vec<Filter> = std::iter::once(part.filter).chain(part.also).collect();
        let mut failed: Vec<Filter> = Vec::new();
        if !maybe_cut && n < page.limit && (cap.is_some() || n < MIN_PLAUSIBLE_CAP) {
            // Complete, every filter.
        } else if !maybe_cut && cap.is_some() && n > page.limit {
            for filter in &filters {
                // The filter's own page is its newest `limit` matches; older ones came
                // for another filter and say nothing about where its history stops
                // (taking them would skip what lies between).
                let mut mine: Vec<&Event> = events.iter().filter(|e| matches(filter, e)).collect();
                mine.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
                mine.truncate(page.limit);
                let mine: Vec<_> = mine.iter().map(|e| (e.id, e.created_at)).collect();
                let (_, f_failed) = self.paginate(
                    relay,
                    part.batch,
                    filter,
                    part.restarts,
                    &mine,
                    page.clone(),
                );
                if f_failed {
                    failed.push(filter.clone());
                }
            }
        } else if let Some(conn) = self.conns.get_mut(relay) {
            conn.queue_alone(part.batch, filters, 0, part.restarts);
        }
        self.ingest_sorted(relay, events, part.batch, now);
        match failed.split_first() {
            Some((first, rest)) => {
                self.fail_also(relay, part.batch, rest);
                self.finish_part(relay, part.batch, sub, Some(first), now);
            }
            None => self.finish_part(relay, part.batch, sub, None, now),
        }
        self.open_queued(relay, now);
    }

    /// One filter's page: what it says about the filter's history (complete, beyond what
    /// REQ can deliver, failed) and its next page, queued. Returns the ids new to the
    /// filter's planner and whether the filter failed; the caller hands over and ends
    /// the part.
    fn paginate(
        &mut self,
        relay: &RelayUrl,
        batch: BatchId,
        filter: &Filter,
        restarts: u32,
        page: &[(EventId, nostr::Timestamp)],
        resume: PageResume,
    ) -> (Vec<EventId>, bool) {
        let PageResume {
            paginator: mut state,
            until,
            ..
        } = resume;
        let outcome = state.on_page(until, page);
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
            if let Some(b) = self.batch_mut(relay, batch) {
                let named = named_in_batch(b, filter).unwrap_or_else(|| {
                    let mut all = b.items.clone();
                    all.merge(&b.also_covers);
                    all
                });
                b.beyond_req.merge(&named);
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
            self.note_history_problem(relay, filter, &format!("{reason:?}"));
        }
        if let PageDecision::Next { until, limit } = outcome.decision {
            // The next page waits its turn like any part: a free slot and no
            // rate-limit cooldown. A page arrived: the refusals count starts again.
            if let Some(conn) = self.conns.get_mut(relay) {
                conn.queue.push_front(QueuedPart {
                    batch,
                    filter: filter.clone(),
                    also: Vec::new(),
                    kind: PartKind::Req,
                    attempts: 0,
                    restarts,
                    resume: Some(Box::new(PageResume {
                        paginator: state,
                        until: Some(until),
                        limit,
                    })),
                    origin: None,
                });
            }
        }
        // Recorded as beyond REQ above, not as a failure to retry.
        (outcome.new_ids, failed && !beyond_req)
    }
}
