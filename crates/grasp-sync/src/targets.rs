//! `derive_relay_targets`: inverts the repo index (repo → relays) into what each relay
//! should carry (relay → repos at their level, root events of Full repos), in full and
//! incrementally. The incremental form is what keeps reacting to one new repo cheap at
//! 100k repos: it touches only the relays that repo lists.

use std::collections::{BTreeMap, HashMap};

use nostr::EventId;

use crate::model::{
    RelayUrl, RepoChange, RepoRef, RepoSyncIndex, RepoSyncNeeds, SyncItems, SyncLevel,
};

/// What one relay should carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayTarget {
    /// Repos listing this relay, at their level.
    pub repos: BTreeMap<RepoRef, SyncLevel>,
    /// Root events of the Full repos listing this relay, with how many of those repos
    /// reference each (a root event may tag two repos; removing one must keep it).
    pub root_events: BTreeMap<EventId, u32>,
}

impl RelayTarget {
    /// True when the relay should carry nothing.
    pub fn is_empty(&self) -> bool {
        self.repos.is_empty() && self.root_events.is_empty()
    }

    /// As plain items (drops the reference counts).
    pub fn to_items(&self) -> SyncItems {
        SyncItems {
            repos: self.repos.clone(),
            root_events: self.root_events.keys().copied().collect(),
        }
    }

    fn add_repo(&mut self, repo: &RepoRef, level: SyncLevel, needs: &RepoSyncNeeds) {
        self.repos.insert(repo.clone(), level);
        if needs.sync_level == SyncLevel::Full {
            for id in &needs.root_events {
                *self.root_events.entry(*id).or_insert(0) += 1;
            }
        }
    }

    fn remove_repo(&mut self, repo: &RepoRef, needs: &RepoSyncNeeds) {
        self.repos.remove(repo);
        if needs.sync_level == SyncLevel::Full {
            for id in &needs.root_events {
                if let Some(count) = self.root_events.get_mut(id) {
                    *count -= 1;
                    if *count == 0 {
                        self.root_events.remove(id);
                    }
                }
            }
        }
    }
}

/// Relay → what it should carry. Relays with nothing are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayTargets {
    relays: BTreeMap<RelayUrl, RelayTarget>,
}

impl RelayTargets {
    /// The target of one relay.
    pub fn get(&self, relay: &RelayUrl) -> Option<&RelayTarget> {
        self.relays.get(relay)
    }

    /// All relays with something to carry, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&RelayUrl, &RelayTarget)> {
        self.relays.iter()
    }

    /// Relays with something to carry.
    pub fn relays(&self) -> impl Iterator<Item = &RelayUrl> {
        self.relays.keys()
    }

    /// Number of relays with something to carry.
    pub fn len(&self) -> usize {
        self.relays.len()
    }

    /// True when no relay has anything to carry.
    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }

    /// Applies one repo's change: removes its old contribution, adds its new one. Costs
    /// O(relays of that repo × root events of that repo × log n), not a rebuild.
    pub fn apply(&mut self, change: &RepoChange) {
        if change.is_noop() {
            return;
        }
        if let Some(before) = &change.before {
            for (relay, _) in carriers(before) {
                if let Some(target) = self.relays.get_mut(relay) {
                    target.remove_repo(&change.repo, before);
                    if target.is_empty() {
                        self.relays.remove(relay);
                    }
                }
            }
        }
        if let Some(after) = &change.after {
            for (relay, level) in carriers(after) {
                self.relays
                    .entry(relay.clone())
                    .or_default()
                    .add_repo(&change.repo, level, after);
            }
        }
    }
}

/// The relays that carry a repo, each at its level: the listed relays at the repo's own
/// level, its participants' outbox relays (GRASP-03) not listed at `Conversation`.
fn carriers(needs: &RepoSyncNeeds) -> impl Iterator<Item = (&RelayUrl, SyncLevel)> {
    let outbox = needs
        .outbox_relays
        .iter()
        .filter(|r| !needs.relays.contains(*r))
        .map(|r| (r, SyncLevel::Conversation));
    needs
        .relays
        .iter()
        .map(|r| (r, needs.sync_level))
        .chain(outbox)
}

