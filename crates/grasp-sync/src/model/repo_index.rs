//! `RepoSyncIndex`: what we want to sync. Repo ref → the relays its announcement lists,
//! its root events and its sync level. It is the only source of truth for targets; the
//! other two indexes only record what is in flight and what is confirmed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use nostr::EventId;

use super::{RelayUrl, RepoRef};

/// How much of a repo we sync. Two levels together cover what [`SyncLevel::join`]
/// says (`StateOnly` and `Conversation` together are `Full`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum SyncLevel {
    /// Only state events (30618 by `#d`): the announcement waits in purgatory for git
    /// data, so threads about it would be refused anyway.
    StateOnly,
    /// Layers 2 and 3 only — no state, and no layer 1 on a relay carrying nothing else:
    /// how a participant's outbox relay carries a Full repo (GRASP-03, see
    /// [`crate::SyncPlusConfig`]). Only ever a relay's level for a repo, never a repo's
    /// own level.
    Conversation,
    /// State, layer 2 (events tagging the repo) and layer 3 (events tagging its roots).
    #[default]
    Full,
}

impl SyncLevel {
    /// What two levels cover together: the same level, or `Full` (each of the others
    /// lacks what the other has).
    #[must_use]
    pub fn join(self, other: SyncLevel) -> SyncLevel {
        if self == other {
            self
        } else {
            SyncLevel::Full
        }
    }
}

/// What one repo needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoSyncNeeds {
    /// Relays listed in the announcement's `relays` tag (normalised, ours excluded).
    pub relays: BTreeSet<RelayUrl>,
    /// Root events (1617/1618/1621) tagging this repo.
    pub root_events: BTreeSet<EventId>,
    /// Which filters to build.
    pub sync_level: SyncLevel,
    /// Relays its participants write to (GRASP-03 Sync+), carrying the repo at
    /// [`SyncLevel::Conversation`]; one also in `relays` (the announcement changed since)
    /// carries it at the repo's level only. Empty unless the repo is Full and Sync+ is on.
    pub outbox_relays: BTreeSet<RelayUrl>,
}

/// A repo's needs before and after one change: what the incremental target derivation
/// consumes. `None` means "not in the index". The needs are shared, not copied: the
/// relay targets keep the `after` of the last change they applied, which is how a
/// relay's root events are read without a lookup per repo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoChange {
    /// The repo that changed.
    pub repo: RepoRef,
    /// Its needs before the change.
    pub before: Option<Arc<RepoSyncNeeds>>,
    /// Its needs after the change.
    pub after: Option<Arc<RepoSyncNeeds>>,
}

impl RepoChange {
    /// True when the change changed nothing.
    pub fn is_noop(&self) -> bool {
        self.before == self.after
    }
}

/// Repo ref → needs. Plain data: the engine owns it, nobody locks it. Each needs value
/// is immutable once in the index (a change replaces it), so it can be shared with the
/// relay targets.
#[derive(Debug, Clone, Default)]
pub struct RepoSyncIndex {
    repos: BTreeMap<RepoRef, Arc<RepoSyncNeeds>>,
}

impl RepoSyncIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Needs of one repo.
    pub fn get(&self, repo: &RepoRef) -> Option<&RepoSyncNeeds> {
        self.repos.get(repo).map(|needs| &**needs)
    }

    /// All repos in order.
    pub fn iter(&self) -> impl Iterator<Item = (&RepoRef, &RepoSyncNeeds)> {
        self.repos.iter().map(|(repo, needs)| (repo, &**needs))
    }

    /// All repos in order, with their needs as shared.
    pub(crate) fn iter_shared(&self) -> impl Iterator<Item = (&RepoRef, &Arc<RepoSyncNeeds>)> {
        self.repos.iter()
    }

    /// Number of repos.
    pub fn len(&self) -> usize {
        self.repos.len()
    }

    /// True when no repo is wanted.
    pub fn is_empty(&self) -> bool {
        self.repos.is_empty()
    }

    /// An accepted announcement (or an update of it): its relay list replaces the old
    /// one, so relays it no longer lists stop being targeted; the level becomes Full.
    pub fn accept_announcement(
        &mut self,
        repo: &RepoRef,
        relays: BTreeSet<RelayUrl>,
    ) -> RepoChange {
        self.change(repo, |needs| {
            let needs = needs.get_or_insert_with(RepoSyncNeeds::default);
            needs.relays = relays;
            needs.sync_level = SyncLevel::Full;
        })
    }

    /// A purgatory announcement: inserted at StateOnly if absent; its relays refreshed
    /// while it is still StateOnly. Never touches a Full entry: the purgatory timer must
    /// not downgrade an accepted repo.
    pub fn note_purgatory_announcement(
        &mut self,
        repo: &RepoRef,
        relays: BTreeSet<RelayUrl>,
    ) -> RepoChange {
        self.change(repo, |needs| match needs {
            Some(n) if n.sync_level == SyncLevel::Full => {}
            Some(n) => n.relays = relays,
            None => {
                *needs = Some(RepoSyncNeeds {
                    relays,
                    sync_level: SyncLevel::StateOnly,
                    ..RepoSyncNeeds::default()
                })
            }
        })
    }

    /// A root event tagging `repo`. Ignored (no-op change) when the repo is unknown: a
    /// root event for a repo we do not hold gives us no relays to sync it from. The
    /// caller caps root events per repo before calling.
    pub fn add_root_event(&mut self, repo: &RepoRef, id: EventId) -> RepoChange {
        self.change(repo, |needs| {
            if let Some(n) = needs {
                n.root_events.insert(id);
            }
        })
    }

    /// The relays a Full repo's participants write to (GRASP-03). A relay its
    /// announcement lists carries it at the repo's own level whatever this says (see
    /// `targets::carriers`). No-op for other repos.
    pub fn set_outbox_relays(&mut self, repo: &RepoRef, relays: BTreeSet<RelayUrl>) -> RepoChange {
        self.change(repo, |needs| {
            if let Some(n) = needs.as_mut().filter(|n| n.sync_level == SyncLevel::Full) {
                n.outbox_relays = relays;
            }
        })
    }

    /// Forgets a repo (its announcement was deleted, expired from purgatory, or the host
    /// no longer holds it).
    pub fn remove(&mut self, repo: &RepoRef) -> RepoChange {
        self.change(repo, |needs| *needs = None)
    }

    fn change(&mut self, repo: &RepoRef, f: impl FnOnce(&mut Option<RepoSyncNeeds>)) -> RepoChange {
        let before = self.repos.remove(repo);
        let mut after = before.as_deref().cloned();
        f(&mut after);
        let after = match after {
            // Unchanged: the same shared value stays.
            Some(needs) if before.as_deref() == Some(&needs) => before.clone(),
            other => other.map(Arc::new),
        };
        if let Some(needs) = &after {
            self.repos.insert(repo.clone(), Arc::clone(needs));
        }
        RepoChange {
            repo: repo.clone(),
            before,
            after,
        }
    }
}
