//! The deterministic sync engine (sans-IO, in the manner of quinn-proto's `Connection`).
//!
//! The host, or the tokio driver, feeds it what happened with
//! [`SyncEngine::handle_input`] and the passing of time with
//! [`SyncEngine::handle_timeout`], drains what it wants done with
//! [`SyncEngine::poll_command`], and sleeps until [`SyncEngine::poll_timeout`]. It owns
//! the three indexes; nothing inside it blocks, locks, reads a clock or touches a socket,
//! so every rule of the design (15 minutes, 65 seconds, 24 hours) is tested in
//! microseconds, and a seeded simulation replays any fault exactly.

mod accepted;
mod check;
mod config;
mod conn;
mod historic;
mod ingest;
mod io;
mod lifecycle;
mod state;
mod sync_plus;
mod timers;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use nostr::{Event, EventId, SubscriptionId};

pub use config::{SyncConfig, SyncPlusConfig, NEGENTROPY_ANSWER_GRACE};
pub use io::{Command, Input, NegentropyFailure, SubscriptionMode};
pub use state::{EngineMetrics, RelayStatusSnapshot, RepoStatusSnapshot};
// Shared with the ports, defined in the model; re-exported where embedders look.
pub use crate::model::{
    IngestOutcome, NegentropySupport, PersistedRelay, PersistedRepo, SyncStateSnapshot,
};

use crate::filters::{Nip11Limitation, RelayLimits};
use crate::model::{
    ConnectionStatus, PendingSyncIndex, RelaySyncIndex, RelayUrl, RepoRef, RepoSyncIndex, WallTime,
};
use crate::ports::{RandomSource, RelayUrlPolicy};
use crate::targets::{derive_relay_targets, RelayTargets};
use conn::Conn;
use ingest::{Dedupe, InFlight};
use timers::RelayTimers;

/// What every subscription id the engine gives out starts with (then a number that
/// only grows): an id is never given out twice, so one that is not open is one we
/// closed, or one open on another relay.
const SUBSCRIPTION_PREFIX: &str = "gs";

/// The sync engine. One per host relay; many may live in one process.
pub struct SyncEngine {
    config: SyncConfig,
    repos: RepoSyncIndex,
    targets: RelayTargets,
    relays: RelaySyncIndex,
    pending: PendingSyncIndex,
    /// Per-relay runtime state. Hashed, not ordered: it is looked up on every input
    /// (one probe whatever the number of relays); the few walks over all relays sort
    /// the keys first, so the engine stays deterministic.
    conns: HashMap<RelayUrl, Conn>,
    /// Accepted events waiting to be applied (end of the round or of the batch window).
    accepted: Vec<Event>,
    flush_at: Option<WallTime>,
    purgatory_due: WallTime,
    purgatory_outstanding: bool,
    check_due: WallTime,
    persist_due: WallTime,
    persisted_at: WallTime,
    dirty: bool,
    commands: VecDeque<Command>,
    rng: Box<dyn RandomSource>,
    policy: Arc<dyn RelayUrlPolicy>,
    metrics: EngineMetrics,
    next_id: u64,
    handed: Dedupe,
    /// Hand-overs waiting for the host's verdict (see `ingest`).
    in_flight: InFlight,
    /// Root events whose repo is not known yet, kept until its announcement arrives.
    orphans: BTreeMap<RepoRef, BTreeSet<EventId>>,
    orphan_count: usize,
    /// Relays that may have something to open since the last pump: the relay an input
    /// came from, relays given new work or just registered. An input pumps only these,
    /// so its cost follows what it touches, not how many relays the engine keeps.
    woken: BTreeSet<RelayUrl>,
    /// Which relays the periodic check looks at, and when the others are due.
    timers: RelayTimers,
    /// GRASP-03 Sync+ state, when switched on.
    sync_plus: Option<sync_plus::SyncPlus>,
}

impl std::fmt::Debug for SyncEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncEngine")
            .field("repos", &self.repos.len())
            .field("relays", &self.relays.len())
            .field("commands", &self.commands.len())
            .finish_non_exhaustive()
    }
}

