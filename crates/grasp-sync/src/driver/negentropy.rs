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
//! it reaches the engine's CLOSED handler through the relay's reader (a rate limit
//! retries the session; other reasons mean no NIP-77 for us). This job then ends
//! without an answer of its own: two answers to one CLOSED would race, and the engine's
//! reaction would depend on which came first.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use negentropy::{Id, Negentropy, NegentropyStorageVector};
use nostr::{ClientMessage, EventId, Filter, RelayMessage, SubscriptionId, Timestamp};
use nostr_relay_pool::relay::RelayNotification;
use nostr_relay_pool::Relay;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::executor::is_ended;
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

/// How a session ended without a difference to report.
enum Ended {
    /// The relay closed the session: its reader reports that CLOSED to the engine.
    ClosedByRelay,
    /// It failed. `close` when the relay may still hold the session (we gave up on
    /// it) and is sent NEG-CLOSE; not when the relay ended it or the connection is gone.
    Failed {
        reason: NegentropyFailure,
        close: bool,
    },
}

/// The relay ended the session, or the connection is gone: nothing to close.
fn failed(reason: NegentropyFailure) -> Ended {
    Ended::Failed {
        reason,
        close: false,
    }
}

/// We give up on a session the relay may still be working on.
fn given_up(reason: NegentropyFailure) -> Ended {
    Ended::Failed {
        reason,
        close: true,
    }
}

impl NegentropyJob {
    /// Reconciles and sends the engine one answer, [`Input::NegentropyResult`] or
    /// [`Input::NegentropyFailed`] — except for a session the relay closed, which the
    /// engine hears of as that CLOSED.
    pub(super) async fn run(self) {
        let result = tokio::time::timeout(self.total_timeout, self.reconcile())
            .await
            .unwrap_or_else(|_| Err(given_up(NegentropyFailure::Timeout)));
        let input = match result {
            Ok(need) => Input::NegentropyResult {
                relay: self.relay,
                session: self.session,
                need,
            },
            Err(Ended::ClosedByRelay) => return,
            Err(Ended::Failed { reason, close }) => {
                if close {
                    // Best effort: the relay may free the session's state early.
                    self.close();
                }
                Input::NegentropyFailed {
                    relay: self.relay,
                    session: self.session,
                    reason,
                }
            }
        };
        let _ = self.tx.send(input).await;
    }

    async fn reconcile(&self) -> Result<Vec<EventId>, Ended> {
        let items = self
            .store
            .negentropy_items(&self.filter)
            .await
            .map_err(|e| failed(NegentropyFailure::Error(e.to_string())))?;
        let storage = storage_of(items).map_err(failed)?;
        let mut negentropy =
            Negentropy::borrowed(&storage, FRAME_SIZE_LIMIT).map_err(|e| failed(broken(e)))?;
        let initial = negentropy.initiate().map_err(|e| failed(broken(e)))?;
        // Listen before speaking: the relay may answer at once. A connection that ended
        // before we listened will not say so again: look.
        let mut notifications = self.handle.notifications();
        if is_ended(self.handle.status()) {
            return Err(disconnected());
        }
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
            let next = tokio::time::timeout_at(idle_until, notifications.recv()).await;
            let notification = match next {
                Err(_) => return Err(given_up(NegentropyFailure::Timeout)),
                Ok(Ok(notification)) => notification,
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                    self.lagged.fetch_add(n, Ordering::Relaxed);
                    tracing::debug!(relay = %self.relay, session = %self.session, lost = n, "negentropy session lost relay messages; failing it");
                    return Err(given_up(NegentropyFailure::Error(format!(
                        "{n} relay messages lost during the session"
                    ))));
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return Err(disconnected()),
            };
            let message = match notification {
                RelayNotification::Message { message } => message,
                RelayNotification::RelayStatus { status } if is_ended(status) => {
                    return Err(disconnected())
                }
                RelayNotification::Shutdown => return Err(disconnected()),
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
                        given_up(NegentropyFailure::Error(format!("NEG-MSG is not hex: {e}")))
                    })?;
                    let next = negentropy
                        .reconcile_with_ids(&query, &mut have, &mut need)
                        .map_err(|e| given_up(broken(e)))?;
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
                        return Err(failed(NegentropyFailure::Error(message.into_owned())));
                    }
                }
                RelayMessage::Closed {
                    subscription_id, ..
                } if *subscription_id == self.session => return Err(Ended::ClosedByRelay),
                // A relay without NIP-77 answers NEG-OPEN with a NOTICE naming no session.
                RelayMessage::Notice(text)
                    if classify_notice(&text) == RelaySignal::NegentropyUnsupported =>
                {
                    return Err(failed(NegentropyFailure::Unsupported))
                }
                _ => {}
            }
        }
        // Done: the relay may forget the session.
        self.close();
        let mut need: Vec<EventId> = need
            .into_iter()
            .map(|id| EventId::from_byte_array(id.to_bytes()))
            .collect();
        need.sort_unstable();
        need.dedup();
        Ok(need)
    }

    fn send(&self, message: ClientMessage<'_>) -> Result<(), Ended> {
        self.handle
            .send_msg(message)
            .map_err(|e| failed(NegentropyFailure::Error(e.to_string())))
    }

    fn close(&self) {
        let _ = self.handle.send_msg(ClientMessage::NegClose {
            subscription_id: Cow::Borrowed(&self.session),
        });
    }
}

/// The connection ended under the session.
fn disconnected() -> Ended {
    failed(NegentropyFailure::Error("relay disconnected".into()))
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

/// A protocol error; a relay on the old protocol version (v0) is as good as one without
/// NIP-77.
fn broken(e: negentropy::Error) -> NegentropyFailure {
    match e {
        negentropy::Error::UnsupportedProtocolVersion => NegentropyFailure::Unsupported,
        other => NegentropyFailure::Error(format!("negentropy: {other}")),
    }
}
