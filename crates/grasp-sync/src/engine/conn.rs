//! Per-relay runtime state that is not part of the three indexes: health, learnt limits
//! and capabilities, and the subscriptions open on the current websocket.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use nostr::{Event, EventId, Filter, SubscriptionId, Timestamp};

use crate::filters::{group_historic, rechunk, RelayLimits};
use crate::health::RelayHealth;
use crate::model::{BatchId, NegentropySupport, SyncItems, WallTime};
use crate::pagination::Paginator;

/// A live subscription: its filters, to check what arrives on it and to count them
/// against the relay's consolidation threshold.
#[derive(Debug, Clone)]
pub(super) struct LiveSub {
    pub filters: Vec<Filter>,
}

/// What a historic subscription is doing.
#[derive(Debug, Clone)]
pub(super) enum HistoricKind {
    /// A NIP-77 session for `filter`.
    Negentropy,
    /// REQ+EOSE with `until` pagination; events wait in `buffer` until EOSE so they can
    /// be handed over in dependency order.
    Req {
        buffer: Vec<Event>,
        page: PageResume,
        /// The ids of `buffer` (and of what came past the cap): a repeat is ignored.
        ids: HashSet<EventId>,
    },
    /// REQ by ids after negentropy.
    Fetch(FetchState),
}

/// An ids fetch in flight: what it asked and what came.
#[derive(Debug, Clone)]
pub(super) struct FetchState {
    /// The ids asked.
    pub asked: BTreeSet<EventId>,
    /// The ids that arrived.
    pub got: BTreeSet<EventId>,
    /// The events asked for, waiting until EOSE to be handed over in order.
    pub buffer: Vec<Event>,
    /// Whether this is the second ask after an answer with none of the ids.
    pub retried: bool,
}

/// One historic subscription on the wire.
#[derive(Debug, Clone)]
pub(super) struct HistoricSub {
    pub batch: BatchId,
    /// The filter this part of the batch syncs (without pagination fields).
    pub filter: Filter,
    /// Filters asked with `filter` on the same REQ: a first page of a batch's tag
    /// filters, grouped so that the relay sends an event matching several once.
    pub also: Vec<Filter>,
    pub kind: HistoricKind,
    pub deadline: WallTime,
    /// Events received on this page, to cut a flooding relay off at the page size.
    pub received: usize,
    /// Events past that cap were dropped: the page says nothing about where a grouped
    /// REQ's filters end.
    pub overflowed: bool,
    /// Rate-limit refusals in a row (carried over from the queued part; a page that
    /// arrives starts the count again).
    pub attempts: u32,
    /// Times this part started again from its first page after messages from the
    /// relay were lost (never reset: a part that keeps losing fails its batch).
    pub restarts: u32,
    /// For an ids fetch: the filter whose reconciliation offered the ids. A relay that
    /// will not return them is asked for that filter by REQ instead.
    pub origin: Option<Box<Filter>>,
}

/// What a historic subscription that ended was doing, apart from its kind's own state:
/// what the handler of its end needs.
pub(super) struct EndedPart {
    pub batch: BatchId,
    pub filter: Filter,
    pub also: Vec<Filter>,
    pub overflowed: bool,
    pub attempts: u32,
    pub restarts: u32,
    pub origin: Option<Box<Filter>>,
}

impl HistoricSub {
    /// Splits an ended subscription into what every kind has and its kind's state.
    pub fn end(self) -> (EndedPart, HistoricKind) {
        let part = EndedPart {
            batch: self.batch,
            filter: self.filter,
            also: self.also,
            overflowed: self.overflowed,
            attempts: self.attempts,
            restarts: self.restarts,
            origin: self.origin,
        };
        (part, self.kind)
    }

    /// Every filter it asks.
    pub fn filters(&self) -> impl Iterator<Item = &Filter> {
        std::iter::once(&self.filter).chain(&self.also)
    }
}

/// How a queued part will run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PartKind {
    Negentropy,
    Req,
    /// REQ by ids (the filter holds them); `retried` when the previous attempt brought
    /// none of the ids asked (the next empty answer fails the batch).
    Fetch {
        retried: bool,
    },
}

/// Work of a batch waiting for a free historic slot (and for the end of a rate-limit
/// cooldown: nothing is opened during one).
#[derive(Debug, Clone)]
pub(super) struct QueuedPart {
    pub batch: BatchId,
    pub filter: Filter,
    /// See [`HistoricSub::also`]: only on a REQ part's first page.
    pub also: Vec<Filter>,
    pub kind: PartKind,
    /// Times in a row this part was refused by a rate limit and queued again (a page
    /// that arrives resets it: a long history under a REQ rate completes page by page).
    pub attempts: u32,
    /// See [`HistoricSub::restarts`].
    pub restarts: u32,
    /// For a REQ part past its first page: where to resume.
    pub resume: Option<Box<PageResume>>,
    /// See [`HistoricSub::origin`].
    pub origin: Option<Box<Filter>>,
}

