//! grasp-sync: GRASP-02 proactive sync for Nostr git relays.
//!
//! A relay that accepted a repository announcement (kind 30617) keeps every event about
//! that repository in sync with the other relays the announcement lists. This crate is
//! the sync engine a relay embeds: a pure, deterministic core (inputs in, commands out,
//! time injected), ports for what the host provides, and thin adapters (a tokio driver on
//! nostr-relay-pool, a gix git-data fetcher).
//!
//! See `docs/architecture.md` for where things live and why.
#![deny(missing_docs)]

#[cfg(feature = "tokio")]
pub mod driver;
pub mod engine;
pub mod model;
pub mod ports;

pub use model::*;
pub use engine::{Command, IngestOutcome, Input, NegentropyFailure, SubscriptionMode};
