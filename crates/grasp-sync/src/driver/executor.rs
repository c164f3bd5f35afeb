//! `PoolExecutor`: carries out the engine's relay commands with nostr-relay-pool and
//! turns everything the relays say into engine [`Input`]s.
//!
//! The executor is deliberately dumb: it keeps no sync state, retries nothing and
//! decides nothing. The engine owns the one reconnect policy, every subscription and
//! every fallback; the executor only makes sure that what the pool does underneath
//! cannot contradict the engine:
//!
//! - Every relay is added with `RelayOptions::reconnect(false)`, so a dropped socket
//!   stays down (status `Terminated`) until the engine sends `Connect` again. That
//!   `Connect` uses a fresh pool relay object, so a connection task of the old socket
//!   that is still winding down cannot swallow the new one.
//! - REQ and CLOSE are sent as raw client messages, never through the pool's
//!   subscription map. The pool therefore never re-sends old REQs on reconnect and never
//!   auto-closes anything: a subscription lives exactly as long as the engine says.
//! - Messages are read from each relay's own notification channel
//!   (`RelayNotification::Message`), which carries every EVENT from every relay. The
//!   pool's "seen" de-duplication only affects `RelayNotification::Event`, which we
//!   ignore, so two relays delivering one event produce two [`Input::Event`]s.
//! - Every event's id and signature are checked here again (`verify.rs`): the pool's
//!   own check trusts any copy of an id it checked once.
//! - NIP-77 runs here too (`negentropy.rs`), not through the pool's reconciliation,
//!   which reports part of the difference as all of it when its channel overflows.
//! - A relay object serves one connection; once it ended, the object is dropped from
//!   the pool at the next command (`reap`), with the channel the pool allocated for it.
//! - Commands that need a live socket (`Subscribe`, `Unsubscribe`, `Negentropy`) are
//!   refused when the relay is not connected instead of being queued by the pool and
//!   sent, stale, on the next connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nostr::{ClientMessage, RelayMessage};
use nostr_relay_pool::relay::{RelayLimits, RelayNotification, RelayOptions, RelayStatus};
use nostr_relay_pool::{Relay, RelayPool};
use tokio::sync::{broadcast, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tracing::Instrument;

use super::dial::{Dialer, PinnedTransport};
use super::negentropy::NegentropyJob;
use super::verify::SignatureCheck;
use super::wire::WireBytes;
use crate::engine::{Command, Input, NegentropyFailure};
use crate::model::RelayUrl;
use crate::ports::{Clock, EventStore, SystemClock};

/// Tunables of the executor. The defaults follow the design (connection timeout = base
/// backoff of 5 s; negentropy given up after 10 s without a message from the relay).
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// How long one connect attempt may take before it is reported as failed. The
    /// driver sets it from [`crate::HealthConfig::connection_timeout`], the engine's
    /// connect deadline.
    pub connect_timeout: Duration,
    /// A negentropy session with no message from the relay for this long — its first
    /// answer to NEG-OPEN included — is given up (NEG-CLOSE sent) and reported as
    /// `NegentropyFailed(Timeout)`. A slow reconciliation that keeps answering goes on.
    /// The driver sets it from [`crate::SyncConfig::negentropy_idle_timeout`].
    pub negentropy_idle_timeout: Duration,
    /// Upper bound for a whole reconciliation, however lively (driver: from
    /// [`crate::SyncConfig::negentropy_total_timeout`]).
    pub negentropy_total_timeout: Duration,
    /// Capacity of the [`Input`] channel handed back by [`PoolExecutor::new`]. Bounded
    /// on purpose: a loop that falls behind makes the per-relay readers wait, the
    /// pool's per-relay broadcast then overflows and reports lag (counted in
    /// [`PoolExecutor::lagged_messages`]) instead of memory growing without limit.
    pub input_channel_capacity: usize,
    /// Size of each relay's broadcast channel inside the pool (pool default: 2048).
    /// The pool allocates it whole for every relay object, ~280 bytes a slot: 1,024
    /// slots are ~0.3 MB per relay (8,192 were 2.2 MB, 4.5 GB for 2,000 relays). A
    /// reader or negentropy session that falls this far behind reports lost messages
    /// and its work is asked again; the 10k e2e lost none at 256.
    pub relay_notification_channel_size: usize,
    /// Largest websocket message accepted from a relay; a bigger one ends the
    /// connection (and counts against the relay's health).
    pub max_message_bytes: usize,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            negentropy_idle_timeout: Duration::from_secs(10),
            negentropy_total_timeout: Duration::from_secs(600),
            input_channel_capacity: 65_536,
            relay_notification_channel_size: 1_024,
            max_message_bytes: super::dial::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// Why a command could not be carried out. None of these is fatal: the engine learns
/// the relay's real state from the inputs (when a relay that was up fails a command
/// with [`ExecuteError::NotConnected`], its `RelayDisconnected` is already on its way),
/// so the loop logs and goes on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecuteError {
    /// `Ingest`, `ReadPurgatoryAnnouncements` and `PersistState` are for the host's
    /// ports, not for the relay pool: the driver loop carries them out.
    #[error("command is not a relay command; the driver loop handles it")]
    NotAPoolCommand,
    /// The relay's socket is not up (never connected, or its connection ended); the
    /// message was not sent (and not queued).
    #[error("relay {0} is not connected")]
    NotConnected(RelayUrl),
    /// Our relay URL was refused by rust-nostr's URL type.
    #[error("relay URL {url} not accepted by nostr: {reason}")]
    Url {
        /// The URL.
        url: RelayUrl,
        /// Why.
        reason: String,
    },
    /// The pool refused (shut down, send queue full, ...).
    #[error("relay pool: {0}")]
    Pool(String),
}

