//! GRASP-03 "Sync+": a Full repo's conversation also comes from the relays its
//! participants write to, not only from the relays its announcement lists.
//!
//! What is kept, all bounded by [`SyncPlusConfig`]: who took part in which repo (authors
//! of the root events and of the events tagging the repo or its roots that the host
//! accepted), the newest relay lists of those participants (NIP-65 write relays, GRASP
//! list `g` relays), and which participants each listed relay is still to be asked
//! about. A repo's outbox relays — the ones most of its participants name, through the
//! URL policy — carry it at [`SyncLevel::Conversation`]: layers 2 and 3, no state, and
//! no layer 1 on a relay carrying nothing else, so a big public relay is never asked for
//! every announcement on the network.
//!
//! Relay lists are read by the engine itself, so a host need not store kind 10002: from
//! short one-shot REQs ("lookups", one open per relay, 100 authors each) on the repo's
//! listed relays, and from lists the host accepted. A list from a relay counts only with
//! a valid signature. A lookup refused or unanswered is asked again with the history
//! backoff, a few times per connection; each fresh start asks about every participant
//! again. Participants and their lists are persisted, so a restart has its outbox
//! relays at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use nostr::{Event, EventId, Filter, Kind, PublicKey, SubscriptionId, Timestamp};

use super::conn::retry_backoff;
use super::{Command, SubscriptionMode, SyncConfig, SyncEngine, SyncPlusConfig};
use crate::model::{PersistedRelayList, RelayUrl, RepoRef, RepoSyncNeeds, SyncLevel, WallTime};
use crate::nip34;

/// Authors per lookup REQ (the design's chunk size).
const AUTHORS_PER_LOOKUP: usize = 100;

/// Events a lookup may bring per author asked about: two kinds, and a relay that keeps
/// an older version or two. More is a strike, not a verification.
const LISTS_PER_AUTHOR: usize = 4;

/// Sync+ state; present only when [`SyncConfig::sync_plus`] is set.
#[derive(Debug)]
pub(super) struct SyncPlus {
    bounds: SyncPlusConfig,
    /// Root event → the Full repos it tags: how a comment on it finds its repo.
    roots: HashMap<EventId, Vec<RepoRef>>,
    /// Repo → its participants, the first `max_authors_per_repo` seen.
    participants: HashMap<RepoRef, BTreeSet<PublicKey>>,
    /// Participant → the repos they took part in.
    repos_of: HashMap<PublicKey, BTreeSet<RepoRef>>,
    /// Participant → their newest lists.
    lists: HashMap<PublicKey, AuthorLists>,
    /// Outbox relay → how many repos use it (at most `max_relays_total` keys).
    in_use: HashMap<RelayUrl, usize>,
    /// Listed relay → participants to ask it about.
    wanted: BTreeMap<RelayUrl, BTreeSet<PublicKey>>,
}

/// The newest relay list of each kind one participant published.
#[derive(Debug, Default)]
struct AuthorLists {
    nip65: Option<(Timestamp, Vec<RelayUrl>)>,
    grasp: Option<(Timestamp, Vec<RelayUrl>)>,
}

impl AuthorLists {
    fn relays(&self) -> impl Iterator<Item = &RelayUrl> {
        let nip65 = self.nip65.iter().flat_map(|(_, r)| r);
        let grasp = self.grasp.iter().flat_map(|(_, r)| r);
        nip65.chain(grasp)
    }
}

/// How a lookup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LookupEnd {
    /// EOSE: everything the relay has was sent.
    Answered,
    /// CLOSED by the relay.
    Refused,
    /// No EOSE before the deadline.
    Expired,
}

/// A lookup REQ open on one relay.
#[derive(Debug, Clone)]
pub(super) struct Lookup {
    pub id: SubscriptionId,
    pub filter: Filter,
    pub authors: Vec<PublicKey>,
    pub deadline: WallTime,
    /// Events it brought so far (at most [`LISTS_PER_AUTHOR`] per author are believed).
    pub received: usize,
}

impl SyncPlus {
    pub(super) fn new(config: &SyncConfig) -> Option<Self> {
        config.sync_plus.clone().map(|bounds| Self {
            bounds,
            roots: HashMap::new(),
            participants: HashMap::new(),
            repos_of: HashMap::new(),
            lists: HashMap::new(),
            in_use: HashMap::new(),
            wanted: BTreeMap::new(),
        })
    }

