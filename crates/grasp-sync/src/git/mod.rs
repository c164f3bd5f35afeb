//! Git data hunting: finding the git objects that events in purgatory wait for.
//!
//! GRASP-01 lets a relay hold announcements, state events and PRs until their git data
//! arrives; GRASP-02 asks it to go and fetch that data from the repo's other clone URLs.
//! The pieces, from pure to IO:
//! - [`Oid`]: a git object id, usable without gix;
//! - [`HuntScheduler`]: the sans-IO scheduler (when, what, where, within per-host limits);
//! - [`Purgatory`] / [`InMemoryPurgatory`]: the port to the host's holding area and an
//!   in-memory implementation with the expiry rules;
//! - [`GitFetcher`]: the blocking fetch port, and under feature `git` its gix
//!   implementation [`GixFetcher`] (schemes `git://`, and `file://` when the URL policy
//!   allows; `http(s)://` is not compiled in, see `docs/git-hunting.md`);
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
    Admitted, Expiry, InMemoryPurgatory, Purgatory, PurgatoryConfig, PurgatoryError, WaitingEvent,
};
pub use scheduler::{
    HuntConfig, HuntEvent, HuntJob, HuntRequest, HuntScheduler, JobId, JobResult, Origin, WaitKind,
    Want,
};
