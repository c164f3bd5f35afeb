//! A deterministic synthetic world for the core benchmarks, shared by the criterion
//! benches (`benches/core.rs`) and the table printer (`src/bin/core_table.rs`).
//!
//! The shape is the one the design's bar was measured on (design section 14): N repos,
//! each listing 1–5 of 2,000 relays, 10 root events per repo, all Full (optionally 10%
//! StateOnly). Everything comes from a seeded SplitMix64: same seed, same world, no OS
//! randomness.

pub mod front;

use std::collections::BTreeSet;

use grasp_sync::diff::{compute_actions, compute_actions_for_relay, Actions};
use grasp_sync::model::{
    ConnectionStatus, PendingSyncIndex, RelaySyncIndex, RelayUrl, RepoChange, RepoRef,
    RepoSyncIndex, SyncItems, SyncLevel,
};
use grasp_sync::targets::{derive_relay_targets, RelayTargets};
use nostr::EventId;

/// Relays in the world (the anchor's figure).
pub const RELAYS: usize = 2_000;
/// Root events per repo.
pub const ROOTS_PER_REPO: usize = 10;
/// Seed used by every benchmark.
pub const SEED: u64 = 0x0067_7261_7370_3032;

/// SplitMix64: tiny, fast, good enough for synthetic data, fully deterministic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// 32 random bytes.
    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        out
    }
}

/// How the world is built.
#[derive(Debug, Clone, Copy)]
pub struct WorldSpec {
    /// Number of repos.
    pub repos: usize,
    /// Percentage of repos held StateOnly (purgatory); 0 = all Full.
    pub state_only_percent: usize,
    /// Percentage of repos that also list relay 0, a hub (GRASP networks are skewed:
    /// a few servers are listed by most repos); 0 = none.
    pub hub_percent: usize,
    /// Seed.
    pub seed: u64,
}

impl WorldSpec {
    /// `repos` repos, all Full, the default seed.
    pub fn full(repos: usize) -> Self {
        Self {
            repos,
            state_only_percent: 0,
            hub_percent: 0,
            seed: SEED,
        }
    }

    /// `repos` repos, 10% StateOnly.
    pub fn mixed(repos: usize) -> Self {
        Self {
            state_only_percent: 10,
            ..Self::full(repos)
        }
    }
}

/// One generated repo: its ref, relays, root events and level.
#[derive(Debug, Clone)]
pub struct RepoSpec {
    /// The repo.
    pub repo: RepoRef,
    /// 1–5 relays out of [`RELAYS`].
    pub relays: BTreeSet<RelayUrl>,
    /// [`ROOTS_PER_REPO`] root event ids.
    pub roots: Vec<EventId>,
    /// Full, or StateOnly for the purgatory share.
    pub level: SyncLevel,
}

/// The relay universe: `wss://relay<i>.example`, i in 0..RELAYS.
pub fn relay_universe() -> Vec<RelayUrl> {
    (0..RELAYS)
        .map(|i| RelayUrl::parse(&format!("wss://relay{i}.example")).expect("valid url"))
        .collect()
}

/// A generator of repos over a fixed relay universe.
#[derive(Debug, Clone)]
pub struct Generator {
    rng: Rng,
    relays: Vec<RelayUrl>,
    state_only_percent: usize,
    hub_percent: usize,
    next: usize,
}

impl Generator {
    /// A generator for `spec` (the repo count is ignored: call [`Generator::repo`]).
    pub fn new(spec: &WorldSpec) -> Self {
        Self {
            rng: Rng::new(spec.seed),
            relays: relay_universe(),
            state_only_percent: spec.state_only_percent,
            hub_percent: spec.hub_percent,
            next: 0,
        }
    }

    /// The relay universe.
    pub fn relays(&self) -> &[RelayUrl] {
        &self.relays
    }

