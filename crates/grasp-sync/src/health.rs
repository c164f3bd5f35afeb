//! Relay health (design section 8): a pure state machine per relay, driven by connection
//! events and an injected `now`. It decides when to try again (exponential backoff, one
//! try a day once dead), whether we may subscribe (not while rate limited), and what the
//! `relay_status` metric shows.

use std::time::Duration;

use crate::model::WallTime;

/// Timing rules of the health tracker. Defaults are the design's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// First retry delay after a failure; also the connection timeout. Default 5 s.
    pub base_backoff: Duration,
    /// Longest retry delay before the relay is dead. Default 1 h.
    pub max_backoff: Duration,
    /// Continuous failure after which the relay is dead. Default 24 h.
    pub dead_after: Duration,
    /// Retry interval of a dead relay. Default 24 h.
    pub dead_retry_interval: Duration,
    /// How long we stay quiet after a rate-limit signal. Default 65 s.
    pub rate_limit_cooldown: Duration,
    /// How long a recovered connection must last before the relay is healthy again (and
    /// its failure history forgotten). Default 5 min.
    pub stability_period: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            base_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(3600),
            dead_after: Duration::from_secs(24 * 3600),
            dead_retry_interval: Duration::from_secs(24 * 3600),
            rate_limit_cooldown: Duration::from_secs(65),
            stability_period: Duration::from_secs(5 * 60),
        }
    }
}

impl HealthConfig {
    /// How long a connection attempt may take: the base backoff, as the design says.
    pub fn connection_timeout(&self) -> Duration {
        self.base_backoff
    }

    /// Retry delay after `failures` consecutive failures: `base × 2^(failures−1)`,
    /// capped at `max_backoff`; zero without failures. Saturates, never overflows.
    pub fn backoff(&self, failures: u32) -> Duration {
        let Some(exp) = failures.checked_sub(1) else {
            return Duration::ZERO;
        };
        let factor = 1u32.checked_shl(exp.min(31)).unwrap_or(u32::MAX);
        self.base_backoff
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max_backoff)
    }
}

/// What a relay's health looks like from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum HealthState {
    /// Connected and stable.
    Healthy,
    /// Connected again after failures, within the stability period.
    Degraded,
    /// Not connected; retried with backoff.
    Disconnected,
    /// Failing continuously for `dead_after`; retried once per `dead_retry_interval`.
    Dead,
    /// Told us to slow down; no new subscriptions until the cooldown ends.
    RateLimited,
}

impl HealthState {
    /// Value of the `relay_status` gauge (design section 13): healthy = 1, degraded = 2,
    /// disconnected = 3, dead = 4, rate_limited = 5. Higher is worse.
    pub fn metric_value(self) -> u8 {
        match self {
            HealthState::Healthy => 1,
            HealthState::Degraded => 2,
            HealthState::Disconnected => 3,
            HealthState::Dead => 4,
            HealthState::RateLimited => 5,
        }
    }
}

/// Health of one relay. Feed it what happens; ask it what to do. Out-of-order or
/// repeated events are tolerated (they never panic and never move time backwards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayHealth {
    config: HealthConfig,
    /// Consecutive failures (0 while connected).
    failures: u32,
    /// Failures before the current connection, restored if it drops before it is stable.
    failures_before_connect: u32,
    /// Start of the current run of failures without a stable connection.
    failing_since: Option<WallTime>,
    last_failure_at: Option<WallTime>,
    attempt_started_at: Option<WallTime>,
    connected_since: Option<WallTime>,
    /// The current connection follows failures: Degraded until stable.
    recovering: bool,
    rate_limited_until: Option<WallTime>,
}

impl RelayHealth {
    /// A relay never contacted: Disconnected, to be tried now.
    pub fn new(config: HealthConfig) -> Self {
        Self {
            config,
            failures: 0,
            failures_before_connect: 0,
            failing_since: None,
            last_failure_at: None,
            attempt_started_at: None,
            connected_since: None,
            recovering: false,
            rate_limited_until: None,
        }
    }

