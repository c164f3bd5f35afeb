//! `compute_actions`: target − pending − confirmed, per relay. The one decision point for
//! new subscriptions on the reconnect paths, and the place that notices what is no longer
//! wanted so the engine can close it.
//!
//! An item is a repo *at a level*, or a root event. A repo confirmed at StateOnly and
//! targeted at Full is therefore a new item (the upgrade), and the StateOnly one becomes
//! a removal.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use nostr::EventId;

use crate::model::{PendingSyncIndex, RelaySyncIndex, RelayUrl, RepoRef, SyncItems, SyncLevel};
use crate::targets::{cmp_ids, RelayTarget, RelayTargets};

/// New items to subscribe on one relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddFilters {
    /// The relay.
    pub relay: RelayUrl,
    /// Items neither pending nor confirmed there.
    pub items: SyncItems,
}

/// Items pending or confirmed on one relay that are no longer targeted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveItems {
    /// The relay.
    pub relay: RelayUrl,
    /// Items to drop (repos at the level they are held).
    pub items: SyncItems,
}

/// What `compute_actions` decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actions {
    /// New subscriptions, one entry per relay, relays in order.
    pub add: Vec<AddFilters>,
    /// Items to drop, one entry per relay, relays in order.
    pub remove: Vec<RemoveItems>,
}

/// Target − pending − confirmed for every connected relay, plus what is held but no
/// longer targeted. Relays that are not connected are skipped: they get their filters
/// when they connect, from this same function.
pub fn compute_actions(
    targets: &RelayTargets,
    pending: &PendingSyncIndex,
    confirmed: &RelaySyncIndex,
) -> Actions {
    let mut actions = Actions::default();
    let relays: BTreeSet<&RelayUrl> = targets
        .relays()
        .chain(confirmed.iter().map(|(r, _)| r))
        .chain(pending.relays())
        .collect();
    for relay in relays {
        let (add, remove) = compute_actions_for_relay(relay, targets, pending, confirmed);
        actions.add.extend(add);
        actions.remove.extend(remove);
    }
    actions
}

/// compute_actions for one relay only: what the engine calls on connect and when one
/// relay's state changed, so it does not walk every relay.
pub fn compute_actions_for_relay(
    relay: &RelayUrl,
    targets: &RelayTargets,
    pending: &PendingSyncIndex,
    confirmed: &RelaySyncIndex,
) -> (Option<AddFilters>, Option<RemoveItems>) {
    let held = held_items(relay, pending, confirmed);
    let target = targets.get(relay);
    let connected = confirmed
        .get(relay)
        .is_some_and(|s| s.status.is_connected());
    // The relay's root events are read once, and only if either side needs them (the
    // most expensive step of a relay's diff).
    let mut gathered = Vec::new();
    let roots = match target {
        Some(t) if connected || held.sets.iter().any(|s| !s.root_events.is_empty()) => {
            t.root_refs(&mut gathered)
        }
        _ => Vec::new(),
    };
    let (add, stale) = match (target, held.sets.as_slice()) {
        // The common case — a connected relay with one held set, its confirmed items —
        // in one pass.
        (Some(t), [set]) if connected => {
            let (add, stale) = both_sides(t, &roots, set);
            (Some(add), stale)
        }
        _ => {
            let add = match target {
                Some(t) if connected => Some(missing(t, &roots, &held)),
                _ => None,
            };
            (add, unwanted(&held, target, &roots))
        }
    };
    let add = add.filter(|i| !i.is_empty());
    (
        add.map(|items| AddFilters {
            relay: relay.clone(),
            items,
        }),
        Some(stale)
            .filter(|i| !i.is_empty())
            .map(|items| RemoveItems {
                relay: relay.clone(),
                items,
            }),
    )
}

/// Pending ∪ confirmed for one relay, as a view over the sets it is made of (the
/// confirmed items and each pending batch's items): nothing is copied. A repo held at two
/// levels (StateOnly confirmed, Full pending) keeps both, so each is matched exactly.
struct Held<'a> {
    sets: Vec<&'a SyncItems>,
}

fn held_items<'a>(
    relay: &RelayUrl,
    pending: &'a PendingSyncIndex,
    confirmed: &'a RelaySyncIndex,
) -> Held<'a> {
    let confirmed_items = confirmed.get(relay).map(|s| &s.confirmed);
    let pending_items = pending.batches(relay).iter().map(|b| &b.items);
    Held {
        sets: confirmed_items
            .into_iter()
            .chain(pending_items)
            .filter(|items| !items.is_empty())
            .collect(),
    }
}

