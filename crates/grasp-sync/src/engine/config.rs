//! `SyncConfig`: every knob of the engine, with the design's defaults. Tests and the
//! simulation shrink the timers; a host usually only sets its own URLs and bootstrap
//! relays.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::filters::RelayLimits;
use crate::health::HealthConfig;
use crate::model::RelayUrl;

/// How long past [`SyncConfig::negentropy_total_timeout`] the engine waits for the
/// executor's answer about a negentropy session before it falls back on its own.
pub const NEGENTROPY_ANSWER_GRACE: Duration = Duration::from_secs(10);

/// Engine configuration. Build with `SyncConfig::default()` and the `with_*` methods.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// This relay's own URLs: never dialled, and removed from every announcement.
    pub own_relays: BTreeSet<RelayUrl>,
    /// Relays always connected for layer 1 (announcements, GRASP lists), never dropped
    /// for having nothing to sync.
    pub bootstrap_relays: BTreeSet<RelayUrl>,
    /// Self-subscriber batch window: the longest accepted events wait to be applied
    /// together (a sync round that ends sooner applies them at once).
    pub batch_window: Duration,
    /// How often the purgatory announcements are read (StateOnly repos).
    pub purgatory_interval: Duration,
    /// How often connection health, retries, timeouts and idle relays are checked.
    pub check_interval: Duration,
    /// A relay disconnected for longer than this gets a fresh start, else a quick
    /// reconnect with `since`.
    pub quick_reconnect_window: Duration,
    /// Subtracted from `since` on a quick reconnect, for clock skew and events that were
    /// in flight when the connection dropped.
    pub since_overlap: Duration,
    /// Shortest delay of the daily fresh start.
    pub daily_min: Duration,
    /// Longest delay of the daily fresh start (jitter is uniform in between).
    pub daily_max: Duration,
    /// A negentropy session with no message from the relay for this long (the first
    /// answer to NEG-OPEN included) falls back to REQ+EOSE. The driver's executor
    /// enforces it, watching the session's messages, so a slow but progressing
    /// reconciliation is never cut short.
    pub negentropy_idle_timeout: Duration,
    /// Upper bound of one whole negentropy session (the executor's backstop against a
    /// relay that keeps a reconciliation going for ever). The engine gives the executor
    /// this plus [`NEGENTROPY_ANSWER_GRACE`] before it gives up on an answer.
    pub negentropy_total_timeout: Duration,
    /// A relay that refused NIP-77 (or stayed silent) is offered it again after this
    /// long, not only at the daily fresh start: relays get upgraded, and history a
    /// relay cannot deliver by REQ (a tie group over its `limit` cap) waits for it.
    pub negentropy_reprobe_interval: Duration,
    /// A historic subscription with no EOSE for this long fails its part of the batch.
    pub subscription_timeout: Duration,
    /// Backoff, dead-relay and rate-limit rules.
    pub health: HealthConfig,
    /// Limits used until a relay's NIP-11 document says otherwise.
    pub default_limits: RelayLimits,
    /// Relays read from one announcement at most (hostile announcements list thousands).
    pub max_relays_per_announcement: usize,
    /// Root events tracked per repo at most.
    pub max_root_events_per_repo: usize,
    /// Batches in flight per relay at most; further items wait for the next check.
    pub max_pending_batches_per_relay: usize,
    /// Historic subscriptions (REQ or negentropy) open at once per relay.
    pub max_concurrent_historic: usize,
    /// Live subscriptions closed by a relay are re-requested at most this many times
    /// per connection, so a relay that closes everything cannot make us loop.
    pub max_live_resubscribes: u32,
    /// Ids remembered as already handed to the host (cross-relay de-duplication).
    pub dedupe_capacity: usize,
    /// Root events remembered for repos not known yet (arrived before their
    /// announcement), in total.
    pub max_orphan_root_events: usize,
    /// Rounds of retrying failed history per connection (backoff 30 s doubling, capped
    /// at 1 h); after that only the daily fresh start retries.
    pub max_history_retries: u32,
    /// How often a snapshot of the sync state is requested, when it changed.
    pub persist_interval: Duration,
    /// Messages on one connection that break the protocol (events that match no
    /// filter asked, events beyond the page asked or on unknown subscriptions,
    /// NOTICEs) before the relay is dropped and backed off as a failure.
    pub max_misbehaviour_per_connection: u32,
    /// How often a snapshot is requested when nothing changed but a relay is connected
    /// (its cursor moves with time): a crash after a quiet spell then restarts as a
    /// quick reconnect. Keep it well under `quick_reconnect_window`.
    pub idle_persist_interval: Duration,
    /// GRASP-03 "Sync+": also take a Full repo's conversation from the relays its
    /// participants write to. Off (`None`) by default: it dials relays no announcement
    /// lists, and its cost on real networks is not measured yet.
    pub sync_plus: Option<SyncPlusConfig>,
}