/// Carries out relay commands on a `nostr_relay_pool::RelayPool` and reports what
/// happens as [`Input`]s on a channel.
///
/// One executor serves one engine. Commands for one relay must be executed in the order
/// the engine emitted them; `execute` returns quickly (connect attempts and negentropy
/// sessions run in background tasks and answer through the channel).
pub struct PoolExecutor {
    pool: RelayPool,
    relays: HashMap<RelayUrl, RelayEntry>,
    store: Arc<dyn EventStore>,
    inputs: mpsc::Sender<Input>,
    config: ExecutorConfig,
    /// Per-relay readers. Each ends with its relay object's one connection (a relay
    /// object connects once, see `connect`) and yields the URL, so `reap` can drop
    /// the object from the pool.
    readers: JoinSet<RelayUrl>,
    /// Connect attempts and negentropy sessions; reaped on every `execute`.
    jobs: JoinSet<()>,
    lagged: Arc<AtomicU64>,
    checks: Arc<SignatureCheck>,
    /// The pool's transport, kept for its byte counts.
    transport: PinnedTransport,
}

/// One relay as the executor holds it: the pool's handle and its reader task.
struct RelayEntry {
    relay: Relay,
    reader: AbortHandle,
}

impl std::fmt::Debug for PoolExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolExecutor")
            .field("relays", &self.relays.keys().collect::<Vec<_>>())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PoolExecutor {
    /// A new executor with its own pool, and the receiving end of its input channel.
    /// `store` supplies the negentropy have-set (stored ∪ purgatory ∪ rejected);
    /// every websocket goes through `dialer` (resolve once, check, pin).
    ///
    /// Must be called inside a tokio runtime (the pool spawns tasks).
    pub fn new(
        store: Arc<dyn EventStore>,
        dialer: Dialer,
        config: ExecutorConfig,
    ) -> (Self, mpsc::Receiver<Input>) {
        let (tx, rx) = mpsc::channel(config.input_channel_capacity.max(1));
        let transport = PinnedTransport::new(dialer, config.max_message_bytes);
        let executor = Self {
            pool: RelayPool::builder()
                .websocket_transport(transport.clone())
                .build(),
            relays: HashMap::new(),
            store,
            inputs: tx,
            config,
            readers: JoinSet::new(),
            jobs: JoinSet::new(),
            lagged: Arc::new(AtomicU64::new(0)),
            checks: Arc::default(),
            transport,
        };
        (executor, rx)
    }

    /// True for the commands [`PoolExecutor::execute`] carries out; the driver loop
    /// handles the others (`Ingest`, `ReadPurgatoryAnnouncements`, `PersistState`).
    pub fn is_pool_command(command: &Command) -> bool {
        matches!(
            command,
            Command::Connect { .. }
                | Command::Disconnect { .. }
                | Command::Subscribe { .. }
                | Command::Unsubscribe { .. }
                | Command::Negentropy { .. }
        )
    }

    /// Relay messages lost because a per-relay channel overflowed (the loop or the
    /// input channel fell behind), summed over the relay readers and the negentropy
    /// sessions that fell behind: each reads the channel on its own, so one lost
    /// message can count once for each. Lag is not a disconnect: the socket stays up,
    /// a reader's loss is asked again and a session's loss fails the session.
    /// Exported as a metric by the host.
    pub fn lagged_messages(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }

    /// Events this executor dropped because their id is not the hash of their content
    /// or their signature does not sign it (a tampered copy of an id the pool checked
    /// before; see `verify.rs`). A bad first copy of an id is dropped by the pool's own
    /// check before ours and is not counted here.
    pub fn forged_events(&self) -> u64 {
        self.checks.refused()
    }

    /// Bytes on the wire per relay since the executor started (see [`WireBytes`]).
    pub fn wire_bytes(&self) -> Vec<(RelayUrl, WireBytes)> {
        self.transport.wire_bytes()
    }

    /// The underlying pool, for read-only inspection (stats, status). Do not subscribe
    /// or connect through it: that would bypass the engine. Nor read events from its
    /// notifications: they have not been through this executor's check.
    pub fn pool(&self) -> &RelayPool {
        &self.pool
    }

    /// Carries out one relay command.
    ///
    /// - `Connect`: registers the relay (reader task started before the connect, so
    ///   nothing the relay says at connect is missed), then tries to connect
    ///   in the background with [`ExecutorConfig::connect_timeout`]. Success arrives as
    ///   [`Input::RelayConnected`] (from the relay's status stream, ordered before its
    ///   first message), failure as [`Input::RelayConnectFailed`]. If the relay is
    ///   already connected, `RelayConnected` is sent again; if an attempt is in flight,
    ///   nothing is done.
    /// - `Disconnect`: closes the socket; a [`Input::RelayDisconnected`] follows if it
    ///   was up.
    /// - `Subscribe` / `Unsubscribe`: raw REQ / CLOSE on that relay only.
    /// - `Negentropy`: dry-run NIP-77 reconciliation in the background; answers with
    ///   [`Input::NegentropyResult`] or [`Input::NegentropyFailed`].
    pub async fn execute(&mut self, command: Command) -> Result<(), ExecuteError> {
        self.reap().await;
        match command {
            Command::Connect { relay } => self.connect(relay).await,
            Command::Disconnect { relay } => {
                // A relay without an object has no socket to close.
                if let Some(entry) = self.relays.get(&relay) {
                    entry.relay.disconnect();
                }
                Ok(())
            }
            Command::Subscribe {
                relay, id, filters, ..
            } => {
                // Live and historic subscriptions are sent alike: a raw REQ stays open
                // until the engine sends CLOSE, which is what both modes need.
                let handle = self.connected_relay(&relay)?;
                tracing::trace!(%relay, %id, filters = %serde_json::to_string(&filters).unwrap_or_default(), "REQ");
                handle
                    .send_msg(ClientMessage::req(id, filters))
                    .map_err(|e| ExecuteError::Pool(e.to_string()))
            }
            Command::Unsubscribe { relay, id } => {
                let handle = self.connected_relay(&relay)?;
                handle
                    .send_msg(ClientMessage::close(id))
                    .map_err(|e| ExecuteError::Pool(e.to_string()))
            }
            Command::Negentropy {
                relay,
                session,
                filter,
            } => {
                let handle = match self.connected_relay(&relay) {
                    Ok(h) => h.clone(),
                    Err(e) => {
                        // The engine waits for an answer to every session: give one.
                        let input = Input::NegentropyFailed {
                            relay,
                            session,
                            reason: NegentropyFailure::Error(e.to_string()),
                        };
                        let tx = self.inputs.clone();
                        self.jobs.spawn(async move {
                            let _ = tx.send(input).await;
                        });
                        return Ok(());
                    }
                };
                let span = tracing::debug_span!("negentropy", relay = %relay, session = %session);
                let job = NegentropyJob {
                    relay,
                    session,
                    filter,
                    handle,
                    store: Arc::clone(&self.store),
                    tx: self.inputs.clone(),
                    idle_timeout: self.config.negentropy_idle_timeout,
                    total_timeout: self.config.negentropy_total_timeout,
                    lagged: Arc::clone(&self.lagged),
                };
                self.jobs.spawn(job.run().instrument(span));
                Ok(())
            }
            Command::Ingest { .. }
            | Command::ReadPurgatoryAnnouncements
            | Command::PersistState => Err(ExecuteError::NotAPoolCommand),
        }
    }

    /// Closes every connection and stops every task. Pending connect attempts and
    /// negentropy sessions are dropped without an answer.
    pub async fn shutdown(&mut self) {
        self.jobs.abort_all();
        self.readers.abort_all();
        self.pool.shutdown().await;
    }

    /// Collects finished jobs, and drops the pool object of every relay whose
    /// connection ended (its reader reported that and stopped): a relay object is
    /// never connected twice, and each holds its whole notification channel. The next
    /// `Connect` registers the relay anew.
    async fn reap(&mut self) {
        while let Some(res) = self.jobs.try_join_next() {
            if let Err(e) = res {
                if e.is_panic() {
                    tracing::error!(error = %e, "executor job panicked");
                }
            }
        }
        while let Some(res) = self.readers.try_join_next_with_id() {
            let (task, url) = match res {
                Ok(done) => done,
                Err(e) => {
                    // Aborted by `replace` (already forgotten), or panicked.
                    if e.is_panic() {
                        tracing::error!(error = %e, "relay reader panicked");
                    }
                    continue;
                }
            };
            // Only if the entry is still this reader's (not a newer object's).
            if self.relays.get(&url).is_some_and(|e| e.reader.id() == task) {
                self.forget(&url).await;
            }
        }
    }

    /// Drops the relay's pool object and stops its reader.
    async fn forget(&mut self, url: &RelayUrl) {
        if let Some(old) = self.relays.remove(url) {
            old.reader.abort();
            if let Ok(nostr_url) = nostr_url(url) {
                let _ = self.pool.force_remove_relay(nostr_url).await;
            }
        }
    }

    fn connected_relay(&self, url: &RelayUrl) -> Result<&Relay, ExecuteError> {
        self.relays
            .get(url)
            .map(|e| &e.relay)
            .filter(|relay| relay.is_connected())
            .ok_or_else(|| ExecuteError::NotConnected(url.clone()))
    }

    async fn connect(&mut self, url: RelayUrl) -> Result<(), ExecuteError> {
        let relay = match self.relays.get(&url) {
            None => self.register(&url).await?,
            Some(entry) => match entry.relay.status() {
                // A socket that was up and went down: connect on a fresh relay object.
                // The pool's old connection task may still be winding down (closing
                // the websocket); connecting the old object in that window makes the
                // pool drop the new socket while reporting it connected. Its reader
                // already reported the disconnect (the engine reconnects only after
                // that), so nothing the engine needs is lost with it.
                RelayStatus::Terminated
                | RelayStatus::Disconnected
                | RelayStatus::Banned
                | RelayStatus::Sleeping => self.replace(&url).await?,
                _ => entry.relay.clone(),
            },
        };
        match relay.status() {
            RelayStatus::Connected => {
                let tx = self.inputs.clone();
                self.jobs.spawn(async move {
                    let _ = tx.send(Input::RelayConnected { relay: url }).await;
                });
            }
            // An attempt is already in flight: it will answer.
            RelayStatus::Pending | RelayStatus::Connecting => {}
            _ => {
                let tx = self.inputs.clone();
                let timeout = self.config.connect_timeout;
                let span = tracing::debug_span!("connect", relay = %url);
                let job = async move {
                    if let Err(e) = relay.try_connect(timeout).await {
                        tracing::debug!(relay = %url, error = %e, "connect failed");
                        let _ = tx
                            .send(Input::RelayConnectFailed {
                                relay: url,
                                reason: e.to_string(),
                            })
                            .await;
                    }
                };
                self.jobs.spawn(job.instrument(span));
            }
        }
        Ok(())
    }

    /// Drops the relay's pool object and reader, then registers it anew.
    async fn replace(&mut self, url: &RelayUrl) -> Result<Relay, ExecuteError> {
        self.forget(url).await;
        self.register(url).await
    }

    /// Adds the relay to the pool and starts its reader.
    async fn register(&mut self, url: &RelayUrl) -> Result<Relay, ExecuteError> {
        if let Some(entry) = self.relays.get(url) {
            return Ok(entry.relay.clone());
        }
        let nostr_url = nostr_url(url)?;
        // No limit on an event's tags: the pool's default (2,000) silently dropped
        // state events (30618) of repos with more refs. An event stays bounded by the
        // websocket message limit (`max_message_bytes`).
        let mut limits = RelayLimits::default();
        limits.events.max_num_tags = None;
        limits.events.max_num_tags_per_kind.clear();
        let opts = RelayOptions::new()
            .limits(limits)
            .reconnect(false)
            .verify_subscriptions(false)
            .notification_channel_size(self.config.relay_notification_channel_size);
        self.pool
            .add_relay(nostr_url.clone(), opts)
            .await
            .map_err(|e| ExecuteError::Pool(e.to_string()))?;
        let relay = self
            .pool
            .relay(nostr_url)
            .await
            .map_err(|e| ExecuteError::Pool(e.to_string()))?;
        // Subscribe before the first connect: a relay may speak right away.
        let notifications = relay.notifications();
        let span = tracing::debug_span!("relay", relay = %url);
        let reader = self.readers.spawn(
            read_relay(
                url.clone(),
                relay.clone(),
                notifications,
                self.inputs.clone(),
                Arc::clone(&self.lagged),
                Arc::clone(&self.checks),
            )
            .instrument(span),
        );
        self.relays.insert(
            url.clone(),
            RelayEntry {
                relay: relay.clone(),
                reader,
            },
        );
        Ok(relay)
    }
}