/// The items of sorted `a` that have no counterpart in sorted `b`: one merge pass,
/// O(|a| + |b|), instead of a tree lookup per item. `cmp` orders an item of `a` against
/// one of `b` by key; `same` says whether two items with equal keys match.
fn sorted_minus<T, U>(
    a: impl Iterator<Item = T>,
    b: impl Iterator<Item = U>,
    cmp: impl Fn(&T, &U) -> Ordering,
    same: impl Fn(&T, &U) -> bool,
) -> Vec<T> {
    let mut b = b.peekable();
    let mut out = Vec::new();
    for x in a {
        while b.peek().is_some_and(|y| cmp(&x, y) == Ordering::Greater) {
            b.next();
        }
        match b.peek() {
            Some(y) if cmp(&x, y) == Ordering::Equal && same(&x, y) => {}
            _ => out.push(x),
        }
    }
    out
}

type RepoItem<'a> = (&'a RepoRef, SyncLevel);

fn repo_items(items: &SyncItems) -> impl Iterator<Item = RepoItem<'_>> {
    items.repos.iter().map(|(repo, level)| (repo, *level))
}

fn repos_minus<'a>(
    a: impl Iterator<Item = RepoItem<'a>>,
    b: impl Iterator<Item = RepoItem<'a>>,
) -> Vec<RepoItem<'a>> {
    sorted_minus(a, b, |x, y| x.0.cmp(y.0), |x, y| x.1 == y.1)
}

fn ids_minus<'a>(
    a: impl Iterator<Item = &'a EventId>,
    b: impl Iterator<Item = &'a EventId>,
) -> Vec<&'a EventId> {
    sorted_minus(a, b, |x, y| cmp_ids(x, y), |_, _| true)
}

/// Both sides of one merge pass over `sorted_a` and `sorted_b`: the items of `a` without
/// a counterpart in `b`, and those of `b` without one in `a`. Keys are unique on each
/// side; `same` says whether two items with equal keys match (else both sides keep
/// theirs: a repo held at another level).
fn sorted_sides<T, U>(
    a: impl Iterator<Item = T>,
    b: impl Iterator<Item = U>,
    cmp: impl Fn(&T, &U) -> Ordering,
    same: impl Fn(&T, &U) -> bool,
) -> (Vec<T>, Vec<U>) {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    loop {
        let order = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => cmp(x, y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => break,
        };
        match order {
            Ordering::Less => only_a.extend(a.next()),
            Ordering::Greater => only_b.extend(b.next()),
            Ordering::Equal => {
                if let (Some(x), Some(y)) = (a.next(), b.next()) {
                    if !same(&x, &y) {
                        only_a.push(x);
                        only_b.push(y);
                    }
                }
            }
        }
    }
    (only_a, only_b)
}

/// [`missing`] and [`unwanted`] against a single held set, in one pass each for repos
/// and root events.
fn both_sides(target: &RelayTarget, roots: &[&EventId], set: &SyncItems) -> (SyncItems, SyncItems) {
    let (add_repos, stale_repos) = sorted_sides(
        target.repos(),
        repo_items(set),
        |x, y| x.0.cmp(y.0),
        |x, y| x.1 == y.1,
    );
    let (add_ids, stale_ids) = sorted_sides(
        roots.iter().copied(),
        set.root_events.iter(),
        |x, y| cmp_ids(x, y),
        |_, _| true,
    );
    // Sorted input: the trees are bulk-built.
    let items = |repos: Vec<RepoItem<'_>>, ids: Vec<&EventId>| SyncItems {
        repos: repos.into_iter().map(|(r, l)| (r.clone(), l)).collect(),
        root_events: ids.into_iter().copied().collect(),
    };
    (items(add_repos, add_ids), items(stale_repos, stale_ids))
}

/// The target's items (`roots`: its root events, sorted) that nothing in `held` holds.
fn missing(target: &RelayTarget, roots: &[&EventId], held: &Held<'_>) -> SyncItems {
    let mut repos: Vec<RepoItem<'_>> = target.repos().collect();
    let mut ids = roots.to_vec();
    for set in &held.sets {
        repos = repos_minus(repos.into_iter(), repo_items(set));
        ids = ids_minus(ids.into_iter(), set.root_events.iter());
    }
    // Sorted input: the trees are bulk-built.
    SyncItems {
        repos: repos.into_iter().map(|(r, l)| (r.clone(), l)).collect(),
        root_events: ids.into_iter().copied().collect(),
    }
}

