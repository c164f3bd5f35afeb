//! `derive_relay_targets`: inverts the repo index (repo → relays) into what each relay
//! should carry (relay → repos at their level), in full and incrementally. The
//! incremental form is what keeps reacting to one new repo cheap at 100k repos: it
//! touches only the relays that repo lists.
//!
//! A relay's root events are not copied here (hubs keep them counted, see
//! `COUNTED_FROM`): each carried repo points at its needs as the index holds them
//! (shared, immutable), and [`RelayTarget::root_events`] gathers them when the relay is
//! diffed. A copy per relay was 40 % of the core's memory at 100k repos and most of the
//! time of a rebuild.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use nostr::EventId;

use crate::model::{RelayUrl, RepoChange, RepoRef, RepoSyncIndex, RepoSyncNeeds, SyncLevel};

/// From this many repos on, a relay also keeps its root events counted (event id → how
/// many of its Full repos name it), kept up to date by each change. A hub listed by most
/// repos is diffed after nearly every change, and gathering and sorting its ~1 M ids each
/// time took 3× the walk of a kept tree (`hub_world` example). Smaller relays gather on
/// demand and keep nothing: most relays are small, and a copy for every relay was 40 %
/// of the core's memory. (Small in unit tests, so their random histories cross it.)
#[cfg(not(test))]
const COUNTED_FROM: usize = 1_000;
#[cfg(test)]
const COUNTED_FROM: usize = 3;

/// What one relay should carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayTarget {
    repos: BTreeMap<RepoRef, Carried>,
    /// Root events with how many Full repos here name each; only from
    /// [`COUNTED_FROM`] repos on.
    counted: Option<BTreeMap<EventId, u32>>,
}

/// One repo on one relay: the relay's level for it, and the repo's needs (for its root
/// events).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Carried {
    level: SyncLevel,
    needs: Arc<RepoSyncNeeds>,
}

impl RelayTarget {
    /// True when the relay should carry nothing.
    pub fn is_empty(&self) -> bool {
        self.repos.is_empty()
    }

    /// Repos carried by this relay, in order, at the relay's level for each.
    pub fn repos(&self) -> impl Iterator<Item = (&RepoRef, SyncLevel)> {
        self.repos.iter().map(|(repo, c)| (repo, c.level))
    }

    /// Whether some announcement lists this relay: it carries a repo at more than the
    /// conversation a participant's outbox relay carries (GRASP-03).
    pub fn is_listed(&self) -> bool {
        self.repos
            .values()
            .any(|c| c.level != SyncLevel::Conversation)
    }

    /// The relay's level for `repo`, if it carries it.
    pub fn level(&self, repo: &RepoRef) -> Option<SyncLevel> {
        self.repos.get(repo).map(|c| c.level)
    }

    /// The root events this relay should carry, sorted, each once: those of its repos
    /// that are Full (a StateOnly repo waits for git data and its threads would be
    /// refused).
    pub fn root_events(&self) -> Vec<EventId> {
        let mut buf = Vec::new();
        self.root_refs(&mut buf).into_iter().copied().collect()
    }

    /// [`RelayTarget::root_events`], borrowed: from the counts where kept, else
    /// gathered into `buf`.
    pub(crate) fn root_refs<'a>(&'a self, buf: &'a mut Vec<EventId>) -> Vec<&'a EventId> {
        match &self.counted {
            Some(counted) => counted.keys().collect(),
            None => {
                *buf = self.gather_roots();
                buf.dedup();
                buf.iter().collect()
            }
        }
    }

    /// Every Full repo's root events, sorted, with repeats. Copied out (32 bytes each):
    /// the sort runs on one contiguous buffer instead of chasing pointers.
    fn gather_roots(&self) -> Vec<EventId> {
        let full: Vec<&RepoSyncNeeds> = self
            .repos
            .values()
            .map(|c| &*c.needs)
            .filter(|needs| needs.sync_level == SyncLevel::Full)
            .collect();
        let mut ids: Vec<EventId> =
            Vec::with_capacity(full.iter().map(|n| n.root_events.len()).sum());
        for needs in full {
            ids.extend(needs.root_events.iter().copied());
        }
        sort_ids(&mut ids);
        ids
    }

