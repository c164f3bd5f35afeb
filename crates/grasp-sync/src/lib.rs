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

pub mod git;
pub mod model;
pub mod url_policy;

#[cfg(feature = "git")]
pub use git::{BareRepoLocator, GixFetcher, GixFetcherConfig};
pub use git::{
    FetchError, FetchReport, FetchWant, GitFetcher, HuntConfig, HuntEvent, HuntJob, HuntMetrics, HuntRequest,
    HuntScheduler, InMemoryPurgatory, JobId, JobResult, Oid, OidError, Origin, Purgatory, PurgatoryConfig, WaitKind,
    WaitingEvent, Want,
};
pub use model::*;
pub use url_policy::{CloneUrl, UrlPolicy, UrlPolicyError};
