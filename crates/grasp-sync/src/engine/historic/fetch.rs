//! The ids negentropy found missing, asked by REQ `ids`: asked again while each answer
//! brings some; a relay that returns none of them twice is asked for the session's
//! filter by REQ+EOSE instead (once), and a fetch with nothing to fall back to fails
//! its batch.

use std::collections::BTreeSet;

use nostr::{EventId, Filter, SubscriptionId};

use super::super::conn::{EndedPart, FetchState, HistoricKind, PartKind, QueuedPart};
use super::super::{Command, SubscriptionMode, SyncEngine};
use crate::filters::ids_filters;
use crate::model::{RelayUrl, WallTime};

impl SyncEngine {
    /// Sends the REQ for the ids in `filter`.
    pub(super) fn open_fetch(
        &mut self,
        relay: &RelayUrl,
        id: &SubscriptionId,
        filter: &Filter,
        retried: bool,
        now: WallTime,
    ) -> (HistoricKind, WallTime) {
        let asked: BTreeSet<EventId> = filter.ids.clone().unwrap_or_default();
        self.metrics.reqs_sent += 1;
        self.commands.push_back(Command::Subscribe {
            relay: relay.clone(),
            id: id.clone(),
            filters: vec![filter.clone()],
            mode: SubscriptionMode::Historic,
        });
        let kind = HistoricKind::Fetch(FetchState {
            asked,
            got: BTreeSet::new(),
            buffer: Vec::new(),
            retried,
        });
        (kind, now + self.config.subscription_timeout)
    }

    /// EOSE of an ids fetch: hands over what came, asks again for what is missing, or
    /// falls back.
    pub(super) fn on_fetch_answer(
        &mut self,
        relay: &RelayUrl,
        sub: &SubscriptionId,
        part: EndedPart,
        answer: FetchState,
        now: WallTime,
    ) {
        let FetchState {
            asked,
            got,
            buffer,
            retried,
        } = answer;
        self.ingest_sorted(relay, buffer, part.batch, now);
        let missing: Vec<EventId> = asked.difference(&got).copied().collect();
        if missing.is_empty() {
            self.finish_part(relay, part.batch, sub, None, now);
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
                        batch: part.batch,
                        filter,
                        also: Vec::new(),
                        kind,
                        attempts: part.attempts,
                        restarts: part.restarts,
                        resume: None,
                        origin: part.origin.clone(),
                    });
                }
            }
            self.finish_part(relay, part.batch, sub, None, now);
        } else if let Some(origin) = part.origin {
            // A retry that brought none of the ids asked: the relay will not
            // by id. Ask for what its reconciliation covered by REQ+EOSE: once
            // (that part has no origin), and once for all of the session's
            // fetches, whenever they fail.
            let first = self.batch_mut(relay, part.batch).is_some_and(|b| {
                let first = !b.asked_by_req.contains(&origin);
                if first {
                    b.asked_by_req.push((*origin).clone());
                }
                first
            });
            if first {
                self.requeue_as_req(relay, part.batch, *origin, 0, part.restarts);
            }
            self.finish_part(relay, part.batch, sub, None, now);
        } else {
            let why = "the relay returned none of the ids its reconciliation offered";
            self.note_history_problem(relay, &part.filter, why);
            self.finish_part(relay, part.batch, sub, Some(&part.filter), now);
        }
    }
}
