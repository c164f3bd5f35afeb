//! The host's verdict on an event sync handed over: what the ingestion port returns
//! and the engine acts on.

/// The host's verdict on an event handed over for ingestion. Typed so that no caller
/// ever parses a rejection message.
///
/// Every verdict but `Failed` is *durable*: the host must report it only once it would
/// survive a crash (stored, or written to a durable purgatory). The engine confirms a
/// batch only when each of its events has a durable verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IngestOutcome {
    /// Stored and served: counts as synced.
    Accepted,
    /// Held in a durable purgatory, waiting for git data.
    Purgatory,
    /// Refused by the host's policy.
    Rejected,
    /// Already had it.
    Duplicate,
    /// Not stored and not refused: the host could not process it now (a storage error,
    /// shutting down). The engine asks for it again later.
    Failed,
}
