//! Seeded, deterministic fault simulation of the sync engine against in-process relays.
//!
//! Each seed builds a small world (remote relays with their own stores, NIP-77 on or
//! off, `limit` caps, relays that ignore `until`, heavy timestamp ties, a hostile relay
//! that floods), drives the engine through a fault phase, then lets time run with no
//! faults and checks convergence. Faults: disconnects at random moments, connect
//! failures, rate-limit NOTICEs and CLOSEDs, duplicates, out-of-order delivery, lost
//! messages, live publishing, a host whose ingestion is slow, queued and sometimes
//! fails, graceful restarts (ingestion drained, then a snapshot) and **crashes at any
//! moment** (between hand-over and store, mid-batch, mid-pagination, mid-negentropy,
//! while a snapshot is written): the engine restarts from the last snapshot that was
//! saved, everything the host had queued but not stored is gone, and the host feeds
//! what it stores to the new engine, as the driver does.
//!
//! The checks, after three quiet hours (the daily sync is 23–25 h away, so whatever
//! arrives came from quick reconnects and retries):
//! - every event we should hold is stored or held, where "should" is computed by
//!   [`Sim::expected`] from the NIP-34/NIP-22 tagging rules and the host's final state,
//!   without the library's targets or filter builders,
//! - every event was handed to the host at most once per engine lifetime (a hand-over
//!   the host failed may be repeated),
//! - no historic subscription stays open, live subscriptions are exactly the engine's,
//! - no relay stays in `Syncing`, and nothing panicked.
//!
//! `SIM_SEEDS=10000 cargo test --release -p grasp-sync --test simulation` runs 10,000
//! seeds; `SIM_SEED=1234` replays one seed exactly. A failing seed prints itself.

mod unsigned;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use unsigned::event;

use grasp_sync::engine::SyncStateSnapshot;
use grasp_sync::engine::{
    Command, IngestOutcome, Input, NegentropyFailure, SubscriptionMode, SyncConfig, SyncEngine,
    SyncPlusConfig,
};
use grasp_sync::model::{ConnectionStatus, RelayUrl, RepoRef, WallTime};
use grasp_sync::ports::{AllowAllRelays, RandomSource, SeededRandom};
use nostr::filter::MatchEventOptions;
use nostr::{
    Event, EventBuilder, EventId, Filter, Keys, Kind, SecretKey, SubscriptionId, Tag, Timestamp,
};

const US: &str = "wss://us.example";

/// The seed's random source: all randomness of a run comes from here.
struct Rng(SeededRandom);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(SeededRandom::new(seed ^ 0x5EED))
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.0.next_u64() % n
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// How a simulated relay behaves.
#[derive(Debug, Clone)]
struct Behaviour {
    nip77: bool,
    /// Without NIP-77: silent (the engine must time out) rather than a NOTICE.
    silent_neg: bool,
    cap: usize,
    ignores_until: bool,
    hostile: bool,
    /// Says its `limit` cap in NIP-11 (the engine then groups a REQ's filters).
    advertises_cap: bool,
    /// Applies its cap to the whole REQ (the newest `cap` events over all filters, once
    /// each), not per filter as NIP-01 says.
    caps_whole_req: bool,
}

struct SimRelay {
    behaviour: Behaviour,
    events: BTreeMap<EventId, Event>,
    connected: bool,
    live: BTreeMap<SubscriptionId, Vec<Filter>>,
    historic: BTreeSet<SubscriptionId>,
}

/// The host relay: a tiny GRASP policy over an in-memory store.
#[derive(Default)]
struct Host {
    store: BTreeMap<EventId, Event>,
    rejected: BTreeSet<EventId>,
    accepted_repos: BTreeSet<String>,
    purgatory: BTreeMap<String, Event>,
    roots: BTreeSet<String>,
}

fn tag_values<'a>(event: &'a Event, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    event.tags.iter().filter_map(move |t| match t.as_slice() {
        [n, v, ..] if n == name => Some(v.as_str()),
        _ => None,
    })
}

impl Host {
    /// What a GRASP relay at `US` would do with `event`, given what it holds now.
    fn verdict(&self, event: &Event) -> IngestOutcome {
        if self.store.contains_key(&event.id) || self.purgatory.values().any(|e| e.id == event.id) {
            return IngestOutcome::Duplicate;
        }
        let k = event.kind.as_u16();
        let refs_repo = |e: &Event| {
            ["a", "A", "q"]
                .iter()
                .any(|t| tag_values(e, t).any(|v| self.accepted_repos.contains(v)))
        };
        let refs_root = |e: &Event| {
            ["e", "E", "q"]
                .iter()
                .any(|t| tag_values(e, t).any(|v| self.roots.contains(v)))
        };
        let ok = match k {
            30617 => {
                let lists_us = tag_values(event, "relays").any(|v| v.trim_end_matches('/') == US)
                    || event.tags.iter().any(|t| {
                        t.as_slice().first().map(String::as_str) == Some("relays")
                            && t.as_slice().iter().any(|v| v == US)
                    });
                if !lists_us {
                    return IngestOutcome::Rejected;
                }
                let d = event.tags.identifier().unwrap_or_default();
                let coord = format!("30617:{}:{d}", event.pubkey.to_hex());
                if d.starts_with("purg") && !self.accepted_repos.contains(&coord) {
                    return IngestOutcome::Purgatory;
                }
                true
            }
            30618 => {
                let d = event.tags.identifier().unwrap_or_default();
                let coord = format!("30617:{}:{d}", event.pubkey.to_hex());
                self.accepted_repos.contains(&coord) || self.purgatory.contains_key(&coord)
            }
            10317 => true,
            _ => refs_repo(event) || refs_root(event),
        };
        if ok {
            IngestOutcome::Accepted
        } else {
            IngestOutcome::Rejected
        }
    }

