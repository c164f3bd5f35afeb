//! grasp-sync: GRASP-02 proactive sync for Nostr git relays.
//!
//! A relay that accepted a repository announcement (kind 30617) keeps every event about
//! that repository in sync with the other relays the announcement lists. This crate is
//! the sync engine a relay embeds: a pure, deterministic core (inputs in, commands out,
//! time injected), ports for what the host provides, and thin adapters (a tokio driver on
//! nostr-relay-pool, a gix git-data fetcher).
//!
//! # Embedding
//!
//! Implement the [`ports`] on your relay (in-memory versions exist for tests and small
//! hosts), start the [`driver`], and tell it what your relay accepts:
//!
//! ```no_run
#![doc = include_str!("../examples/embed.rs")]
//! ```
//!
//! Without the `tokio` feature, drive the sans-IO [`SyncEngine`] yourself:
//! `handle_input`, `handle_timeout`, `poll_command`, `poll_timeout`.
//!
//! # Where things live
//!
//! - [`engine`]: the sans-IO state machine ([`SyncEngine`]): what to ask which relay,
//!   when, and what counts as synced.
//! - [`ports`]: the traits the host implements, and in-memory versions.
//! - `driver` (feature `tokio`): runs the engine on tokio and nostr-relay-pool.
//! - [`git`]: hunting git data for held events; `GixFetcher` (feature `git`).
//! - [`model`], [`targets`], [`diff`], [`filters`], [`matching`], [`pagination`],
//!   [`health`], [`classify`], [`nip34`], [`url_policy`]: the data model and the algorithms the
//!   engine is built from, one concern each.
//!
//! The source repository's `docs/` folder has the architecture, the GRASP-02 sync
//! design with every rule and constant, and the security notes.
//!
//! # TLS: install the crypto provider at start-up
//!
//! This crate's TLS (relay websockets, NIP-11, and `https://` clone URLs through gix's
//! reqwest transport) is all rustls with the **ring** provider. reqwest is built without
//! a provider of its own, so it *needs* a process-level default, and a binary that also
//! links rustls with **aws-lc-rs** (through any other dependency) makes rustls unable to
//! pick one and panic on the first TLS connection ("Could not automatically determine the
//! process-level CryptoProvider"). Call [`install_default_crypto_provider`] once at the
//! start of `main` — before any TLS connection — in every binary *and test binary* that
//! uses this crate:
//!
//! ```
//! grasp_sync::install_default_crypto_provider();
//! ```
//!
//! [`driver::start`] and `GixFetcher` (before its first http(s) connection) call it too,
//! so embedders using them are safe by default; it does nothing when a provider (yours,
//! even a different one) is already installed.
#![deny(missing_docs)]

pub mod archive;
pub mod classify;
pub mod diff;
#[cfg(feature = "tokio")]
pub mod driver;
pub mod engine;
pub mod filters;
pub mod git;
pub mod health;
pub mod matching;
pub mod model;
pub mod nip34;
pub mod pagination;
pub mod ports;
pub mod targets;
pub mod url_policy;

// The root holds what an embedder uses: the engine and its inputs and commands, its
// configuration, the ports a host implements, the driver, URL and repository types,
// errors. The algorithms (targets, diff, filters, pagination, health, classification)
// stay in their modules, public for tests, benches and the curious.
pub use engine::{
    Command, IngestOutcome, Input, NegentropyFailure, RelayStatusSnapshot, RepoStatusSnapshot,
    SubscriptionMode, SyncConfig, SyncEngine, SyncPlusConfig, SyncStateSnapshot,
};
#[cfg(feature = "git")]
pub use git::{BareRepoLocator, GixFetcher, GixFetcherConfig};
pub use git::{FetchError, GitFetcher, Oid, OidError};
pub use health::HealthConfig;
pub use model::{
    ConnectionStatus, RelayUrl, RelayUrlError, RepoRef, RepoRefError, SyncLevel, WallTime,
};
pub use ports::{EventStore, Ingestion, PortError, PurgatoryView, RelayUrlPolicy, SyncStateStore};
pub use url_policy::{CloneUrl, UrlPolicy, UrlPolicyError};

/// Installs rustls's *ring* provider as the process-level default `CryptoProvider`, unless
/// one is already installed. Returns `true` when this call installed it.
///
/// Idempotent and thread-safe: call it at the top of `main` (see the crate docs for why).
/// A provider installed earlier, by you or by another library, is left in place.
#[cfg(any(feature = "tokio", feature = "git"))]
pub fn install_default_crypto_provider() -> bool {
    if rustls::crypto::CryptoProvider::get_default().is_some() {
        return false;
    }
    // Err means another thread installed one in between: fine either way.
    rustls::crypto::ring::default_provider()
        .install_default()
        .is_ok()
}
