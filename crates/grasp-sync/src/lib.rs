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

pub mod classify;
pub mod diff;
#[cfg(feature = "tokio")]
pub mod driver;
pub mod engine;
pub mod filters;
pub mod git;
pub mod health;
pub mod model;
pub mod nip34;
pub mod pagination;
pub mod ports;
pub mod targets;
pub mod url_policy;

pub use classify::{classify_closed, classify_notice, RelaySignal};
pub use diff::{compute_actions, compute_actions_for_relay, Actions, AddFilters, RemoveItems};
pub use engine::{
    Command, IngestOutcome, Input, NegentropyFailure, SubscriptionMode, SyncConfig, SyncEngine,
};
pub use filters::{
    build_sync_level_aware_filters, ids_filters, layer1_filters, live, repo_tag_filters,
    root_event_tag_filters, split_into_reqs, state_filters, with_page, Nip11Limitation,
    RelayLimits,
};
pub use health::{HealthConfig, HealthState, RelayHealth};
pub use model::*;
pub use pagination::{IncompleteReason, PageDecision, PageOutcome, PaginationConfig, Paginator};
pub use targets::{derive_relay_targets, RelayTarget, RelayTargets};
#[cfg(feature = "git")]
pub use git::{BareRepoLocator, GixFetcher, GixFetcherConfig};
pub use git::{
    FetchError, FetchReport, FetchWant, GitFetcher, HuntConfig, HuntEvent, HuntJob, HuntMetrics,
    HuntRequest, HuntScheduler, InMemoryPurgatory, JobId, JobResult, Oid, OidError, Origin,
    Purgatory, PurgatoryConfig, WaitKind, WaitingEvent, Want,
};
pub use url_policy::{CloneUrl, UrlPolicy, UrlPolicyError};