/// GRASP-03 "Sync+" bounds. A repo's participants are the authors of its root events
/// and of the events tagging it or them that the host accepted; their relays are the
/// write relays of their NIP-65 list (kind 10002) and the `g` relays of their GRASP
/// list (kind 10317), asked from the repo's listed relays. Those relays carry the repo
/// at [`crate::SyncLevel::Conversation`]: layers 2 and 3, no state, no layer 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncPlusConfig {
    /// Participants remembered per repo (the first ones seen; 32 as one peer does).
    pub max_authors_per_repo: usize,
    /// Outbox relays per repo, the ones most of its participants list first (24).
    pub max_relays_per_repo: usize,
    /// Distinct outbox relays over all repos: a relay not yet in use is only added
    /// while fewer are (256).
    pub max_relays_total: usize,
    /// Relays read from each of an author's lists (the first ones; 10 from the NIP-65
    /// list, 10 from the GRASP list): a list of thousands must not crowd out the other
    /// participants.
    pub max_relays_per_author: usize,
}

impl Default for SyncPlusConfig {
    fn default() -> Self {
        Self {
            max_authors_per_repo: 32,
            max_relays_per_repo: 24,
            max_relays_total: 256,
            max_relays_per_author: 10,
        }
    }
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            own_relays: BTreeSet::new(),
            bootstrap_relays: BTreeSet::new(),
            batch_window: Duration::from_secs(5),
            purgatory_interval: Duration::from_secs(5),
            check_interval: Duration::from_secs(2),
            quick_reconnect_window: Duration::from_secs(15 * 60),
            since_overlap: Duration::from_secs(60),
            daily_min: Duration::from_secs(23 * 3600),
            daily_max: Duration::from_secs(25 * 3600),
            negentropy_idle_timeout: Duration::from_secs(10),
            negentropy_total_timeout: Duration::from_secs(600),
            negentropy_reprobe_interval: Duration::from_secs(6 * 3600),
            subscription_timeout: Duration::from_secs(120),
            health: HealthConfig::default(),
            default_limits: RelayLimits::default(),
            max_relays_per_announcement: 20,
            max_root_events_per_repo: 10_000,
            max_pending_batches_per_relay: 32,
            max_concurrent_historic: 8,
            max_live_resubscribes: 5,
            dedupe_capacity: 200_000,
            max_orphan_root_events: 10_000,
            max_history_retries: 8,
            persist_interval: Duration::from_secs(30),
            idle_persist_interval: Duration::from_secs(5 * 60),
            max_misbehaviour_per_connection: 1_000,
            sync_plus: None,
        }
    }
}

impl SyncConfig {
    /// Adds one of this relay's own URLs.
    pub fn with_own_relay(mut self, url: RelayUrl) -> Self {
        self.own_relays.insert(url);
        self
    }

    /// Adds a bootstrap relay.
    pub fn with_bootstrap_relay(mut self, url: RelayUrl) -> Self {
        self.bootstrap_relays.insert(url);
        self
    }

    /// Switches GRASP-03 Sync+ on with these bounds.
    pub fn with_sync_plus(mut self, bounds: SyncPlusConfig) -> Self {
        self.sync_plus = Some(bounds);
        self
    }

    /// Shorter batch window, purgatory and check intervals, for tests that want the
    /// design's behaviour in less wall time. Rules keyed to real durations (15 min,
    /// 24 h) are unchanged.
    pub fn with_fast_timers(mut self) -> Self {
        self.batch_window = Duration::from_millis(100);
        self.purgatory_interval = Duration::from_millis(200);
        self.check_interval = Duration::from_millis(200);
        self
    }
}
