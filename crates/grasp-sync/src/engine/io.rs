//! What goes into the engine (`Input`) and what comes out (`Command`). This is the whole
//! contract between the deterministic core and whoever drives it: the tokio driver in
//! this crate, or a host's own loop. Nothing here does IO.

use nostr::{Event, EventId, Filter, SubscriptionId};

use crate::model::{IngestOutcome, RelayUrl};

/// Something that happened, fed to [`super::SyncEngine::handle_input`] with the time it
/// happened.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Input {
    /// The websocket to `relay` is up.
    RelayConnected {
        /// Which relay.
        relay: RelayUrl,
    },
    /// A connect attempt failed (refused, timed out, TLS, ...).
    RelayConnectFailed {
        /// Which relay.
        relay: RelayUrl,
        /// Human-readable cause, for logs only.
        reason: String,
    },
    /// The websocket went down.
    RelayDisconnected {
        /// Which relay.
        relay: RelayUrl,
    },
    /// An EVENT on one of our subscriptions.
    Event {
        /// Which relay sent it.
        relay: RelayUrl,
        /// The subscription it came on.
        subscription: SubscriptionId,
        /// The event; its signature is already checked by the driver.
        event: Box<Event>,
    },
    /// EOSE for one of our subscriptions.
    Eose {
        /// Which relay.
        relay: RelayUrl,
        /// The subscription.
        subscription: SubscriptionId,
    },
    /// CLOSED for one of our subscriptions.
    Closed {
        /// Which relay.
        relay: RelayUrl,
        /// The subscription the relay closed.
        subscription: SubscriptionId,
        /// The relay's reason (machine-readable prefix, if any, included).
        message: String,
    },
    /// A NOTICE.
    Notice {
        /// Which relay.
        relay: RelayUrl,
        /// The text.
        message: String,
    },
    /// A negentropy reconciliation finished: the relay has these ids and we do not.
    NegentropyResult {
        /// Which relay.
        relay: RelayUrl,
        /// The session id from [`Command::Negentropy`].
        session: SubscriptionId,
        /// Ids the relay holds that our have-set lacks.
        need: Vec<EventId>,
    },
    /// A negentropy reconciliation did not run to the end.
    NegentropyFailed {
        /// Which relay.
        relay: RelayUrl,
        /// The session id from [`Command::Negentropy`].
        session: SubscriptionId,
        /// Why.
        reason: NegentropyFailure,
    },
    /// The host accepted (stored) an event: from a user, from our own sync, or promoted
    /// out of purgatory. Only 30617, 1617, 1618 and 1621 matter; others are ignored.
    Accepted {
        /// The accepted event.
        event: Box<Event>,
    },
    /// The announcements currently waiting in the host's purgatory (answer to
    /// [`Command::ReadPurgatoryAnnouncements`]). The full set: StateOnly repos missing
    /// from it are dropped.
    PurgatoryAnnouncements {
        /// Announcement events (kind 30617).
        announcements: Vec<Event>,
    },
    /// Messages from `relay` were lost between the socket and the engine (the driver's
    /// per-relay channel overflowed while the host was slow). Whatever was in flight on
    /// that relay may be missing events: the engine asks for it again.
    RelayMessagesLost {
        /// Which relay.
        relay: RelayUrl,
        /// When the last message from it got through: what was lost came after.
        since: crate::model::WallTime,
    },
    /// An event from `relay` failed the driver's own check (its id is not the hash of
    /// its content, or its signature does not sign it) and was dropped: a strike
    /// against the relay, as any other hostile message.
    TamperedEvent {
        /// Which relay.
        relay: RelayUrl,
    },
    /// What the host did with an event handed over by [`Command::Ingest`]. A batch
    /// counts as synced only once every event it brought has an outcome, so the host
    /// must answer each hand-over exactly once, after the outcome is durable. Feed an
    /// accepted event's [`Input::Accepted`] before its outcome (the driver does): the
    /// outcome that completes a sync round applies the round's accepted events at once,
    /// and one that comes later waits for the batch window.
    IngestOutcome {
        /// The relay the event came from.
        relay: RelayUrl,
        /// The event.
        event_id: EventId,
        /// The outcome.
        outcome: IngestOutcome,
    },
}