    /// Carries `repo` (replacing what it carried of it).
    fn insert(&mut self, repo: &RepoRef, carried: Carried) {
        if let Some(counted) = &mut self.counted {
            count(counted, &carried.needs, true);
        }
        let old = self.repos.insert(repo.clone(), carried);
        if let (Some(counted), Some(old)) = (&mut self.counted, old) {
            count(counted, &old.needs, false);
        }
        self.count_if_big();
    }

    /// Stops carrying `repo`.
    fn remove(&mut self, repo: &RepoRef) {
        let old = self.repos.remove(repo);
        if let (Some(counted), Some(old)) = (&mut self.counted, old) {
            count(counted, &old.needs, false);
        }
        self.count_if_big();
    }

    /// Keeps the counts exactly while the relay carries [`COUNTED_FROM`] repos or more.
    fn count_if_big(&mut self) {
        let big = self.repos.len() >= COUNTED_FROM;
        if big && self.counted.is_none() {
            let mut counted: Vec<(EventId, u32)> = Vec::new();
            for id in self.gather_roots() {
                match counted.last_mut() {
                    Some((last, n)) if *last == id => *n += 1,
                    _ => counted.push((id, 1)),
                }
            }
            self.counted = Some(counted.into_iter().collect());
        } else if !big {
            self.counted = None;
        }
    }
}

/// The ids' own order, compared 8 bytes at a time as big-endian words: word
/// comparisons instead of a call comparing 32 bytes, where diffs and sorts spend their
/// time (a diff with most items confirmed compares millions of equal ids).
pub(crate) fn cmp_ids(a: &EventId, b: &EventId) -> std::cmp::Ordering {
    let word = |id: &EventId, at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&id.as_bytes()[at..at + 8]);
        u64::from_be_bytes(w)
    };
    for at in [0, 8, 16, 24] {
        match word(a, at).cmp(&word(b, at)) {
            std::cmp::Ordering::Equal => {}
            other => return other,
        }
    }
    std::cmp::Ordering::Equal
}

/// Sorts event ids: by their first byte into 256 buckets, then each bucket on its own.
/// Ids are hashes, so the buckets come out even and small (a few ids each for a
/// relay's ~1,500), and the whole costs little more than two passes over the ids; a
/// comparison sort of the same ids was the largest part of diffing a relay.
fn sort_ids(ids: &mut Vec<EventId>) {
    if ids.len() < 256 {
        ids.sort_unstable_by(cmp_ids);
        return;
    }
    let first = |id: &EventId| usize::from(id.as_bytes()[0]);
    let mut start = [0usize; 257];
    for id in ids.iter() {
        start[first(id) + 1] += 1;
    }
    for b in 0..256 {
        start[b + 1] += start[b];
    }
    let mut next = start;
    let mut sorted = ids.clone();
    for id in ids.iter() {
        let at = &mut next[first(id)];
        sorted[*at] = *id;
        *at += 1;
    }
    for bucket in start.windows(2) {
        sorted[bucket[0]..bucket[1]].sort_unstable_by(cmp_ids);
    }
    *ids = sorted;
}