    /// The participants of `repo`, for the snapshot.
    pub(super) fn participants(&self, repo: &RepoRef) -> impl Iterator<Item = &PublicKey> {
        self.participants.get(repo).into_iter().flatten()
    }

    /// Remembers that `author` took part in `repo` (within the per-repo bound) and queues
    /// them to be asked about on the repo's `listed` relays. `false` when already known or
    /// over the bound.
    fn note_participant(
        &mut self,
        repo: &RepoRef,
        author: PublicKey,
        listed: &BTreeSet<RelayUrl>,
    ) -> bool {
        let known = self.participants.entry(repo.clone()).or_default();
        if known.contains(&author) || known.len() >= self.bounds.max_authors_per_repo {
            return false;
        }
        known.insert(author);
        self.repos_of
            .entry(author)
            .or_default()
            .insert(repo.clone());
        for relay in listed {
            self.wanted.entry(relay.clone()).or_default().insert(author);
        }
        true
    }

    /// Whether `relay` has participants waiting to be asked about.
    pub(super) fn has_wanted(&self, relay: &RelayUrl) -> bool {
        self.wanted.contains_key(relay)
    }
}

impl SyncEngine {
    /// An event the host accepted, seen by Sync+: a relay list, a root event, or an
    /// event tagging a repo or a root (whose author takes part in that repo).
    pub(super) fn sync_plus_accepted(&mut self, event: &Event, touched: &mut BTreeSet<RelayUrl>) {
        if self.sync_plus.is_none() {
            return;
        }
        if nip34::relay_list_urls(event).is_some() {
            self.note_relay_list(event, touched);
            return;
        }
        let refs = nip34::references(event);
        let mut repos: BTreeSet<RepoRef> = refs.repos.into_iter().collect();
        if let Some(sp) = &self.sync_plus {
            for id in &refs.events {
                repos.extend(sp.roots.get(id).into_iter().flatten().cloned());
            }
        }
        repos.retain(|r| {
            self.repos
                .get(r)
                .is_some_and(|n| n.sync_level == SyncLevel::Full)
        });
        if nip34::is_root_kind(event.kind) {
            // Only the repos that took it as a root (within their bound).
            let of: Vec<RepoRef> = repos
                .iter()
                .filter(|r| {
                    self.repos
                        .get(r)
                        .is_some_and(|n| n.root_events.contains(&event.id))
                })
                .cloned()
                .collect();
            if let (Some(sp), false) = (&mut self.sync_plus, of.is_empty()) {
                sp.roots.insert(event.id, of);
            }
        }
        for repo in repos {
            self.add_participant(&repo, event.pubkey, touched);
        }
    }

    /// `author` took part in `repo`: remembered (within the bound), asked about on the
    /// repo's listed relays, and the repo's outbox relays recomputed if their lists are
    /// known already.
    pub(super) fn add_participant(
        &mut self,
        repo: &RepoRef,
        author: PublicKey,
        touched: &mut BTreeSet<RelayUrl>,
    ) {
        let Some(listed) = self.repos.get(repo).map(|n| n.relays.clone()) else {
            return;
        };
        let Some(sp) = &mut self.sync_plus else {
            return;
        };
        if !sp.note_participant(repo, author, &listed) {
            return;
        }
        let has_lists = sp.lists.contains_key(&author);
        for relay in &listed {
            self.wake(relay);
        }
        if has_lists {
            self.recompute_outbox(repo, touched);
        }
    }

    /// A relay list (kind 10002 or 10317) of a participant: kept if newer than the one
    /// held, and the outbox relays of the repos they took part in recomputed.
    fn note_relay_list(&mut self, event: &Event, touched: &mut BTreeSet<RelayUrl>) {
        let Some(urls) = nip34::relay_list_urls(event) else {
            return;
        };
        let Some(sp) = &mut self.sync_plus else {
            return;
        };
        let Some(repos) = sp.repos_of.get(&event.pubkey).cloned() else {
            return;
        };
        let relays: Vec<RelayUrl> = urls
            .into_iter()
            .filter_map(|u| RelayUrl::parse(u).ok())
            .take(sp.bounds.max_relays_per_author)
            .collect();
        let lists = sp.lists.entry(event.pubkey).or_default();
        let slot = if event.kind == Kind::RelayList {
            &mut lists.nip65
        } else {
            &mut lists.grasp
        };
        if slot.as_ref().is_some_and(|(at, _)| *at >= event.created_at) {
            return;
        }
        *slot = Some((event.created_at, relays));
        for repo in repos {
            self.recompute_outbox(&repo, touched);
        }
    }

