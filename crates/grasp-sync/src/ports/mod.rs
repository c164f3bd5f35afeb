//! Ports: what the host relay provides, as traits. The engine itself is synchronous and
//! only needs the synchronous ones (RNG, relay URL policy); the asynchronous ones (event
//! store, ingestion, purgatory, sync-state store) are called by the driver that carries
//! out the engine's commands, `HuntHost` by the git hunt loop, and the blocking
//! `GitFetcher` (re-exported here) by the hunt's fetches. In-memory implementations
//! serve tests and simple hosts. Ports depend on the model only, never on the engine.

mod memory;

use async_trait::async_trait;
use nostr::{Event, EventId, Filter, Timestamp};

use crate::model::{IngestOutcome, RelayUrl, SyncStateSnapshot, WallTime};

/// The blocking git fetch port, defined with the git types it speaks (`git::fetcher`)
/// and listed here with every other trait a host implements.
pub use crate::git::GitFetcher;
pub use memory::{AllowAllRelays, MemoryEventStore, MemoryPurgatoryView, MemorySyncStateStore};

/// A port call that failed. Ports are the host's code; the library only needs to know
/// that it failed and why, for logs.
#[derive(Debug, thiserror::Error)]
#[error("{port} port failed: {message}")]
pub struct PortError {
    /// Which port.
    pub port: &'static str,
    /// The host's explanation.
    pub message: String,
}

impl PortError {
    /// A port error with a message.
    pub fn new(port: &'static str, message: impl Into<String>) -> Self {
        Self {
            port,
            message: message.into(),
        }
    }
}

/// The host's events as sync sees them.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Ids and timestamps of every event matching `filter` that we hold *or refused*:
    /// stored ∪ purgatory ∪ rejected. This is the negentropy have-set, so a relay in sync
    /// with us costs almost nothing and refused events are not downloaded again.
    async fn negentropy_items(
        &self,
        filter: &Filter,
    ) -> Result<Vec<(EventId, Timestamp)>, PortError>;

    /// Events the host stores and serves that match `filter`. The driver reads the
    /// accepted announcements and root events once at start, so a restarted engine
    /// wants everything the host holds even when its last snapshot is older than the
    /// store, or missing.
    async fn stored_events(&self, filter: &Filter) -> Result<Vec<Event>, PortError>;
}

/// The host's write path for events sync brought.
#[async_trait]
pub trait Ingestion: Send + Sync {
    /// Runs the host's policy on `event` (already signature-checked) and stores it,
    /// parks it in purgatory or refuses it. Typed outcome: never parse a message.
    async fn ingest(&self, event: Event, from: &RelayUrl) -> Result<IngestOutcome, PortError>;
}

/// The host's purgatory, as the sync engine needs it (the git hunter has its own view).
#[async_trait]
pub trait PurgatoryView: Send + Sync {
    /// Announcements (kind 30617) waiting for git data: synced at StateOnly.
    async fn announcements(&self) -> Result<Vec<Event>, PortError>;
}

/// Where sync state survives restarts.
#[async_trait]
pub trait SyncStateStore: Send + Sync {
    /// The last saved snapshot, if any.
    async fn load(&self) -> Result<Option<SyncStateSnapshot>, PortError>;
    /// Saves a snapshot (replacing the previous one).
    async fn save(&self, snapshot: &SyncStateSnapshot) -> Result<(), PortError>;
}

/// Randomness the engine needs (daily-sync jitter). Injected so a simulation replays.
pub trait RandomSource: Send {
    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64;
}

/// A small seeded generator (SplitMix64): enough for jitter, and replayable.
#[derive(Debug, Clone)]
pub struct SeededRandom(u64);

impl SeededRandom {
    /// A generator starting at `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
}

impl RandomSource for SeededRandom {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Which relays may be contacted. Announcements come from strangers: without a policy
/// one could make the relay connect inside its own network.
///
/// Two checks: the engine asks [`RelayUrlPolicy::permits_relay`] of every URL it learns
/// (syntax: scheme, literal addresses, `localhost`); the driver asks
/// [`RelayUrlPolicy::check_address`] of every address a relay's name resolves to, right
/// before each connection, and connects only to an address that passed.
pub trait RelayUrlPolicy: Send + Sync {
    /// Whether `url` may be contacted.
    fn permits_relay(&self, url: &RelayUrl) -> bool;

    /// Whether `addr`, one address `host` resolved to, may be connected to; the
    /// reason when not (shown in status and logs).
    fn check_address(&self, host: &str, addr: std::net::IpAddr) -> Result<(), String>;
}

/// A clock, for drivers that need "now".
pub trait Clock: Send + Sync {
    /// The current wall time.
    fn now(&self) -> WallTime;
}

/// What the git hunt (the tokio driver's `driver::hunt`) asks of the host.
#[async_trait]
pub trait HuntHost: Send + Sync {
    /// The git data these held events of `repo` waited for is present now: release
    /// them (store, serve, hand them to the sync engine as accepted).
    async fn release(&self, repo: &crate::model::RepoRef, events: &[EventId]);

    /// Called on every turn of the hunt loop (at least every 5 s): run the holding
    /// area's expiry rules.
    async fn tick(&self) {}

    /// What to hunt again now (called every `HuntOptions::recheck_interval`, an hour by
    /// default): git data accepted repositories still lack — a state whose objects
    /// never arrived within its purgatory window, say. A request whose data arrives is
    /// answered with [`HuntHost::release`] of its event id like any other.
    async fn rechecks(&self) -> Vec<crate::git::HuntRequest> {
        Vec::new()
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> WallTime {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        WallTime(ms)
    }
}
