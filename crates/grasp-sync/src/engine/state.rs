//! What the engine reports: status per relay and per repo for the host's `/status`,
//! and counters for metrics. (What it persists, the snapshot, is in
//! [`crate::model::SyncStateSnapshot`]: the sync-state store port shares it.)

use crate::health::HealthState;
use crate::model::{ConnectionStatus, NegentropySupport, RelayUrl, RepoRef, SyncLevel, WallTime};

/// Counters kept by the engine; the driver exports them as Prometheus metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineMetrics {
    /// EVENT messages received on our subscriptions.
    pub events_received: u64,
    /// Events handed to the host for ingestion.
    pub events_handed: u64,
    /// Host outcomes: newly accepted (the `events_synced_total` metric).
    pub events_accepted: u64,
    /// Host outcomes: parked in purgatory.
    pub events_purgatory: u64,
    /// Host outcomes: refused.
    pub events_rejected: u64,
    /// Host outcomes: already held.
    pub events_duplicate: u64,
    /// Host outcomes: could not be processed (asked again later).
    pub events_failed: u64,
    /// Events not handed over because another relay already delivered them.
    pub events_deduplicated: u64,
    /// Events that arrived on a subscription we had closed (a relay sends until it
    /// reads our CLOSE; parts are closed early when messages were lost) and were taken
    /// because the relay's live filters want them.
    pub events_after_close: u64,
    /// Events dropped: on a subscription we do not have open, except those taken as
    /// [`EngineMetrics::events_after_close`].
    pub dropped_unknown_subscription: u64,
    /// Events dropped: not matching the filter they were sent for.
    pub dropped_unsolicited: u64,
    /// Events dropped: beyond the page size asked (a flooding relay).
    pub dropped_flood: u64,
    /// Accepted-feed events or announcements that could not be read (bad tags).
    pub dropped_malformed: u64,
    /// Relay URLs refused (policy, own URL, invalid) or cut by the per-announcement cap.
    pub relays_refused: u64,
    /// Connect commands issued.
    pub connection_attempts: u64,
    /// Connects that failed or timed out.
    pub connection_failures: u64,
    /// REQ messages sent (live and historic).
    pub reqs_sent: u64,
    /// Negentropy sessions opened.
    pub negentropy_sessions: u64,
    /// Negentropy sessions that fell back to REQ+EOSE.
    pub negentropy_fallbacks: u64,
    /// Times a relay that refused NIP-77 was offered it again (see
    /// [`crate::SyncConfig::negentropy_reprobe_interval`]).
    pub negentropy_reprobes: u64,
    /// Batches finished without failure.
    pub batches_completed: u64,
    /// Batches finished with a failed part.
    pub batches_failed: u64,
    /// Live subscription rebuilds (consolidation, removals, closed live subscriptions).
    pub consolidations: u64,
    /// Fresh starts (first connect, long disconnect, daily).
    pub fresh_starts: u64,
    /// Quick reconnects.
    pub quick_reconnects: u64,
    /// Times messages from a relay were lost on the way in (and asked again).
    pub messages_lost: u64,
    /// Times a relay was dropped for misbehaving (unsolicited events, floods, NOTICEs).
    pub relays_misbehaving: u64,
    /// Sync+ (GRASP-03) relay-list lookups sent.
    pub sync_plus_lookups: u64,
    /// Sync+ lookups refused by the relay or past their deadline.
    pub sync_plus_lookups_failed: u64,
    /// Distinct participants' outbox relays carrying a repo now (a gauge).
    pub sync_plus_relays: u64,
}

/// One relay as the host's status page shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RelayStatusSnapshot {
    /// The relay.
    pub relay: RelayUrl,
    /// Connection status.
    pub status: ConnectionStatus,
    /// Health.
    pub health: HealthState,
    /// Consecutive connection failures.
    pub failures: u32,
    /// Bootstrap relay.
    pub is_bootstrap: bool,
    /// Live filters open.
    pub live_filters: usize,
    /// Live subscriptions open.
    pub live_subscriptions: usize,
    /// Historic subscriptions open or queued.
    pub historic_parts: usize,
    /// Batches in flight.
    pub pending_batches: usize,
    /// Repos confirmed.
    pub confirmed_repos: usize,
    /// Root events confirmed.
    pub confirmed_root_events: usize,
    /// Events received from this relay.
    pub events_received: u64,
    /// NIP-77 support learnt.
    pub negentropy: NegentropySupport,
    /// Historic sync finished on this connection.
    pub historic_sync_completed: bool,
    /// Why the last connect attempt failed (a policy refusal names the address and its
    /// range); cleared by a successful connect.
    pub last_error: Option<String>,
    /// When the next connect attempt is due, while disconnected and waiting out a
    /// backoff, a rate-limit cooldown or the dead-relay interval.
    pub next_retry: Option<WallTime>,
}

/// One repo as the host's status page shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RepoStatusSnapshot {
    /// The repo.
    pub repo: RepoRef,
    /// `Full` (accepted) or `StateOnly` (announcement held in purgatory).
    pub sync_level: SyncLevel,
    /// Relays its announcement lists (ours excluded).
    pub relays: usize,
    /// Of those, the relays that confirmed its layer-2 sync (its state for `StateOnly`).
    pub confirmed_on: usize,
    /// Root events (patches, PRs, issues) known for it.
    pub root_events: usize,
}
