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
    #[serde(deserialize_with = "saved::relay_urls")]
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
    #[serde(deserialize_with = "saved::relay_urls")]
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
    #[serde(deserialize_with = "saved::relays")]
    pub relays: Vec<PersistedRelay>,
    /// Participants' relay lists (GRASP-03 Sync+; empty when off).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relay_lists: Vec<PersistedRelayList>,
}

/// Loading what an earlier version saved: every relay URL is parsed again (a
/// [`RelayUrl`] is only ever its checked spelling), and one that no longer parses — the
/// rules tightened since, as when URLs got a length cap — is dropped with what only it
/// names, instead of failing the whole state (a relay that cannot load its state does
/// not start).
mod saved {
    use serde::{Deserialize, Deserializer};

    use super::{NegentropySupport, PersistedRelay, RelayState, RelayUrl};

    pub(super) fn relay_urls<'de, D, C>(d: D) -> Result<C, D::Error>
    where
        D: Deserializer<'de>,
        C: FromIterator<RelayUrl>,
    {
        let raw = Vec::<String>::deserialize(d)?;
        Ok(raw.iter().filter_map(|s| RelayUrl::parse(s).ok()).collect())
    }

    /// [`PersistedRelay`] with its URL as saved.
    #[derive(Deserialize)]
    struct Saved {
        relay: String,
        state: RelayState,
        negentropy: NegentropySupport,
    }

    pub(super) fn relays<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PersistedRelay>, D::Error> {
        let raw = Vec::<Saved>::deserialize(d)?;
        Ok(raw
            .into_iter()
            .filter_map(|s| {
                Some(PersistedRelay {
                    relay: RelayUrl::parse(&s.relay).ok()?,
                    state: s.state,
                    negentropy: s.negentropy,
                })
            })
            .collect())
    }
}

impl SyncStateSnapshot {
    /// Current format version.
    /// Version 2: per-relay `complete_until` cursors; a version-1 snapshot (cursor
    /// taken from the snapshot time) is ignored, which costs one fresh start.
    pub const VERSION: u32 = 2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_relay_url_that_no_longer_parses_is_dropped_not_the_state() {
        let ok = RelayUrl::parse("wss://relay.example").unwrap();
        let long = format!("wss://x.example/{}", "a".repeat(3_000));
        let snapshot = SyncStateSnapshot {
            version: SyncStateSnapshot::VERSION,
            taken_at: WallTime(1),
            repos: Vec::new(),
            relays: vec![PersistedRelay {
                relay: ok.clone(),
                state: RelayState::default(),
                negentropy: NegentropySupport::Supported,
            }],
            relay_lists: Vec::new(),
        };
        let mut json = serde_json::to_value(&snapshot).unwrap();
        // As an earlier version, without the cap, could have saved them.
        let mut long_relay = json["relays"][0].clone();
        long_relay["relay"] = serde_json::Value::from(long.clone());
        json["relays"].as_array_mut().unwrap().push(long_relay);
        json["repos"] = serde_json::json!([{
            "repo": format!("30617:{}:r", nostr::Keys::generate().public_key().to_hex()),
            "relays": [ok.as_str(), long],
            "root_events": [],
            "sync_level": "Full",
        }]);
        let loaded: SyncStateSnapshot = serde_json::from_value(json).unwrap();
        assert_eq!(loaded.relays, snapshot.relays);
        assert_eq!(loaded.repos.len(), 1);
        assert_eq!(loaded.repos[0].relays, BTreeSet::from([ok]));
    }
}