impl QueuedPart {
    /// A REQ part for `filter` alone, from its first page.
    pub fn first_page(batch: BatchId, filter: Filter, attempts: u32, restarts: u32) -> Self {
        Self {
            batch,
            filter,
            also: Vec::new(),
            kind: PartKind::Req,
            attempts,
            restarts,
            resume: None,
            origin: None,
        }
    }
}

/// Where a paginated REQ part stands between two pages — the next page waiting its turn,
/// or a page a rate limit refused: the planner (with the ids it has seen) and the page
/// to ask, so the part resumes there instead of from the newest page.
#[derive(Debug, Clone)]
pub(super) struct PageResume {
    pub paginator: Paginator,
    pub until: Option<Timestamp>,
    pub limit: usize,
}

/// Live filters and subscriptions open after a rebuild.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LiveBaseline {
    pub filters: usize,
    pub subscriptions: usize,
}

/// Runtime state of one relay.
#[derive(Debug)]
pub(super) struct Conn {
    pub health: RelayHealth,
    pub limits: RelayLimits,
    pub negentropy: NegentropySupport,
    /// When the relay last refused NIP-77: it is offered again a re-probe interval later.
    pub negentropy_refused_at: Option<WallTime>,
    pub live: BTreeMap<SubscriptionId, LiveSub>,
    pub historic: BTreeMap<SubscriptionId, HistoricSub>,
    pub queue: VecDeque<QueuedPart>,
    pub connect_deadline: Option<WallTime>,
    pub daily_due: Option<WallTime>,
    pub live_resubscribes: u32,
    /// Items whose historic sync failed; retried with backoff while connected.
    pub failed_items: SyncItems,
    /// Failed items REQ cannot deliver from this relay (see
    /// [`crate::model::PendingBatch::beyond_req`]): shown as failures, never retried by
    /// REQ, forgotten at the next fresh start.
    pub beyond_req: SyncItems,
    /// Layer 1 history failed; retried with the items.
    pub failed_layer1: bool,
    /// When the last failure was recorded: only a full-history batch started after
    /// it may clear it.
    pub last_failure_at: Option<WallTime>,
    /// Live subscriptions the relay kept closing beyond the resubscribe budget.
    pub live_failed: bool,
    /// When the relay first closed a live subscription since the last rebuild: events
    /// published from then on are fetched with `since` after the rebuild.
    pub live_gap_since: Option<WallTime>,
    /// Where the running `since` catch-up (quick reconnect, live gap) started: what a
    /// snapshot reports as the disconnect time while the catch-up is pending.
    pub catchup_from: Option<WallTime>,
    /// When the failed history is retried next.
    pub retry_at: Option<WallTime>,
    /// Retries so far on this connection.
    pub retry_round: u32,
    /// Something was held back (rate limit, batch cap, new limits): re-diff this relay
    /// at the next check.
    pub deferred: bool,
    /// Live subscriptions must be rebuilt when subscribing is allowed again.
    pub needs_rebuild: bool,
    /// What the last rebuild (or this connection's start) left open: consolidation
    /// measures fragmentation against it.
    pub live_baseline: LiveBaseline,
    /// Why the last connect attempt failed, or why we dropped the relay, for status.
    pub last_error: Option<String>,
    /// Protocol-breaking messages on this connection (see `SyncEngine::strike`).
    pub misbehaviour: u32,
    /// EVENT messages received from this relay since it was registered.
    pub events_received: u64,
    /// Filters per REQ learnt from a "too many filters" refusal: kept when NIP-11
    /// limits arrive later.
    pub learnt_max_filters: Option<usize>,
    /// Layer 1 is open on this connection. A relay carrying only `Conversation` repos
    /// (a participant's outbox, GRASP-03) goes without until it carries more.
    pub layer1: bool,
    /// The Sync+ relay-list lookup open on this connection.
    pub lookup: Option<super::sync_plus::Lookup>,
    /// Failed lookups on this connection, and when the next may open.
    pub lookup_failures: u32,
    pub lookup_retry_at: Option<WallTime>,
}