impl SyncEngine {
    /// A new engine with empty indexes. `policy` decides which relay URLs may be dialled;
    /// `rng` supplies the daily-sync jitter.
    pub fn new(
        config: SyncConfig,
        now: WallTime,
        policy: Arc<dyn RelayUrlPolicy>,
        rng: Box<dyn RandomSource>,
    ) -> Self {
        let dedupe = config.dedupe_capacity;
        let mut engine = Self {
            repos: RepoSyncIndex::new(),
            targets: RelayTargets::default(),
            relays: RelaySyncIndex::new(),
            pending: PendingSyncIndex::new(),
            conns: HashMap::new(),
            accepted: Vec::new(),
            flush_at: None,
            purgatory_due: now,
            purgatory_outstanding: false,
            check_due: now,
            persist_due: now + config.persist_interval,
            persisted_at: now,
            dirty: false,
            commands: VecDeque::new(),
            rng,
            policy,
            metrics: EngineMetrics::default(),
            next_id: 0,
            handed: Dedupe::new(dedupe),
            in_flight: InFlight::default(),
            orphans: BTreeMap::new(),
            orphan_count: 0,
            woken: BTreeSet::new(),
            timers: RelayTimers::default(),
            sync_plus: sync_plus::SyncPlus::new(&config),
            config,
        };
        let bootstrap: Vec<RelayUrl> = engine.config.bootstrap_relays.iter().cloned().collect();
        for relay in bootstrap {
            if engine.may_dial(&relay) {
                engine.ensure_relay(&relay);
                engine.relays.entry(&relay).is_bootstrap = true;
            }
        }
        engine
    }

    /// An engine resuming from a saved snapshot. Each relay resumes from its persisted
    /// cursor (`complete_until`: how far its history was durably stored when the
    /// snapshot was taken), so the 15-minute rule decides between quick reconnect and
    /// fresh start exactly as for a dropped websocket, and a quick reconnect's `since`
    /// never skips what was received but not yet stored.
    ///
    /// A snapshot holds what was *confirmed*; the host's store may hold more (accepted
    /// announcements and root events stored after the snapshot, or with no snapshot at
    /// all). Feed those as [`Input::Accepted`] after restoring — the driver does — so the
    /// restart wants everything the host holds.
    pub fn restore(
        config: SyncConfig,
        snapshot: SyncStateSnapshot,
        now: WallTime,
        policy: Arc<dyn RelayUrlPolicy>,
        rng: Box<dyn RandomSource>,
    ) -> Self {
        let mut engine = Self::new(config, now, policy, rng);
        if snapshot.version != SyncStateSnapshot::VERSION {
            return engine;
        }
        engine.sync_plus_restore_lists(snapshot.relay_lists);
        for repo in snapshot.repos {
            let relays = engine.admit_relays(repo.relays.into_iter().collect());
            match repo.sync_level {
                crate::model::SyncLevel::Full => {
                    engine.repos.accept_announcement(&repo.repo, relays)
                }
                crate::model::SyncLevel::StateOnly => {
                    engine.repos.note_purgatory_announcement(&repo.repo, relays)
                }
                // A relay's level, never a repo's: not from a snapshot we wrote.
                crate::model::SyncLevel::Conversation => continue,
            };
            for id in repo
                .root_events
                .into_iter()
                .take(engine.config.max_root_events_per_repo)
            {
                engine.repos.add_root_event(&repo.repo, id);
            }
            engine.sync_plus_restore(&repo.repo, &repo.participants);
        }
        engine.sync_plus_restore_outbox();
        engine.targets = derive_relay_targets(&engine.repos);
        for persisted in snapshot.relays {
            if !engine.may_dial(&persisted.relay) {
                continue;
            }
            let mut state = persisted.state;
            state.status = ConnectionStatus::Disconnected;
            state.is_bootstrap = engine.config.bootstrap_relays.contains(&persisted.relay);
            engine.ensure_relay(&persisted.relay);
            if let Some(conn) = engine.conns.get_mut(&persisted.relay) {
                conn.negentropy = persisted.negentropy;
                if conn.negentropy == NegentropySupport::Unsupported {
                    // Refused before the restart: offered again a re-probe interval
                    // from now, not at once.
                    conn.negentropy_refused_at = Some(now);
                }
            }
            *engine.relays.entry(&persisted.relay) = state;
        }
        for relay in engine.targets.relays().cloned().collect::<Vec<_>>() {
            engine.ensure_relay(&relay);
        }
        engine
    }

