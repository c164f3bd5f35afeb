//! One dry-run NIP-77 reconciliation on one relay, run by the executor in its own task:
//! NEG-OPEN with what we hold for the filter, NEG-MSG rounds until our side has nothing
//! more to say, NEG-CLOSE, and the ids the relay holds and we lack as the answer.
//!
//! The protocol runs here, on the `negentropy` crate the pool itself uses, rather than
//! through the pool's `sync_with_items`, for one reason: the pool's loop reads the
//! relay's notification channel and *ends* on the first message that channel lost (a
//! historic REQ on the same connection floods it with EVENTs while the session waits),
//! then reports the ids found so far as the whole difference. The engine would confirm
//! the chunk and the rest would stay missing until the daily sync. Here a lost message
//! fails the session, and the engine asks its filter again by REQ.
//!
//! The session speaks under the engine's own session id, so a CLOSED the relay sends for
//! it reaches the engine's CLOSED handler (a rate limit retries the session; other
//! reasons mean no NIP-77 for us) as well as this job.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use negentropy::{Id, Negentropy, NegentropyStorageVector};
use nostr::{ClientMessage, EventId, Filter, RelayMessage, SubscriptionId, Timestamp};
use nostr_relay_pool::relay::{RelayNotification, RelayStatus};
use nostr_relay_pool::Relay;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::classify::{classify_notice, RelaySignal};
use crate::engine::{Input, NegentropyFailure};
use crate::model::RelayUrl;
use crate::ports::EventStore;

/// Largest negentropy message we send, in bytes before hex: relays commonly accept
/// websocket messages of 128 KiB, hex doubles the size, and the JSON around it takes a
/// little. The pool uses the same figure.
const FRAME_SIZE_LIMIT: u64 = 60_000;

/// One reconciliation, answered on the executor's input channel.
pub(super) struct NegentropyJob {
    pub relay: RelayUrl,
    pub session: SubscriptionId,
    pub filter: Filter,
    pub handle: Relay,
    pub store: Arc<dyn EventStore>,
    pub tx: mpsc::Sender<Input>,
    /// How long the relay may send no negentropy message at all before the session
    /// counts as stalled.
    pub idle_timeout: Duration,
    /// Upper bound for the whole reconciliation, however lively.
    pub total_timeout: Duration,
    /// The executor's count of relay messages lost to a full channel.
    pub lagged: Arc<AtomicU64>,
}

impl NegentropyJob {
    /// Reconciles and sends the engine [`Input::NegentropyResult`] or
    /// [`Input::NegentropyFailed`]: every session gets exactly one answer.
    pub(super) async fn run(self) {
        let result = tokio::time::timeout(self.total_timeout, self.reconcile()).await;
        if !matches!(result, Ok(Ok(_))) {
            // Best effort: the relay may free the session's state early.
            let _ = self.handle.send_msg(ClientMessage::NegClose {
                subscription_id: Cow::Borrowed(&self.session),
            });
        }
        let input = match result {
            Ok(Ok(need)) => Input::NegentropyResult {
                relay: self.relay,
                session: self.session,
                need,
            },
            Ok(Err(reason)) => Input::NegentropyFailed {
                relay: self.relay,
                session: self.session,
                reason,
            },
            Err(_) => Input::NegentropyFailed {
                relay: self.relay,
                session: self.session,
                reason: NegentropyFailure::Timeout,
            },
        };
        let _ = self.tx.send(input).await;
    }

