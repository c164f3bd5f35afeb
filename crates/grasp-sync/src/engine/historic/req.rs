//! A batch's parts run by REQ+EOSE: opening a page (the first, or where a paginated
//! part stands) and, at EOSE, handing over what is new, asking the next page or ending
//! the part — complete, incomplete, or beyond what REQ can deliver from this relay.

use std::collections::BTreeSet;

use nostr::{Event, EventId, SubscriptionId};

use super::super::conn::{EndedPart, HistoricKind, PageResume, PartKind, QueuedPart};
use super::super::{Command, SubscriptionMode, SyncEngine};
use super::batch::named_in_batch;
use crate::filters::{with_page, RelayLimits};
use crate::model::{RelayUrl, WallTime};
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
            filters: vec![with_page(part.filter.clone(), page.until, page.limit)],
            mode: SubscriptionMode::Historic,
        });
        (
            HistoricKind::Req {
                buffer: Vec::new(),
                page,
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
        let PageResume {
            paginator: mut state,
            until,
            ..
        } = page;
        let page: Vec<_> = buffer.iter().map(|e| (e.id, e.created_at)).collect();
        if self.batch_mut(relay, part.batch).is_none() {
            self.ingest_sorted(relay, buffer, part.batch, now);
            self.finish_part(relay, part.batch, sub, None, now);
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
            part.batch,
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
            if let Some(b) = self.batch_mut(relay, part.batch) {
                if let Some(named) = named_in_batch(b, &part.filter) {
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
            self.note_history_problem(relay, &part.filter, &format!("{reason:?}"));
        }
        // Recorded as beyond REQ above, not as a failure to retry.
        let failed = failed && !beyond_req;
        match outcome.decision {
            PageDecision::Done => {
                self.finish_part(relay, part.batch, sub, failed.then_some(&part.filter), now)
            }
            PageDecision::Next { until, limit } => {
                // The next page waits its turn like any part: a free slot and
                // no rate-limit cooldown. A page arrived: the refusals count
                // starts again.
                if let Some(conn) = self.conns.get_mut(relay) {
                    conn.queue.push_front(QueuedPart {
                        batch: part.batch,
                        filter: part.filter.clone(),
                        kind: PartKind::Req,
                        attempts: 0,
                        restarts: part.restarts,
                        resume: Some(Box::new(PageResume {
                            paginator: state,
                            until: Some(until),
                            limit,
                        })),
                        origin: None,
                    });
                }
                self.finish_part(relay, part.batch, sub, failed.then_some(&part.filter), now);
                self.open_queued(relay, now);
            }
        }
    }
}