    fn apply(&mut self, event: &Event, outcome: IngestOutcome) {
        match outcome {
            IngestOutcome::Accepted => {
                if event.kind.as_u16() == 30617 {
                    let d = event.tags.identifier().unwrap_or_default();
                    self.accepted_repos
                        .insert(format!("30617:{}:{d}", event.pubkey.to_hex()));
                }
                if matches!(event.kind.as_u16(), 1617 | 1618 | 1621) {
                    self.roots.insert(event.id.to_hex());
                }
                self.store.insert(event.id, event.clone());
            }
            IngestOutcome::Purgatory => {
                let d = event.tags.identifier().unwrap_or_default();
                self.purgatory.insert(
                    format!("30617:{}:{d}", event.pubkey.to_hex()),
                    event.clone(),
                );
            }
            IngestOutcome::Rejected => {
                self.rejected.insert(event.id);
            }
            IngestOutcome::Duplicate | IngestOutcome::Failed => {}
            other => unreachable!("the simulated host never answers {other:?}"),
        }
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[derive(Default, Debug)]
struct Faults {
    disconnects: u64,
    connect_failures: u64,
    rate_limits: u64,
    closed: u64,
    duplicates: u64,
    floods: u64,
    restarts: u64,
    crashes: u64,
    lost_in_crash: u64,
    host_failures: u64,
    messages_lost: u64,
    live_published: u64,
    neg_silent: u64,
    events_checked: u64,
    /// Sync+ relay-list lookups sent, and outbox relays in use at the end.
    sync_plus_lookups: u64,
    sync_plus_relays: u64,
    /// Historic REQs grouping several filters.
    grouped_reqs: u64,
}

/// Something scheduled: an input for the engine, or the host processing one queued
/// hand-over.
enum Due {
    Input(Input),
    HostIngest(RelayUrl, Box<Event>),
}

struct Sim {
    seed: u64,
    rng: Rng,
    now: WallTime,
    engine: SyncEngine,
    config: SyncConfig,
    relays: BTreeMap<RelayUrl, SimRelay>,
    host: Host,
    inbox: BinaryHeap<Reverse<(WallTime, u64, usize)>>,
    inputs: HashMap<usize, Due>,
    seq: u64,
    /// Per source (a relay, or the host: `None`), when its last message arrives: each
    /// source's messages stay in order.
    last_delivery: HashMap<Option<RelayUrl>, WallTime>,
    /// The host works through hand-overs one at a time: when it is free again.
    host_free_at: WallTime,
    /// The last snapshot the state store saved (what a crash restarts from).
    saved: Option<SyncStateSnapshot>,
    /// Unsound snapshots seen (see `check_snapshot`).
    violations: Vec<String>,
    /// Hand-overs per (engine incarnation, id): the engine de-duplicates within its
    /// lifetime; across a restart the host answers `Duplicate`.
    handed: HashMap<(u64, EventId), u32>,
    faults: Faults,
    /// What happened to each event, for the failure report.
    trail: HashMap<EventId, Vec<String>>,
    fault_phase_until: WallTime,
    keys: Vec<Keys>,
    repos: Vec<(Keys, String, Vec<RelayUrl>)>,
    clock_secs: u64,
    /// GRASP-03 Sync+ on (odd seeds): authors other than the maintainer write, their
    /// NIP-65 lists sit on some relays, and some of a repo's events sit on relays its
    /// announcement does not list.
    sync_plus: bool,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let start = WallTime::from_secs(1_700_000_000);
        let mut config = SyncConfig::default().with_own_relay(RelayUrl::parse(US).unwrap());
        config.batch_window = Duration::from_millis(100 + rng.below(2000));
        config.default_limits.max_live_filters = 8 + rng.below(40) as usize;
        config.default_limits.page_limit = 5 + rng.below(60) as usize;
        config.max_concurrent_historic = 1 + rng.below(6) as usize;
        let sync_plus = seed % 2 == 1;
        if sync_plus {
            config = config.with_sync_plus(SyncPlusConfig::default());
        }
        let engine = SyncEngine::new(
            config.clone(),
            start,
            Arc::new(AllowAllRelays),
            Box::new(SeededRandom::new(seed)),
        );
        let keys: Vec<Keys> = (0..4)
            .map(|i| {
                let mut bytes = [0u8; 32];
                bytes[..8].copy_from_slice(&seed.to_le_bytes());
                bytes[8] = i as u8 + 1;
                bytes[31] = 1;
                Keys::new(SecretKey::from_slice(&bytes).expect("valid secret"))
            })
            .collect();
        let mut sim = Sim {
            seed,
            rng,
            now: start,
            engine,
            config,
            relays: BTreeMap::new(),
            host: Host::default(),
            inbox: BinaryHeap::new(),
            inputs: HashMap::new(),
            seq: 0,
            last_delivery: HashMap::new(),
            host_free_at: start,
            saved: None,
            violations: Vec::new(),
            handed: HashMap::new(),
            faults: Faults::default(),
            trail: HashMap::new(),
            fault_phase_until: start + Duration::from_secs(20 * 60),
            keys,
            repos: Vec::new(),
            clock_secs: 1_699_000_000,
            sync_plus,
        };
        sim.build_world();
        sim
    }

    fn ts(&mut self) -> u64 {
        // Heavy ties: a third of events share the previous timestamp.
        if !self.rng.chance(33) {
            self.clock_secs += 1 + self.rng.below(50);
        }
        self.clock_secs
    }

    fn build_world(&mut self) {
        let n_relays = 2 + self.rng.below(4) as usize;
        let mut urls = Vec::new();
        for i in 0..n_relays {
            let url = RelayUrl::parse(&format!("wss://r{i}.sim")).unwrap();
            let mut behaviour = Behaviour {
                nip77: self.rng.chance(50),
                silent_neg: self.rng.chance(30),
                cap: [10, 50, 500][self.rng.below(3) as usize],
                ignores_until: false,
                hostile: i == 0 && self.rng.chance(30),
                advertises_cap: false,
                caps_whole_req: false,
            };
            // A relay that ignores `until` can only be read in one page: give it a cap
            // above its event count (with a smaller one nothing can read it all, and the
            // planner reports the batch incomplete instead).
            if self.rng.chance(10) {
                behaviour.ignores_until = true;
                behaviour.cap = 10_000;
            }
            behaviour.advertises_cap = self.rng.chance(50);
            behaviour.caps_whole_req = self.rng.chance(30);
            self.relays.insert(
                url.clone(),
                SimRelay {
                    behaviour,
                    events: BTreeMap::new(),
                    connected: false,
                    live: BTreeMap::new(),
                    historic: BTreeSet::new(),
                },
            );
            urls.push(url);
        }
        let n_repos = 2 + self.rng.below(6) as usize;
        for r in 0..n_repos {
            let keys = self.rng.pick(&self.keys).clone();
            let purgatory = self.rng.chance(25);
            let listed_us = !self.rng.chance(15);
            let name = if purgatory {
                format!("purg{r}")
            } else {
                format!("repo{r}")
            };
            let mut listed: Vec<RelayUrl> = urls
                .iter()
                .filter(|_| self.rng.chance(50))
                .cloned()
                .collect();
            if listed.is_empty() {
                listed.push(self.rng.pick(&urls).clone());
            }
            let mut relays_tag = vec!["relays".to_string()];
            if listed_us {
                relays_tag.push(US.to_string());
            }
            relays_tag.extend(listed.iter().map(|u| u.as_str().to_string()));
            let t = self.ts();
            let ann = event(&keys, 30617, vec![s(&["d", &name]), relays_tag], t, "");
            // The announcement sits on the relays it lists (and maybe on others).
            for u in &urls {
                if listed.contains(u) || self.rng.chance(20) {
                    self.relays
                        .get_mut(u)
                        .unwrap()
                        .events
                        .insert(ann.id, ann.clone());
                }
            }
            // Some announcements the host already holds at start.
            if listed_us && self.rng.chance(50) {
                let outcome = self.host.verdict(&ann);
                self.host.apply(&ann, outcome);
                if outcome == IngestOutcome::Accepted {
                    self.engine.handle_input(
                        self.now,
                        Input::Accepted {
                            event: Box::new(ann.clone()),
                        },
                    );
                }
            }
            self.repos
                .push((keys.clone(), name.clone(), listed.clone()));
            let coord = RepoRef::new(&keys.public_key(), &name).unwrap();
            let n_events = self.rng.below(14) as usize;
            let mut roots: Vec<EventId> = Vec::new();
            for _ in 0..n_events {
                let author = if self.sync_plus {
                    self.rng.pick(&self.keys).clone()
                } else {
                    keys.clone()
                };
                let ev = self.random_thread_event(&author, &name, coord.as_str(), &roots);
                if matches!(ev.kind.as_u16(), 1617 | 1618 | 1621) {
                    roots.push(ev.id);
                }
                for u in &listed {
                    if self.rng.chance(80) {
                        self.relays
                            .get_mut(u)
                            .unwrap()
                            .events
                            .insert(ev.id, ev.clone());
                    }
                }
                if self.sync_plus && self.rng.chance(30) {
                    // Only on a relay the announcement does not list (a participant's).
                    let u = self.rng.pick(&urls).clone();
                    self.relays
                        .get_mut(&u)
                        .unwrap()
                        .events
                        .insert(ev.id, ev.clone());
                }
            }
        }
        if self.sync_plus {
            self.place_relay_lists(&urls);
        }
        // Noise nobody should sync: events about unknown repos.
        for _ in 0..self.rng.below(10) {
            let keys = self.rng.pick(&self.keys).clone();
            let t = self.ts();
            let ev = event(
                &keys,
                1621,
                vec![s(&[
                    "a",
                    &format!("30617:{}:unknown", keys.public_key().to_hex()),
                ])],
                t,
                "noise",
            );
            let u = self.rng.pick(&urls).clone();
            self.relays.get_mut(&u).unwrap().events.insert(ev.id, ev);
        }
    }

    /// Each author's one NIP-65 list (most have one), naming one or two write relays and
    /// maybe a read relay, on some of the relays. Signed for real: the engine checks
    /// the lists it looks up itself.
    fn place_relay_lists(&mut self, urls: &[RelayUrl]) {
        for keys in self.keys.clone() {
            if !self.rng.chance(75) {
                continue;
            }
            let mut tags = Vec::new();
            let pick = |rng: &mut Rng| rng.pick(urls).as_str().trim_end_matches('/').to_string();
            for _ in 0..1 + self.rng.below(2) {
                let u = pick(&mut self.rng);
                let marked = self.rng.chance(50);
                let tag = if marked {
                    vec!["r".to_string(), u, "write".into()]
                } else {
                    vec!["r".to_string(), u]
                };
                tags.push(Tag::parse(tag).unwrap());
            }
            if self.rng.chance(50) {
                let u = pick(&mut self.rng);
                tags.push(Tag::parse(["r", u.as_str(), "read"]).unwrap());
            }
            let t = self.ts();
            let list = EventBuilder::new(Kind::RelayList, "")
                .tags(tags)
                .custom_created_at(Timestamp::from_secs(t))
                .sign_with_keys(&keys)
                .unwrap();
            let mut placed = false;
            for u in urls {
                if self.rng.chance(60) {
                    self.relays
                        .get_mut(u)
                        .unwrap()
                        .events
                        .insert(list.id, list.clone());
                    placed = true;
                }
            }
            if !placed {
                let u = self.rng.pick(urls).clone();
                self.relays
                    .get_mut(&u)
                    .unwrap()
                    .events
                    .insert(list.id, list);
            }
        }
    }

    fn random_thread_event(
        &mut self,
        keys: &Keys,
        name: &str,
        coord: &str,
        roots: &[EventId],
    ) -> Event {
        let t = self.ts();
        let salt = self.rng.below(u64::MAX).to_string();
        match self.rng.below(6) {
            0 => event(
                keys,
                30618,
                vec![s(&["d", name]), s(&["HEAD", "ref: refs/heads/main"])],
                t,
                &salt,
            ),
            1 | 2 => {
                let kind = *self.rng.pick(&[1617u16, 1618, 1621]);
                event(keys, kind, vec![s(&["a", coord])], t, &salt)
            }
            3 if !roots.is_empty() => {
                let root = self.rng.pick(roots).to_hex();
                event(
                    keys,
                    1111,
                    vec![s(&["E", &root]), s(&["e", &root]), s(&["A", coord])],
                    t,
                    &salt,
                )
            }
            4 if !roots.is_empty() => {
                let root = self.rng.pick(roots).to_hex();
                event(keys, 1630, vec![s(&["e", &root])], t, &salt)
            }
            _ => event(keys, 1, vec![s(&["q", coord])], t, &salt),
        }
    }

    fn faulty(&self) -> bool {
        self.now < self.fault_phase_until
    }

    /// Queues an input from `relay` (or the host, `None`) with a delay; a relay's own
    /// messages stay in order, different relays interleave.
    fn deliver(&mut self, relay: Option<&RelayUrl>, input: Input) {
        let delay = Duration::from_millis(1 + self.rng.below(40));
        let mut at = self.now + delay;
        let source = relay.cloned();
        let last = self
            .last_delivery
            .get(&source)
            .copied()
            .unwrap_or(WallTime::ZERO);
        at = at.max(last);
        self.last_delivery.insert(source, at);
        if let Input::Event {
            relay,
            subscription,
            event,
        } = &input
        {
            self.trail
                .entry(event.id)
                .or_default()
                .push(format!("{} sent by {relay} on {subscription}", self.now.0));
        }
        self.schedule(at, Due::Input(input));
    }

    fn schedule(&mut self, at: WallTime, due: Due) {
        self.seq += 1;
        let key = self.seq as usize;
        self.inputs.insert(key, due);
        self.inbox.push(Reverse((at, self.seq, key)));
    }

    fn matching(&self, relay: &RelayUrl, filter: &Filter) -> Vec<Event> {
        let r = &self.relays[relay];
        let mut f = filter.clone().remove_limit();
        if r.behaviour.ignores_until {
            f = f.remove_until();
        }
        let mut out: Vec<Event> = r
            .events
            .values()
            .filter(|e| f.match_event(e, MatchEventOptions::new()))
            .cloned()
            .collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        out
    }

    fn execute(&mut self, cmd: Command) {
        if std::env::var("SIM_TRACE").is_ok() {
            let text = format!("{cmd:?}");
            eprintln!("{} CMD {}", self.now.0, &text[..text.len().min(400)]);
        }
        match cmd {
            Command::Connect { relay } => {
                if !self.relays.contains_key(&relay) {
                    self.deliver(
                        Some(&relay),
                        Input::RelayConnectFailed {
                            relay: relay.clone(),
                            reason: "no such relay".into(),
                        },
                    );
                    return;
                }
                if self.faulty() && self.rng.chance(20) {
                    self.faults.connect_failures += 1;
                    self.deliver(
                        Some(&relay),
                        Input::RelayConnectFailed {
                            relay: relay.clone(),
                            reason: "refused".into(),
                        },
                    );
                    return;
                }
                let r = self.relays.get_mut(&relay).unwrap();
                r.connected = true;
                r.live.clear();
                r.historic.clear();
                if r.behaviour.advertises_cap {
                    // Its NIP-11 document, read as the driver does when it dials.
                    let doc = serde_json::json!({ "limitation": { "max_limit": r.behaviour.cap } });
                    let limitation = grasp_sync::filters::Nip11Limitation::from_document(&doc);
                    self.engine.apply_nip11_limits(&relay, &limitation);
                }
                self.deliver(
                    Some(&relay),
                    Input::RelayConnected {
                        relay: relay.clone(),
                    },
                );
            }
            Command::Disconnect { relay } => {
                if let Some(r) = self.relays.get_mut(&relay) {
                    r.connected = false;
                    r.live.clear();
                    r.historic.clear();
                }
            }
            Command::Subscribe {
                relay,
                id,
                filters,
                mode,
            } => {
                let connected = self.relays.get(&relay).is_some_and(|r| r.connected);
                if mode == SubscriptionMode::Historic && filters.len() > 1 {
                    self.faults.grouped_reqs += 1;
                }
                let covered: Vec<EventId> = self
                    .relays
                    .get(&relay)
                    .map(|r| {
                        r.events
                            .values()
                            .filter(|e| {
                                filters.iter().any(|f| {
                                    f.clone()
                                        .remove_limit()
                                        .match_event(e, MatchEventOptions::new())
                                })
                            })
                            .map(|e| e.id)
                            .collect()
                    })
                    .unwrap_or_default();
                for e in covered {
                    self.trail.entry(e).or_default().push(format!(
                        "{} {mode:?} sub {id} on {relay} covers it (connected {connected})",
                        self.now.0
                    ));
                }
                self.subscribe(relay, id, filters, mode)
            }
            Command::Unsubscribe { relay, id } => {
                if let Some(r) = self.relays.get_mut(&relay) {
                    r.live.remove(&id);
                    r.historic.remove(&id);
                }
            }
            Command::Negentropy {
                relay,
                session,
                filter,
            } => {
                let Some(r) = self.relays.get(&relay) else {
                    return;
                };
                if !r.connected {
                    return;
                }
                for e in self.matching(&relay, &filter) {
                    let line = format!(
                        "{} negentropy {session} on {relay} covers it (connected {})",
                        self.now.0, r.connected
                    );
                    self.trail.entry(e.id).or_default().push(line);
                }
                let r = &self.relays[&relay];
                if r.behaviour.nip77 {
                    let have: BTreeSet<EventId> = self
                        .host
                        .store
                        .keys()
                        .chain(self.host.rejected.iter())
                        .copied()
                        .collect();
                    let need: Vec<EventId> = self
                        .matching(&relay, &filter)
                        .iter()
                        .map(|e| e.id)
                        .filter(|id| !have.contains(id))
                        .collect();
                    self.deliver(
                        Some(&relay),
                        Input::NegentropyResult {
                            relay: relay.clone(),
                            session,
                            need,
                        },
                    );
                } else if r.behaviour.silent_neg {
                    // The relay never answers; the driver's executor reports that after
                    // the idle timeout it shares with the engine.
                    self.faults.neg_silent += 1;
                    let at = self.now + self.config.negentropy_idle_timeout;
                    self.schedule(
                        at,
                        Due::Input(Input::NegentropyFailed {
                            relay: relay.clone(),
                            session,
                            reason: NegentropyFailure::Timeout,
                        }),
                    );
                } else if self.rng.chance(50) {
                    self.deliver(
                        Some(&relay),
                        Input::Notice {
                            relay: relay.clone(),
                            message: "ERROR: bad msg: unknown cmd".into(),
                        },
                    );
                } else {
                    self.deliver(
                        Some(&relay),
                        Input::NegentropyFailed {
                            relay: relay.clone(),
                            session,
                            reason: NegentropyFailure::Unsupported,
                        },
                    );
                }
            }
            Command::Ingest { relay, event } => {
                *self
                    .handed
                    .entry((self.incarnation(), event.id))
                    .or_insert(0) += 1;
                // The host's queue: one at a time, usually quick, sometimes slow, and now
                // and then stalled for minutes (a disk, a lock), so a backlog builds up
                // that outlasts the quick reconnect's overlap.
                let work = if self.faulty() && self.rng.chance(1) {
                    Duration::from_secs(60 + self.rng.below(240))
                } else if self.rng.chance(3) {
                    Duration::from_millis(500 + self.rng.below(3000))
                } else {
                    Duration::from_millis(self.rng.below(15))
                };
                let at = self.now.max(self.host_free_at) + work;
                self.host_free_at = at;
                self.trail
                    .entry(event.id)
                    .or_default()
                    .push(format!("{} handed over from {relay}", self.now.0));
                self.schedule(at, Due::HostIngest(relay, event));
            }
            Command::ReadPurgatoryAnnouncements => {
                let announcements = self.host.purgatory.values().cloned().collect();
                self.deliver(None, Input::PurgatoryAnnouncements { announcements });
            }
            Command::PersistState => {
                if self.faulty() && self.rng.chance(3) {
                    // Killed while writing: the store keeps the previous snapshot.
                    self.crash();
                    return;
                }
                let snapshot = self.engine.snapshot(self.now);
                self.check_snapshot(&snapshot);
                self.saved = Some(snapshot);
                if self.faulty() && self.rng.chance(5) {
                    self.graceful_restart();
                }
            }
        }
    }

    /// Soundness of a snapshot, checked the moment it is saved: for every relay with a
    /// cursor, every event there that matches something the snapshot calls confirmed
    /// (by the tagging rules, written here) and was created before the cursor (less
    /// the overlap) must already be durable at the host — stored, held, or one it
    /// refuses. Anything else would be lost by a crash right now.
    fn check_snapshot(&mut self, snapshot: &SyncStateSnapshot) {
        let overlap = self.config.since_overlap;
        for persisted in &snapshot.relays {
            let state = &persisted.state;
            let Some(cursor) = state.complete_until else {
                continue;
            };
            let Some(relay) = self.relays.get(&persisted.relay) else {
                continue;
            };
            let before = (cursor - overlap).as_secs();
            let confirmed = &state.confirmed;
            let covered = |e: &Event| -> bool {
                let k = e.kind.as_u16();
                if matches!(k, 30617 | 10317) {
                    return state.announcements_synced;
                }
                let coord = format!(
                    "30617:{}:{}",
                    e.pubkey.to_hex(),
                    e.tags.identifier().unwrap_or_default()
                );
                if k == 30618 {
                    // An outbox relay (`Conversation`, Sync+) carries no state.
                    return confirmed.state_repos().any(|r| r.as_str() == coord);
                }
                let full: Vec<&str> = confirmed.conversation_repos().map(|r| r.as_str()).collect();
                ["a", "A", "q"]
                    .iter()
                    .any(|t| tag_values(e, t).any(|v| full.contains(&v)))
                    || ["e", "E", "q"].iter().any(|t| {
                        tag_values(e, t)
                            .any(|v| confirmed.root_events.iter().any(|id| id.to_hex() == v))
                    })
            };
            for e in relay.events.values() {
                if e.created_at.as_secs() >= before || !covered(e) {
                    continue;
                }
                let durable = self.host.store.contains_key(&e.id)
                    || self.host.purgatory.values().any(|p| p.id == e.id)
                    || self.host.verdict(e) == IngestOutcome::Rejected;
                if !durable {
                    self.violations.push(format!(
                        "{}: snapshot claims {} complete until {} but event {} (kind {}, created {}) is not durable; trail {:?}",
                        self.now.0,
                        persisted.relay,
                        cursor.0,
                        e.id,
                        e.kind,
                        e.created_at.as_secs(),
                        self.trail.get(&e.id)
                    ));
                }
            }
        }
    }

    fn incarnation(&self) -> u64 {
        self.faults.restarts + self.faults.crashes
    }

    /// The host works through one queued hand-over and reports its verdict.
    fn host_ingest(&mut self, relay: RelayUrl, event: Box<Event>) {
        let outcome = if self.faulty() && self.rng.chance(2) {
            self.faults.host_failures += 1;
            if let Some(n) = self.handed.get_mut(&(self.incarnation(), event.id)) {
                *n -= 1;
            }
            IngestOutcome::Failed
        } else {
            let outcome = self.host.verdict(&event);
            self.host.apply(&event, outcome);
            outcome
        };
        self.trail
            .entry(event.id)
            .or_default()
            .push(format!("{} ingest from {relay}: {outcome:?}", self.now.0));
        self.deliver(
            None,
            Input::IngestOutcome {
                relay,
                event_id: event.id,
                outcome,
            },
        );
        let feeds = matches!(event.kind.as_u16(), 30617 | 1617 | 1618 | 1621);
        if outcome == IngestOutcome::Accepted && feeds {
            self.deliver(None, Input::Accepted { event });
        }
    }

    /// A graceful stop and start: the sockets close, the host works through its queue
    /// and the engine hears every verdict, then the snapshot is saved and the process
    /// starts again from it.
    fn graceful_restart(&mut self) {
        self.faults.restarts += 1;
        self.drop_connections();
        let queued: Vec<Due> = self.take_inbox();
        for due in queued {
            if let Due::HostIngest(relay, event) = due {
                self.now = self.now.max(self.host_free_at);
                self.host_ingest(relay, event);
            }
        }
        // Only the host's verdicts reach the engine now.
        for due in self.take_inbox() {
            if let Due::Input(input @ Input::IngestOutcome { .. }) = due {
                self.engine.handle_input(self.now, input);
            }
        }
        while self.engine.poll_command().is_some() {}
        self.saved = Some(self.engine.snapshot(self.now));
        self.start_from_saved();
    }

    /// kill -9: whatever the host had queued is lost, the engine's memory is gone, and
    /// the next process starts from the last snapshot the store saved.
    fn crash(&mut self) {
        self.faults.crashes += 1;
        self.drop_connections();
        for due in self.take_inbox() {
            if let Due::HostIngest(_, event) = due {
                self.faults.lost_in_crash += 1;
                self.trail.entry(event.id).or_default().push(format!(
                    "{} lost in a crash before it was stored",
                    self.now.0
                ));
            }
        }
        // The reference relay keeps refusals in memory only.
        self.host.rejected.clear();
        self.start_from_saved();
    }

    fn drop_connections(&mut self) {
        for r in self.relays.values_mut() {
            r.connected = false;
            r.live.clear();
            r.historic.clear();
        }
    }

    /// Everything scheduled, in order, leaving the inbox empty.
    fn take_inbox(&mut self) -> Vec<Due> {
        let mut out = Vec::new();
        while let Some(Reverse((_, _, key))) = self.inbox.pop() {
            if let Some(due) = self.inputs.remove(&key) {
                out.push(due);
            }
        }
        self.last_delivery.clear();
        self.host_free_at = self.now;
        out
    }

    /// A new process: the engine from the saved snapshot (or empty), then what the
    /// host stores fed as accepted, exactly as `driver::start` does.
    fn start_from_saved(&mut self) {
        let rng = Box::new(SeededRandom::new(
            self.seed.wrapping_add(self.incarnation()),
        ));
        let policy = Arc::new(AllowAllRelays);
        self.engine = match self.saved.clone() {
            Some(snapshot) => {
                SyncEngine::restore(self.config.clone(), snapshot, self.now, policy, rng)
            }
            None => SyncEngine::new(self.config.clone(), self.now, policy, rng),
        };
        let feed: Vec<Event> = self
            .host
            .store
            .values()
            .filter(|e| matches!(e.kind.as_u16(), 30617 | 1617 | 1618 | 1621))
            .cloned()
            .collect();
        for e in feed {
            self.engine
                .handle_input(self.now, Input::Accepted { event: Box::new(e) });
        }
    }

    fn subscribe(
        &mut self,
        relay: RelayUrl,
        id: SubscriptionId,
        filters: Vec<Filter>,
        mode: SubscriptionMode,
    ) {
        let Some(r) = self.relays.get(&relay) else {
            return;
        };
        if !r.connected {
            return;
        }
        if self.faulty() && self.rng.chance(5) {
            self.faults.rate_limits += 1;
            self.deliver(
                Some(&relay),
                Input::Closed {
                    relay: relay.clone(),
                    subscription: id,
                    message: "rate-limited: slow down".into(),
                },
            );
            return;
        }
        if self.faulty() && self.rng.chance(3) {
            self.faults.closed += 1;
            self.deliver(
                Some(&relay),
                Input::Closed {
                    relay: relay.clone(),
                    subscription: id,
                    message: "error: shutting down idle subscription".into(),
                },
            );
            return;
        }
        let hostile = r.behaviour.hostile;
        match mode {
            SubscriptionMode::Live => {
                self.relays
                    .get_mut(&relay)
                    .unwrap()
                    .live
                    .insert(id.clone(), filters);
                self.deliver(
                    Some(&relay),
                    Input::Eose {
                        relay: relay.clone(),
                        subscription: id.clone(),
                    },
                );
            }
            SubscriptionMode::Historic => {
                self.relays
                    .get_mut(&relay)
                    .unwrap()
                    .historic
                    .insert(id.clone());
                let cap = self.relays[&relay].behaviour.cap;
                let mut page: Vec<Event> = Vec::new();
                for f in &filters {
                    let limit = f.limit.unwrap_or(usize::MAX).min(cap);
                    page.extend(self.matching(&relay, f).into_iter().take(limit));
                }
                if self.relays[&relay].behaviour.caps_whole_req {
                    let mut ids = BTreeSet::new();
                    page.retain(|e| ids.insert(e.id));
                    page.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
                    page.truncate(cap);
                }
                // Out-of-order arrival within the page.
                if page.len() > 1 && self.rng.chance(30) {
                    let i = self.rng.below(page.len() as u64) as usize;
                    page.swap(0, i);
                }
                for e in page {
                    if self.faulty() && self.rng.chance(5) {
                        self.faults.duplicates += 1;
                        self.deliver(
                            Some(&relay),
                            Input::Event {
                                relay: relay.clone(),
                                subscription: id.clone(),
                                event: Box::new(e.clone()),
                            },
                        );
                    }
                    self.deliver(
                        Some(&relay),
                        Input::Event {
                            relay: relay.clone(),
                            subscription: id.clone(),
                            event: Box::new(e),
                        },
                    );
                }
                if hostile {
                    self.flood(&relay, &id);
                }
                self.deliver(
                    Some(&relay),
                    Input::Eose {
                        relay: relay.clone(),
                        subscription: id,
                    },
                );
            }
        }
    }

    /// A hostile relay: events that match nothing asked, and events on ids never opened.
    fn flood(&mut self, relay: &RelayUrl, id: &SubscriptionId) {
        self.faults.floods += 1;
        let keys = self.keys[0].clone();
        for i in 0..5 {
            let t = self.ts();
            let junk = event(&keys, 1, vec![], t, &format!("junk{i}"));
            self.deliver(
                Some(relay),
                Input::Event {
                    relay: relay.clone(),
                    subscription: id.clone(),
                    event: Box::new(junk.clone()),
                },
            );
            self.deliver(
                Some(relay),
                Input::Event {
                    relay: relay.clone(),
                    subscription: SubscriptionId::new("nope"),
                    event: Box::new(junk),
                },
            );
        }
    }

    fn inject_fault(&mut self) {
        let urls: Vec<RelayUrl> = self.relays.keys().cloned().collect();
        let relay = self.rng.pick(&urls).clone();
        match self.rng.below(12) {
            0..=2 => {
                let r = self.relays.get_mut(&relay).unwrap();
                if r.connected {
                    r.connected = false;
                    r.live.clear();
                    r.historic.clear();
                    self.faults.disconnects += 1;
                    self.deliver(
                        Some(&relay),
                        Input::RelayDisconnected {
                            relay: relay.clone(),
                        },
                    );
                }
            }
            3..=5 => {
                if self.relays[&relay].connected {
                    self.faults.rate_limits += 1;
                    self.deliver(
                        Some(&relay),
                        Input::Notice {
                            relay: relay.clone(),
                            message: "rate-limited: you are sending too fast".into(),
                        },
                    );
                }
            }
            6 => self.crash(),
            7 => {
                if self.relays[&relay].connected {
                    self.faults.messages_lost += 1;
                    self.lose_messages(&relay);
                }
            }
            _ => self.publish_live(&relay),
        }
    }

    /// The driver's channel from `relay` overflowed: some of what the relay sent is
    /// dropped, and the engine is told.
    fn lose_messages(&mut self, relay: &RelayUrl) {
        let keys: Vec<usize> = self
            .inbox
            .iter()
            .map(|Reverse((_, _, key))| *key)
            .filter(|key| {
                matches!(self.inputs.get(key), Some(Due::Input(
                    Input::Event { relay: r, .. } | Input::Eose { relay: r, .. }
                )) if r == relay)
            })
            .collect();
        for key in keys {
            if self.rng.chance(50) {
                self.inputs.remove(&key);
            }
        }
        self.deliver(
            Some(relay),
            Input::RelayMessagesLost {
                relay: relay.clone(),
                // What was dropped was sent at most a delivery delay ago.
                since: self.now - Duration::from_secs(1),
            },
        );
    }

    /// A user publishes a new event about a repo to one of its relays.
    fn publish_live(&mut self, relay: &RelayUrl) {
        if self.repos.is_empty() {
            return;
        }
        let (keys, name, _) = self.rng.pick(&self.repos).clone();
        let coord = RepoRef::new(&keys.public_key(), &name).unwrap();
        let roots: Vec<EventId> = self.relays[relay]
            .events
            .values()
            .filter(|e| matches!(e.kind.as_u16(), 1617 | 1618 | 1621))
            .map(|e| e.id)
            .collect();
        self.clock_secs = self.clock_secs.max(self.now.as_secs());
        let ev = self.random_thread_event(&keys, &name, coord.as_str(), &roots);
        self.faults.live_published += 1;
        let line = format!(
            "{} published on {relay} (connected {})",
            self.now.0, self.relays[relay].connected
        );
        self.trail.entry(ev.id).or_default().push(line);
        let r = self.relays.get_mut(relay).unwrap();
        r.events.insert(ev.id, ev.clone());
        if !r.connected {
            return;
        }
        let subs: Vec<SubscriptionId> = r
            .live
            .iter()
            .filter(|(_, fs)| {
                fs.iter().any(|f| {
                    f.clone()
                        .remove_limit()
                        .match_event(&ev, MatchEventOptions::new())
                })
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in subs {
            self.deliver(
                Some(relay),
                Input::Event {
                    relay: relay.clone(),
                    subscription: id,
                    event: Box::new(ev.clone()),
                },
            );
        }
    }

    fn drain_commands(&mut self) {
        while let Some(cmd) = self.engine.poll_command() {
            self.execute(cmd);
        }
    }

    fn run(&mut self, until: WallTime) {
        let mut next_fault = self.now + Duration::from_millis(self.rng.below(30_000));
        let mut steps = 0u64;
        while self.now < until {
            steps += 1;
            assert!(steps < 2_000_000, "seed {}: runaway simulation", self.seed);
            let inbox_next = self.inbox.peek().map(|Reverse((t, _, _))| *t);
            let mut next = self.engine.poll_timeout().min(until);
            if let Some(t) = inbox_next {
                next = next.min(t);
            }
            if self.faulty() {
                next = next.min(next_fault);
            }
            self.now = self.now.max(next);
            if let Some(Reverse((t, _, key))) = self.inbox.peek().copied() {
                if t <= self.now {
                    self.inbox.pop();
                    match self.inputs.remove(&key) {
                        Some(Due::Input(input)) => {
                            if std::env::var("SIM_TRACE").is_ok() {
                                let text = format!("{input:?}");
                                eprintln!("{} IN {}", self.now.0, &text[..text.len().min(300)]);
                            }
                            self.engine.handle_input(self.now, input);
                        }
                        Some(Due::HostIngest(relay, event)) => self.host_ingest(relay, event),
                        None => {}
                    }
                    self.drain_commands();
                    continue;
                }
            }
            if self.faulty() && next_fault <= self.now {
                self.inject_fault();
                next_fault = self.now + Duration::from_millis(1 + self.rng.below(60_000));
                continue;
            }
            if self.engine.poll_timeout() <= self.now {
                self.engine.handle_timeout(self.now);
                self.drain_commands();
            }
        }
    }

    /// The oracle: every (event, relay it sits on) we must end up holding, from the
    /// tagging rules alone — no library code. Given the repos the host ends up holding
    /// (announcement stored: Full; held in purgatory: state only) and the relays each
    /// announcement lists (ours excepted), an event on relay `u` belongs to us when
    /// - it is an announcement (30617) or a GRASP list (10317) and `u` lists some repo
    ///   we hold (layer 1 is asked of every relay we sync with),
    /// - it is the state (30618) of a repo we hold that lists `u`,
    /// - it tags a Full repo that lists `u` by `a`, `A` or `q`,
    /// - it tags, by `e`, `E` or `q`, a root event (1617/1618/1621) of a Full repo
    ///   that lists `u`, a root being an event of those kinds that tags the repo by `a`,
    ///
    /// and the host's own policy would not refuse it.
    fn expected(&self) -> BTreeSet<(EventId, RelayUrl)> {
        #[derive(PartialEq)]
        enum Held {
            Full,
            StateOnly,
        }
        let coordinate = |e: &Event| {
            format!(
                "30617:{}:{}",
                e.pubkey.to_hex(),
                e.tags.identifier().unwrap_or_default()
            )
        };
        let listed = |ann: &Event| -> BTreeSet<String> {
            ann.tags
                .iter()
                .filter(|t| t.as_slice().first().map(String::as_str) == Some("relays"))
                .flat_map(|t| t.as_slice()[1..].to_vec())
                .map(|v| v.trim_end_matches('/').to_string())
                .filter(|v| v != US)
                .collect()
        };
        // coordinate → (level, relays listed)
        let mut held: BTreeMap<String, (Held, BTreeSet<String>)> = BTreeMap::new();
        for ann in self.host.purgatory.values() {
            held.insert(coordinate(ann), (Held::StateOnly, listed(ann)));
        }
        for ann in self
            .host
            .store
            .values()
            .filter(|e| e.kind.as_u16() == 30617)
        {
            held.insert(coordinate(ann), (Held::Full, listed(ann)));
        }
        let url_of = |u: &RelayUrl| u.as_str().trim_end_matches('/').to_string();
        // GRASP-03 Sync+: a Full repo's outbox relays, coordinate → URLs. Derived here
        // from the world as a fixpoint, without the engine's code: the write relays of
        // the NIP-65 lists, found on the repo's listed relays, of the authors of its root
        // events found on its listed or outbox relays. (The engine may know more
        // participants, from comments: it may sync more, never less.)
        let mut outbox: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let carries = |outbox: &BTreeMap<String, BTreeSet<String>>, coord: &str, u: &str| {
            held.get(coord).is_some_and(|(l, r)| {
                *l == Held::Full
                    && (r.contains(u) || outbox.get(coord).is_some_and(|o| o.contains(u)))
            })
        };
        // root id → coordinates of the Full repos it belongs to (found on their relays)
        let roots_of = |outbox: &BTreeMap<String, BTreeSet<String>>| {
            let mut roots: BTreeMap<String, (BTreeSet<String>, nostr::PublicKey)> = BTreeMap::new();
            for (url, relay) in &self.relays {
                let u = url_of(url);
                for e in relay.events.values() {
                    if !matches!(e.kind.as_u16(), 1617 | 1618 | 1621) {
                        continue;
                    }
                    for c in tag_values(e, "a") {
                        if carries(outbox, c, &u) {
                            roots
                                .entry(e.id.to_hex())
                                .or_insert_with(|| (BTreeSet::new(), e.pubkey))
                                .0
                                .insert(c.to_string());
                        }
                    }
                }
            }
            roots
        };
        let mut roots = roots_of(&outbox);
        if self.sync_plus {
            loop {
                let mut next: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                for (id, (coords, author)) in &roots {
                    let accepted = self
                        .relays
                        .values()
                        .find_map(|r| r.events.get(&EventId::from_hex(id).unwrap()))
                        .is_some_and(|e| self.host.verdict(e) != IngestOutcome::Rejected);
                    if !accepted {
                        continue;
                    }
                    for c in coords {
                        let listed = &held[c].1;
                        let outbox = self
                            .write_relays(author, listed)
                            .into_iter()
                            .filter(|u| !listed.contains(u));
                        next.entry(c.clone()).or_default().extend(outbox);
                    }
                }
                if next == outbox {
                    break;
                }
                outbox = next;
                roots = roots_of(&outbox);
            }
        }
        let roots: BTreeMap<String, BTreeSet<String>> = roots
            .into_iter()
            .map(|(id, (coords, _))| (id, coords))
            .collect();
        let lists = |coord: &str, u: &str| held.get(coord).is_some_and(|(_, r)| r.contains(u));
        let full_lists = |coord: &str, u: &str| carries(&outbox, coord, u);
        let mut out = BTreeSet::new();
        for (url, relay) in &self.relays {
            let u = url_of(url);
            let synced_with = held.values().any(|(_, r)| r.contains(&u));
            for e in relay.events.values() {
                let k = e.kind.as_u16();
                let ours = match k {
                    30617 | 10317 => synced_with,
                    30618 => lists(&coordinate(e), &u),
                    _ => {
                        ["a", "A", "q"]
                            .iter()
                            .any(|t| tag_values(e, t).any(|c| full_lists(c, &u)))
                            || ["e", "E", "q"].iter().any(|t| {
                                tag_values(e, t).any(|id| {
                                    roots
                                        .get(id)
                                        .is_some_and(|cs| cs.iter().any(|c| full_lists(c, &u)))
                                })
                            })
                    }
                };
                if ours && self.host.verdict(e) != IngestOutcome::Rejected {
                    out.insert((e.id, url.clone()));
                }
            }
        }
        out
    }

    /// The write relays (`r` unmarked or `write`) in `author`'s NIP-65 lists found on
    /// the relays `on` (URLs without a trailing slash) — what a lookup there would learn.
    fn write_relays(&self, author: &nostr::PublicKey, on: &BTreeSet<String>) -> BTreeSet<String> {
        let lists = self
            .relays
            .iter()
            .filter(|(u, _)| on.contains(u.as_str().trim_end_matches('/')))
            .flat_map(|(_, r)| r.events.values())
            .filter(|e| e.kind == Kind::RelayList && e.pubkey == *author);
        lists
            .flat_map(|list| list.tags.iter())
            .filter_map(|t| match t.as_slice() {
                [n, u] if n == "r" => Some(u.clone()),
                [n, u, m, ..] if n == "r" && m == "write" => Some(u.clone()),
                _ => None,
            })
            .collect()
    }

    fn check(&self) -> Result<(), String> {
        if let Some(v) = self.violations.first() {
            return Err(format!("unsound snapshot: {v}"));
        }
        for ((epoch, id), n) in &self.handed {
            if *n > 1 {
                return Err(format!(
                    "event {id} handed to the host {n} times by engine incarnation {epoch}"
                ));
            }
        }
        let status = self.engine.status(self.now);
        for (id, from) in self.expected() {
            // A relay that cannot be read completely (it ignores `until`) may keep events
            // from us, but only if the engine says so: ConnectedHistoricSyncFailures.
            let reported = status.iter().any(|s| {
                s.relay == from && s.status == ConnectionStatus::ConnectedHistoricSyncFailures
            });
            let held = self.host.store.contains_key(&id)
                || self.host.purgatory.values().any(|e| e.id == id);
            if !held && !reported {
                let where_: Vec<&RelayUrl> = self
                    .relays
                    .iter()
                    .filter(|(_, r)| r.events.contains_key(&id))
                    .map(|(u, _)| u)
                    .collect();
                let ev = self
                    .relays
                    .values()
                    .find_map(|r| r.events.get(&id))
                    .map(|e| {
                        format!(
                            "kind {} tags {:?} at {}",
                            e.kind,
                            e.tags
                                .as_slice()
                                .iter()
                                .map(|t| t.as_slice().to_vec())
                                .collect::<Vec<_>>(),
                            e.created_at.as_secs()
                        )
                    });
                let detail: Vec<String> = where_
                    .iter()
                    .map(|u| {
                        format!(
                            "{u}: {:?} status {:?}",
                            self.relays[*u].behaviour,
                            self.engine
                                .status(self.now)
                                .into_iter()
                                .find(|s| &s.relay == *u)
                        )
                    })
                    .collect();
                return Err(format!(
                    "expected event {id} missing: {ev:?} on {detail:?}; trail {:?}",
                    self.trail.get(&id)
                ));
            }
        }
        for s in &status {
            if s.status == ConnectionStatus::Syncing {
                return Err(format!("{} still Syncing: {s:?}", s.relay));
            }
        }
        for (url, r) in &self.relays {
            if !r.historic.is_empty() {
                return Err(format!(
                    "{url}: historic subscriptions left open: {:?}",
                    r.historic
                ));
            }
            let engine_live: BTreeSet<SubscriptionId> = self
                .engine
                .live_subscriptions(url)
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            let relay_live: BTreeSet<SubscriptionId> = r.live.keys().cloned().collect();
            if r.connected && engine_live != relay_live {
                return Err(format!(
                    "{url}: live subscriptions differ: engine {engine_live:?} relay {relay_live:?}"
                ));
            }
            let wanted = self.engine.targets().get(url).is_some();
            if r.connected
                && !wanted
                && !r.live.is_empty()
                && status.iter().all(|s| &s.relay != url)
            {
                return Err(format!(
                    "{url}: connected with subscriptions but not wanted"
                ));
            }
        }
        Ok(())
    }
}

fn run_seed(seed: u64) -> Result<Faults, String> {
    let mut sim = Sim::new(seed);
    let fault_end = sim.fault_phase_until;
    sim.run(fault_end);
    // No faults from here on; give backoff (capped at 1 h) time to reconnect everyone.
    let settle = fault_end + Duration::from_secs(3 * 3600);
    sim.run(settle);
    let mut extra = 0;
    while !sim.engine.is_idle() && extra < 10 {
        let t = sim.now + Duration::from_secs(600);
        sim.run(t);
        extra += 1;
    }
    sim.faults.events_checked = sim.expected().len() as u64;
    sim.faults.sync_plus_lookups = sim.engine.metrics().sync_plus_lookups;
    sim.faults.sync_plus_relays = sim.engine.metrics().sync_plus_relays;
    sim.check().map(|()| std::mem::take(&mut sim.faults))
}

#[test]
fn simulation_converges_under_faults() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(one) => vec![one.parse().expect("SIM_SEED must be a number")],
        Err(_) => {
            let n: u64 = std::env::var("SIM_SEEDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(300);
            (0..n).collect()
        }
    };
    let mut totals = Faults::default();
    let mut failures = Vec::new();
    for seed in &seeds {
        match std::panic::catch_unwind(|| run_seed(*seed)) {
            Ok(Ok(f)) => {
                totals.disconnects += f.disconnects;
                totals.connect_failures += f.connect_failures;
                totals.rate_limits += f.rate_limits;
                totals.closed += f.closed;
                totals.duplicates += f.duplicates;
                totals.floods += f.floods;
                totals.restarts += f.restarts;
                totals.crashes += f.crashes;
                totals.lost_in_crash += f.lost_in_crash;
                totals.host_failures += f.host_failures;
                totals.messages_lost += f.messages_lost;
                totals.events_checked += f.events_checked;
                totals.live_published += f.live_published;
                totals.neg_silent += f.neg_silent;
                totals.sync_plus_lookups += f.sync_plus_lookups;
                totals.sync_plus_relays += f.sync_plus_relays;
                totals.grouped_reqs += f.grouped_reqs;
            }
            Ok(Err(why)) => failures.push(format!("seed {seed}: {why}  (replay: SIM_SEED={seed} cargo test -p grasp-sync --test simulation)")),
            Err(_) => failures.push(format!("seed {seed}: panicked  (replay: SIM_SEED={seed} cargo test -p grasp-sync --test simulation)")),
        }
    }
    println!(
        "simulation: {} seeds, faults injected: {totals:?}",
        seeds.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
}