impl Conn {
    pub fn new(health: RelayHealth, limits: RelayLimits) -> Self {
        Self {
            health,
            limits,
            negentropy: NegentropySupport::Unknown,
            negentropy_refused_at: None,
            live: BTreeMap::new(),
            historic: BTreeMap::new(),
            queue: VecDeque::new(),
            connect_deadline: None,
            daily_due: None,
            live_resubscribes: 0,
            failed_items: SyncItems::default(),
            beyond_req: SyncItems::default(),
            failed_layer1: false,
            last_failure_at: None,
            live_failed: false,
            retry_at: None,
            retry_round: 0,
            live_gap_since: None,
            catchup_from: None,
            deferred: false,
            needs_rebuild: false,
            live_baseline: LiveBaseline::default(),
            last_error: None,
            misbehaviour: 0,
            events_received: 0,
            learnt_max_filters: None,
            layer1: false,
            lookup: None,
            lookup_failures: 0,
            lookup_retry_at: None,
        }
    }

    /// The relay refused NIP-77 or stayed silent: REQ+EOSE until it is offered again.
    pub fn refuse_negentropy(&mut self, now: WallTime) {
        self.negentropy = NegentropySupport::Unsupported;
        self.negentropy_refused_at = Some(now);
    }

    /// When a relay that refused NIP-77 is offered it again (`interval` after the
    /// refusal; at once when the refusal time is unknown); `None` unless it refused.
    pub fn reprobe_at(&self, interval: std::time::Duration, now: WallTime) -> Option<WallTime> {
        (self.negentropy == NegentropySupport::Unsupported)
            .then(|| self.negentropy_refused_at.map_or(now, |at| at + interval))
    }

    /// Whether a historic batch from the start of history runs by negentropy: where
    /// the relay proved it speaks NIP-77, and where the caller asks for a probe (fresh
    /// and daily starts) unless the relay refused it.
    pub fn negentropy_for(&self, probe: bool) -> bool {
        match self.negentropy {
            NegentropySupport::Supported => true,
            NegentropySupport::Unknown => probe,
            NegentropySupport::Unsupported => false,
        }
    }

    /// Live filters open on this connection.
    pub fn live_filter_count(&self) -> usize {
        self.live.values().map(|s| s.filters.len()).sum()
    }

    /// What is open now, as the baseline of the next consolidation.
    pub fn note_live_baseline(&mut self) {
        self.live_baseline = LiveBaseline {
            filters: self.live_filter_count(),
            subscriptions: self.live.len(),
        };
    }

    /// Live subscriptions are fragmented enough to rebuild (when fewer would do): more
    /// filters than the threshold and, unless the relay states `max_subscriptions`
    /// (whose budget the threshold then is), either more than twice the baseline's
    /// filters or more subscriptions than the baseline's plus the larger of the live
    /// budget's (70 / 10 = 7) and half the baseline's. A rebuild re-sends every live
    /// filter; waiting for that much growth amortises it (at 100k repos a relay carries
    /// ~730 live filters, re-sent after every small batch before), while the count of
    /// subscriptions, which relays cap, stays within a bounded factor of the minimum.
    pub fn live_fragmented(&self) -> bool {
        let open = self.live_filter_count();
        let limits = &self.limits;
        if open <= limits.max_live_filters {
            return false;
        }
        if limits.max_subscriptions.is_some() {
            return true;
        }
        let base = self.live_baseline;
        let budget_subs = (limits.max_live_filters / limits.max_filters_per_req.max(1)).max(1);
        open > 2 * base.filters
            || self.live.len() > base.subscriptions + budget_subs.max(base.subscriptions / 2)
    }

    /// Whether some history failed or live coverage was given up.
    pub fn has_failures(&self) -> bool {
        !self.failed_items.is_empty()
            || !self.beyond_req.is_empty()
            || self.failed_layer1
            || self.live_failed
    }

    /// Forgets every failure (a fresh start syncs everything again).
    pub fn clear_failures(&mut self) {
        self.failed_items = SyncItems::default();
        self.beyond_req = SyncItems::default();
        self.failed_layer1 = false;
        self.last_failure_at = None;
        self.live_failed = false;
        self.retry_at = None;
        self.retry_round = 0;
    }

    /// The relay refused a REQ of `sent` filters as too many: half as many per REQ from
    /// now on (kept when NIP-11 limits arrive later).
    pub fn learn_max_filters(&mut self, sent: usize) {
        if sent <= 1 {
            return;
        }
        let fewer = (sent / 2).max(1);
        let learnt = self.learnt_max_filters.map_or(fewer, |l| l.min(fewer));
        self.learnt_max_filters = Some(learnt);
        self.limits = self.limits.with_learnt_max_filters(learnt);
    }

    /// Forgets everything tied to the websocket.
    pub fn reset_wire(&mut self) {
        self.live.clear();
        self.live_baseline = LiveBaseline::default();
        self.historic.clear();
        self.queue.clear();
        self.connect_deadline = None;
        self.live_gap_since = None;
        self.layer1 = false;
        self.lookup_failures = 0;
        self.lookup_retry_at = None;
    }