    /// The next repo.
    pub fn repo(&mut self) -> RepoSpec {
        let i = self.next;
        self.next += 1;
        let pubkey: String = self
            .rng
            .bytes32()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let repo = RepoRef::parse(&format!("30617:{pubkey}:repo-{i}")).expect("valid ref");
        let n = 1 + self.rng.below(5);
        let mut relays = BTreeSet::new();
        while relays.len() < n {
            relays.insert(self.relays[self.rng.below(self.relays.len())].clone());
        }
        // Drawn only for a hub world, so the other worlds stay as they were.
        if self.hub_percent > 0 && self.rng.below(100) < self.hub_percent {
            relays.insert(self.relays[0].clone());
        }
        let roots = (0..ROOTS_PER_REPO)
            .map(|_| EventId::from_byte_array(self.rng.bytes32()))
            .collect();
        let level = if self.rng.below(100) < self.state_only_percent {
            SyncLevel::StateOnly
        } else {
            SyncLevel::Full
        };
        RepoSpec {
            repo,
            relays,
            roots,
            level,
        }
    }
}

/// Records `spec` in `index` through the public API (announcement, then root events),
/// returning every change in order.
pub fn insert_repo(index: &mut RepoSyncIndex, spec: &RepoSpec) -> Vec<RepoChange> {
    let mut changes = Vec::with_capacity(1 + spec.roots.len());
    changes.push(match spec.level {
        SyncLevel::StateOnly => index.note_purgatory_announcement(&spec.repo, spec.relays.clone()),
        SyncLevel::Full | SyncLevel::Conversation => {
            index.accept_announcement(&spec.repo, spec.relays.clone())
        }
    });
    for id in &spec.roots {
        changes.push(index.add_root_event(&spec.repo, *id));
    }
    changes
}

/// The generated world: the repo index and a generator positioned after its last repo
/// (so further repos are new).
#[derive(Debug)]
pub struct World {
    /// What we want.
    pub index: RepoSyncIndex,
    /// Produces repos not yet in `index`.
    pub generator: Generator,
}

impl World {
    /// Builds the repo index of `spec`.
    pub fn build(spec: &WorldSpec) -> Self {
        let mut generator = Generator::new(spec);
        let mut index = RepoSyncIndex::new();
        for _ in 0..spec.repos {
            let repo = generator.repo();
            insert_repo(&mut index, &repo);
        }
        Self { index, generator }
    }
}

/// Every relay of the universe `Connected` with nothing confirmed: compute_actions must
/// emit every target item.
pub fn all_connected(relays: &[RelayUrl]) -> RelaySyncIndex {
    let mut index = RelaySyncIndex::new();
    for relay in relays {
        index.entry(relay).status = ConnectionStatus::Connected;
    }
    index
}

/// Every relay `Connected` with about `percent`% of its target items already confirmed
/// (a deterministic choice: item k is confirmed when `k % 100 < percent`).
pub fn connected_with_confirmed(
    relays: &[RelayUrl],
    targets: &RelayTargets,
    percent: usize,
) -> RelaySyncIndex {
    let mut index = all_connected(relays);
    for (relay, target) in targets.iter() {
        let state = index.entry(relay);
        let keep = |k: usize| k % 100 < percent;
        state.confirmed = SyncItems {
            repos: target
                .repos()
                .enumerate()
                .filter(|(k, _)| keep(*k))
                .map(|(_, (r, l))| (r.clone(), l))
                .collect(),
            root_events: target
                .root_events()
                .into_iter()
                .enumerate()
                .filter(|(k, _)| keep(*k))
                .map(|(_, id)| id)
                .collect(),
        };
    }
    index
}

/// The full path the bar measures: derive targets from the index, then diff them.
pub fn derive_and_diff(
    index: &RepoSyncIndex,
    pending: &PendingSyncIndex,
    confirmed: &RelaySyncIndex,
) -> (RelayTargets, Actions) {
    let targets = derive_relay_targets(index);
    let actions = compute_actions(&targets, pending, confirmed);
    (targets, actions)
}

/// Reacting to one new repo: record its announcement, apply the change to the targets,
/// and diff only the relays it lists. Returns the number of items to subscribe (so the
/// work cannot be optimised away).
pub fn react_to_new_repo(
    index: &mut RepoSyncIndex,
    targets: &mut RelayTargets,
    pending: &PendingSyncIndex,
    confirmed: &RelaySyncIndex,
    spec: &RepoSpec,
) -> usize {
    let mut emitted = 0;
    for change in insert_repo(index, spec) {
        targets.apply(&change);
    }
    for relay in &spec.relays {
        let (add, _remove) = compute_actions_for_relay(relay, targets, pending, confirmed);
        emitted += add.map_or(0, |a| a.items.len());
    }
    emitted
}