/// Our relay URL as rust-nostr's.
fn nostr_url(url: &RelayUrl) -> Result<nostr::RelayUrl, ExecuteError> {
    nostr::RelayUrl::parse(url.as_str()).map_err(|e| ExecuteError::Url {
        url: url.clone(),
        reason: e.to_string(),
    })
}

impl Drop for PoolExecutor {
    fn drop(&mut self) {
        self.jobs.abort_all();
        self.readers.abort_all();
    }
}

/// Maps one relay message to an engine input. `None` for what the engine has no use
/// for (OK, AUTH, COUNT, NEG-* which the negentropy job reads itself).
fn message_to_input(relay: &RelayUrl, message: RelayMessage<'static>) -> Option<Input> {
    match message {
        RelayMessage::Event {
            subscription_id,
            event,
        } => Some(Input::Event {
            relay: relay.clone(),
            subscription: subscription_id.into_owned(),
            event: Box::new(event.into_owned()),
        }),
        RelayMessage::EndOfStoredEvents(id) => Some(Input::Eose {
            relay: relay.clone(),
            subscription: id.into_owned(),
        }),
        RelayMessage::Closed {
            subscription_id,
            message,
        } => Some(Input::Closed {
            relay: relay.clone(),
            subscription: subscription_id.into_owned(),
            message: message.into_owned(),
        }),
        RelayMessage::Notice(message) => Some(Input::Notice {
            relay: relay.clone(),
            message: message.into_owned(),
        }),
        _ => None,
    }
}

