//! Prometheus metrics (design section 13), registered in a registry the host owns so the
//! host serves them on its own `/metrics`. Names carry a configurable prefix (default
//! [`DEFAULT_PREFIX`]) so two instances in one process, or a host with its own naming,
//! do not collide.
//!
//! `SyncMetrics` is a set of handles: cheap to clone, updated by the driver loop from
//! the engine's status snapshots and from what the executor and git hunter report.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use std::collections::BTreeMap;
use std::time::Duration;

use super::wire::WireBytes;
use crate::engine::{EngineMetrics, Input, RelayStatusSnapshot};
use crate::health::HealthState;
use crate::model::{RelayUrl, WallTime};

/// The prefix used when the host does not choose one.
pub const DEFAULT_PREFIX: &str = "grasp_sync_";

/// Label set naming one relay.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayLabel {
    relay: String,
}

/// Label set naming an outcome (`success`/`failure` for connects; the hunter's result
/// names for hunts).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

/// The metric handles. Clones share the same series.
#[derive(Debug, Clone, Default)]
pub struct SyncMetrics {
    relay_connected: Family<RelayLabel, Gauge>,
    connection_attempts: Family<ResultLabel, Counter>,
    relay_status: Family<RelayLabel, Gauge>,
    relay_failures: Family<RelayLabel, Gauge>,
    events_synced: Counter,
    relays_tracked: Gauge,
    relays_connected: Gauge,
    relays_dead: Gauge,
    relays_sync_plus: Gauge,
    hunts: Family<ResultLabel, Counter>,
    purgatory_waiting: Gauge,
    notifications_lagged: Counter,
    historic: Family<WhatLabel, Counter>,
    events: Family<WhatLabel, Counter>,
    relay_events_received: Family<RelayLabel, Counter>,
    relay_bytes: Family<RelayBytesLabel, Counter>,
}

/// Label set for a relay's byte counters: the relay, and which count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayBytesLabel {
    relay: String,
    what: &'static str,
}

/// The byte counts of a relay, by their `what` label.
const BYTES_WHAT: [&str; 3] = ["wire_received", "wire_sent", "messages_received"];

fn byte_counts(b: &WireBytes) -> [u64; 3] {
    [b.received, b.sent, b.message_bytes_received]
}

/// Label set naming what a counter of a family counts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatLabel {
    what: &'static str,
}

impl SyncMetrics {
    /// Creates the metrics and registers them in `registry` with names starting with
    /// `prefix` (e.g. [`DEFAULT_PREFIX`]; include the trailing underscore).
    ///
    /// Counters are registered without their `_total` suffix because
    /// prometheus-client appends it; the gauges whose design names end in `_total`
    /// (`relays_tracked`, ...) are registered with it.
    pub fn register(registry: &mut Registry, prefix: &str) -> Self {
        let m = Self::default();
        let name = |n: &str| format!("{prefix}{n}");
        registry.register(
            name("relay_connected"),
            "Connection status per relay: 0 disconnected, 1 connecting, 2 syncing, 3 connected, 4 connected with historic sync failures",
            m.relay_connected.clone(),
        );
        registry.register(
            name("connection_attempts"),
            "Connection attempts by result (success, failure)",
            m.connection_attempts.clone(),
        );
        registry.register(
            name("relay_status"),
            "Health per relay: 1 healthy, 2 degraded, 3 disconnected, 4 dead, 5 rate limited",
            m.relay_status.clone(),
        );
        registry.register(
            name("relay_failures"),
            "Consecutive connection failures per relay",
            m.relay_failures.clone(),
        );
        registry.register(
            name("events_synced"),
            "Events brought by sync and newly accepted by the host",
            m.events_synced.clone(),
        );
        registry.register(
            name("relays_tracked"),
            "Relays known to sync",
            m.relays_tracked.clone(),
        );
        registry.register(
            name("relays_connected"),
            "Relays with an open websocket",
            m.relays_connected.clone(),
        );
        registry.register(
            name("relays_dead"),
            "Relays marked dead",
            m.relays_dead.clone(),
        );
        registry.register(
            name("relays_sync_plus"),
            "Participants' outbox relays carrying a repo's conversation (GRASP-03 Sync+)",
            m.relays_sync_plus.clone(),
        );
        registry.register(name("hunts"), "Git data hunts by result", m.hunts.clone());
        registry.register(
            name("purgatory_waiting"),
            "Events waiting in purgatory for git data",
            m.purgatory_waiting.clone(),
        );
        registry.register(
            name("historic"),
            "Historic sync work: req (REQs sent, live and historic), neg_open (NIP-77 \
             sessions), neg_fallback (sessions that fell back to REQ), neg_reprobe \
             (relays offered NIP-77 again), batch_completed, batch_failed, \
             sync_plus_lookup (GRASP-03 relay-list lookups), sync_plus_lookup_failed",
            m.historic.clone(),
        );
        registry.register(
            name("events"),
            "Events by what became of them: received, accepted, purgatory, rejected, \
             duplicate, failed (asked again), deduplicated (another relay was first), \
             after_close (taken on a subscription we had closed), dropped_unsolicited, \
             dropped_flood, dropped_unknown_subscription, dropped_malformed",
            m.events.clone(),
        );
        registry.register(
            name("relay_events_received"),
            "Events received per relay",
            m.relay_events_received.clone(),
        );
        registry.register(
            name("relay_bytes"),
            "Bytes per tracked relay since the driver started: wire_received and wire_sent, \
             the TCP payload of its websocket connections (compressed, TLS and handshakes \
             included, NIP-11 fetches not), and messages_received, what its messages weigh \
             inflated (wire_received well below it: the relay compresses)",
            m.relay_bytes.clone(),
        );
        registry.register(
            name("relay_notifications_lagged"),
            "Relay messages lost because the driver fell behind (lag, not disconnect)",
            m.notifications_lagged.clone(),
        );
        m
    }