    /// Feeds one input, observed at `now`.
    pub fn handle_input(&mut self, now: WallTime, input: Input) {
        if let Some(relay) = input.wakes().cloned() {
            self.wake(&relay);
        }
        match input {
            Input::RelayConnected { relay } => self.on_connected(&relay, now),
            Input::RelayConnectFailed { relay, reason } => {
                if let Some(conn) = self.conns.get_mut(&relay) {
                    conn.last_error = Some(reason);
                }
                self.on_connect_failed(&relay, now)
            }
            Input::RelayDisconnected { relay } => self.on_disconnected(&relay, now),
            Input::Event {
                relay,
                subscription,
                event,
            } => self.on_event(&relay, &subscription, event, now),
            Input::Eose {
                relay,
                subscription,
            } => self.on_eose(&relay, &subscription, now),
            Input::Closed {
                relay,
                subscription,
                message,
            } => self.on_closed(&relay, &subscription, &message, now),
            Input::Notice { relay, message } => self.on_notice(&relay, &message, now),
            Input::NegentropyResult {
                relay,
                session,
                need,
            } => self.on_negentropy_result(&relay, &session, need, now),
            Input::NegentropyFailed {
                relay,
                session,
                reason,
            } => self.on_negentropy_failed(&relay, &session, &reason, now),
            Input::Accepted { event } => self.on_accepted(*event, now),
            Input::PurgatoryAnnouncements { announcements } => {
                self.on_purgatory(announcements, now)
            }
            Input::IngestOutcome {
                event_id, outcome, ..
            } => self.on_ingest_outcome(event_id, outcome, now),
            Input::RelayMessagesLost { relay, since } => {
                self.on_messages_lost(&relay, since.min(now), now)
            }
            Input::TamperedEvent { relay } => {
                self.metrics.dropped_malformed += 1;
                self.strike(&relay, now);
            }
        }
        self.end_round_if_over(now);
        let woken = std::mem::take(&mut self.woken);
        self.pump(woken.iter(), now);
    }

    /// Applies the accepted events fed so far at once, without waiting for the batch
    /// window. For a host that knows a burst is complete — the events it already held,
    /// fed at start: waiting the window gains no batching and delays every first sync.
    pub fn apply_accepted_now(&mut self, now: WallTime) {
        if !self.accepted.is_empty() {
            self.flush_accepted(now);
            let woken = std::mem::take(&mut self.woken);
            self.pump(woken.iter(), now);
        }
    }

    /// Lets time pass: fires every timer due at or before `now`.
    pub fn handle_timeout(&mut self, now: WallTime) {
        if self.flush_at.is_some_and(|t| t <= now) {
            self.flush_accepted(now);
        }
        if self.purgatory_due <= now {
            self.purgatory_due = now + self.config.purgatory_interval;
            if !self.purgatory_outstanding {
                self.purgatory_outstanding = true;
                self.commands.push_back(Command::ReadPurgatoryAnnouncements);
            }
        }
        if self.check_due <= now {
            self.check_due = now + self.config.check_interval;
            self.periodic_check(now);
        }
        if self.persist_deadline().is_some_and(|t| t <= now) {
            self.dirty = false;
            self.persist_due = now + self.config.persist_interval;
            self.persisted_at = now;
            self.commands.push_back(Command::PersistState);
        }
        self.end_round_if_over(now);
        self.woken.clear();
        let watched = self.timers.watched();
        self.pump(watched.iter(), now);
    }

    /// The next command to carry out, in order.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// When the engine next wants `handle_timeout` called.
    #[must_use]
    pub fn poll_timeout(&self) -> WallTime {
        let mut next = self.check_due.min(self.purgatory_due);
        if let Some(t) = self.flush_at {
            next = next.min(t);
        }
        if let Some(t) = self.persist_deadline() {
            next = next.min(t);
        }
        next
    }

    /// When the next snapshot is due: `persist_interval` after the last one when
    /// something changed; `idle_persist_interval` after it while a relay is connected
    /// (its cursor moves with time, so a crash after a long quiet spell still restarts
    /// as a quick reconnect); never otherwise.
    fn persist_deadline(&self) -> Option<WallTime> {
        if self.dirty {
            Some(self.persist_due)
        } else if self.relays.iter().any(|(_, s)| s.status.is_connected()) {
            Some(self.persisted_at + self.config.idle_persist_interval)
        } else {
            None
        }
    }

