//! When a batch is done: its parts ending one by one, and the batch confirming its
//! items (or recording what failed, to retry with backoff) once no part is open or
//! queued and every event it brought has the host's verdict.

use nostr::{Filter, SubscriptionId};

use super::super::conn::retry_backoff;
use super::super::SyncEngine;
use crate::filters::items_named_by;
use crate::model::{BatchId, PendingBatch, RelayUrl, SyncItems, WallTime};

/// What of `batch` a part for `filter` stands for: the items it names, or `None` (the
/// whole batch) for a filter that names none, or once the batch's sessions shared
/// their fetches (see [`PendingBatch::fetch_shared`]).
pub(super) fn named_in_batch(batch: &PendingBatch, filter: &Filter) -> Option<SyncItems> {
    if batch.fetch_shared {
        return None;
    }
    let mut scope = batch.items.clone();
    scope.merge(&batch.also_covers);
    items_named_by(filter, &scope)
}

impl SyncEngine {
    pub(in crate::engine) fn batch_mut(
        &mut self,
        relay: &RelayUrl,
        id: BatchId,
    ) -> Option<&mut crate::model::PendingBatch> {
        self.pending
            .batches_mut(relay)
            .iter_mut()
            .find(|b| b.id == id)
    }

    /// One subscription of a batch ended (failed or not); the batch finishes when none
    /// is left open or queued.
    ///
    /// `failed`: the filter of a part that failed — what it names of the batch's items
    /// is asked again later; a filter that names none (layer 1, an ids fetch) fails the
    /// whole batch.
    pub(super) fn finish_part(
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

    /// The other filters of a grouped REQ that failed: what they name is asked again too
    /// (the batch finishes with the part's own filter, in `finish_part`).
    pub(super) fn fail_also(&mut self, relay: &RelayUrl, batch: BatchId, also: &[Filter]) {
        if let Some(b) = self.batch_mut(relay, batch) {
            for filter in also {
                let named = named_in_batch(b, filter);
                b.failure.add(named.as_ref());
            }
        }
    }

    /// Confirms a batch whose parts are all done and whose events all have the host's
    /// verdict: its items move to confirmed (even if a part failed: live subscriptions
    /// cover them, failed history is retried with backoff, and re-adding them now would
    /// loop).
    pub(in crate::engine) fn finish_batch_if_done(
        &mut self,
        relay: &RelayUrl,
        batch: BatchId,
        now: WallTime,
    ) {
        if self.conns.get(relay).is_some_and(|c| c.batch_busy(batch)) {
            return;
        }
        let waiting = self
            .pending
            .batches(relay)
            .iter()
            .any(|b| b.id == batch && b.awaiting > 0);
        if waiting {
            return;
        }
        let Some(done) = self.pending.remove(relay, batch) else {
            return;
        };
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
                conn.retry_at = Some(now + retry_backoff(conn.retry_round));
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
}