    /// A repo's outbox relays from its participants' lists: the relays most of them
    /// name first (ties by URL), those the URL policy permits and the announcement does
    /// not list already, up to the per-repo bound; a relay no other repo uses only
    /// while the total bound allows.
    pub(super) fn recompute_outbox(&mut self, repo: &RepoRef, touched: &mut BTreeSet<RelayUrl>) {
        let Some(new) = self.admit_outbox(repo) else {
            return;
        };
        let change = self.repos.set_outbox_relays(repo, new);
        self.apply_change(change, touched);
    }

    /// The outbox relays `repo` should have now, with the use counts moved from its old
    /// set to the new one. `None` when it is not a Full repo, or nothing changes.
    fn admit_outbox(&mut self, repo: &RepoRef) -> Option<BTreeSet<RelayUrl>> {
        let needs = self
            .repos
            .get(repo)
            .filter(|n| n.sync_level == SyncLevel::Full)?;
        let listed = needs.relays.clone();
        let old = needs.outbox_relays.clone();
        let sp = self.sync_plus.as_ref()?;
        let mut named: BTreeMap<&RelayUrl, usize> = BTreeMap::new();
        for author in sp.participants.get(repo).into_iter().flatten() {
            let Some(lists) = sp.lists.get(author) else {
                continue;
            };
            let theirs: BTreeSet<&RelayUrl> = lists.relays().collect();
            for relay in theirs {
                *named.entry(relay).or_default() += 1;
            }
        }
        let mut ranked: Vec<(&RelayUrl, usize)> = named.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let candidates: Vec<RelayUrl> = ranked
            .into_iter()
            .map(|(r, _)| r.clone())
            .filter(|r| !listed.contains(r) && self.may_dial(r))
            .collect();
        let sp = self.sync_plus.as_mut()?;
        for relay in &old {
            release(&mut sp.in_use, relay);
        }
        let mut new = BTreeSet::new();
        for relay in candidates {
            if new.len() >= sp.bounds.max_relays_per_repo {
                break;
            }
            if sp.in_use.contains_key(&relay) || sp.in_use.len() < sp.bounds.max_relays_total {
                *sp.in_use.entry(relay.clone()).or_default() += 1;
                new.insert(relay);
            }
        }
        self.metrics.sync_plus_relays = sp.in_use.len() as u64;
        (new != old).then_some(new)
    }

    /// Restoring from a snapshot, before the repos: the participants' lists it kept.
    pub(super) fn sync_plus_restore_lists(&mut self, lists: Vec<PersistedRelayList>) {
        let Some(sp) = &mut self.sync_plus else {
            return;
        };
        let per_author = sp.bounds.max_relays_per_author;
        for list in lists {
            let held = sp.lists.entry(list.author).or_default();
            let slot = if list.kind == Kind::RelayList.as_u16() {
                &mut held.nip65
            } else {
                &mut held.grasp
            };
            let relays = list.relays.into_iter().take(per_author).collect();
            *slot = Some((list.created_at, relays));
        }
    }

    /// Restoring, per repo: its participants, asked about again on its listed relays
    /// (their lists may have changed), and the root events they are counted through.
    pub(super) fn sync_plus_restore(&mut self, repo: &RepoRef, participants: &[PublicKey]) {
        let Some(needs) = self
            .repos
            .get(repo)
            .filter(|n| n.sync_level == SyncLevel::Full)
        else {
            return;
        };
        let listed = needs.relays.clone();
        let roots: Vec<EventId> = needs.root_events.iter().copied().collect();
        let Some(sp) = &mut self.sync_plus else {
            return;
        };
        for id in roots {
            sp.roots.entry(id).or_default().push(repo.clone());
        }
        for author in participants {
            sp.note_participant(repo, *author, &listed);
        }
    }

    /// Restoring, after the repos and before the targets: every repo's outbox relays
    /// from the restored participants and lists, under today's bounds and policy.
    pub(super) fn sync_plus_restore_outbox(&mut self) {
        let Some(sp) = &self.sync_plus else {
            return;
        };
        let repos: Vec<RepoRef> = sp.participants.keys().cloned().collect();
        for repo in repos {
            if let Some(new) = self.admit_outbox(&repo) {
                self.repos.set_outbox_relays(&repo, new);
            }
        }
    }

