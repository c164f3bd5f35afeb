//! The local bare repositories, read with gix (blocking: call from `spawn_blocking`).
//!
//! Layout: GRASP's `<data>/git/<npub>/<identifier>.git`, via
//! [`BareRepoLocator::grasp_layout`] (which refuses identifiers that could escape the
//! root). The [`GixFetcher`](grasp_sync::GixFetcher) writes into the same repositories.

use std::collections::BTreeSet;
use std::path::PathBuf;

use grasp_sync::{BareRepoLocator, Oid, RepoRef};
use nostr::EventId;

fn to_gix(oid: &Oid) -> gix::ObjectId {
    gix::ObjectId::from_bytes_or_panic(oid.as_bytes())
}

/// Creates the bare repository for `repo` if it does not exist yet (atomically: see
/// [`BareRepoLocator::open_or_create`]).
pub fn ensure_bare(locator: &BareRepoLocator, repo: &RepoRef) -> Result<PathBuf, String> {
    locator.open_or_create(repo).map_err(|e| e.to_string())
}

/// Which of `oids` are present in `repo`'s bare repository.
pub fn present(locator: &BareRepoLocator, repo: &RepoRef, oids: &BTreeSet<Oid>) -> BTreeSet<Oid> {
    let Some(r) = locator.locate(repo).and_then(|p| gix::open(p).ok()) else {
        return BTreeSet::new();
    };
    oids.iter()
        .copied()
        .filter(|o| r.has_object(to_gix(o)))
        .collect()
}

/// True when the bare repository holds any reference (it has git data).
pub fn has_any_data(locator: &BareRepoLocator, repo: &RepoRef) -> bool {
    let Some(r) = locator.locate(repo).and_then(|p| gix::open(p).ok()) else {
        return false;
    };
    let Ok(refs) = r.references() else {
        return false;
    };
    let Ok(mut all) = refs.all() else {
        return false;
    };
    all.next().is_some()
}

/// Points `refs/heads/*` and `refs/tags/*` at the objects a state event names, when the
/// objects are present. Best effort: a ref that cannot be written is skipped.
pub fn apply_state_refs(locator: &BareRepoLocator, repo: &RepoRef, refs: &[(String, Oid)]) {
    let refs: Vec<(String, Oid)> = refs
        .iter()
        .filter(|(name, _)| name.starts_with("refs/heads/") || name.starts_with("refs/tags/"))
        .cloned()
        .collect();
    write_refs(locator, repo, &refs, "grasp: state event");
}

/// Points `refs/nostr/<event id>` at a PR's (or PR update's) tip, when present: GRASP
/// serves each proposed change at that ref, so a clone of the repository can fetch it.
pub fn apply_pr_ref(locator: &BareRepoLocator, repo: &RepoRef, event: &EventId, tip: Oid) {
    let name = format!("refs/nostr/{}", event.to_hex());
    write_refs(locator, repo, &[(name, tip)], "grasp: pull request");
}

/// Writes each ref whose object is present. Best effort: a ref that cannot be written is
/// skipped (and logged at debug).
fn write_refs(locator: &BareRepoLocator, repo: &RepoRef, refs: &[(String, Oid)], why: &str) {
    let Some(r) = locator.locate(repo).and_then(|p| gix::open(p).ok()) else {
        return;
    };
    for (name, oid) in refs {
        let id = to_gix(oid);
        if !r.has_object(id) {
            continue;
        }
        if let Err(e) = r.reference(
            name.as_str(),
            id,
            gix::refs::transaction::PreviousValue::Any,
            why,
        ) {
            tracing::debug!(%repo, name, error = %e, "could not set ref");
        }
    }
}