/// Why a negentropy session failed. Every variant makes the engine fall back to
/// REQ+EOSE; `Unsupported` also makes it stop trying negentropy on this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NegentropyFailure {
    /// The relay does not speak NIP-77 (NOTICE on NEG-OPEN, CLOSED, unknown command).
    Unsupported,
    /// The relay answered NEG-ERR or the protocol broke.
    Error(String),
    /// No answer in time.
    Timeout,
}

impl Input {
    /// The relay this input wakes (see `SyncEngine::wake`): the one it came from. An
    /// EVENT wakes none — it never frees a historic slot nor queues work (it is matched
    /// and handed over, or buffered until EOSE) — so the bulk of inputs pumps nothing.
    pub(super) fn wakes(&self) -> Option<&RelayUrl> {
        match self {
            Input::RelayConnected { relay }
            | Input::RelayConnectFailed { relay, .. }
            | Input::RelayDisconnected { relay }
            | Input::Eose { relay, .. }
            | Input::Closed { relay, .. }
            | Input::Notice { relay, .. }
            | Input::NegentropyResult { relay, .. }
            | Input::NegentropyFailed { relay, .. }
            | Input::RelayMessagesLost { relay, .. } => Some(relay),
            Input::Event { .. }
            | Input::TamperedEvent { .. }
            | Input::Accepted { .. }
            | Input::PurgatoryAnnouncements { .. }
            | Input::IngestOutcome { .. } => None,
        }
    }
}

/// Whether a subscription stays open after EOSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionMode {
    /// `limit: 0`, kept open for new events.
    Live,
    /// Stored events up to EOSE, then closed by the engine.
    Historic,
}

/// Something the engine wants done, drained with [`super::SyncEngine::poll_command`].
/// Commands for one relay must be carried out in order; `Ingest` commands must be
/// carried out in order too (announcements are handed over before the events that
/// depend on them).
#[derive(Debug, Clone, PartialEq)]
// Deliberately exhaustive: a driver must carry out every command, so a new one is meant to break its `match`.
pub enum Command {
    /// Open a websocket (the driver applies its connection timeout).
    Connect {
        /// Which relay.
        relay: RelayUrl,
    },
    /// Close the websocket.
    Disconnect {
        /// Which relay.
        relay: RelayUrl,
    },
    /// Send REQ.
    Subscribe {
        /// Which relay.
        relay: RelayUrl,
        /// Subscription id (unique per relay connection).
        id: SubscriptionId,
        /// Filters (never more than the relay's filters-per-REQ limit).
        filters: Vec<Filter>,
        /// Live or historic.
        mode: SubscriptionMode,
    },
    /// Send CLOSE.
    Unsubscribe {
        /// Which relay.
        relay: RelayUrl,
        /// Subscription id.
        id: SubscriptionId,
    },
    /// Reconcile `filter` with NIP-77 against the host's have-set (stored ∪ purgatory
    /// ∪ rejected ids matching the filter); answer with `NegentropyResult` or
    /// `NegentropyFailed`. Only ids are reconciled: the engine fetches what is needed.
    Negentropy {
        /// Which relay.
        relay: RelayUrl,
        /// Session id.
        session: SubscriptionId,
        /// The filter to reconcile.
        filter: Filter,
    },
    /// Hand an event received by sync to the host; answer with `IngestOutcome`.
    Ingest {
        /// The relay it came from.
        relay: RelayUrl,
        /// The event.
        event: Box<Event>,
    },
    /// Read the announcements waiting in purgatory; answer with
    /// `PurgatoryAnnouncements`.
    ReadPurgatoryAnnouncements,
    /// Take [`super::SyncEngine::snapshot`] and save it (sync-state store port).
    PersistState,
}

impl Command {
    /// The relay a command is about, if any.
    pub fn relay(&self) -> Option<&RelayUrl> {
        match self {
            Command::Connect { relay }
            | Command::Disconnect { relay }
            | Command::Subscribe { relay, .. }
            | Command::Unsubscribe { relay, .. }
            | Command::Negentropy { relay, .. }
            | Command::Ingest { relay, .. } => Some(relay),
            Command::ReadPurgatoryAnnouncements | Command::PersistState => None,
        }
    }
}