    /// Sets a relay's limits (from its NIP-11 document). Takes effect for new
    /// subscriptions; an oversubscribed relay is consolidated at the next check.
    pub fn set_relay_limits(&mut self, relay: &RelayUrl, limits: RelayLimits) {
        if let Some(conn) = self.conns.get_mut(relay) {
            conn.limits = match conn.learnt_max_filters {
                Some(max) => limits.with_learnt_max_filters(max),
                None => limits,
            };
            conn.deferred = true;
            self.wake(relay);
        }
    }

    /// A relay's NIP-11 `limitation`: the configured [`SyncConfig::default_limits`]
    /// lowered (never raised) to it, for that relay.
    pub fn apply_nip11_limits(&mut self, relay: &RelayUrl, limitation: &Nip11Limitation) {
        let limits = self.config.default_limits.lowered_to(limitation);
        self.set_relay_limits(relay, limits);
    }

    /// Counters since start.
    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    /// What is wanted (read-only).
    pub fn repo_index(&self) -> &RepoSyncIndex {
        &self.repos
    }

    /// What is confirmed (read-only).
    pub fn relay_index(&self) -> &RelaySyncIndex {
        &self.relays
    }

    /// What is in flight (read-only).
    pub fn pending_index(&self) -> &PendingSyncIndex {
        &self.pending
    }

    /// Relay → what it should carry (read-only).
    pub fn targets(&self) -> &RelayTargets {
        &self.targets
    }

    /// Whether no accepted event waits for the batch window, no batch is in flight and
    /// every relay with something to sync has left `Syncing`: the "converged" test.
    pub fn is_idle(&self) -> bool {
        self.accepted.is_empty()
            && self.in_flight.is_empty()
            && self.pending.relays().next().is_none()
            && self
                .relays
                .iter()
                .all(|(_, s)| s.status != ConnectionStatus::Syncing)
    }

    /// Status of every relay known, in order.
    pub fn status(&self, now: WallTime) -> Vec<RelayStatusSnapshot> {
        self.relays
            .iter()
            .map(|(relay, state)| {
                let conn = self.conns.get(relay);
                RelayStatusSnapshot {
                    relay: relay.clone(),
                    status: state.status,
                    health: conn.map_or(crate::health::HealthState::Disconnected, |c| {
                        c.health.state(now)
                    }),
                    failures: conn.map_or(0, |c| c.health.failures()),
                    is_bootstrap: state.is_bootstrap,
                    live_filters: conn.map_or(0, Conn::live_filter_count),
                    live_subscriptions: conn.map_or(0, |c| c.live.len()),
                    historic_parts: conn.map_or(0, |c| c.historic.len() + c.queue.len()),
                    pending_batches: self.pending.batches(relay).len(),
                    confirmed_repos: state.confirmed.repos.len(),
                    confirmed_root_events: state.confirmed.root_events.len(),
                    events_received: conn.map_or(0, |c| c.events_received),
                    negentropy: conn.map_or(NegentropySupport::Unknown, |c| c.negentropy),
                    last_error: conn.and_then(|c| c.last_error.clone()),
                    historic_sync_completed: state.historic_sync_completed,
                    next_retry: conn
                        .map(|c| c.health.next_attempt_at(now))
                        .filter(|at| *at > now),
                }
            })
            .collect()
    }

    /// Up to `limit` repos, in order, with how far each is synced (for status pages).
    pub fn repo_status(&self, limit: usize) -> Vec<RepoStatusSnapshot> {
        self.repos
            .iter()
            .take(limit)
            .map(|(repo, needs)| RepoStatusSnapshot {
                repo: repo.clone(),
                sync_level: needs.sync_level,
                relays: needs.relays.len(),
                confirmed_on: needs
                    .relays
                    .iter()
                    .filter(|r| {
                        self.relays
                            .get(r)
                            .is_some_and(|s| s.confirmed.repos.contains_key(repo))
                    })
                    .count(),
                root_events: needs.root_events.len(),
            })
            .collect()
    }

