//! Git data hunting: finding the git objects that events in purgatory wait for.
//!
//! GRASP-01 lets a relay hold announcements, state events and PRs until their git data
//! arrives; GRASP-02 asks it to go and fetch that data from the repo's other clone URLs.
//! The pieces, from pure to IO:
//! - [`Oid`]: a git object id, usable without gix;
//! - [`HuntScheduler`]: the sans-IO scheduler (when, what, where, within per-host limits);
//! - [`InMemoryPurgatory`]: a holding area with the expiry rules of GRASP-01/02, for
//!   hosts that keep it in memory (the reference relay does);
//! - [`GitFetcher`]: the blocking fetch port, and under feature `git` its gix
//!   implementation [`GixFetcher`] (schemes `http(s)://` through gix's reqwest
//!   transport on the build's one rustls, `git://`, and `file://` when the URL policy
//!   allows; see `docs/git-hunting.md`);
//! - [`HuntMetrics`]: counters as plain data.
//!
//! See `docs/git-hunting.md` for the timeline and how a driver wires these together.

mod fetcher;
mod metrics;
mod oid;
mod purgatory;
mod scheduler;

#[cfg(feature = "git")]
mod gix_fetcher;

#[cfg(feature = "tokio")]
pub use fetcher::fetch_blocking_task;
pub use fetcher::{FetchError, FetchReport, FetchWant, GitFetcher, RemoteRef};
#[cfg(feature = "git")]
pub use gix_fetcher::{BareRepoLocator, GixFetcher, GixFetcherConfig};
pub use metrics::HuntMetrics;
pub use oid::{Oid, OidError};
pub use purgatory::{
    Admitted, Expiry, InMemoryPurgatory, PurgatoryConfig, PurgatoryError, WaitingEvent,
};
pub use scheduler::{
    HuntConfig, HuntEvent, HuntJob, HuntRequest, HuntScheduler, JobId, JobResult, Origin, WaitKind,
    Want,
};