    /// The lists to persist: those of the participants, so a restart has its outbox
    /// relays at once, not after every lookup came back.
    pub(super) fn sync_plus_lists(&self) -> Vec<PersistedRelayList> {
        let Some(sp) = &self.sync_plus else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (author, lists) in &sp.lists {
            for (kind, list) in [
                (Kind::RelayList, &lists.nip65),
                (nip34::KIND_GRASP_LIST, &lists.grasp),
            ] {
                if let Some((created_at, relays)) = list {
                    out.push(PersistedRelayList {
                        author: *author,
                        kind: kind.as_u16(),
                        created_at: *created_at,
                        relays: relays.clone(),
                    });
                }
            }
        }
        out
    }

    /// A repo left the index: its participants, outbox relays and roots are forgotten.
    pub(super) fn sync_plus_forget(&mut self, repo: &RepoRef, gone: &RepoSyncNeeds) {
        let Some(sp) = &mut self.sync_plus else {
            return;
        };
        let outbox = &gone.outbox_relays;
        for id in &gone.root_events {
            if let Some(repos) = sp.roots.get_mut(id) {
                repos.retain(|r| r != repo);
                if repos.is_empty() {
                    sp.roots.remove(id);
                }
            }
        }
        for relay in outbox {
            release(&mut sp.in_use, relay);
        }
        self.metrics.sync_plus_relays = sp.in_use.len() as u64;
        for author in sp.participants.remove(repo).into_iter().flatten() {
            if let Some(repos) = sp.repos_of.get_mut(&author) {
                repos.remove(repo);
                if repos.is_empty() {
                    sp.repos_of.remove(&author);
                    sp.lists.remove(&author);
                }
            }
        }
    }

    /// A fresh start on `relay`: every participant of the repos it lists is asked
    /// about again, so lists changed since are learnt once a day.
    pub(super) fn sync_plus_refresh(&mut self, relay: &RelayUrl) {
        let Some(sp) = &mut self.sync_plus else {
            return;
        };
        let Some(target) = self.targets.get(relay) else {
            return;
        };
        let authors: BTreeSet<PublicKey> = target
            .repos()
            .filter(|(_, level)| *level == SyncLevel::Full)
            .flat_map(|(repo, _)| sp.participants.get(repo).into_iter().flatten())
            .copied()
            .collect();
        if !authors.is_empty() {
            sp.wanted.entry(relay.clone()).or_default().extend(authors);
        }
    }

    /// Opens the next lookup on a connected relay with participants to ask about and
    /// none open (called by the pump).
    pub(super) fn open_lookup(&mut self, relay: &RelayUrl, now: WallTime) {
        let connected = self
            .relays
            .get(relay)
            .is_some_and(|s| s.status.is_connected());
        let Some(sp) = &mut self.sync_plus else {
            return;
        };
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        let held_back = conn.lookup_retry_at.is_some_and(|t| t > now);
        if !connected || conn.lookup.is_some() || held_back || !conn.health.can_subscribe(now) {
            return;
        }
        let listed = self.targets.get(relay).is_some_and(|t| t.is_listed());
        if !listed {
            // No announcement lists it any more: nobody is asked about there.
            sp.wanted.remove(relay);
            return;
        }
        let Some(wanted) = sp.wanted.get_mut(relay) else {
            return;
        };
        let authors: Vec<PublicKey> = wanted.iter().take(AUTHORS_PER_LOOKUP).copied().collect();
        for a in &authors {
            wanted.remove(a);
        }
        if wanted.is_empty() {
            sp.wanted.remove(relay);
        }
        let filter = Filter::new()
            .kinds([Kind::RelayList, nip34::KIND_GRASP_LIST])
            .authors(authors.iter().copied());
        let id = self.next_subscription_id();
        let Some(conn) = self.conns.get_mut(relay) else {
            return;
        };
        conn.lookup = Some(Lookup {
            id: id.clone(),
            filter: filter.clone(),
            authors,
            deadline: now + self.config.subscription_timeout,
            received: 0,
        });
        self.metrics.sync_plus_lookups += 1;
        self.metrics.reqs_sent += 1;
        self.commands.push_back(Command::Subscribe {
            relay: relay.clone(),
            id,
            filters: vec![filter],
            mode: SubscriptionMode::Historic,
        });
    }