/// Undoes [`react_to_new_repo`] (outside the timed part).
pub fn forget_repo(index: &mut RepoSyncIndex, targets: &mut RelayTargets, spec: &RepoSpec) {
    targets.apply(&index.remove(&spec.repo));
}

/// Times reacting to `n` new repos, one at a time ([`react_to_new_repo`]); each is
/// forgotten again outside the timing, so every one meets the same world.
pub fn time_new_repos(
    index: &mut RepoSyncIndex,
    generator: &mut Generator,
    targets: &mut RelayTargets,
    pending: &PendingSyncIndex,
    confirmed: &RelaySyncIndex,
    n: usize,
) -> Vec<std::time::Duration> {
    (0..n)
        .map(|_| {
            let spec = generator.repo();
            let t = std::time::Instant::now();
            std::hint::black_box(react_to_new_repo(index, targets, pending, confirmed, &spec));
            let d = t.elapsed();
            forget_repo(index, targets, &spec);
            d
        })
        .collect()
}

/// The engine scenario: one connected relay with live subscriptions open, and events to
/// feed it on those subscriptions.
pub mod engine_world {
    use std::sync::Arc;

    use grasp_sync::engine::{
        Command, Input, PersistedRepo, SubscriptionMode, SyncConfig, SyncEngine, SyncStateSnapshot,
    };
    use grasp_sync::model::{RelayUrl, RepoRef, SyncLevel, WallTime};
    use grasp_sync::ports::{AllowAllRelays, SeededRandom};
    use nostr::filter::MatchEventOptions;
    use nostr::secp256k1::schnorr::Signature;
    use nostr::{Event, EventBuilder, EventId, Filter, Keys, Kind, SecretKey, SubscriptionId, Tag};

    /// The one remote relay.
    pub const RELAY: &str = "wss://remote.example";

    /// An event with a dummy signature (the engine never verifies; the driver does), as
    /// the simulation test builds them: only the id is computed.
    pub fn event(keys: &Keys, kind: u16, tags: Vec<Tag>, created_at: u64, content: &str) -> Event {
        let unsigned = EventBuilder::new(Kind::from(kind), content)
            .tags(tags)
            .custom_created_at(nostr::Timestamp::from_secs(created_at))
            .build(keys.public_key());
        let id = unsigned.id.unwrap_or_else(EventId::all_zeros);
        let sig = Signature::from_slice(&[7u8; 64]).expect("64 bytes");
        Event::new(
            id,
            unsigned.pubkey,
            unsigned.created_at,
            unsigned.kind,
            unsigned.tags,
            unsigned.content,
            sig,
        )
    }

    /// A ready engine: connected to [`RELAY`], which all `repos` repos list, with its
    /// live subscriptions open.
    pub struct EngineWorld {
        /// The engine.
        pub engine: SyncEngine,
        /// The relay.
        pub relay: RelayUrl,
        /// Live subscriptions and their filters.
        pub live: Vec<(SubscriptionId, Vec<Filter>)>,
        /// The repos it tracks.
        pub repos: Vec<RepoRef>,
        /// The time the engine was last fed.
        pub now: WallTime,
    }

    impl EngineWorld {
        /// The live subscription whose filters match `event`, as a relay would route it.
        pub fn route(&self, event: &Event) -> Option<&SubscriptionId> {
            self.live
                .iter()
                .find(|(_, filters)| {
                    filters
                        .iter()
                        .any(|f| f.match_event(event, MatchEventOptions::new()))
                })
                .map(|(id, _)| id)
        }

        /// Live filters open in all.
        pub fn live_filters(&self) -> usize {
            self.live.iter().map(|(_, f)| f.len()).sum()
        }

        /// Feeds `inputs` one by one, draining commands after each; returns how many
        /// events were handed to the host.
        pub fn feed(&mut self, inputs: Vec<Input>) -> usize {
            let mut handed = 0;
            for input in inputs {
                self.engine.handle_input(self.now, input);
                while let Some(cmd) = self.engine.poll_command() {
                    handed += usize::from(matches!(cmd, Command::Ingest { .. }));
                }
            }
            handed
        }

        /// One `Input::Event` per event, on the live subscription that matches it.
        pub fn inputs(&self, events: Vec<Event>) -> Vec<Input> {
            events
                .into_iter()
                .map(|e| Input::Event {
                    relay: self.relay.clone(),
                    subscription: self.route(&e).expect("a live filter matches").clone(),
                    event: Box::new(e),
                })
                .collect()
        }
    }