/// Inverts the repo index into per-relay targets. Root events are only targeted for
/// Full repos: a StateOnly repo waits for git data and its threads would be refused.
///
/// Built from sorted runs rather than one insert at a time, which is what makes the
/// 100k-repo rebuild fast.
pub fn derive_relay_targets(index: &RepoSyncIndex) -> RelayTargets {
    // One hash lookup per (repo, relay) to a dense slot; the slots are sorted by relay
    // once at the end (a tree lookup per pair compared URLs ~11 times each).
    struct Slot<'a> {
        relay: &'a RelayUrl,
        repos: Vec<(RepoRef, SyncLevel)>,
        roots: Vec<EventId>,
    }
    let mut slot_of: HashMap<&RelayUrl, usize> = HashMap::new();
    let mut slots: Vec<Slot<'_>> = Vec::new();
    for (repo, needs) in index.iter() {
        let full = needs.sync_level == SyncLevel::Full;
        for (relay, level) in carriers(needs) {
            let i = *slot_of.entry(relay).or_insert_with(|| {
                slots.push(Slot {
                    relay,
                    repos: Vec::new(),
                    roots: Vec::new(),
                });
                slots.len() - 1
            });
            let slot = &mut slots[i];
            // The index iterates repos in order, so each relay's run stays sorted.
            slot.repos.push((repo.clone(), level));
            if full {
                slot.roots.extend(needs.root_events.iter().copied());
            }
        }
    }
    slots.sort_unstable_by(|a, b| a.relay.cmp(b.relay));
    let relays = slots
        .into_iter()
        .map(|slot| {
            let mut ids = slot.roots;
            ids.sort_unstable();
            let mut counted: Vec<(EventId, u32)> = Vec::with_capacity(ids.len());
            for id in ids {
                match counted.last_mut() {
                    Some((last, n)) if *last == id => *n += 1,
                    _ => counted.push((id, 1)),
                }
            }
            let target = RelayTarget {
                repos: slot.repos.into_iter().collect(),
                root_events: counted.into_iter().collect(),
            };
            (slot.relay.clone(), target)
        })
        .collect();
    RelayTargets { relays }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::model::RepoSyncIndex;

    pub(crate) fn repo(i: u8) -> RepoRef {
        RepoRef::parse(&format!("30617:{}:repo{i}", "ab".repeat(32))).unwrap()
    }
    pub(crate) fn relay(i: u8) -> RelayUrl {
        RelayUrl::parse(&format!("wss://r{i}.example")).unwrap()
    }
    pub(crate) fn id(i: u8) -> EventId {
        EventId::from_byte_array([i; 32])
    }

    #[test]
    fn root_events_only_for_full_repos() {
        let mut index = RepoSyncIndex::new();
        index.note_purgatory_announcement(&repo(1), [relay(1)].into());
        index.add_root_event(&repo(1), id(1));
        index.accept_announcement(&repo(2), [relay(1)].into());
        index.add_root_event(&repo(2), id(2));
        let targets = derive_relay_targets(&index);
        let t = targets.get(&relay(1)).unwrap();
        assert_eq!(t.repos.len(), 2);
        assert_eq!(
            t.root_events.keys().copied().collect::<Vec<_>>(),
            vec![id(2)]
        );
    }

    #[test]
    fn shared_root_event_survives_removal_of_one_repo() {
        let mut index = RepoSyncIndex::new();
        let mut targets = RelayTargets::default();
        for r in [1, 2] {
            targets.apply(&index.accept_announcement(&repo(r), [relay(1)].into()));
            targets.apply(&index.add_root_event(&repo(r), id(9)));
        }
        targets.apply(&index.remove(&repo(1)));
        assert!(targets
            .get(&relay(1))
            .unwrap()
            .root_events
            .contains_key(&id(9)));
        targets.apply(&index.remove(&repo(2)));
        assert!(targets.is_empty());
    }

    /// One step of a random history of the repo index.
    #[derive(Debug, Clone)]
    pub(crate) enum Op {
        Accept(u8, BTreeSet<u8>),
        Purgatory(u8, BTreeSet<u8>),
        Root(u8, u8),
        Remove(u8),
    }

    pub(crate) fn op() -> impl Strategy<Value = Op> {
        let relays = proptest::collection::btree_set(0u8..6, 0..4);
        prop_oneof![
            (0u8..8, relays.clone()).prop_map(|(r, s)| Op::Accept(r, s)),
            (0u8..8, relays).prop_map(|(r, s)| Op::Purgatory(r, s)),
            (0u8..8, 0u8..12).prop_map(|(r, e)| Op::Root(r, e)),
            (0u8..8).prop_map(Op::Remove),
        ]
    }

    pub(crate) fn apply_op(index: &mut RepoSyncIndex, op: &Op) -> RepoChange {
        let set = |s: &BTreeSet<u8>| s.iter().map(|i| relay(*i)).collect();
        match op {
            Op::Accept(r, s) => index.accept_announcement(&repo(*r), set(s)),
            Op::Purgatory(r, s) => index.note_purgatory_announcement(&repo(*r), set(s)),
            Op::Root(r, e) => index.add_root_event(&repo(*r), id(*e)),
            Op::Remove(r) => index.remove(&repo(*r)),
        }
    }

    proptest! {
        #[test]
        fn incremental_equals_full(ops in proptest::collection::vec(op(), 0..60)) {
            let mut index = RepoSyncIndex::new();
            let mut targets = RelayTargets::default();
            for op in &ops {
                let change = apply_op(&mut index, op);
                targets.apply(&change);
                prop_assert_eq!(&targets, &derive_relay_targets(&index));
            }
        }

        #[test]
        fn never_downgrades_full_and_state_only_has_no_roots(ops in proptest::collection::vec(op(), 0..60)) {
            let mut index = RepoSyncIndex::new();
            let mut accepted = BTreeSet::new();
            for op in &ops {
                apply_op(&mut index, op);
                match op {
                    Op::Accept(r, _) => { accepted.insert(*r); }
                    Op::Remove(r) => { accepted.remove(r); }
                    _ => {}
                }
                for r in &accepted {
                    prop_assert_eq!(index.get(&repo(*r)).map(|n| n.sync_level), Some(SyncLevel::Full));
                }
            }
            for (_, target) in derive_relay_targets(&index).iter() {
                let full_roots: BTreeSet<EventId> = target.repos.iter()
                    .filter(|(_, l)| **l == SyncLevel::Full)
                    .flat_map(|(r, _)| index.get(r).unwrap().root_events.iter().copied())
                    .collect();
                prop_assert_eq!(target.root_events.keys().copied().collect::<BTreeSet<_>>(), full_roots);
            }
        }
    }
}