    /// The rules in use.
    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// A connection attempt starts.
    pub fn on_connect_attempt(&mut self, now: WallTime) {
        self.attempt_started_at = Some(now);
    }

    /// The websocket is open.
    pub fn on_connected(&mut self, now: WallTime) {
        self.attempt_started_at = None;
        if self.connected_since.is_some() {
            return;
        }
        self.failures_before_connect = self.failures;
        self.recovering = self.failures > 0;
        self.failures = 0;
        self.connected_since = Some(now);
    }

    /// A connection attempt failed (refused, timed out, handshake error).
    pub fn on_connect_failed(&mut self, now: WallTime) {
        self.attempt_started_at = None;
        if self.connected_since.is_some() {
            // Treat as a drop of the open connection, then a failure.
            self.on_disconnected(now);
        }
        self.failures = self.failures.saturating_add(1);
        self.failing_since.get_or_insert(now);
        self.last_failure_at = Some(now);
    }

    /// The open connection dropped. A drop after a stable period starts afresh (retry
    /// at once); a drop within the stability period counts as one more failure.
    pub fn on_disconnected(&mut self, now: WallTime) {
        self.attempt_started_at = None;
        let Some(since) = self.connected_since.take() else {
            return;
        };
        if self.is_stable(since, now) {
            self.failures = 0;
            self.failures_before_connect = 0;
            self.failing_since = Some(now);
            self.last_failure_at = Some(now);
        } else {
            self.failures = self.failures_before_connect.saturating_add(1);
            self.failing_since.get_or_insert(now);
            self.last_failure_at = Some(now);
        }
        self.recovering = false;
    }

    /// The relay said to slow down (NOTICE or `CLOSED: rate-limited:`): cool down from
    /// now, extending any cooldown in progress.
    pub fn on_rate_limited(&mut self, now: WallTime) {
        let until = now + self.config.rate_limit_cooldown;
        self.rate_limited_until = Some(self.rate_limited_until.map_or(until, |u| u.max(until)));
    }

    /// The state at `now`. RateLimited hides the underlying state for the cooldown and
    /// then gives it back.
    pub fn state(&self, now: WallTime) -> HealthState {
        if self.is_rate_limited(now) {
            return HealthState::RateLimited;
        }
        self.connection_state(now)
    }

    fn connection_state(&self, now: WallTime) -> HealthState {
        if let Some(since) = self.connected_since {
            return if self.recovering && !self.is_stable(since, now) {
                HealthState::Degraded
            } else {
                HealthState::Healthy
            };
        }
        if self.is_dead(now) {
            HealthState::Dead
        } else {
            HealthState::Disconnected
        }
    }

    fn is_stable(&self, since: WallTime, now: WallTime) -> bool {
        now.saturating_since(since) >= self.config.stability_period
    }

    fn is_dead(&self, now: WallTime) -> bool {
        self.connected_since.is_none()
            && self.failures > 0
            && self
                .failing_since
                .is_some_and(|s| now.saturating_since(s) >= self.config.dead_after)
    }

    /// Whether the relay said "rate limited" at or after `t` (the cooldown runs from
    /// the latest such word, so its end tells when that was).
    pub fn rate_limited_since(&self, t: WallTime) -> bool {
        self.rate_limited_until
            .is_some_and(|u| u >= t + self.config.rate_limit_cooldown)
    }

    fn is_rate_limited(&self, now: WallTime) -> bool {
        self.rate_limited_until.is_some_and(|u| now < u)
    }