    /// Queues `filters` of `batch` as REQ parts from their first page, behind what is
    /// queued, grouped as the relay allows (see [`group_historic`]).
    pub fn queue_grouped(
        &mut self,
        batch: BatchId,
        filters: Vec<Filter>,
        attempts: u32,
        restarts: u32,
    ) {
        let per_req = self.limits.historic_filters_per_req();
        for req in group_historic(filters, per_req, &self.limits) {
            let mut req = req.into_iter();
            let Some(filter) = req.next() else {
                continue;
            };
            self.queue.push_back(QueuedPart {
                also: req.collect(),
                ..QueuedPart::first_page(batch, filter, attempts, restarts)
            });
        }
    }

    /// Whether `sub` is an open negentropy session here (not a REQ, a fetch, or an id
    /// that already ended).
    pub fn is_open_session(&self, sub: &SubscriptionId) -> bool {
        self.historic
            .get(sub)
            .is_some_and(|h| matches!(h.kind, HistoricKind::Negentropy))
    }

    /// Negentropy session filters of `batch` as REQ parts ahead of everything queued: cut
    /// back into REQ chunks ([`rechunk`]) and grouped as [`Conn::queue_grouped`] does.
    pub fn queue_grouped_front(
        &mut self,
        batch: BatchId,
        sessions: Vec<Filter>,
        attempts: u32,
        restarts: u32,
    ) {
        let queued = std::mem::take(&mut self.queue);
        let filters = sessions
            .into_iter()
            .flat_map(|f| rechunk(f, &self.limits))
            .collect();
        self.queue_grouped(batch, filters, attempts, restarts);
        self.queue.extend(queued);
    }

    /// The queued negentropy sessions of a relay that refused NIP-77, as the REQs they
    /// become: each batch's sessions grouped as [`Conn::queue_grouped`] does, where the
    /// first of them stood. One by one, a chunk's `#e`, `#E` and `#q` went on REQs of
    /// their own and the relay sent each comment once per filter it matched.
    pub fn sessions_to_reqs(&mut self) {
        // What stays as it is, and where each batch's sessions go (its first one's
        // place): per batch its sessions' filters and the most refusals and restarts
        // any of them had.
        let mut order: Vec<Result<QueuedPart, usize>> = Vec::new();
        let mut sessions: Vec<(BatchId, Vec<Filter>, u32, u32)> = Vec::new();
        for part in std::mem::take(&mut self.queue) {
            if part.kind != PartKind::Negentropy {
                order.push(Ok(part));
                continue;
            }
            let at = match sessions.iter().position(|(b, ..)| *b == part.batch) {
                Some(at) => at,
                None => {
                    sessions.push((part.batch, Vec::new(), 0, 0));
                    order.push(Err(sessions.len() - 1));
                    sessions.len() - 1
                }
            };
            let (_, filters, attempts, restarts) = &mut sessions[at];
            // A session's filter is four REQ chunks wide: as one REQ filter, ten of
            // them would pass the message size a relay allows without saying so.
            filters.extend(rechunk(part.filter, &self.limits));
            *attempts = (*attempts).max(part.attempts);
            *restarts = (*restarts).max(part.restarts);
        }
        let mut sessions: Vec<_> = sessions.into_iter().map(Some).collect();
        for slot in order {
            match slot {
                Ok(part) => self.queue.push_back(part),
                Err(at) => {
                    if let Some((batch, filters, attempts, restarts)) = sessions[at].take() {
                        self.queue_grouped(batch, filters, attempts, restarts);
                    }
                }
            }
        }
    }

    /// Queues each of `filters` alone, from its first page, ahead of what is queued (in
    /// their order).
    pub fn queue_alone(
        &mut self,
        batch: BatchId,
        filters: Vec<Filter>,
        attempts: u32,
        restarts: u32,
    ) {
        for filter in filters.into_iter().rev() {
            self.queue
                .push_front(QueuedPart::first_page(batch, filter, attempts, restarts));
        }
    }

    /// Whether any part of `batch` is still open or queued.
    pub fn batch_busy(&self, batch: BatchId) -> bool {
        self.historic.values().any(|h| h.batch == batch)
            || self.queue.iter().any(|q| q.batch == batch)
    }
}

/// How long a failed part of the history (or a failed Sync+ lookup) waits before it is
/// asked again, after `round` retries on this connection: 30 s, 1 min, 2 min ... capped
/// at an hour. A relay that keeps failing is asked rarely; the daily fresh start covers
/// the rest.
pub(super) fn retry_backoff(round: u32) -> std::time::Duration {
    std::time::Duration::from_secs(30)
        .saturating_mul(1u32 << round.min(7))
        .min(std::time::Duration::from_secs(3600))
}