/// The held items the target (`roots`: its root events, sorted) no longer wants.
fn unwanted(held: &Held<'_>, target: Option<&RelayTarget>, roots: &[&EventId]) -> SyncItems {
    let mut out = SyncItems::default();
    for set in &held.sets {
        let (repos, ids) = match target {
            Some(t) => (
                repos_minus(repo_items(set), t.repos()),
                ids_minus(set.root_events.iter(), roots.iter().copied()),
            ),
            None => (repo_items(set).collect(), set.root_events.iter().collect()),
        };
        if held.sets.len() == 1 {
            out.repos = repos.into_iter().map(|(r, l)| (r.clone(), l)).collect();
            out.root_events = ids.into_iter().copied().collect();
        } else {
            for (repo, level) in repos {
                // A repo held at two levels, both unwanted, is reported at the higher
                // one (as the merged sorted set of (repo, level) would).
                let entry = out.repos.entry(repo.clone()).or_insert(level);
                *entry = entry.join(level);
            }
            out.root_events.extend(ids.into_iter().copied());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::{
        BatchId, ConnectionStatus, PendingBatch, RepoSyncIndex, SyncLevel, WallTime,
    };
    use crate::targets::derive_relay_targets;
    use crate::targets::tests::{apply_op, id, op, relay, repo};

    /// Random held state: for each relay, a status and some items confirmed or pending.
    /// Per relay: index, status, repos (index, full, pending), roots (index, pending).
    type Held = Vec<(u8, u8, Vec<(u8, bool, bool)>, Vec<(u8, bool)>)>;

    fn held_state() -> impl Strategy<Value = Held> {
        proptest::collection::vec(
            (
                0u8..6,
                0u8..5,
                proptest::collection::vec((0u8..8, any::<bool>(), any::<bool>()), 0..6),
                proptest::collection::vec((0u8..12, any::<bool>()), 0..6),
            ),
            0..6,
        )
    }

    fn status(i: u8) -> ConnectionStatus {
        [
            ConnectionStatus::Disconnected,
            ConnectionStatus::Connecting,
            ConnectionStatus::Syncing,
            ConnectionStatus::Connected,
            ConnectionStatus::ConnectedHistoricSyncFailures,
        ][usize::from(i % 5)]
    }

    fn build(held: &Held) -> (PendingSyncIndex, RelaySyncIndex) {
        let mut pending = PendingSyncIndex::new();
        let mut confirmed = RelaySyncIndex::new();
        for (r, st, repos, roots) in held {
            let state = confirmed.entry(&relay(*r));
            state.status = status(*st);
            let mut batch_items = SyncItems::default();
            for (rp, full, in_pending) in repos {
                let level = if *full {
                    SyncLevel::Full
                } else {
                    SyncLevel::StateOnly
                };
                if *in_pending {
                    batch_items.repos.insert(repo(*rp), level);
                } else {
                    state.confirmed.repos.insert(repo(*rp), level);
                }
            }
            for (e, in_pending) in roots {
                if *in_pending {
                    batch_items.root_events.insert(id(*e));
                } else {
                    state.confirmed.root_events.insert(id(*e));
                }
            }
            if !batch_items.is_empty() {
                let n = pending.batches(&relay(*r)).len() as u64;
                pending.batches_mut(&relay(*r)).push(PendingBatch {
                    id: BatchId(n),
                    items: batch_items,
                    outstanding: Default::default(),
                    awaiting: 0,
                    also_covers: Default::default(),
                    failure: Default::default(),
                    beyond_req: Default::default(),
                    asked_by_req: Vec::new(),
                    fetch_asked: Default::default(),
                    fetch_shared: false,
                    layer1: false,
                    full_history: true,
                    started_at: WallTime::ZERO,
                });
            }
        }
        (pending, confirmed)
    }

    fn holds(
        p: &PendingSyncIndex,
        c: &RelaySyncIndex,
        r: &RelayUrl,
        repo: Option<(&crate::model::RepoRef, SyncLevel)>,
        root: Option<&EventId>,
    ) -> bool {
        let sets = c
            .get(r)
            .map(|s| &s.confirmed)
            .into_iter()
            .chain(p.batches(r).iter().map(|b| &b.items));
        for items in sets {
            if let Some((rp, l)) = repo {
                if items.repos.get(rp) == Some(&l) {
                    return true;
                }
            }
            if let Some(e) = root {
                if items.root_events.contains(e) {
                    return true;
                }
            }
        }
        false
    }

    proptest! {
        #[test]
        fn diff_properties(ops in proptest::collection::vec(op(), 0..40), held in held_state()) {
            let mut index = RepoSyncIndex::new();
            for o in &ops { apply_op(&mut index, o); }
            let targets = derive_relay_targets(&index);
            let (pending, confirmed) = build(&held);
            let actions = compute_actions(&targets, &pending, &confirmed);

            // Deterministic.
            prop_assert_eq!(&actions, &compute_actions(&targets, &pending, &confirmed));
            // A relay's root events, from the index itself (not through RelayTarget).
            let targeted_root = |r: &RelayUrl, e: &EventId| {
                index.iter().any(|(_, needs)| {
                    needs.sync_level == SyncLevel::Full
                        && (needs.relays.contains(r) || needs.outbox_relays.contains(r))
                        && needs.root_events.contains(e)
                })
            };

            for add in &actions.add {
                prop_assert!(confirmed.get(&add.relay).unwrap().status.is_connected());
                for (rp, l) in &add.items.repos {
                    prop_assert!(!holds(&pending, &confirmed, &add.relay, Some((rp, *l)), None), "emitted a held repo");
                }
                for e in &add.items.root_events {
                    prop_assert!(!holds(&pending, &confirmed, &add.relay, None, Some(e)), "emitted a held root");
                }
            }
            // Every targeted item on a connected relay: emitted, pending or confirmed.
            for (r, target) in targets.iter() {
                if !confirmed.get(r).is_some_and(|s| s.status.is_connected()) { continue; }
                let add = actions.add.iter().find(|a| &a.relay == r);
                for (rp, l) in target.repos() {
                    let emitted = add.is_some_and(|a| a.items.repos.get(rp) == Some(&l));
                    prop_assert!(emitted || holds(&pending, &confirmed, r, Some((rp, l)), None));
                }
                for e in &target.root_events() {
                    let emitted = add.is_some_and(|a| a.items.root_events.contains(e));
                    prop_assert!(emitted || holds(&pending, &confirmed, r, None, Some(e)));
                }
            }
            // Removals are exactly the held items that are not targeted.
            for rm in &actions.remove {
                let t = targets.get(&rm.relay);
                for (rp, l) in &rm.items.repos {
                    prop_assert!(t.and_then(|t| t.level(rp)) != Some(*l));
                }
                for e in &rm.items.root_events {
                    prop_assert!(!targeted_root(&rm.relay, e));
                }
            }
            for (r, s) in confirmed.iter() {
                let rm = actions.remove.iter().find(|x| &x.relay == r);
                for e in &s.confirmed.root_events {
                    let targeted = targeted_root(r, e);
                    prop_assert!(targeted || rm.is_some_and(|x| x.items.root_events.contains(e)));
                }
                let level = |rp: &RepoRef| targets.get(r).and_then(|t| t.level(rp));
                for (rp, l) in &s.confirmed.repos {
                    prop_assert!(level(rp) == Some(*l) || rm.is_some_and(|x| x.items.repos.contains_key(rp)));
                }
            }
            // One pass over a single held set says what the two passes say.
            for (r, t) in targets.iter() {
                let held = held_items(r, &pending, &confirmed);
                if let [set] = held.sets.as_slice() {
                    let mut buf = Vec::new();
                    let roots = t.root_refs(&mut buf);
                    prop_assert_eq!(
                        both_sides(t, &roots, set),
                        (missing(t, &roots, &held), unwanted(&held, Some(t), &roots))
                    );
                }
            }
            // The per-relay form agrees with the global one.
            for (r, _) in confirmed.iter() {
                let (a, rm) = compute_actions_for_relay(r, &targets, &pending, &confirmed);
                prop_assert_eq!(a.as_ref(), actions.add.iter().find(|x| &x.relay == r));
                prop_assert_eq!(rm.as_ref(), actions.remove.iter().find(|x| &x.relay == r));
            }
        }
    }

    #[test]
    fn upgrade_is_a_new_item_and_the_old_level_a_removal() {
        let mut index = RepoSyncIndex::new();
        index.accept_announcement(&repo(1), [relay(1)].into());
        let targets = derive_relay_targets(&index);
        let mut confirmed = RelaySyncIndex::new();
        let s = confirmed.entry(&relay(1));
        s.status = ConnectionStatus::Connected;
        s.confirmed.repos.insert(repo(1), SyncLevel::StateOnly);
        let actions = compute_actions(&targets, &PendingSyncIndex::new(), &confirmed);
        assert_eq!(
            actions.add[0].items.repos.get(&repo(1)),
            Some(&SyncLevel::Full)
        );
        assert_eq!(
            actions.remove[0].items.repos.get(&repo(1)),
            Some(&SyncLevel::StateOnly)
        );
    }

    #[test]
    fn disconnected_relays_are_skipped() {
        let mut index = RepoSyncIndex::new();
        index.accept_announcement(&repo(1), [relay(1), relay(2)].into());
        let targets = derive_relay_targets(&index);
        let mut confirmed = RelaySyncIndex::new();
        confirmed.entry(&relay(1)).status = ConnectionStatus::Syncing;
        confirmed.entry(&relay(2)).status = ConnectionStatus::Disconnected;
        let actions = compute_actions(&targets, &PendingSyncIndex::new(), &confirmed);
        assert_eq!(actions.add.len(), 1);
        assert_eq!(actions.add[0].relay, relay(1));
    }
}