    /// An event on the relay's lookup: a relay list it asked for, believed only with a
    /// valid signature; anything else is a strike.
    pub(super) fn on_lookup_event(&mut self, relay: &RelayUrl, event: &Event, now: WallTime) {
        let Some(lookup) = self.conns.get_mut(relay).and_then(|c| c.lookup.as_mut()) else {
            return;
        };
        lookup.received += 1;
        let within = lookup.received <= LISTS_PER_AUTHOR * lookup.authors.len();
        let asked = crate::matching::matches(&lookup.filter, event);
        if !within || !asked || event.verify().is_err() {
            self.metrics.dropped_unsolicited += 1;
            self.strike(relay, now);
            return;
        }
        let mut touched = BTreeSet::new();
        self.note_relay_list(event, &mut touched);
        self.rediff(touched, now);
    }

    /// A lookup ends: answered (EOSE), refused (CLOSED) or past its deadline. A failed
    /// one is asked again after a backoff, at most `max_history_retries` times per
    /// connection (then at the relay's next fresh start). The next lookup opens at the
    /// next pump. `false` when `sub` is not the relay's lookup.
    pub(super) fn end_lookup(
        &mut self,
        relay: &RelayUrl,
        sub: &SubscriptionId,
        end: LookupEnd,
        now: WallTime,
    ) -> bool {
        let max_retries = self.config.max_history_retries;
        let Some(conn) = self.conns.get_mut(relay) else {
            return false;
        };
        if conn.lookup.as_ref().is_none_or(|l| &l.id != sub) {
            return false;
        }
        let Some(lookup) = conn.lookup.take() else {
            return false;
        };
        if end != LookupEnd::Refused {
            self.commands.push_back(Command::Unsubscribe {
                relay: relay.clone(),
                id: sub.clone(),
            });
        }
        if end != LookupEnd::Answered {
            self.metrics.sync_plus_lookups_failed += 1;
            if conn.lookup_failures < max_retries {
                conn.lookup_retry_at = Some(now + retry_backoff(conn.lookup_failures));
                conn.lookup_failures += 1;
                if let Some(sp) = &mut self.sync_plus {
                    sp.wanted
                        .entry(relay.clone())
                        .or_default()
                        .extend(lookup.authors);
                }
            }
        }
        self.wake(relay);
        true
    }

    /// A lookup past its deadline is closed and asked again later.
    pub(super) fn expire_lookup(&mut self, relay: &RelayUrl, now: WallTime) {
        let Some(lookup) = self.conns.get(relay).and_then(|c| c.lookup.clone()) else {
            return;
        };
        if lookup.deadline <= now {
            self.end_lookup(relay, &lookup.id, LookupEnd::Expired, now);
        }
    }

    /// When `relay` has participants to ask about: now, or after a failed lookup's
    /// backoff. `None` when it has none.
    pub(super) fn lookup_due(&self, relay: &RelayUrl) -> Option<WallTime> {
        if !self.sync_plus.as_ref()?.has_wanted(relay) {
            return None;
        }
        let retry_at = self.conns.get(relay).and_then(|c| c.lookup_retry_at);
        Some(retry_at.unwrap_or(WallTime::ZERO))
    }

    /// The driver dropped messages from `relay`: the open lookup may have lost its
    /// answers, and so may one that ended in the window, so every participant of the
    /// repos it lists is asked about again.
    pub(super) fn sync_plus_messages_lost(&mut self, relay: &RelayUrl) {
        if self.sync_plus.is_none() {
            return;
        }
        if let Some(lookup) = self.conns.get_mut(relay).and_then(|c| c.lookup.take()) {
            self.commands.push_back(Command::Unsubscribe {
                relay: relay.clone(),
                id: lookup.id,
            });
        }
        self.sync_plus_refresh(relay);
    }

    /// The websocket went: a lookup cut short is asked again on the next connection.
    pub(super) fn requeue_lookup(&mut self, relay: &RelayUrl) {
        let Some(lookup) = self.conns.get_mut(relay).and_then(|c| c.lookup.take()) else {
            return;
        };
        if let Some(sp) = &mut self.sync_plus {
            sp.wanted
                .entry(relay.clone())
                .or_default()
                .extend(lookup.authors);
        }
    }
}

fn release(in_use: &mut HashMap<RelayUrl, usize>, relay: &RelayUrl) {
    if let Some(n) = in_use.get_mut(relay) {
        *n -= 1;
        if *n == 0 {
            in_use.remove(relay);
        }
    }
}

impl SyncPlus {
    /// A relay left the engine: nobody is asked about there.
    pub(super) fn forget_relay(&mut self, relay: &RelayUrl) {
        self.wanted.remove(relay);
    }
}
