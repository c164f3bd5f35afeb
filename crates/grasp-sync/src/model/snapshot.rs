//! What the engine persists and the sync-state store saves: the repo index, each
//! relay's confirmed state and cursor, and what each relay was learnt to speak, so a
//! restart within 15 minutes is a quick reconnect rather than a full re-sync. Shared
//! by the engine (which takes and restores it) and the ports (which store it).

use std::collections::BTreeSet;

use nostr::EventId;

use super::{RelayState, RelayUrl, RepoRef, SyncLevel, WallTime};

/// Whether a relay speaks NIP-77, as learnt on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum NegentropySupport {
    /// Not tried yet: try it.
    #[default]
    Unknown,
    /// A session completed.
    Supported,
    /// It refused or stayed silent: REQ+EOSE only until the next fresh start or
    /// [`crate::SyncConfig::negentropy_reprobe_interval`] later, whichever comes first.
    Unsupported,
}

/// A repo as persisted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PersistedRepo {
    /// The repo.
    pub repo: RepoRef,
    /// Relays listed.
    pub relays: BTreeSet<RelayUrl>,
    /// Root events.
    pub root_events: BTreeSet<EventId>,
    /// Level.
    pub sync_level: SyncLevel,
    /// Its participants (GRASP-03 Sync+; empty when off).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<nostr::PublicKey>,
}

/// A participant's relay list as persisted (GRASP-03 Sync+): what a restart needs to
/// have a repo's outbox relays at once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PersistedRelayList {
    /// Its author.
    pub author: nostr::PublicKey,
    /// 10002 (NIP-65, its write relays) or 10317 (GRASP list).
    pub kind: u16,
    /// When the list was published (a newer one replaces it).
    pub created_at: nostr::Timestamp,
    /// The relays it names that count.
    pub relays: Vec<RelayUrl>,
}

/// A relay as persisted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PersistedRelay {
    /// The relay.
    pub relay: RelayUrl,
    /// Confirmed state and connection facts.
    pub state: RelayState,
    /// NIP-77 support learnt.
    pub negentropy: NegentropySupport,
}

/// Everything needed to resume after a restart.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncStateSnapshot {
    /// Format version, bumped on incompatible change.
    pub version: u32,
    /// When it was taken (for logs; each relay resumes from its own `complete_until`).
    pub taken_at: WallTime,
    /// The repo index.
    pub repos: Vec<PersistedRepo>,
    /// The relay index.
    pub relays: Vec<PersistedRelay>,
    /// Participants' relay lists (GRASP-03 Sync+; empty when off).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relay_lists: Vec<PersistedRelayList>,
}

impl SyncStateSnapshot {
    /// Current format version.
    /// Version 2: per-relay `complete_until` cursors; a version-1 snapshot (cursor
    /// taken from the snapshot time) is ignored, which costs one fresh start.
    pub const VERSION: u32 = 2;
}
