//! `RelaySyncIndex`: what each relay has confirmed, plus the connection facts the
//! reconnect rules need (`last_connected`, `complete_until`). Confirmed items are the
//! items whose historic sync finished, with every event it brought durably handled by
//! the host, and whose live subscription is open.

use std::collections::BTreeMap;

use super::{RelayUrl, SyncItems, WallTime};

/// Where a relay's connection is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum ConnectionStatus {
    /// No websocket; it gets its filters when it (re)connects.
    #[default]
    Disconnected,
    /// A connect command is out.
    Connecting,
    /// Connected; historic sync still running.
    Syncing,
    /// Connected; historic sync finished and every batch succeeded.
    Connected,
    /// Connected; historic sync finished but some batch failed (timed out, closed,
    /// ids not delivered). Live subscriptions still run; the daily sync retries.
    ConnectedHistoricSyncFailures,
}

impl ConnectionStatus {
    /// True when a websocket is up.
    pub fn is_connected(self) -> bool {
        matches!(
            self,
            Self::Syncing | Self::Connected | Self::ConnectedHistoricSyncFailures
        )
    }

    /// The metric value used by `relay_connected` (0..4).
    pub fn metric_value(self) -> i64 {
        match self {
            Self::Disconnected => 0,
            Self::Connecting => 1,
            Self::Syncing => 2,
            Self::Connected => 3,
            Self::ConnectedHistoricSyncFailures => 4,
        }
    }
}

/// Confirmed state and connection facts of one relay.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayState {
    /// Items confirmed syncing (historic done, live open).
    pub confirmed: SyncItems,
    /// Bootstrap relays are never disconnected for having nothing to sync.
    pub is_bootstrap: bool,
    /// Connection status.
    pub status: ConnectionStatus,
    /// When the websocket last came up, or when we last knew it was up.
    pub last_connected: Option<WallTime>,
    /// When it last went down.
    pub disconnected_at: Option<WallTime>,
    /// The relay's cursor: every event it published before this moment (less the
    /// overlap) that we want has a durable verdict here. Set when the connection ends
    /// and in every snapshot; never past an event still waiting for the host's verdict.
    /// Decides quick reconnect versus fresh start, and is the quick reconnect's `since`.
    #[serde(default)]
    pub complete_until: Option<WallTime>,
    /// Layer 1 historic sync done on this connection.
    pub announcements_synced: bool,
    /// Historic sync finished on this connection.
    pub historic_sync_completed: bool,
    /// When historic sync last finished.
    pub historic_sync_completed_at: Option<WallTime>,
}

/// Relay URL → confirmed state.
#[derive(Debug, Clone, Default)]
pub struct RelaySyncIndex {
    relays: BTreeMap<RelayUrl, RelayState>,
}

impl RelaySyncIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// One relay's state.
    pub fn get(&self, relay: &RelayUrl) -> Option<&RelayState> {
        self.relays.get(relay)
    }

    /// One relay's state, mutable.
    pub fn get_mut(&mut self, relay: &RelayUrl) -> Option<&mut RelayState> {
        self.relays.get_mut(relay)
    }

    /// One relay's state, created Disconnected if absent.
    pub fn entry(&mut self, relay: &RelayUrl) -> &mut RelayState {
        self.relays.entry(relay.clone()).or_default()
    }

    /// Forgets a relay.
    pub fn remove(&mut self, relay: &RelayUrl) -> Option<RelayState> {
        self.relays.remove(relay)
    }

    /// All relays in order.
    pub fn iter(&self) -> impl Iterator<Item = (&RelayUrl, &RelayState)> {
        self.relays.iter()
    }

    /// All relays in order, mutable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&RelayUrl, &mut RelayState)> {
        self.relays.iter_mut()
    }

    /// Number of relays known.
    pub fn len(&self) -> usize {
        self.relays.len()
    }

    /// True when no relay is known.
    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }
}
