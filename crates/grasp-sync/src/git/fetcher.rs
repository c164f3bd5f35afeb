//! The `GitFetcher` port: how the library gets git objects from a remote server.
//!
//! The port is **blocking** on purpose. Its one real implementation, gix, is a blocking
//! library (its async client is experimental and runtime-specific); a blocking trait is
//! honest about that, is trivial to implement in tests, and lets a host without tokio run
//! fetches on plain threads. Under the `tokio` feature, [`fetch_blocking_task`] moves a
//! call onto tokio's blocking pool so the async driver never stalls its reactor.

use std::collections::BTreeSet;

use crate::git::Oid;
use crate::model::RepoRef;
use crate::url_policy::{CloneUrl, UrlPolicyError};

/// What one fetch should bring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchWant {
    /// Objects (usually commits) a state event or PR names.
    pub oids: BTreeSet<Oid>,
    /// An announcement waits for *any* data: fetch the remote's branches and tags.
    pub any_data: bool,
}

impl FetchWant {
    /// True when there is nothing to fetch.
    pub fn is_empty(&self) -> bool {
        self.oids.is_empty() && !self.any_data
    }
}

/// One ref the remote advertises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    /// Full name, e.g. `refs/heads/main`.
    pub name: String,
    /// The object it points to (peeled for annotated tags when the server says so).
    pub target: Oid,
}

/// What a fetch achieved. Counts only what is now *present locally*, so that several
/// partial fetches from several servers add up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// Wanted objects now present in the local bare repository (whether fetched now or
    /// already there).
    pub present: BTreeSet<Oid>,
    /// For `any_data`: the remote had at least one branch or tag and its tip is now local.
    pub any_data: bool,
    /// Tips fetched for `any_data` (`refs/heads/*`, `refs/tags/*`), so the host can set
    /// the repository's refs when it releases the announcement.
    pub tips: Vec<RemoteRef>,
    /// Bytes of pack data received.
    pub bytes: u64,
}

/// Why a fetch failed as a whole. A server that lacks some objects is *not* an error:
/// the report simply omits them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The URL policy refused the URL (before any connection).
    #[error("refused by URL policy: {0}")]
    Refused(#[from] UrlPolicyError),
    /// No connection could be made (refused, DNS failure, network unreachable).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// A remote operation did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The server answered something we could not use.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The local bare repository could not be opened, created or written.
    #[error("local repository error: {0}")]
    Local(String),
    /// The scheme is not one this fetcher speaks (e.g. `ssh`).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// The port. Implementations must bound every remote operation by a timeout and must
/// never panic on what a server sends.
pub trait GitFetcher: Send + Sync {
    /// Lists the refs `url` advertises, without fetching objects.
    fn list_refs(&self, url: &CloneUrl) -> Result<Vec<RemoteRef>, FetchError>;

    /// Fetches `want` from `url` into `repo`'s local bare repository and reports which
    /// wanted objects are now present. An object the server does not have must not stop
    /// the others.
    fn fetch(
        &self,
        repo: &RepoRef,
        url: &CloneUrl,
        want: &FetchWant,
    ) -> Result<FetchReport, FetchError>;
}

/// Runs one fetch on tokio's blocking pool. A panic or cancellation inside the task is
/// reported as [`FetchError::Local`], never propagated.
#[cfg(feature = "tokio")]
pub async fn fetch_blocking_task<F>(
    fetcher: std::sync::Arc<F>,
    repo: RepoRef,
    url: CloneUrl,
    want: FetchWant,
) -> Result<FetchReport, FetchError>
where
    F: GitFetcher + ?Sized + 'static,
{
    let joined = tokio::task::spawn_blocking(move || fetcher.fetch(&repo, &url, &want)).await;
    joined.unwrap_or_else(|e| {
        Err(FetchError::Local(format!(
            "fetch task ended abnormally: {e}"
        )))
    })
}