    /// The live subscriptions open on `relay`: id and filters (for tests and status).
    pub fn live_subscriptions(
        &self,
        relay: &RelayUrl,
    ) -> Vec<(SubscriptionId, Vec<nostr::Filter>)> {
        self.conns
            .get(relay)
            .map(|c| {
                c.live
                    .iter()
                    .map(|(id, s)| (id.clone(), s.filters.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A snapshot for the sync-state store: what is wanted, what each relay confirmed,
    /// and each relay's cursor. It never claims more than the host durably holds:
    /// items whose batch still waits for verdicts are not confirmed, and a cursor stops
    /// at the oldest event still in flight.
    pub fn snapshot(&self, now: WallTime) -> SyncStateSnapshot {
        let oldest = self.in_flight.oldest_per_relay();
        SyncStateSnapshot {
            version: SyncStateSnapshot::VERSION,
            taken_at: now,
            repos: self
                .repos
                .iter()
                .map(|(repo, needs)| PersistedRepo {
                    repo: repo.clone(),
                    relays: needs.relays.clone(),
                    root_events: needs.root_events.clone(),
                    sync_level: needs.sync_level,
                    participants: self
                        .sync_plus
                        .iter()
                        .flat_map(|sp| sp.participants(repo))
                        .copied()
                        .collect(),
                })
                .collect(),
            relays: self
                .relays
                .iter()
                .map(|(relay, state)| PersistedRelay {
                    relay: relay.clone(),
                    state: self.persisted_state(relay, state, now, oldest.get(relay).copied()),
                    negentropy: self
                        .conns
                        .get(relay)
                        .map_or(NegentropySupport::Unknown, |c| c.negentropy),
                })
                .collect(),
            relay_lists: self.sync_plus_lists(),
        }
    }

    /// A relay's state as it may be trusted after a restart: history that failed is not
    /// confirmed (so it is synced in full again), layer 1 counts as synced only if its
    /// history succeeded, and the cursor is where durably stored history ends.
    fn persisted_state(
        &self,
        relay: &RelayUrl,
        state: &crate::model::RelayState,
        now: WallTime,
        oldest_in_flight: Option<WallTime>,
    ) -> crate::model::RelayState {
        let mut state = state.clone();
        if let Some(conn) = self.conns.get(relay) {
            state.confirmed.subtract(&conn.failed_items);
            // Not stored in full either: a restart asks for them once more.
            state.confirmed.subtract(&conn.beyond_req);
            state.announcements_synced &= !conn.failed_layer1;
        }
        if state.status.is_connected() || state.complete_until.is_some() {
            state.complete_until = Some(self.cursor_with(relay, now, oldest_in_flight));
        }
        state
    }

    /// `relay`'s state may have changed outside its own timers: pump it after this
    /// input, and look at it at every periodic check until it is idle again.
    fn wake(&mut self, relay: &RelayUrl) {
        self.woken.insert(relay.clone());
        self.timers.watch(relay);
    }

    fn next_subscription_id(&mut self) -> SubscriptionId {
        self.next_id += 1;
        SubscriptionId::new(format!("{SUBSCRIPTION_PREFIX}{}", self.next_id))
    }

    /// Whether `sub` is an id this engine gave out: one it closed since, or one
    /// open on another relay, if it is not open on the relay it came from. Ids are
    /// never given out twice.
    fn issued(&self, sub: &SubscriptionId) -> bool {
        sub.as_str()
            .strip_prefix(SUBSCRIPTION_PREFIX)
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| (1..=self.next_id).contains(&n))
    }

    fn may_dial(&self, relay: &RelayUrl) -> bool {
        !self.config.own_relays.contains(relay) && self.policy.permits_relay(relay)
    }

    /// Filters an announcement's relay list: our own URLs and refused URLs out, capped.
    fn admit_relays(&mut self, relays: Vec<RelayUrl>) -> BTreeSet<RelayUrl> {
        let total = relays.len();
        let admitted: BTreeSet<RelayUrl> = relays
            .into_iter()
            .filter(|r| self.may_dial(r))
            .take(self.config.max_relays_per_announcement)
            .collect();
        self.metrics.relays_refused += (total - admitted.len()) as u64;
        admitted
    }
}
