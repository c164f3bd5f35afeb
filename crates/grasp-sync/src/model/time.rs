//! Engine time. Everything that decides by time takes a `WallTime` argument instead of
//! reading a clock, so tests and the simulation can move 15 minutes or 24 hours in one
//! step. Wall time (not a monotonic instant) because `last_connected` and
//! `disconnected_at` survive restarts through the sync-state store.

use std::ops::{Add, Sub};
use std::time::Duration;

/// Milliseconds since the Unix epoch.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct WallTime(pub u64);

impl WallTime {
    /// The epoch itself; useful as "long ago".
    pub const ZERO: WallTime = WallTime(0);

    /// From whole seconds since the epoch.
    pub fn from_secs(secs: u64) -> Self {
        Self(secs.saturating_mul(1000))
    }

    /// Whole seconds since the epoch (rounded down), as Nostr timestamps use.
    pub fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    /// As a Nostr timestamp, for `since`/`until`.
    pub fn as_timestamp(self) -> nostr::Timestamp {
        nostr::Timestamp::from_secs(self.as_secs())
    }

    /// Time elapsed since `earlier`, zero if `earlier` is in the future.
    pub fn saturating_since(self, earlier: WallTime) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for WallTime {
    type Output = WallTime;
    fn add(self, d: Duration) -> WallTime {
        WallTime(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

impl Sub<Duration> for WallTime {
    type Output = WallTime;
    fn sub(self, d: Duration) -> WallTime {
        WallTime(
            self.0
                .saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}