    fn relay(relay: &RelayUrl) -> RelayLabel {
        RelayLabel {
            relay: relay.as_str().to_owned(),
        }
    }

    /// `relay_connected` for one relay (0..4, see
    /// [`crate::model::ConnectionStatus::metric_value`]).
    pub fn set_relay_connected(&self, relay: &RelayUrl, value: i64) {
        self.relay_connected
            .get_or_create(&Self::relay(relay))
            .set(value);
    }

    /// Counts one connect attempt: `success`, `failure`, or `refused` (the relay policy
    /// refused an address the relay's name resolves to; nothing was dialled).
    pub fn record_connection_attempt(&self, result: &'static str) {
        self.connection_attempts
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// `relay_status` for one relay (1 healthy … 5 rate limited).
    pub fn set_relay_status(&self, relay: &RelayUrl, value: i64) {
        self.relay_status
            .get_or_create(&Self::relay(relay))
            .set(value);
    }

    /// `relay_failures` for one relay.
    pub fn set_relay_failures(&self, relay: &RelayUrl, failures: u32) {
        self.relay_failures
            .get_or_create(&Self::relay(relay))
            .set(i64::from(failures));
    }

    /// Drops a relay's per-relay series (it is no longer tracked), so label
    /// cardinality follows the relays actually in use.
    pub fn remove_relay(&self, relay: &RelayUrl) {
        let label = Self::relay(relay);
        self.relay_connected.remove(&label);
        self.relay_status.remove(&label);
        self.relay_failures.remove(&label);
        self.relay_events_received.remove(&label);
        for what in BYTES_WHAT {
            self.relay_bytes.remove(&RelayBytesLabel {
                relay: label.relay.clone(),
                what,
            });
        }
    }

    /// Adds to `relay`'s byte counters what its counts grew by since `before`.
    pub fn add_relay_bytes(&self, relay: &RelayUrl, now: &WireBytes, before: &WireBytes) {
        for ((what, now), before) in BYTES_WHAT
            .into_iter()
            .zip(byte_counts(now))
            .zip(byte_counts(before))
        {
            self.relay_bytes
                .get_or_create(&RelayBytesLabel {
                    relay: relay.as_str().to_owned(),
                    what,
                })
                .inc_by(now.saturating_sub(before));
        }
    }

    /// Adds newly accepted synced events.
    pub fn add_events_synced(&self, n: u64) {
        self.events_synced.inc_by(n);
    }

    /// Adds to the work and event counters what the engine's running totals `m` grew
    /// by since `reported` (a driver restarted with the same metrics starts again from
    /// zero totals; the counters only go on).
    pub fn add_engine_work(&self, m: &EngineMetrics, reported: &EngineMetrics) {
        let totals = |m: &EngineMetrics| {
            [
                ("req", m.reqs_sent),
                ("neg_open", m.negentropy_sessions),
                ("neg_fallback", m.negentropy_fallbacks),
                ("neg_reprobe", m.negentropy_reprobes),
                ("batch_completed", m.batches_completed),
                ("batch_failed", m.batches_failed),
                ("sync_plus_lookup", m.sync_plus_lookups),
                ("sync_plus_lookup_failed", m.sync_plus_lookups_failed),
            ]
        };
        for ((what, total), (_, before)) in totals(m).into_iter().zip(totals(reported)) {
            self.historic
                .get_or_create(&WhatLabel { what })
                .inc_by(total.saturating_sub(before));
        }
        let events = |m: &EngineMetrics| {
            [
                ("received", m.events_received),
                ("accepted", m.events_accepted),
                ("purgatory", m.events_purgatory),
                ("rejected", m.events_rejected),
                ("duplicate", m.events_duplicate),
                ("failed", m.events_failed),
                ("deduplicated", m.events_deduplicated),
                ("after_close", m.events_after_close),
                ("dropped_unsolicited", m.dropped_unsolicited),
                ("dropped_flood", m.dropped_flood),
                (
                    "dropped_unknown_subscription",
                    m.dropped_unknown_subscription,
                ),
                ("dropped_malformed", m.dropped_malformed),
            ]
        };
        for ((what, total), (_, before)) in events(m).into_iter().zip(events(reported)) {
            self.events
                .get_or_create(&WhatLabel { what })
                .inc_by(total.saturating_sub(before));
        }
        self.add_events_synced(m.events_accepted.saturating_sub(reported.events_accepted));
        self.relays_sync_plus
            .set(i64::try_from(m.sync_plus_relays).unwrap_or(i64::MAX));
    }

    /// Adds `n` events received from `relay`.
    pub fn add_relay_events_received(&self, relay: &RelayUrl, n: u64) {
        self.relay_events_received
            .get_or_create(&Self::relay(relay))
            .inc_by(n);
    }

    /// Totals over all relays.
    pub fn set_relay_totals(&self, tracked: usize, connected: usize, dead: usize) {
        self.relays_tracked.set(to_i64(tracked));
        self.relays_connected.set(to_i64(connected));
        self.relays_dead.set(to_i64(dead));
    }

    /// Counts one git data hunt with its result (e.g. `found`, `not_found`, `error`).
    pub fn record_hunt(&self, result: &str) {
        self.hunts
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// Events currently waiting in purgatory.
    pub fn set_purgatory_waiting(&self, n: usize) {
        self.purgatory_waiting.set(to_i64(n));
    }

    /// Adds relay messages lost to lag (see `PoolExecutor::lagged_messages`).
    pub fn add_notifications_lagged(&self, n: u64) {
        self.notifications_lagged.inc_by(n);
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Keeps a [`SyncMetrics`] up to date from the driver loop: connection attempts as they
/// happen, per-relay gauges from the engine's status at most once a second (the status
/// walks every relay), and the counters by how much the engine's running totals grew
/// since the last refresh.
pub(crate) struct MetricsReporter {
    metrics: SyncMetrics,
    refreshed_at: WallTime,
    /// Per relay: its events received, as last reported.
    relays: BTreeMap<RelayUrl, u64>,
    /// Per relay: its byte counts, as last reported.
    wire: BTreeMap<RelayUrl, WireBytes>,
    /// The engine's totals, as last reported.
    reported: EngineMetrics,
}

impl MetricsReporter {
    pub(crate) fn new(metrics: SyncMetrics) -> Self {
        Self {
            metrics,
            refreshed_at: WallTime::ZERO,
            relays: BTreeMap::new(),
            wire: BTreeMap::new(),
            reported: EngineMetrics::default(),
        }
    }

    /// Counts a connection attempt's result (`refused`: by the URL policy, not dialled).
    pub(crate) fn record_connection(&self, input: &Input, refused: bool) {
        match input {
            Input::RelayConnected { .. } => self.metrics.record_connection_attempt("success"),
            Input::RelayConnectFailed { .. } if refused => {
                self.metrics.record_connection_attempt("refused")
            }
            Input::RelayConnectFailed { .. } => self.metrics.record_connection_attempt("failure"),
            _ => {}
        }
    }

    /// Refreshes the gauges from `status` (the engine's relays, and the transport's
    /// byte counts), called only when a second has passed.
    pub(crate) fn update(
        &mut self,
        now: WallTime,
        status: impl FnOnce() -> (Vec<RelayStatusSnapshot>, Vec<(RelayUrl, WireBytes)>),
        engine: &EngineMetrics,
    ) {
        if now < self.refreshed_at + Duration::from_secs(1) {
            return;
        }
        self.refreshed_at = now;
        let (status, wire) = status();
        let current: BTreeMap<RelayUrl, u64> = status
            .iter()
            .map(|s| (s.relay.clone(), s.events_received))
            .collect();
        for gone in self.relays.keys().filter(|r| !current.contains_key(*r)) {
            self.metrics.remove_relay(gone);
        }
        let mut connected = 0;
        let mut dead = 0;
        for s in &status {
            self.metrics
                .set_relay_connected(&s.relay, s.status.metric_value());
            self.metrics
                .set_relay_status(&s.relay, i64::from(s.health.metric_value()));
            self.metrics.set_relay_failures(&s.relay, s.failures);
            let before = self.relays.get(&s.relay).copied().unwrap_or(0);
            self.metrics
                .add_relay_events_received(&s.relay, s.events_received.saturating_sub(before));
            connected += usize::from(s.status.is_connected());
            dead += usize::from(s.health == HealthState::Dead);
        }
        self.metrics.set_relay_totals(status.len(), connected, dead);
        // Bytes of the relays tracked only, so the series follow the relays in use.
        let mut reported_wire = BTreeMap::new();
        for (relay, bytes) in wire.into_iter().filter(|(r, _)| current.contains_key(r)) {
            let before = self.wire.get(&relay).copied();
            if before != Some(bytes) {
                self.metrics
                    .add_relay_bytes(&relay, &bytes, &before.unwrap_or_default());
            }
            reported_wire.insert(relay, bytes);
        }
        self.wire = reported_wire;
        self.relays = current;
        self.metrics.add_engine_work(engine, &self.reported);
        self.reported = engine.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn names_appear_in_text_output() {
        let mut registry = Registry::default();
        let m = SyncMetrics::register(&mut registry, DEFAULT_PREFIX);
        let r = RelayUrl::parse("wss://relay.example.com").unwrap();
        m.set_relay_connected(&r, 3);
        m.record_connection_attempt("success");
        m.record_connection_attempt("failure");
        m.set_relay_status(&r, 1);
        m.set_relay_failures(&r, 2);
        m.add_events_synced(7);
        m.set_relay_totals(5, 4, 1);
        m.record_hunt("found");
        m.set_purgatory_waiting(9);
        let text = encode(&registry);
        for line in [
            "grasp_sync_relay_connected{relay=\"wss://relay.example.com\"} 3",
            "grasp_sync_connection_attempts_total{result=\"success\"} 1",
            "grasp_sync_connection_attempts_total{result=\"failure\"} 1",
            "grasp_sync_relay_status{relay=\"wss://relay.example.com\"} 1",
            "grasp_sync_relay_failures{relay=\"wss://relay.example.com\"} 2",
            "grasp_sync_events_synced_total 7",
            "grasp_sync_relays_tracked 5",
            "grasp_sync_relays_connected 4",
            "grasp_sync_relays_dead 1",
            "grasp_sync_hunts_total{result=\"found\"} 1",
            "grasp_sync_purgatory_waiting 9",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn prefix_is_configurable_and_relays_can_be_removed() {
        let mut registry = Registry::default();
        let m = SyncMetrics::register(&mut registry, "myrelay_sync_");
        let r = RelayUrl::parse("wss://a.example").unwrap();
        m.set_relay_status(&r, 4);
        assert!(
            encode(&registry).contains("myrelay_sync_relay_status{relay=\"wss://a.example\"} 4")
        );
        m.remove_relay(&r);
        assert!(!encode(&registry).contains("wss://a.example"));
    }
}