/// Reads one relay object's notification stream and forwards messages and connection
/// changes, in the order the relay produced them, until its one connection has ended
/// (reported as `RelayDisconnected`, or by the connect job when it never came up).
/// Returns the relay's URL.
async fn read_relay(
    url: RelayUrl,
    relay: Relay,
    mut notifications: broadcast::Receiver<RelayNotification>,
    tx: mpsc::Sender<Input>,
    lagged: Arc<AtomicU64>,
    checks: Arc<SignatureCheck>,
) -> RelayUrl {
    let mut connected = false;
    // When the last message got through (what a lag lost came after it).
    let mut last_ok = SystemClock.now();
    loop {
        let mut ended = false;
        let input = match notifications.recv().await {
            Ok(RelayNotification::Message { message }) => {
                last_ok = SystemClock.now();
                match &message {
                    RelayMessage::Event { event, .. } if !checks.genuine(event) => {
                        // Counted and struck by the engine; a relay sending many is
                        // dropped for misbehaving, which is logged.
                        tracing::debug!(relay = %url, id = %event.id, "dropped a tampered event (id or signature does not match)");
                        Some(Input::TamperedEvent { relay: url.clone() })
                    }
                    _ => message_to_input(&url, message),
                }
            }
            Ok(RelayNotification::RelayStatus { status }) => {
                ended = is_ended(status);
                status_change(&url, &mut connected, status)
            }
            Ok(_) => None,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                lagged.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(relay = %url, lost = n, "relay notifications lagged; messages lost, asking again");
                // Events or EOSEs may have been among the lost: the engine asks again.
                let lost = Input::RelayMessagesLost {
                    relay: url.clone(),
                    since: last_ok,
                };
                if tx.send(lost).await.is_err() {
                    break;
                }
                // Status changes may have been among the lost: re-read the truth.
                let status = relay.status();
                ended = is_ended(status);
                status_change(&url, &mut connected, status)
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        if let Some(input) = input {
            if tx.send(input).await.is_err() {
                // The loop is gone: nobody to report to.
                break;
            }
        }
        if ended {
            break;
        }
    }
    url
}

/// Whether a relay object's connection (or its attempt) is over for good: it runs
/// with `reconnect(false)` and is never connected again.
pub(super) fn is_ended(status: RelayStatus) -> bool {
    matches!(
        status,
        RelayStatus::Disconnected
            | RelayStatus::Terminated
            | RelayStatus::Banned
            | RelayStatus::Sleeping
    )
}

/// Turns a status into `RelayConnected` / `RelayDisconnected`, reporting transitions
/// only (a failed connect attempt goes Connecting → Terminated without ever being up,
/// and is reported by the connect job as `RelayConnectFailed` instead).
fn status_change(url: &RelayUrl, connected: &mut bool, status: RelayStatus) -> Option<Input> {
    match (status == RelayStatus::Connected, *connected) {
        (true, false) => {
            *connected = true;
            Some(Input::RelayConnected { relay: url.clone() })
        }
        (false, true) if is_ended(status) => {
            *connected = false;
            Some(Input::RelayDisconnected { relay: url.clone() })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_transitions_only() {
        let url = RelayUrl::parse("ws://127.0.0.1:1").unwrap();
        let mut up = false;
        assert!(status_change(&url, &mut up, RelayStatus::Connecting).is_none());
        assert!(status_change(&url, &mut up, RelayStatus::Terminated).is_none());
        assert!(matches!(
            status_change(&url, &mut up, RelayStatus::Connected),
            Some(Input::RelayConnected { .. })
        ));
        assert!(status_change(&url, &mut up, RelayStatus::Connected).is_none());
        assert!(matches!(
            status_change(&url, &mut up, RelayStatus::Terminated),
            Some(Input::RelayDisconnected { .. })
        ));
        assert!(status_change(&url, &mut up, RelayStatus::Terminated).is_none());
    }
}