    /// When to try connecting next; never before `now`. While connected, `now` (nothing
    /// to wait for). While an attempt is in flight, when it times out. Otherwise the
    /// last failure plus the backoff (or plus the dead retry interval), and never
    /// inside a rate-limit cooldown.
    pub fn next_attempt_at(&self, now: WallTime) -> WallTime {
        if self.connected_since.is_some() {
            return now;
        }
        let mut at = if let Some(started) = self.attempt_started_at {
            started + self.config.connection_timeout()
        } else if let Some(last) = self.last_failure_at {
            if self.is_dead(now) {
                last + self.config.dead_retry_interval
            } else {
                last + self.config.backoff(self.failures)
            }
        } else {
            now
        };
        if let Some(until) = self.rate_limited_until {
            at = at.max(until);
        }
        at.max(now)
    }

    /// Consecutive failures since the last stable connection (0 while connected).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether new subscriptions may be sent: connected and not rate limited.
    pub fn can_subscribe(&self, now: WallTime) -> bool {
        self.connected_since.is_some() && !self.is_rate_limited(now)
    }

    /// Whether the websocket is open, per the events fed.
    pub fn is_connected(&self) -> bool {
        self.connected_since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1000;

    fn t(secs: u64) -> WallTime {
        WallTime(secs * S)
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let c = HealthConfig::default();
        assert_eq!(c.backoff(0), Duration::ZERO);
        assert_eq!(c.backoff(1), Duration::from_secs(5));
        assert_eq!(c.backoff(2), Duration::from_secs(10));
        assert_eq!(c.backoff(10), Duration::from_secs(2560));
        assert_eq!(c.backoff(11), Duration::from_secs(3600));
        assert_eq!(c.backoff(u32::MAX), Duration::from_secs(3600));
        assert_eq!(c.connection_timeout(), Duration::from_secs(5));
    }

    #[test]
    fn lifecycle_failure_recovery_and_stability() {
        let mut h = RelayHealth::new(HealthConfig::default());
        assert_eq!(h.state(t(0)), HealthState::Disconnected);
        assert_eq!(h.next_attempt_at(t(0)), t(0));
        h.on_connect_attempt(t(0));
        assert_eq!(h.next_attempt_at(t(1)), t(5));
        h.on_connect_failed(t(5));
        h.on_connect_attempt(t(10));
        h.on_connect_failed(t(10));
        assert_eq!(h.failures(), 2);
        assert_eq!(h.next_attempt_at(t(10)), t(20));
        h.on_connected(t(20));
        assert_eq!(h.state(t(21)), HealthState::Degraded);
        assert!(h.can_subscribe(t(21)));
        // drop within the stability period: one more failure
        h.on_disconnected(t(60));
        assert_eq!(h.failures(), 3);
        assert_eq!(h.next_attempt_at(t(60)), t(80));
        h.on_connected(t(80));
        assert_eq!(h.state(t(80 + 299)), HealthState::Degraded);
        assert_eq!(h.state(t(80 + 300)), HealthState::Healthy);
        // drop after a stable period: fresh, retry at once
        h.on_disconnected(t(1000));
        assert_eq!(h.failures(), 0);
        assert_eq!(h.state(t(1000)), HealthState::Disconnected);
        assert_eq!(h.next_attempt_at(t(1000)), t(1000));
        h.on_connected(t(1001));
        assert_eq!(h.state(t(1001)), HealthState::Healthy);
    }

    #[test]
    fn dead_after_a_day_then_daily_tries() {
        let mut h = RelayHealth::new(HealthConfig::default());
        let mut now = t(0);
        h.on_connect_failed(now);
        while now < t(24 * 3600) {
            now = h.next_attempt_at(now);
            h.on_connect_failed(now);
        }
        assert_eq!(h.state(now), HealthState::Dead);
        assert_eq!(h.next_attempt_at(now), now + Duration::from_secs(24 * 3600));
        h.on_connected(now);
        assert_eq!(h.state(now), HealthState::Degraded);
    }

    #[test]
    fn rate_limit_hides_state_then_gives_it_back() {
        let mut h = RelayHealth::new(HealthConfig::default());
        h.on_connected(t(0));
        h.on_rate_limited(t(10));
        assert_eq!(h.state(t(10)), HealthState::RateLimited);
        assert!(!h.can_subscribe(t(74)));
        assert_eq!(h.state(t(75)), HealthState::Healthy);
        assert!(h.can_subscribe(t(75)));
        assert_eq!(HealthState::RateLimited.metric_value(), 5);
        assert_eq!(HealthState::Healthy.metric_value(), 1);
    }

    #[derive(Debug, Clone, Copy)]
    enum Ev {
        Attempt,
        Connected,
        Failed,
        Disconnected,
        RateLimited,
    }

    fn ev() -> impl Strategy<Value = (u64, Ev)> {
        (
            prop_oneof![0u64..10_000, 0u64..100_000_000, 0u64..7_200_000],
            prop_oneof![
                Just(Ev::Attempt),
                Just(Ev::Connected),
                Just(Ev::Failed),
                Just(Ev::Failed),
                Just(Ev::Disconnected),
                Just(Ev::RateLimited),
            ],
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn backoff_monotone_and_capped(a in 0u32..200, b in 0u32..200, base in 1u64..100_000, cap in 1u64..10_000_000) {
            let c = HealthConfig {
                base_backoff: Duration::from_millis(base),
                max_backoff: Duration::from_millis(cap),
                ..HealthConfig::default()
            };
            let (lo, hi) = (a.min(b), a.max(b));
            prop_assert!(c.backoff(lo) <= c.backoff(hi));
            prop_assert!(c.backoff(hi) <= c.max_backoff);
        }

        /// Random event sequences with random gaps: next attempt never in the past, dead
        /// only after `dead_after` without a stable connection, rate limit clears after
        /// its cooldown and not before.
        #[test]
        fn health_invariants(events in proptest::collection::vec(ev(), 1..60)) {
            let cfg = HealthConfig::default();
            let mut h = RelayHealth::new(cfg);
            let mut now = WallTime(1_000_000);
            // reference model: when did the current run without a stable connection start
            let mut failing_since: Option<WallTime> = None;
            let mut connected_at: Option<WallTime> = None;
            let mut last_rate_limit: Option<WallTime> = None;
            for (gap, e) in events {
                now = WallTime(now.0 + gap);
                if let Some(c) = connected_at {
                    if now.saturating_since(c) >= cfg.stability_period {
                        failing_since = None;
                    }
                }
                match e {
                    Ev::Attempt => h.on_connect_attempt(now),
                    Ev::Connected => { h.on_connected(now); connected_at.get_or_insert(now); }
                    Ev::Failed => {
                        h.on_connect_failed(now);
                        connected_at = None;
                        failing_since.get_or_insert(now);
                    }
                    Ev::Disconnected => {
                        if connected_at.take().is_some() { failing_since.get_or_insert(now); }
                        h.on_disconnected(now);
                    }
                    Ev::RateLimited => { h.on_rate_limited(now); last_rate_limit = Some(now); }
                }
                for probe in [now, now + Duration::from_secs(64), now + Duration::from_secs(65), now + Duration::from_secs(100_000)] {
                    prop_assert!(h.next_attempt_at(probe) >= probe);
                    let s = h.state(probe);
                    if s == HealthState::Dead {
                        prop_assert!(connected_at.is_none());
                        let since = failing_since.expect("dead without failures");
                        prop_assert!(probe.saturating_since(since) >= cfg.dead_after);
                    }
                    if let Some(rl) = last_rate_limit {
                        let limited = probe.saturating_since(rl) < cfg.rate_limit_cooldown && probe >= rl;
                        if limited { prop_assert_eq!(s, HealthState::RateLimited); }
                        if probe.saturating_since(rl) >= cfg.rate_limit_cooldown {
                            prop_assert_ne!(s, HealthState::RateLimited);
                        }
                    }
                    prop_assert_eq!(h.can_subscribe(probe), h.is_connected() && s != HealthState::RateLimited);
                }
            }
        }
    }
}