    /// Builds the engine with `repos` Full repos listing [`RELAY`] and connects it.
    pub fn build(repos: usize) -> EngineWorld {
        build_among(repos, 0)
    }

    /// [`build`], with `others` more relays connected beside [`RELAY`] (each listed by
    /// a repo of its own, its history settled): the engine's cost per event on one
    /// relay should not grow with how many others it keeps.
    pub fn build_among(repos: usize, others: usize) -> EngineWorld {
        let relay = RelayUrl::parse(RELAY).expect("valid url");
        let keys = Keys::new(SecretKey::from_slice(&[3u8; 32]).expect("valid key"));
        let refs: Vec<RepoRef> = (0..repos)
            .map(|i| RepoRef::new(&keys.public_key(), &format!("repo-{i}")).expect("ref"))
            .collect();
        let other_relays: Vec<RelayUrl> = (0..others)
            .map(|i| RelayUrl::parse(&format!("wss://r{i}.example")).expect("valid url"))
            .collect();
        let persisted = |repo: RepoRef, relay: RelayUrl| PersistedRepo {
            repo,
            relays: [relay].into(),
            root_events: Default::default(),
            sync_level: SyncLevel::Full,
            participants: Vec::new(),
        };
        let now = WallTime::from_secs(1_700_000_000);
        let snapshot = SyncStateSnapshot {
            version: SyncStateSnapshot::VERSION,
            taken_at: now,
            repos: refs
                .iter()
                .map(|r| persisted(r.clone(), relay.clone()))
                .chain(other_relays.iter().enumerate().map(|(i, other)| {
                    let repo =
                        RepoRef::new(&keys.public_key(), &format!("other-{i}")).expect("ref");
                    persisted(repo, other.clone())
                }))
                .collect(),
            relays: Vec::new(),
            relay_lists: Vec::new(),
        };
        let mut engine = SyncEngine::restore(
            SyncConfig::default(),
            snapshot,
            now,
            Arc::new(AllowAllRelays),
            Box::new(SeededRandom::new(1)),
        );
        engine.handle_timeout(now);
        for other in &other_relays {
            engine.handle_input(
                now,
                Input::RelayConnected {
                    relay: other.clone(),
                },
            );
        }
        settle(&mut engine, now);
        engine.handle_input(
            now,
            Input::RelayConnected {
                relay: relay.clone(),
            },
        );
        let mut live = Vec::new();
        while let Some(cmd) = engine.poll_command() {
            if let Command::Subscribe {
                id,
                filters,
                mode: SubscriptionMode::Live,
                ..
            } = cmd
            {
                live.push((id, filters));
            }
        }
        EngineWorld {
            engine,
            relay,
            live,
            repos: refs,
            now,
        }
    }

    /// Answers every historic request with "nothing" (EOSE, an empty reconciliation)
    /// until none is left: the relays asked end Connected with nothing to sync.
    fn settle(engine: &mut SyncEngine, now: WallTime) {
        loop {
            let mut answers = Vec::new();
            while let Some(cmd) = engine.poll_command() {
                match cmd {
                    Command::Subscribe {
                        relay,
                        id,
                        mode: SubscriptionMode::Historic,
                        ..
                    } => answers.push(Input::Eose {
                        relay,
                        subscription: id,
                    }),
                    Command::Negentropy { relay, session, .. } => {
                        answers.push(Input::NegentropyResult {
                            relay,
                            session,
                            need: Vec::new(),
                        })
                    }
                    _ => {}
                }
            }
            if answers.is_empty() {
                return;
            }
            for input in answers {
                engine.handle_input(now, input);
            }
        }
    }

    /// `n` distinct issues (kind 1621), each tagging one of `repos` with `a`, spread
    /// round-robin.
    pub fn issues(repos: &[RepoRef], n: usize) -> Vec<Event> {
        let keys = Keys::new(SecretKey::from_slice(&[5u8; 32]).expect("valid key"));
        (0..n)
            .map(|i| {
                let repo = &repos[i % repos.len()];
                let tags = vec![Tag::parse(["a", repo.as_str()]).expect("tag")];
                event(&keys, 1621, tags, 1_700_000_000 + i as u64, "issue")
            })
            .collect()
    }
}
