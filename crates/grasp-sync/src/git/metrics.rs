//! Counters for git hunting, as plain data.
//!
//! The scheduler keeps these up to date; the driver copies them out with
//! [`HuntScheduler::metrics`](super::HuntScheduler::metrics) and exports them however
//! the host likes (Prometheus names in the design: `hunts_total{result}`,
//! `purgatory_waiting`, plus bytes fetched). Keeping them as a struct, not as a metrics
//! registry, keeps the pure core free of any metrics library.

/// Hunting counters (monotonic) and gauges (current values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HuntMetrics {
    /// Fetch jobs that brought every object the job asked for.
    pub hunts_complete: u64,
    /// Fetch jobs that brought some, but not all, of the objects asked for.
    pub hunts_partial: u64,
    /// Fetch jobs where the server answered but had none of the objects.
    pub hunts_empty: u64,
    /// Fetch jobs that failed: unreachable, timeout, protocol or local error.
    pub hunts_failed: u64,
    /// Fetch jobs refused by the URL policy before any connection.
    pub hunts_refused: u64,
    /// Events whose data was found (by hunting or by a push) and released.
    pub events_satisfied: u64,
    /// Events whose hunt ended at their deadline without the data.
    pub events_expired: u64,
    /// Bytes of pack data received.
    pub bytes_fetched: u64,
    /// Gauge: repos with at least one event waiting.
    pub repos_waiting: u64,
    /// Gauge: events waiting for data.
    pub events_waiting: u64,
    /// Gauge: fetch jobs in flight.
    pub jobs_in_flight: u64,
}

impl HuntMetrics {
    /// `(result label, count)` pairs for a `hunts_total{result}` counter family.
    pub fn hunts_by_result(&self) -> [(&'static str, u64); 5] {
        [
            ("complete", self.hunts_complete),
            ("partial", self.hunts_partial),
            ("empty", self.hunts_empty),
            ("failed", self.hunts_failed),
            ("refused", self.hunts_refused),
        ]
    }
}
