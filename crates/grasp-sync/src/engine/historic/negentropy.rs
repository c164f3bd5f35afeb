//! A batch's parts run by NIP-77: opening a session, its result (the ids to fetch, see
//! `fetch`), and falling back to REQ+EOSE when the relay refuses, stays silent or says
//! it does not speak NIP-77.

use nostr::{EventId, Filter, SubscriptionId};

use super::super::conn::{Conn, HistoricKind, HistoricSub, PartKind, QueuedPart};
use super::super::{config::NEGENTROPY_ANSWER_GRACE, Command, NegentropyFailure, SyncEngine};
use crate::filters::ids_filters;
use crate::model::{BatchId, NegentropySupport, RelayUrl, WallTime};

impl SyncEngine {
    /// Sends NEG-OPEN for `filter`; the engine's own deadline is a backstop behind the
    /// executor's idle and total timeouts.
    pub(super) fn open_negentropy(
        &mut self,
        relay: &RelayUrl,
        session: &SubscriptionId,
        filter: &Filter,
        now: WallTime,
    ) -> (HistoricKind, WallTime) {
        self.metrics.negentropy_sessions += 1;
        self.commands.push_back(Command::Negentropy {
            relay: relay.clone(),
            session: session.clone(),
            filter: filter.clone(),
        });
        (
            HistoricKind::Negentropy,
            now + self.config.negentropy_total_timeout + NEGENTROPY_ANSWER_GRACE,
        )
    }

    /// `filter` of `batch` (an ended session's) runs again as REQs, first in the queue:
    /// cut back into REQ chunks and grouped as a batch's REQs are.
    pub(super) fn requeue_as_req(
        &mut self,
        relay: &RelayUrl,
        batch: BatchId,
        filter: Filter,
        attempts: u32,
        restarts: u32,
    ) {
        self.metrics.negentropy_fallbacks += 1;
        if let Some(conn) = self.conns.get_mut(relay) {
            conn.queue_grouped_front(batch, vec![filter], attempts, restarts);
        }
    }

    /// Whether `session` is an open negentropy session of `relay` (not a late or
    /// confused answer: an unknown id, or a subscription of another kind).
    fn is_open_session(&self, relay: &RelayUrl, session: &SubscriptionId) -> bool {
        self.conns
            .get(relay)
            .is_some_and(|conn| conn.is_open_session(session))
    }

    /// Takes the open negentropy session `session` of `relay` (nothing for an unknown
    /// id or a subscription of another kind).
    fn take_session(
        &mut self,
        relay: &RelayUrl,
        session: &SubscriptionId,
    ) -> Option<(&mut Conn, HistoricSub)> {
        if !self.is_open_session(relay, session) {
            return None;
        }
        let conn = self.conns.get_mut(relay)?;
        let h = conn.historic.remove(session)?;
        Some((conn, h))
    }

    pub(in crate::engine) fn on_negentropy_result(
        &mut self,
        relay: &RelayUrl,
        session: &SubscriptionId,
        need: Vec<EventId>,
        now: WallTime,
    ) {
        let Some((conn, h)) = self.take_session(relay, session) else {
            return;
        };
        conn.negentropy = NegentropySupport::Supported;
        let limits = conn.limits;
        let mut need = need;
        need.sort();
        need.dedup();
        if let Some(batch) = self.batch_mut(relay, h.batch) {
            let before = need.len();
            need.retain(|id| batch.fetch_asked.insert(*id));
            batch.fetch_shared |= need.len() < before;
        }
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        for filter in ids_filters(&need, &limits).into_iter().rev() {
            conn.queue.push_front(QueuedPart {
                batch: h.batch,
                filter,
                also: Vec::new(),
                kind: PartKind::Fetch { retried: false },
                attempts: 0,
                restarts: h.restarts,
                resume: None,
                origin: Some(Box::new(h.filter.clone())),
            });
        }
        self.finish_part(relay, h.batch, session, None, now);
    }

    pub(in crate::engine) fn on_negentropy_failed(
        &mut self,
        relay: &RelayUrl,
        session: &SubscriptionId,
        reason: &NegentropyFailure,
        now: WallTime,
    ) {
        // A failure of a session already ended (its timeout came first, or it was
        // requeued when messages were lost) says nothing more about the relay.
        if !self.is_open_session(relay, session) {
            return;
        }
        match reason {
            // The relay does not speak NIP-77: its other open sessions would fail the
            // same way, one by one, and each one's REQ alone would part its chunk.
            NegentropyFailure::Unsupported => self.abandon_negentropy(relay, now),
            // Silence: this session goes to REQ and NIP-77 rests on the relay, but the
            // sessions still answering go on.
            NegentropyFailure::Timeout => {
                self.fall_back_to_req(relay, vec![session.clone()], now);
            }
            NegentropyFailure::Error(_) => {
                let Some((_, h)) = self.take_session(relay, session) else {
                    return;
                };
                self.requeue_as_req(relay, h.batch, h.filter, h.attempts, h.restarts);
                self.finish_part(relay, h.batch, session, None, now);
            }
        }
    }

    /// Every negentropy session on `relay` falls back to REQ+EOSE (the relay said it does
    /// not speak NIP-77, or went silent).
    pub(super) fn abandon_negentropy(&mut self, relay: &RelayUrl, now: WallTime) {
        let Some(conn) = self.conns.get(relay) else {
            return;
        };
        let sessions = conn
            .historic
            .iter()
            .filter(|(_, h)| matches!(h.kind, HistoricKind::Negentropy))
            .map(|(id, _)| id.clone())
            .collect();
        self.fall_back_to_req(relay, sessions, now);
    }

    /// The relay does not speak NIP-77: `sessions` (open on it) and every session still
    /// queued run as REQs instead, grouped per batch as its REQs are; the batches of
    /// `sessions` go first in the queue, queued sessions stay where they stood.
    pub(super) fn fall_back_to_req(
        &mut self,
        relay: &RelayUrl,
        sessions: Vec<SubscriptionId>,
        now: WallTime,
    ) {
        let mut ended = Vec::new();
        let mut open = Vec::new();
        for session in sessions {
            if let Some((_, h)) = self.take_session(relay, &session) {
                self.metrics.negentropy_fallbacks += 1;
                open.push(QueuedPart {
                    kind: PartKind::Negentropy,
                    ..QueuedPart::first_page(h.batch, h.filter, h.attempts, h.restarts)
                });
                ended.push((session, h.batch));
            }
        }
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        conn.refuse_negentropy(now);
        for part in open.into_iter().rev() {
            conn.queue.push_front(part);
        }
        conn.sessions_to_reqs();
        for (session, batch) in ended {
            self.finish_part(relay, batch, &session, None, now);
        }
    }
}