    async fn reconcile(&self) -> Result<Vec<EventId>, NegentropyFailure> {
        let items = self
            .store
            .negentropy_items(&self.filter)
            .await
            .map_err(|e| NegentropyFailure::Error(e.to_string()))?;
        let storage = storage_of(items)?;
        let mut negentropy = Negentropy::borrowed(&storage, FRAME_SIZE_LIMIT).map_err(broken)?;
        let initial = negentropy.initiate().map_err(broken)?;
        // Listen before speaking: the relay may answer at once.
        let mut notifications = self.handle.notifications();
        self.send(ClientMessage::NegOpen {
            subscription_id: Cow::Borrowed(&self.session),
            filter: Cow::Borrowed(&self.filter),
            id_size: None,
            initial_message: Cow::Owned(hex::encode(initial)),
        })?;
        let mut need: Vec<Id> = Vec::new();
        let mut have: Vec<Id> = Vec::new();
        // Progress is any negentropy message from the relay, not only this session's:
        // a relay works through concurrent sessions one message at a time, so a session
        // waiting behind lively ones is not stalled.
        let mut idle_until = Instant::now() + self.idle_timeout;
        loop {
            let notification = match tokio::time::timeout_at(idle_until, notifications.recv()).await
            {
                Err(_) => return Err(NegentropyFailure::Timeout),
                Ok(Ok(notification)) => notification,
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                    self.lagged.fetch_add(n, Ordering::Relaxed);
                    tracing::debug!(relay = %self.relay, session = %self.session, lost = n, "negentropy session lost relay messages; failing it");
                    return Err(NegentropyFailure::Error(format!(
                        "{n} relay messages lost during the session"
                    )));
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    return Err(NegentropyFailure::Error("relay gone".into()))
                }
            };
            let message = match notification {
                RelayNotification::Message { message } => message,
                RelayNotification::RelayStatus {
                    status:
                        RelayStatus::Disconnected | RelayStatus::Terminated | RelayStatus::Banned,
                } => return Err(NegentropyFailure::Error("relay disconnected".into())),
                RelayNotification::Shutdown => {
                    return Err(NegentropyFailure::Error("pool shut down".into()))
                }
                _ => continue,
            };
            match message {
                RelayMessage::NegMsg {
                    subscription_id,
                    message,
                } => {
                    idle_until = Instant::now() + self.idle_timeout;
                    if *subscription_id != self.session {
                        continue;
                    }
                    let query = hex::decode(message.as_ref()).map_err(|e| {
                        NegentropyFailure::Error(format!("NEG-MSG is not hex: {e}"))
                    })?;
                    let next = negentropy
                        .reconcile_with_ids(&query, &mut have, &mut need)
                        .map_err(broken)?;
                    match next {
                        Some(next) => self.send(ClientMessage::NegMsg {
                            subscription_id: Cow::Borrowed(&self.session),
                            message: Cow::Owned(hex::encode(next)),
                        })?,
                        None => break,
                    }
                }
                RelayMessage::NegErr {
                    subscription_id,
                    message,
                } => {
                    idle_until = Instant::now() + self.idle_timeout;
                    if *subscription_id == self.session {
                        return Err(NegentropyFailure::Error(message.into_owned()));
                    }
                }
                RelayMessage::Closed {
                    subscription_id,
                    message,
                } if *subscription_id == self.session => return Err(refusal(&message)),
                // A relay without NIP-77 answers NEG-OPEN with a NOTICE naming no session.
                RelayMessage::Notice(text)
                    if classify_notice(&text) == RelaySignal::NegentropyUnsupported =>
                {
                    return Err(NegentropyFailure::Unsupported)
                }
                _ => {}
            }
        }
        // Done: the relay may forget the session.
        let _ = self.handle.send_msg(ClientMessage::NegClose {
            subscription_id: Cow::Borrowed(&self.session),
        });
        let mut need: Vec<EventId> = need
            .into_iter()
            .map(|id| EventId::from_byte_array(id.to_bytes()))
            .collect();
        need.sort_unstable();
        need.dedup();
        Ok(need)
    }

    fn send(&self, message: ClientMessage<'_>) -> Result<(), NegentropyFailure> {
        self.handle
            .send_msg(message)
            .map_err(|e| NegentropyFailure::Error(e.to_string()))
    }
}

/// What we hold for the filter, sealed for the protocol (sorted, duplicates dropped).
fn storage_of(
    items: Vec<(EventId, Timestamp)>,
) -> Result<NegentropyStorageVector, NegentropyFailure> {
    let mut storage = NegentropyStorageVector::with_capacity(items.len());
    for (id, at) in items {
        storage
            .insert(at.as_secs(), Id::from_byte_array(id.to_bytes()))
            .map_err(broken)?;
    }
    storage.seal().map_err(broken)?;
    Ok(storage)
}

/// A CLOSED for the session: "no NIP-77 here" when its text says so (khatru, and
/// relays that close an unknown command), otherwise the relay's reason.
fn refusal(message: &str) -> NegentropyFailure {
    match classify_notice(message) {
        RelaySignal::NegentropyUnsupported => NegentropyFailure::Unsupported,
        _ => NegentropyFailure::Error(format!("closed: {message}")),
    }
}

/// A protocol error; a relay on the old protocol version (v0) is as good as one without
/// NIP-77.
fn broken(e: negentropy::Error) -> NegentropyFailure {
    match e {
        negentropy::Error::UnsupportedProtocolVersion => NegentropyFailure::Unsupported,
        other => NegentropyFailure::Error(format!("negentropy: {other}")),
    }
}
