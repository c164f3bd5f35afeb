//! `SyncItems`: the unit that targets, pending batches and confirmed state are made of:
//! repos (each at a sync level) and root event ids. Keeping the level on every item is
//! what makes a StateOnly → Full upgrade visible to `compute_actions`.

use std::collections::{BTreeMap, BTreeSet};

use nostr::EventId;

use super::{RepoRef, SyncLevel};

/// Repos with their level, and root events, for one relay.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncItems {
    /// Repo refs and the level at which they are (to be) synced.
    pub repos: BTreeMap<RepoRef, SyncLevel>,
    /// Root event ids (patches, PRs, issues) of Full repos.
    pub root_events: BTreeSet<EventId>,
}

impl SyncItems {
    /// True when there is nothing in it.
    pub fn is_empty(&self) -> bool {
        self.repos.is_empty() && self.root_events.is_empty()
    }

    /// Number of repos plus root events.
    pub fn len(&self) -> usize {
        self.repos.len() + self.root_events.len()
    }

    /// Adds everything in `other`, keeping the higher level of a repo present in both.
    pub fn merge(&mut self, other: &SyncItems) {
        for (repo, level) in &other.repos {
            let entry = self.repos.entry(repo.clone()).or_insert(*level);
            *entry = entry.join(*level);
        }
        self.root_events.extend(other.root_events.iter().copied());
    }

    /// Removes everything in `other` (repos regardless of level).
    pub fn subtract(&mut self, other: &SyncItems) {
        for repo in other.repos.keys() {
            self.repos.remove(repo);
        }
        for id in &other.root_events {
            self.root_events.remove(id);
        }
    }

    /// Repos at `Full`, in order.
    pub fn full_repos(&self) -> impl Iterator<Item = &RepoRef> {
        self.repos_where(|l| l == SyncLevel::Full)
    }

    /// Repos whose state (30618 by `#d`) is synced: all but `Conversation`, in order.
    pub fn state_repos(&self) -> impl Iterator<Item = &RepoRef> {
        self.repos_where(|l| l != SyncLevel::Conversation)
    }

    /// Repos whose conversation (layer 2) is synced: `Full` and `Conversation`, in order.
    pub fn conversation_repos(&self) -> impl Iterator<Item = &RepoRef> {
        self.repos_where(|l| l != SyncLevel::StateOnly)
    }

    fn repos_where(&self, keep: impl Fn(SyncLevel) -> bool) -> impl Iterator<Item = &RepoRef> {
        self.repos
            .iter()
            .filter(move |(_, l)| keep(**l))
            .map(|(r, _)| r)
    }
}