/// Adds (or takes back) one carried repo's root events to a relay's counts.
fn count(counted: &mut BTreeMap<EventId, u32>, needs: &RepoSyncNeeds, add: bool) {
    if needs.sync_level != SyncLevel::Full {
        return;
    }
    for id in &needs.root_events {
        if add {
            *counted.entry(*id).or_insert(0) += 1;
        } else if let Some(n) = counted.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                counted.remove(id);
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
    /// O(relays of that repo × log n), not a rebuild.
    pub fn apply(&mut self, change: &RepoChange) {
        if change.is_noop() {
            return;
        }
        // A relay that carries the repo before and after only has its entry replaced
        // (`insert`): taking it out first would drop and rebuild a hub's counts when it
        // sits at the threshold, and count its roots twice over.
        let still: Vec<&RelayUrl> = change
            .after
            .iter()
            .flat_map(|after| carriers(after).map(|(relay, _)| relay))
            .collect();
        if let Some(before) = &change.before {
            for (relay, _) in carriers(before).filter(|(r, _)| !still.contains(r)) {
                if let Some(target) = self.relays.get_mut(relay) {
                    target.remove(&change.repo);
                    if target.is_empty() {
                        self.relays.remove(relay);
                    }
                }
            }
        }
        if let Some(after) = &change.after {
            for (relay, level) in carriers(after) {
                let carried = Carried {
                    level,
                    needs: Arc::clone(after),
                };
                self.relays
                    .entry(relay.clone())
                    .or_default()
                    .insert(&change.repo, carried);
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

/// Inverts the repo index into per-relay targets.
///
/// Built from sorted runs rather than one insert at a time, which is what makes the
/// 100k-repo rebuild fast.
pub fn derive_relay_targets(index: &RepoSyncIndex) -> RelayTargets {
    // One hash lookup per (repo, relay) to a dense slot; the slots are sorted by relay
    // once at the end (a tree lookup per pair compared URLs ~11 times each).
    let mut slot_of: HashMap<&RelayUrl, usize> = HashMap::new();
    let mut slots: Vec<(&RelayUrl, Vec<(RepoRef, Carried)>)> = Vec::new();
    for (repo, needs) in index.iter_shared() {
        for (relay, level) in carriers(needs) {
            let i = *slot_of.entry(relay).or_insert_with(|| {
                slots.push((relay, Vec::new()));
                slots.len() - 1
            });
            // The index iterates repos in order, so each relay's run stays sorted.
            let carried = Carried {
                level,
                needs: Arc::clone(needs),
            };
            slots[i].1.push((repo.clone(), carried));
        }
    }
    slots.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let relays = slots
        .into_iter()
        .map(|(relay, repos)| {
            let mut target = RelayTarget {
                repos: repos.into_iter().collect(),
                counted: None,
            };
            target.count_if_big();
            (relay.clone(), target)
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
        assert_eq!(t.root_events(), vec![id(2)]);
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
        assert_eq!(targets.get(&relay(1)).unwrap().root_events(), vec![id(9)]);
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
        /// The bucket sort gives the ids' own order, repeats kept, on either side of
        /// the size where it starts bucketing; ids share leading bytes often (a few
        /// first bytes, long equal heads) so ties past the word are exercised.
        #[test]
        fn sort_ids_is_the_ids_order(
            raw in proptest::collection::vec((0u8..4, 0u8..3, any::<[u8; 24]>()), 0..700),
        ) {
            let mut ids: Vec<EventId> = raw
                .iter()
                .map(|(a, b, rest)| {
                    let mut bytes = [0u8; 32];
                    bytes[0] = a.wrapping_mul(61);
                    bytes[1..8].fill(*b);
                    bytes[8..].copy_from_slice(rest);
                    EventId::from_byte_array(bytes)
                })
                .collect();
            let mut want = ids.clone();
            want.sort_unstable();
            sort_ids(&mut ids);
            prop_assert_eq!(ids, want);
        }

        /// `cmp_ids` is the ids' own order, whatever length their common head has.
        #[test]
        fn cmp_ids_is_the_ids_order(
            a in any::<[u8; 32]>(),
            b in any::<[u8; 32]>(),
            shared in 0usize..=32,
        ) {
            let mut b = b;
            b[..shared].copy_from_slice(&a[..shared]);
            let (x, y) = (EventId::from_byte_array(a), EventId::from_byte_array(b));
            prop_assert_eq!(cmp_ids(&x, &y), x.cmp(&y));
            prop_assert_eq!(cmp_ids(&y, &x), y.cmp(&x));
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
                let full_roots: BTreeSet<EventId> = target.repos()
                    .filter(|(_, l)| *l == SyncLevel::Full)
                    .flat_map(|(r, _)| index.get(r).unwrap().root_events.iter().copied())
                    .collect();
                prop_assert_eq!(target.root_events().into_iter().collect::<BTreeSet<_>>(), full_roots);
            }
        }
    }
}
