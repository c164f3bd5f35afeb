//! One deterministic scenario per rule of the design (`grasp-02-sync-design.md`,
//! sections 3–9), driving `SyncEngine` by hand with a fake clock and asserting on the
//! exact commands it emits. Where `simulation.rs` checks that everything converges under
//! random faults, these tests say *which* rule produces *which* command, so a failure
//! names the rule that broke.
//!
//! The engine never verifies signatures (the driver does), so events are built unsigned
//! with a dummy signature, as in the simulation.

mod unsigned;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use unsigned::event;

use grasp_sync::engine::{
    Command, IngestOutcome, Input, NegentropyFailure, SubscriptionMode, SyncConfig, SyncEngine,
    SyncPlusConfig,
};
use grasp_sync::model::{ConnectionStatus, RelayUrl, RepoRef, SyncLevel, WallTime};
use grasp_sync::ports::{AllowAllRelays, RandomSource, RelayUrlPolicy};
use nostr::{
    Alphabet, Event, EventBuilder, EventId, Filter, Keys, Kind, SecretKey, SingleLetterTag,
    SubscriptionId, Tag, Timestamp,
};

// ---------------------------------------------------------------------------------------
// World
// ---------------------------------------------------------------------------------------

const US: &str = "wss://us.example";
const A: &str = "wss://a.example";
const B: &str = "wss://b.example";
const C: &str = "wss://c.example";
const T0: u64 = 1_700_000_000;

fn url(s: &str) -> RelayUrl {
    RelayUrl::parse(s).expect("valid relay url")
}

fn keys(n: u8) -> Keys {
    let mut bytes = [0u8; 32];
    bytes[0] = n;
    bytes[31] = 1;
    Keys::new(SecretKey::from_slice(&bytes).expect("valid secret"))
}

fn tag(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

/// A repo announcement (30617) for `d` listing `relays`.
fn announcement(keys: &Keys, d: &str, relays: &[&str], created_at: u64) -> Event {
    let mut relays_tag = vec!["relays"];
    relays_tag.extend_from_slice(relays);
    event(
        keys,
        30617,
        vec![tag(&["d", d]), tag(&relays_tag)],
        created_at,
        "",
    )
}

fn coord(keys: &Keys, d: &str) -> RepoRef {
    RepoRef::new(&keys.public_key(), d).expect("valid coordinate")
}

/// An issue (1621, a root event) about `repo`.
fn issue(keys: &Keys, repo: &RepoRef, created_at: u64, content: &str) -> Event {
    event(
        keys,
        1621,
        vec![tag(&["a", repo.as_str()])],
        created_at,
        content,
    )
}

/// A comment replying to root `root` (matches the layer-3 `#e` filter).
fn reply(keys: &Keys, root: &EventId, created_at: u64, content: &str) -> Event {
    let hex = root.to_hex();
    event(
        keys,
        1111,
        vec![tag(&["E", &hex]), tag(&["e", &hex])],
        created_at,
        content,
    )
}

// ---------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------

/// A "random" source that always says the same thing: the daily jitter becomes a
/// number the test chooses.
struct FixedRandom(u64);

impl RandomSource for FixedRandom {
    fn next_u64(&mut self) -> u64 {
        self.0
    }
}

/// Refuses every URL whose host is in the list.
struct DenyHosts(Vec<&'static str>);

impl RelayUrlPolicy for DenyHosts {
    fn permits_relay(&self, url: &RelayUrl) -> bool {
        !self.0.contains(&url.host())
    }

    fn check_address(&self, _host: &str, _addr: std::net::IpAddr) -> Result<(), String> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

struct Harness {
    now: WallTime,
    engine: SyncEngine,
    /// Hand-overs are not answered by `drain` (the host is slow).
    hold_verdicts: bool,
    /// Hand-overs waiting for a verdict, in order.
    unanswered: Vec<EventId>,
}

fn config() -> SyncConfig {
    SyncConfig::default().with_own_relay(url(US))
}

impl Harness {
    fn new(config: SyncConfig) -> Self {
        Self::with(config, Arc::new(AllowAllRelays), 0)
    }

    fn with(config: SyncConfig, policy: Arc<dyn RelayUrlPolicy>, random: u64) -> Self {
        let now = WallTime::from_secs(T0);
        Self {
            now,
            engine: SyncEngine::new(config, now, policy, Box::new(FixedRandom(random))),
            hold_verdicts: false,
            unanswered: Vec::new(),
        }
    }

    /// Everything the engine wants done right now. The harness is also the host: every
    /// hand-over is stored at once and reported `Accepted`, unless `hold_verdicts` is
    /// set (then hand-overs wait in `unanswered` for `verdict`).
    fn drain(&mut self) -> Vec<Command> {
        let mut out = Vec::new();
        while let Some(command) = self.engine.poll_command() {
            if let Command::Ingest { event, .. } = &command {
                if self.hold_verdicts {
                    self.unanswered.push(event.id);
                } else {
                    // Answered after the commands already queued (which `out` keeps).
                    self.engine.handle_input(
                        self.now,
                        Input::IngestOutcome {
                            relay: url(A),
                            event_id: event.id,
                            outcome: IngestOutcome::Accepted,
                        },
                    );
                }
            }
            out.push(command);
        }
        out
    }

    /// The host reports what it did with a hand-over.
    fn verdict(&mut self, id: EventId, outcome: IngestOutcome) -> Vec<Command> {
        self.unanswered.retain(|u| *u != id);
        self.engine.handle_input(
            self.now,
            Input::IngestOutcome {
                relay: url(A),
                event_id: id,
                outcome,
            },
        );
        self.drain()
    }

    /// Lets `d` pass, waking the engine exactly when `poll_timeout` asks.
    fn advance(&mut self, d: Duration) -> Vec<Command> {
        let end = self.now + d;
        let mut out = self.drain();
        let mut wakeups = 0u32;
        loop {
            let at = self.engine.poll_timeout();
            if at > end {
                break;
            }
            self.now = self.now.max(at);
            self.engine.handle_timeout(self.now);
            out.extend(self.drain());
            wakeups += 1;
            assert!(wakeups < 1_000_000, "poll_timeout does not move forward");
        }
        self.now = end;
        out
    }

    fn feed(&mut self, input: Input) -> Vec<Command> {
        self.engine.handle_input(self.now, input);
        self.drain()
    }

    fn connect(&mut self, relay: &str) -> Vec<Command> {
        self.feed(Input::RelayConnected { relay: url(relay) })
    }

    fn disconnect(&mut self, relay: &str) -> Vec<Command> {
        self.feed(Input::RelayDisconnected { relay: url(relay) })
    }

    fn accept(&mut self, event: &Event) -> Vec<Command> {
        self.feed(Input::Accepted {
            event: Box::new(event.clone()),
        })
    }

    fn notice(&mut self, relay: &str, message: &str) -> Vec<Command> {
        self.feed(Input::Notice {
            relay: url(relay),
            message: message.into(),
        })
    }

    /// CLOSED for subscription `sub` of `relay`, with `message`.
    fn closed(&mut self, relay: &str, sub: &SubscriptionId, message: &str) -> Vec<Command> {
        self.feed(Input::Closed {
            relay: url(relay),
            subscription: sub.clone(),
            message: message.into(),
        })
    }

    /// Answers a REQ: `events` then EOSE.
    fn answer(&mut self, relay: &str, sub: &SubscriptionId, events: &[Event]) -> Vec<Command> {
        let mut out = Vec::new();
        for e in events {
            out.extend(self.feed(Input::Event {
                relay: url(relay),
                subscription: sub.clone(),
                event: Box::new(e.clone()),
            }));
        }
        out.extend(self.feed(Input::Eose {
            relay: url(relay),
            subscription: sub.clone(),
        }));
        out
    }

    fn neg_result(
        &mut self,
        relay: &str,
        session: &SubscriptionId,
        need: &[EventId],
    ) -> Vec<Command> {
        self.feed(Input::NegentropyResult {
            relay: url(relay),
            session: session.clone(),
            need: need.to_vec(),
        })
    }

    /// Answers every historic REQ on `relay` in `cmds` (and those that follow) with
    /// "nothing", until none is left, as a relay without NIP-77 (it refuses every
    /// negentropy session): the rules after a settle are those of REQ+EOSE. Returns
    /// everything emitted.
    fn settle(&mut self, relay: &str, cmds: &[Command]) -> Vec<Command> {
        let mut todo: Vec<Command> = cmds.to_vec();
        let mut all = Vec::new();
        while !todo.is_empty() {
            let mut next = Vec::new();
            for id in historic_ids(&todo, relay) {
                next.extend(self.answer(relay, &id, &[]));
            }
            for (session, _) in negentropy(&todo, relay) {
                next.extend(self.feed(Input::NegentropyFailed {
                    relay: url(relay),
                    session,
                    reason: NegentropyFailure::Unsupported,
                }));
            }
            all.extend(next.iter().cloned());
            todo = next;
        }
        all
    }

    /// Answers every negentropy session in `cmds`, and those they lead to, with
    /// "nothing to fetch": a relay that speaks NIP-77 and holds nothing new.
    fn reconcile(&mut self, relay: &str, cmds: Vec<Command>) {
        let mut todo = cmds;
        while !todo.is_empty() {
            todo = negentropy(&todo, relay)
                .iter()
                .flat_map(|(id, _)| self.neg_result(relay, id, &[]))
                .collect();
        }
    }

    /// Connects `relay` and answers its whole historic sync with "nothing".
    fn connect_and_settle(&mut self, relay: &str) -> Vec<Command> {
        let cmds = self.connect(relay);
        let mut all = cmds.clone();
        all.extend(self.settle(relay, &cmds));
        all
    }

    fn status(&self, relay: &str) -> ConnectionStatus {
        self.engine
            .relay_index()
            .get(&url(relay))
            .map_or(ConnectionStatus::Disconnected, |s| s.status)
    }

    fn live_filter_count(&self, relay: &str) -> usize {
        self.engine
            .live_subscriptions(&url(relay))
            .iter()
            .map(|(_, f)| f.len())
            .sum()
    }
}

// ---------------------------------------------------------------------------------------
// Reading commands
// ---------------------------------------------------------------------------------------

fn subscribes(
    cmds: &[Command],
    relay: &str,
    want: SubscriptionMode,
) -> Vec<(SubscriptionId, Vec<Filter>)> {
    let relay = url(relay);
    cmds.iter()
        .filter_map(|c| match c {
            Command::Subscribe {
                relay: r,
                id,
                filters,
                mode,
            } if *r == relay && *mode == want => Some((id.clone(), filters.clone())),
            _ => None,
        })
        .collect()
}

fn live(cmds: &[Command], relay: &str) -> Vec<(SubscriptionId, Vec<Filter>)> {
    subscribes(cmds, relay, SubscriptionMode::Live)
}

/// The filters of historic REQs, each with its REQ's id (a REQ grouping several
/// filters appears once per filter: answer it once, see [`historic_ids`]).
fn historic(cmds: &[Command], relay: &str) -> Vec<(SubscriptionId, Filter)> {
    subscribes(cmds, relay, SubscriptionMode::Historic)
        .into_iter()
        .flat_map(|(id, f)| f.into_iter().map(move |f| (id.clone(), f)))
        .collect()
}

/// Historic REQs with all their filters.
fn historic_reqs(cmds: &[Command], relay: &str) -> Vec<(SubscriptionId, Vec<Filter>)> {
    subscribes(cmds, relay, SubscriptionMode::Historic)
}

/// The ids of historic REQs, once each, in order.
fn historic_ids(cmds: &[Command], relay: &str) -> Vec<SubscriptionId> {
    subscribes(cmds, relay, SubscriptionMode::Historic)
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

fn negentropy(cmds: &[Command], relay: &str) -> Vec<(SubscriptionId, Filter)> {
    let relay = url(relay);
    cmds.iter()
        .filter_map(|c| match c {
            Command::Negentropy {
                relay: r,
                session,
                filter,
            } if *r == relay => Some((session.clone(), filter.clone())),
            _ => None,
        })
        .collect()
}

fn unsubscribes(cmds: &[Command], relay: &str) -> BTreeSet<SubscriptionId> {
    let relay = url(relay);
    cmds.iter()
        .filter_map(|c| match c {
            Command::Unsubscribe { relay: r, id } if *r == relay => Some(id.clone()),
            _ => None,
        })
        .collect()
}

fn connects(cmds: &[Command]) -> BTreeSet<RelayUrl> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Connect { relay } => Some(relay.clone()),
            _ => None,
        })
        .collect()
}

fn disconnects(cmds: &[Command]) -> BTreeSet<RelayUrl> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Disconnect { relay } => Some(relay.clone()),
            _ => None,
        })
        .collect()
}

fn ingested(cmds: &[Command]) -> Vec<EventId> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Ingest { event, .. } => Some(event.id),
            _ => None,
        })
        .collect()
}

fn tag_values(f: &Filter, c: char) -> Option<BTreeSet<String>> {
    let t = SingleLetterTag::from_char(c).expect("letter");
    let t = if c.is_ascii_uppercase() {
        SingleLetterTag::uppercase(t.character)
    } else {
        t
    };
    f.generic_tags.get(&t).cloned()
}

/// What a filter is for, in the words of the design: `L1`, `state`, `#a`, `#A`, `#q`
/// (layer 2 or 3), `#e`, `#E`, `ids`.
fn kind_of(f: &Filter) -> String {
    if f.ids.is_some() {
        return "ids".into();
    }
    if f.kinds
        .as_ref()
        .is_some_and(|k| k.contains(&Kind::from(30617)))
    {
        return "L1".into();
    }
    if f.kinds
        .as_ref()
        .is_some_and(|k| k.contains(&Kind::from(30618)))
    {
        return "state".into();
    }
    let letters: Vec<String> = f.generic_tags.keys().map(|t| format!("#{t}")).collect();
    letters.join(",")
}

fn kinds_of<'a>(filters: impl IntoIterator<Item = &'a Filter>) -> BTreeSet<String> {
    filters.into_iter().map(kind_of).collect()
}

fn layer1() -> Filter {
    Filter::new().kinds([Kind::from(30617), Kind::from(10317)])
}

fn state_filter(d: &str) -> Filter {
    Filter::new()
        .kind(Kind::from(30618))
        .custom_tag(SingleLetterTag::lowercase(Alphabet::D), d)
}

fn repo_filters(repo: &RepoRef) -> Vec<Filter> {
    ['a', 'A', 'q']
        .iter()
        .map(|c| single_tag(*c, repo.as_str()))
        .collect()
}

fn root_filters(root: &EventId) -> Vec<Filter> {
    ['e', 'E', 'q']
        .iter()
        .map(|c| single_tag(*c, &root.to_hex()))
        .collect()
}

fn single_tag(c: char, value: &str) -> Filter {
    let t = SingleLetterTag::from_char(c).expect("letter");
    let t = if c.is_ascii_uppercase() {
        SingleLetterTag::uppercase(t.character)
    } else {
        t
    };
    Filter::new().custom_tag(t, value)
}

fn as_live(f: Filter) -> Filter {
    f.limit(0)
}

fn without_paging(f: &Filter) -> Filter {
    f.clone().remove_limit().remove_until()
}

// ---------------------------------------------------------------------------------------
// Shared setup
// ---------------------------------------------------------------------------------------

/// A harness whose host accepted `repo` (listing `relays` and us), flushed.
fn with_repo(config: SyncConfig, relays: &[&str]) -> (Harness, Keys, RepoRef) {
    let mut h = Harness::new(config);
    let k = keys(1);
    let mut listed = vec![US];
    listed.extend_from_slice(relays);
    h.accept(&announcement(&k, "repo", &listed, T0 - 100));
    h.advance(Duration::from_secs(5));
    let repo = coord(&k, "repo");
    (h, k, repo)
}

/// Accepts a root event and lets the batch window pass: returns what that produced.
fn accept_root(h: &mut Harness, root: &Event) -> Vec<Command> {
    let mut out = h.accept(root);
    out.extend(h.advance(Duration::from_secs(5)));
    out
}

// ---------------------------------------------------------------------------------------
// 1. Relays come from accepted announcements; our own URL is never dialled.
// ---------------------------------------------------------------------------------------

#[test]
fn r01_accepted_announcement_dials_listed_relays_but_never_our_own() {
    let mut h = Harness::new(config());
    let k = keys(1);
    // Listed with a different spelling of our own URL: still ours.
    let ann = announcement(&k, "repo", &["wss://US.example/", A, B], T0);
    let mut cmds = h.accept(&ann);
    cmds.extend(h.advance(Duration::from_millis(4_900)));
    assert!(
        connects(&cmds).is_empty(),
        "nothing before the batch window: {cmds:?}"
    );

    let cmds = h.advance(Duration::from_millis(100));
    assert_eq!(connects(&cmds), BTreeSet::from([url(A), url(B)]));

    // However long we wait (connect timeouts, retries), our own URL is never dialled.
    let cmds = h.advance(Duration::from_secs(600));
    assert!(!connects(&cmds).contains(&url(US)));
    assert!(cmds.iter().all(|c| c.relay() != Some(&url(US))));
    assert!(h.engine.relay_index().get(&url(US)).is_none());
}

// ---------------------------------------------------------------------------------------
// 2. First connect = fresh start: L1 live + L1 negentropy, then state/L2 live + history.
// ---------------------------------------------------------------------------------------

#[test]
fn r02_fresh_start_on_first_connect() {
    let (mut h, _k, repo) = with_repo(config(), &[A]);
    let cmds = h.connect(A);

    let lives = live(&cmds, A);
    assert_eq!(
        lives.len(),
        2,
        "one REQ for layer 1, one for the repo: {lives:?}"
    );
    assert_eq!(
        lives[0].1,
        vec![as_live(layer1())],
        "layer 1 first, limit 0"
    );
    let mut want: Vec<Filter> = vec![as_live(state_filter("repo"))];
    want.extend(repo_filters(&repo).into_iter().map(as_live));
    assert_eq!(
        lives[1].1.iter().cloned().collect::<BTreeSet<_>>(),
        want.into_iter().collect::<BTreeSet<_>>()
    );

    // Historic part: negentropy, layer 1 first, no `since`, no REQ yet.
    assert!(
        historic(&cmds, A).is_empty(),
        "fresh start uses negentropy: {cmds:?}"
    );
    let negs = negentropy(&cmds, A);
    assert_eq!(negs[0].1, layer1());
    let mut want = vec![layer1(), state_filter("repo")];
    want.extend(repo_filters(&repo));
    assert_eq!(
        negs.iter().map(|(_, f)| f.clone()).collect::<BTreeSet<_>>(),
        want.into_iter().collect::<BTreeSet<_>>()
    );
    assert!(negs.iter().all(|(_, f)| f.since.is_none()));
    // Layer-1 live REQ goes out before any repo filter.
    let first_repo_cmd = cmds
        .iter()
        .position(
            |c| matches!(c, Command::Subscribe { filters, .. } if kind_of(&filters[0]) != "L1"),
        )
        .unwrap();
    let first_l1 = cmds
        .iter()
        .position(
            |c| matches!(c, Command::Subscribe { filters, .. } if kind_of(&filters[0]) == "L1"),
        )
        .unwrap();
    assert!(first_l1 < first_repo_cmd);
    assert_eq!(h.status(A), ConnectionStatus::Syncing);
}

// ---------------------------------------------------------------------------------------
// 3. Quick reconnect within 15 min (since = disconnect − 60 s, L1 AND L2/L3), fresh start
//    after.
// ---------------------------------------------------------------------------------------

#[test]
fn r03_quick_reconnect_within_15_minutes_fresh_start_after() {
    let (mut h, k, repo) = with_repo(config(), &[A]);
    h.connect_and_settle(A);
    let root = issue(&k, &repo, T0 - 50, "bug");
    let cmds = accept_root(&mut h, &root);
    h.settle(A, &cmds);
    h.advance(Duration::from_secs(60));
    assert_eq!(h.status(A), ConnectionStatus::Connected);

    let gone_at = h.now;
    h.disconnect(A);
    h.advance(Duration::from_secs(10 * 60));
    let cmds = h.connect(A);

    assert!(
        negentropy(&cmds, A).is_empty(),
        "quick reconnect never uses negentropy"
    );
    let since = Some((gone_at - Duration::from_secs(60)).as_timestamp());
    let hist = historic(&cmds, A);
    for (_, f) in &hist {
        assert_eq!(f.since, since, "every historic REQ carries since: {f:?}");
    }
    let got = hist
        .iter()
        .map(|(_, f)| without_paging(f).remove_since())
        .collect::<BTreeSet<_>>();
    let mut want = vec![layer1(), state_filter("repo")];
    want.extend(repo_filters(&repo));
    want.extend(root_filters(&root.id));
    assert_eq!(
        got,
        want.into_iter().collect::<BTreeSet<_>>(),
        "L1 and L2/L3 back-filled"
    );
    // Live rebuilt from confirmed state: L1 + state + L2 + L3.
    let live_kinds = kinds_of(live(&cmds, A).iter().flat_map(|(_, f)| f));
    assert!(live_kinds.contains("L1") && live_kinds.contains("#e") && live_kinds.contains("#a"));
    assert_eq!(h.engine.metrics().quick_reconnects, 1);
    h.settle(A, &cmds);

    // Away for 20 minutes: fresh start, negentropy again, no since.
    h.disconnect(A);
    h.advance(Duration::from_secs(20 * 60));
    let cmds = h.connect(A);
    let negs = negentropy(&cmds, A);
    assert!(!negs.is_empty(), "fresh start after 20 min: {cmds:?}");
    assert!(negs.iter().all(|(_, f)| f.since.is_none()));
    assert!(historic(&cmds, A).is_empty());
    assert_eq!(h.engine.metrics().quick_reconnects, 1);
}

// ---------------------------------------------------------------------------------------
// 4. Daily fresh start, 23–25 h after connect (jitter from the RNG), on the live socket.
// ---------------------------------------------------------------------------------------

#[test]
fn r04_daily_fresh_start_between_23_and_25_hours_without_reconnecting() {
    let span_ms = 2 * 3600 * 1000u64;
    for (random, expected_h) in [(0u64, 23.0f64), (span_ms / 2, 24.0), (span_ms, 25.0)] {
        let mut h = Harness::with(config(), Arc::new(AllowAllRelays), random);
        let k = keys(1);
        h.accept(&announcement(&k, "repo", &[US, A], T0));
        h.advance(Duration::from_secs(5));
        h.connect_and_settle(A);
        assert_eq!(h.status(A), ConnectionStatus::Connected);
        let connected_at = h.now;
        let live_before: BTreeSet<_> = h
            .engine
            .live_subscriptions(&url(A))
            .into_iter()
            .map(|(id, _)| id)
            .collect();

        let due = Duration::from_millis((expected_h * 3600.0 * 1000.0) as u64);
        let cmds = h.advance(due - Duration::from_secs(1));
        assert!(
            negentropy(&cmds, A).is_empty(),
            "too early ({expected_h} h)"
        );
        assert!(connects(&cmds).is_empty() && disconnects(&cmds).is_empty());

        let cmds = h.advance(Duration::from_secs(3));
        let fired_after = h.now.saturating_since(connected_at);
        assert!(
            fired_after >= Duration::from_secs(23 * 3600)
                && fired_after <= Duration::from_secs(25 * 3600 + 2),
            "fired after {fired_after:?}"
        );
        assert!(
            !negentropy(&cmds, A).is_empty(),
            "daily fresh start at {expected_h} h: {cmds:?}"
        );
        assert!(connects(&cmds).is_empty(), "on the live connection");
        assert!(disconnects(&cmds).is_empty());
        assert!(
            live_before.is_subset(&unsubscribes(&cmds, A)),
            "old subscriptions closed"
        );
        assert_eq!(h.status(A), ConnectionStatus::Syncing);
        assert_eq!(h.engine.metrics().fresh_starts, 2);
    }
}

// ---------------------------------------------------------------------------------------
// 5. Negentropy fallback to REQ+EOSE.
// ---------------------------------------------------------------------------------------

#[test]
fn r05a_notice_while_negentropy_open_falls_back_to_req() {
    let (mut h, _k, _repo) = with_repo(config(), &[A]);
    let cmds = h.connect(A);
    let negs = negentropy(&cmds, A);
    assert_eq!(negs.len(), 5);

    let cmds = h.notice(A, "ERROR: bad msg: unknown cmd");
    let reqs = historic(&cmds, A);
    assert_eq!(
        reqs.iter()
            .map(|(_, f)| without_paging(f))
            .collect::<BTreeSet<_>>(),
        negs.iter().map(|(_, f)| f.clone()).collect::<BTreeSet<_>>(),
        "one REQ for each filter the sessions were reconciling"
    );
    assert!(reqs.iter().all(|(_, f)| f.limit == Some(500)));
    assert!(negentropy(&cmds, A).is_empty());
    assert_eq!(h.engine.metrics().negentropy_fallbacks, 5);
}

#[test]
fn r05b_unsupported_falls_back_and_is_remembered_on_the_connection() {
    let mut cfg = config();
    cfg.max_concurrent_historic = 1;
    let (mut h, _k, _repo) = with_repo(cfg, &[A]);
    let cmds = h.connect(A);
    let negs = negentropy(&cmds, A);
    assert_eq!(negs.len(), 1, "one historic slot");
    assert_eq!(negs[0].1, layer1());

    let mut cmds = h.feed(Input::NegentropyFailed {
        relay: url(A),
        session: negs[0].0.clone(),
        reason: NegentropyFailure::Unsupported,
    });
    let reqs = historic(&cmds, A);
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        without_paging(&reqs[0].1),
        layer1(),
        "REQ for the same filter"
    );

    // The rest of the fresh start (state and L2 parts, queued as negentropy) now runs
    // as REQ directly: no second NEG-OPEN on this connection.
    let mut seen = Vec::new();
    for _ in 0..10 {
        let reqs = historic(&cmds, A);
        assert!(
            negentropy(&cmds, A).is_empty(),
            "capability remembered: {cmds:?}"
        );
        if reqs.is_empty() {
            break;
        }
        seen.extend(reqs.iter().map(|(_, f)| kind_of(f)));
        cmds = reqs
            .iter()
            .flat_map(|(id, _)| h.answer(A, id, &[]))
            .collect::<Vec<_>>();
    }
    assert_eq!(seen, ["L1", "state", "#a", "#A", "#q"]);
    assert_eq!(h.status(A), ConnectionStatus::Connected);
}

#[test]
fn r05c_silent_negentropy_times_out_into_req() {
    let (mut h, _k, _repo) = with_repo(config(), &[A]);
    let cmds = h.connect(A);
    let negs = negentropy(&cmds, A);
    assert_eq!(negs.len(), 5);

    // The executor watches the sessions and reports the relay's silence (its idle
    // timeout, shared with the engine); the engine itself does not cut a slow but
    // progressing reconciliation short.
    let cmds = h.advance(Duration::from_secs(60));
    assert!(historic(&cmds, A).is_empty(), "no fallback of its own yet");
    let mut cmds = Vec::new();
    for (id, _) in &negs {
        cmds.extend(h.feed(Input::NegentropyFailed {
            relay: url(A),
            session: id.clone(),
            reason: NegentropyFailure::Timeout,
        }));
    }
    assert!(
        unsubscribes(&cmds, A).is_empty(),
        "no CLOSE for a negentropy session: it is no REQ subscription"
    );
    assert_eq!(
        historic(&cmds, A)
            .iter()
            .map(|(_, f)| without_paging(f))
            .collect::<BTreeSet<_>>(),
        negs.iter().map(|(_, f)| f.clone()).collect::<BTreeSet<_>>()
    );
    h.settle(A, &cmds);
    assert_eq!(h.status(A), ConnectionStatus::Connected);
}

/// An executor that never answers about a session: the engine falls back on its own
/// once the shared total timeout and a grace period have passed.
#[test]
fn r05d_a_session_nobody_answers_falls_back_after_the_total_timeout() {
    let cfg = config();
    let total = cfg.negentropy_total_timeout;
    let (mut h, _k, _repo) = with_repo(cfg, &[A]);
    let cmds = h.connect(A);
    let negs = negentropy(&cmds, A);
    let cmds = h.advance(total);
    assert!(
        historic(&cmds, A).is_empty(),
        "not before the total timeout"
    );
    let cmds = h.advance(grasp_sync::engine::NEGENTROPY_ANSWER_GRACE + Duration::from_secs(3));
    assert_eq!(
        historic(&cmds, A).len(),
        negs.len(),
        "REQ instead: {cmds:?}"
    );
    assert!(unsubscribes(&cmds, A).is_empty());
}

/// On a relay that proved it speaks NIP-77, history found during a sync (a new root
/// event here) goes by negentropy too, not only at fresh starts; a `since` catch-up
/// (quick reconnect) stays REQ.
#[test]
fn r05e_history_found_during_a_sync_goes_by_negentropy_where_the_relay_has_it() {
    let (mut h, k, repo) = with_repo(config(), &[A]);
    let mut todo = h.connect(A);
    while !todo.is_empty() {
        let negs = negentropy(&todo, A);
        assert!(
            historic(&todo, A).is_empty(),
            "fresh start: negentropy only"
        );
        todo = negs
            .iter()
            .flat_map(|(id, _)| h.neg_result(A, id, &[]))
            .collect();
    }
    let root = issue(&k, &repo, T0 - 1000, "bug");
    let cmds = accept_root(&mut h, &root);
    assert!(historic(&cmds, A).is_empty(), "no REQ: {cmds:?}");
    assert_eq!(
        negentropy(&cmds, A)
            .iter()
            .map(|(_, f)| kind_of(f))
            .collect::<BTreeSet<_>>(),
        ["#e", "#E", "#q"].map(String::from).into()
    );
    h.settle(A, &cmds);
    h.disconnect(A);
    h.advance(Duration::from_secs(60));
    let cmds = h.connect(A);
    assert!(
        negentropy(&cmds, A).is_empty(),
        "a quick reconnect asks `since` by REQ"
    );
    assert!(historic(&cmds, A).iter().all(|(_, f)| f.since.is_some()));
}

// ---------------------------------------------------------------------------------------
// 6. Pagination with inclusive `until`.
// ---------------------------------------------------------------------------------------

#[test]
fn r06_pagination_full_page_asks_older_inclusive_until_and_stops_without_new_ids() {
    let mut cfg = config();
    cfg.default_limits.page_limit = 3;
    let (mut h, k, repo) = with_repo(cfg, &[A]);
    h.connect_and_settle(A);
    let root = issue(&k, &repo, T0 - 1000, "bug");
    let cmds = accept_root(&mut h, &root);
    let reqs = historic(&cmds, A);
    assert_eq!(reqs.len(), 3, "#e, #E, #q: {reqs:?}");
    let (sub, filter) = reqs
        .iter()
        .find(|(_, f)| kind_of(f) == "#e")
        .unwrap()
        .clone();
    assert_eq!(filter.limit, Some(3));

    let page: Vec<Event> = [300, 200, 100]
        .iter()
        .map(|t| reply(&k, &root.id, T0 - 1000 + t, &format!("r{t}")))
        .collect();
    let cmds = h.answer(A, &sub, &page);
    assert!(unsubscribes(&cmds, A).contains(&sub));
    assert_eq!(ingested(&cmds).len(), 3);
    let next = historic(&cmds, A);
    assert_eq!(next.len(), 1, "a full page asks again: {cmds:?}");
    let oldest = Timestamp::from_secs(T0 - 1000 + 100);
    assert_eq!(
        next[0].1,
        filter.clone().remove_limit().until(oldest).limit(3)
    );

    // The relay answers with the boundary event again (inclusive until) and nothing
    // older: no new id, so the subscription is done.
    let (sub2, _) = next[0].clone();
    let cmds = h.answer(A, &sub2, &page[2..]);
    assert!(unsubscribes(&cmds, A).contains(&sub2));
    assert!(ingested(&cmds).is_empty(), "dedupe by id");
    assert!(historic(&cmds, A).is_empty(), "no new ids → done: {cmds:?}");

    for (id, _) in reqs.iter().filter(|(id, _)| *id != sub) {
        h.answer(A, id, &[]);
    }
    assert_eq!(h.status(A), ConnectionStatus::Connected);
    assert!(h
        .engine
        .relay_index()
        .get(&url(A))
        .unwrap()
        .confirmed
        .root_events
        .contains(&root.id));
}

// ---------------------------------------------------------------------------------------
// 7. CLOSED instead of EOSE ends that part: the batch fails, never hangs, is retried.
// ---------------------------------------------------------------------------------------

#[test]
fn r07_closed_instead_of_eose_fails_the_batch_then_retry_recovers() {
    let (mut h, k, repo) = with_repo(config(), &[A]);
    h.connect_and_settle(A);
    let root = issue(&k, &repo, T0 - 1000, "bug");
    let cmds = accept_root(&mut h, &root);
    let reqs = historic(&cmds, A);
    assert_eq!(reqs.len(), 3);

    h.closed(A, &reqs[0].0, "error: shutting down");
    for (id, _) in &reqs[1..] {
        h.answer(A, id, &[]);
    }
    assert!(
        h.engine.pending_index().batches(&url(A)).is_empty(),
        "the batch finished"
    );
    assert_eq!(h.status(A), ConnectionStatus::ConnectedHistoricSyncFailures);

    // Failed history is retried (30 s backoff), historic parts only.
    let cmds = h.advance(Duration::from_secs(29));
    assert!(historic(&cmds, A).is_empty());
    let cmds = h.advance(Duration::from_secs(3));
    let retry = historic(&cmds, A);
    assert_eq!(
        retry
            .iter()
            .map(|(_, f)| without_paging(f))
            .collect::<BTreeSet<_>>(),
        root_filters(&root.id).into_iter().collect::<BTreeSet<_>>(),
        "the failed item's history again, from the start"
    );
    assert!(live(&cmds, A).is_empty(), "live coverage was never lost");
    h.settle(A, &cmds);
    assert_eq!(h.status(A), ConnectionStatus::Connected);
}

/// A batch whose parts cover different items: when one part fails, the retry asks
/// only what that part named, not the whole batch again.
#[test]
fn r07c_a_retry_asks_only_what_the_failed_part_named() {
    let mut cfg = config();
    cfg.default_limits.chunk_size = 1; // one root event per filter
    let (mut h, k, repo) = with_repo(cfg, &[A]);
    h.connect_and_settle(A);
    let bug = issue(&k, &repo, T0 - 1000, "bug");
    let other = issue(&k, &repo, T0 - 900, "other");
    h.accept(&bug);
    let cmds = accept_root(&mut h, &other);
    let reqs = historic(&cmds, A);
    assert_eq!(reqs.len(), 6, "#e, #E, #q for each root: {reqs:?}");
    let names =
        |f: &Filter, id: &EventId| f.generic_tags.values().any(|v| v.contains(&id.to_hex()));
    let (failing, _) = reqs
        .iter()
        .find(|(_, f)| kind_of(f) == "#e" && names(f, &bug.id))
        .unwrap()
        .clone();
    h.closed(A, &failing, "error: shutting down");
    for (id, _) in reqs.iter().filter(|(id, _)| *id != failing) {
        h.answer(A, id, &[]);
    }
    assert_eq!(h.status(A), ConnectionStatus::ConnectedHistoricSyncFailures);

    let cmds = h.advance(Duration::from_secs(32));
    let retry = historic(&cmds, A);
    assert!(!retry.is_empty(), "the failed part is retried: {cmds:?}");
    assert!(
        retry
            .iter()
            .all(|(_, f)| names(f, &bug.id) && !names(f, &other.id)),
        "only the failed part's root again: {retry:?}"
    );
    h.settle(A, &cmds);
    assert_eq!(h.status(A), ConnectionStatus::Connected);
}

/// A relay without NIP-77 that returns at most three events per REQ, and a root event
/// with five replies on one second: REQ cannot deliver them all. Returns the harness
/// once that batch has failed, the root and the replies.
fn tie_group_over_the_cap() -> (Harness, Event, Vec<Event>) {
    let mut cfg = config();
    cfg.default_limits.page_limit = 3;
    cfg.default_limits.max_limit = Some(3);
    let (mut h, k, repo) = with_repo(cfg, &[A]);
    h.connect_and_settle(A);
    let root = issue(&k, &repo, T0 - 10_000, "bug");
    let cmds = accept_root(&mut h, &root);
    let tied: Vec<Event> = (0..5)
        .map(|i| reply(&k, &root.id, T0 - 5_000, &format!("tied {i}")))
        .collect();
    // Every REQ whose filters match the replies gets the newest three (the cap) while
    // it asks at or after their second; everything else (and older) is empty.
    let mut todo = cmds;
    let mut pages = 0;
    while !todo.is_empty() {
        let mut next = Vec::new();
        for (id, fs) in historic_reqs(&todo, A) {
            let opts = nostr::filter::MatchEventOptions::new();
            let tie_page = fs.iter().any(|f| {
                f.match_event(&tied[0], opts) && f.until.is_none_or(|u| u.as_secs() >= T0 - 5_000)
            });
            let page: &[Event] = if tie_page { &tied[..3] } else { &[] };
            next.extend(h.answer(A, &id, page));
            pages += 1;
            assert!(pages < 30, "pagination ends");
        }
        todo = next;
    }
    (h, root, tied)
}

/// A tie group larger than the relay's known cap: REQ cannot deliver it, so the failure
/// stays recorded (and visible) but is not asked again by REQ with every retry — only
/// NIP-77 (offered again after the re-probe interval, r07e) or the next fresh start do.
#[test]
fn r07d_what_req_cannot_deliver_is_not_asked_again_by_req() {
    let (mut h, _root, _tied) = tie_group_over_the_cap();
    assert_eq!(h.status(A), ConnectionStatus::ConnectedHistoricSyncFailures);
    let cmds = h.advance(Duration::from_secs(600));
    assert!(
        historic(&cmds, A).is_empty(),
        "what REQ cannot deliver is not asked again by REQ: {cmds:?}"
    );
    assert_eq!(
        h.status(A),
        ConnectionStatus::ConnectedHistoricSyncFailures,
        "and stays visible"
    );
    let why = h
        .engine
        .status(h.now)
        .into_iter()
        .find(|r| r.relay == url(A))
        .and_then(|r| r.last_error)
        .unwrap_or_default();
    assert!(
        why.contains("history incomplete: TieGroupLargerThanCap"),
        "the reason is in the relay's status: {why:?}"
    );
}

/// The relay that refused NIP-77 is offered it again after the re-probe interval (not
/// only at the daily fresh start): what REQ could not deliver is asked by negentropy,
/// and once the relay has it, the failure is gone.
#[test]
fn r07e_a_relay_that_refused_nip77_is_offered_it_again_after_the_reprobe_interval() {
    let (mut h, root, tied) = tie_group_over_the_cap();
    let interval = config().negentropy_reprobe_interval;
    let cmds = h.advance(interval - Duration::from_secs(60));
    assert!(negentropy(&cmds, A).is_empty(), "not before the interval");
    let cmds = h.advance(Duration::from_secs(120));
    let negs = negentropy(&cmds, A);
    assert!(historic(&cmds, A).is_empty(), "no REQ: {cmds:?}");
    assert_eq!(
        negs.iter()
            .map(|(_, f)| kind_of(f))
            .collect::<BTreeSet<_>>(),
        ["#e", "#E", "#q"].map(String::from).into(),
        "the root's history, by negentropy"
    );
    assert_eq!(h.engine.metrics().negentropy_reprobes, 1);
    // The relay speaks NIP-77 now: the ids it has and we lack are fetched by id.
    let held: BTreeSet<EventId> = tied[..3].iter().map(|e| e.id).collect();
    let need: Vec<EventId> = tied
        .iter()
        .map(|e| e.id)
        .filter(|id| !held.contains(id))
        .collect();
    let mut fetches = Vec::new();
    for (session, f) in &negs {
        let ids = if kind_of(f) == "#e" {
            need.clone()
        } else {
            Vec::new()
        };
        fetches.extend(historic(&h.neg_result(A, session, &ids), A));
    }
    assert_eq!(fetches.len(), 1, "one fetch by id: {fetches:?}");
    let cmds = h.answer(A, &fetches[0].0, &tied[3..]);
    let got: BTreeSet<EventId> = ingested(&cmds).into_iter().collect();
    assert_eq!(got, need.iter().copied().collect(), "{root:?}");
    for id in need {
        h.verdict(id, IngestOutcome::Accepted);
    }
    assert_eq!(
        h.status(A),
        ConnectionStatus::Connected,
        "the failure is gone"
    );
}

#[test]
fn r07b_historic_req_without_any_answer_times_out() {
    let (mut h, k, repo) = with_repo(config(), &[A]);
    h.connect_and_settle(A);
    let root = issue(&k, &repo, T0 - 1000, "bug");
    let cmds = accept_root(&mut h, &root);
    let reqs = historic(&cmds, A);
    assert_eq!(reqs.len(), 3);
    let cmds = h.advance(Duration::from_secs(125));
    let closed = unsubscribes(&cmds, A);
    assert!(reqs.iter().all(|(id, _)| closed.contains(id)));
    assert_eq!(h.status(A), ConnectionStatus::ConnectedHistoricSyncFailures);
}

// ---------------------------------------------------------------------------------------
// 8. Rate limit: 65 s without new subscriptions, then what waited is sent.
// ---------------------------------------------------------------------------------------

#[test]
fn r08_rate_limit_notice_holds_subscriptions_for_65_seconds() {
    let (mut h, k, repo) = with_repo(config(), &[A]);
    h.connect_and_settle(A);
    let limited_at = h.now;
    h.notice(A, "rate-limited: slow down");

    let root = issue(&k, &repo, T0 - 1000, "bug");
    let mut cmds = h.accept(&root);
    cmds.extend(h.advance(Duration::from_secs(64)));
    assert!(
        subscribes(&cmds, A, SubscriptionMode::Live).is_empty()
            && historic(&cmds, A).is_empty()
            && negentropy(&cmds, A).is_empty(),
        "nothing while cooling down: {cmds:?}"
    );

    let cmds = h.advance(Duration::from_secs(4));
    assert!(h.now.saturating_since(limited_at) >= Duration::from_secs(65));
    let lives = live(&cmds, A);
    assert_eq!(
        lives
            .iter()
            .flat_map(|(_, f)| f.clone())
            .collect::<BTreeSet<_>>(),
        root_filters(&root.id)
            .into_iter()
            .map(as_live)
            .collect::<BTreeSet<_>>()
    );
    assert_eq!(historic(&cmds, A).len(), 3);
    h.settle(A, &cmds);
    assert_eq!(h.status(A), ConnectionStatus::Connected);
}

/// A history of more pages than a relay's REQ rate allows at once: every page after the
/// first is refused once (CLOSED "rate-limited", or a NOTICE naming nothing, after
/// which the REQ that never answers times out as refused). Each refused page waits out
/// the cooldown and is asked again *as it was* — same `until`,
/// same `limit`, ids seen kept — not from the newest page; refusals count only in a row,
/// so the history completes and nothing is reported failed.
#[test]
fn r08c_rate_limited_pages_resume_where_they_were_after_the_cooldown() {
    let mut cfg = config();
    cfg.default_limits.page_limit = 3;
    let (mut h, k, repo) = with_repo(cfg, &[A]);
    h.connect_and_settle(A);
    let root = issue(&k, &repo, T0 - 10_000, "bug");
    let cmds = accept_root(&mut h, &root);
    let reqs = historic(&cmds, A);
    let (mut sub, filter) = reqs
        .iter()
        .find(|(_, f)| kind_of(f) == "#e")
        .unwrap()
        .clone();
    for (id, _) in reqs.iter().filter(|(id, _)| *id != sub) {
        h.answer(A, id, &[]);
    }
    // 12 replies, newest first, 4 full pages of 3.
    let replies: Vec<Event> = (0..12u64)
        .map(|i| reply(&k, &root.id, T0 - 1000 - 10 * i, &format!("r{i}")))
        .collect();
    let mut ingested_total = 0;
    let mut until: Option<Timestamp> = None;
    for (n, page) in replies.chunks(3).enumerate() {
        if n > 0 {
            // The relay refuses this page once: by CLOSED on odd pages, NOTICE on even.
            let cmds = if n % 2 == 1 {
                let refused = h.closed(A, &sub, "rate-limited: slow down");
                assert!(historic(&refused, A).is_empty(), "not during the cooldown");
                let cmds = h.advance(Duration::from_secs(60));
                assert!(historic(&cmds, A).is_empty(), "not during the cooldown");
                h.advance(Duration::from_secs(10))
            } else {
                // A NOTICE names no subscription: the REQ stays open (the relay may be
                // serving it) until it times out with nothing, then counts as refused.
                let cmds = h.notice(A, "rate-limited: too many requests");
                assert!(
                    !unsubscribes(&cmds, A).contains(&sub),
                    "a REQ the relay may have accepted is not closed early: {cmds:?}"
                );
                let cmds = h.advance(Duration::from_secs(110));
                assert!(historic(&cmds, A).is_empty(), "not before it timed out");
                h.advance(Duration::from_secs(15))
            };
            let again = historic(&cmds, A);
            assert_eq!(again.len(), 1, "the refused page, once: {cmds:?}");
            assert_eq!(
                again[0].1,
                filter.clone().remove_limit().until(until.unwrap()).limit(3),
                "page {n} asked again where it was"
            );
            sub = again[0].0.clone();
        }
        let cmds = h.answer(A, &sub, page);
        ingested_total += ingested(&cmds).len();
        until = Some(page.last().unwrap().created_at);
        let next = historic(&cmds, A);
        assert_eq!(next.len(), 1, "a full page asks the next at once: {cmds:?}");
        assert_eq!(
            next[0].1,
            filter.clone().remove_limit().until(until.unwrap()).limit(3)
        );
        sub = next[0].0.clone();
    }
    // The last, short page ends it.
    let cmds = h.answer(A, &sub, &replies[11..]);
    assert!(historic(&cmds, A).is_empty());
    assert_eq!(ingested_total, 12, "every reply, each once");
    assert_eq!(h.status(A), ConnectionStatus::Connected, "nothing failed");
    assert!(h
        .engine
        .relay_index()
        .get(&url(A))
        .unwrap()
        .confirmed
        .root_events
        .contains(&root.id));
}

// ---------------------------------------------------------------------------------------
// 9. Consolidation above max_live_filters, without historic re-sync.
// ---------------------------------------------------------------------------------------

/// A live REQ refused with "too many filters": the relay's limit is learnt from the
/// refusal (half the filters that REQ carried), and the same filters are asked again in
/// smaller REQs.
#[test]
fn r08d_too_many_filters_is_learnt_from_the_refusal() {
    let (mut h, _k, _repo) = with_repo(config(), &[A]);
    let cmds = h.connect_and_settle(A);
    let before: Vec<Filter> = live(&cmds, A).into_iter().flat_map(|(_, f)| f).collect();
    let (big, filters) = live(&cmds, A)
        .into_iter()
        .max_by_key(|(_, f)| f.len())
        .unwrap();
    assert!(filters.len() > 2, "{filters:?}");
    h.closed(A, &big, "error: too many filters");
    let cmds = h.advance(Duration::from_secs(3));
    let rebuilt = live(&cmds, A);
    assert!(!rebuilt.is_empty(), "asked again: {cmds:?}");
    assert!(
        rebuilt.iter().all(|(_, f)| f.len() <= filters.len() / 2),
        "at most half as many filters per REQ: {rebuilt:?}"
    );
    let after: BTreeSet<Filter> = h
        .engine
        .live_subscriptions(&url(A))
        .into_iter()
        .flat_map(|(_, f)| f)
        .collect();
    assert!(
        before.iter().all(|f| after.contains(f)),
        "everything still live"
    );
    // NIP-11 limits arriving later do not undo what the refusal taught.
    let nip11 = grasp_sync::filters::RelayLimits {
        max_filters_per_req: 20,
        ..Default::default()
    };
    h.engine.set_relay_limits(&url(A), nip11);
    let (any, _) = h.engine.live_subscriptions(&url(A)).remove(0);
    h.closed(A, &any, "error: restarting");
    let cmds = h.advance(Duration::from_secs(3));
    let rebuilt = live(&cmds, A);
    assert!(!rebuilt.is_empty(), "rebuilt: {cmds:?}");
    assert!(
        rebuilt.iter().all(|(_, f)| f.len() <= filters.len() / 2),
        "{rebuilt:?}"
    );
}

/// A relay that closes every live subscription at once (say, refusing each REQ of one
/// rebuild) costs one rebuild of the budget, not one per subscription: live coverage is
/// rebuilt, not given up.
#[test]
fn r09c_live_subscriptions_closed_together_cost_one_rebuild() {
    let mut cfg = config();
    cfg.default_limits.max_filters_per_req = 1;
    let (mut h, k, repo) = with_repo(cfg, &[A]);
    h.connect_and_settle(A);
    let root = issue(&k, &repo, T0 - 1000, "bug");
    let cmds = accept_root(&mut h, &root);
    h.settle(A, &cmds);
    let subs = h.engine.live_subscriptions(&url(A));
    assert!(
        subs.len() > config().max_live_resubscribes as usize,
        "more live subscriptions than rebuilds allowed: {}",
        subs.len()
    );
    for (id, _) in subs {
        h.closed(A, &id, "error: shutting down");
    }
    let cmds = h.advance(Duration::from_secs(3));
    assert!(!live(&cmds, A).is_empty(), "rebuilt: {cmds:?}");
    // The rebuild's `since` catch-up answers; then the relay settles.
    let more = h.settle(A, &cmds);
    h.settle(A, &more);
    h.advance(Duration::from_secs(3));
    assert_eq!(
        h.status(A),
        ConnectionStatus::Connected,
        "live coverage not given up"
    );
}

/// Consolidation is amortised: a rebuild re-sends every live filter, so a relay whose
/// live filters are many is not rebuilt for each small batch, only once the filters
/// have doubled or the subscriptions grown by the live budget's (7 here) since the last
/// rebuild. The subscriptions stay bounded and everything stays live.
#[test]
fn r09d_consolidation_is_amortised_and_subscriptions_stay_bounded() {
    let mut cfg = config();
    cfg.default_limits.chunk_size = 4;
    let (mut h, k, repo) = with_repo(cfg, &[A]);
    h.connect_and_settle(A);
    let mut roots = Vec::new();
    let mut most_subscriptions = 0;
    for i in 0..100u64 {
        let root = issue(&k, &repo, T0 - 1000 + i, &format!("issue {i}"));
        roots.push(root.id);
        let cmds = accept_root(&mut h, &root);
        h.settle(A, &cmds);
        if h.live_filter_count(A) > 70 {
            let open = h.engine.live_subscriptions(&url(A)).len();
            most_subscriptions = most_subscriptions.max(open);
        }
    }
    let rebuilds = h.engine.metrics().consolidations;
    // Each root opens one triple in a REQ of its own; a rebuild packs four roots per
    // triple and ten filters per REQ. Rebuilding whenever fewer filters would do (the
    // rule before) took 24 rebuilds here (9 now).
    assert!(
        (1..=15).contains(&rebuilds),
        "{rebuilds} consolidations for 100 roots"
    );
    // Past the 70-filter threshold: ~80 filters at the end fit in 8 REQs, and the rule
    // lets at most 7 more open before a rebuild. (Under it, as with the rule before,
    // each batch's filters may sit in a REQ of their own.)
    assert!(
        most_subscriptions <= 16,
        "{most_subscriptions} live subscriptions"
    );
    let e_values: BTreeSet<String> = h
        .engine
        .live_subscriptions(&url(A))
        .into_iter()
        .flat_map(|(_, f)| f)
        .filter_map(|f| tag_values(&f, 'e'))
        .flatten()
        .collect();
    assert_eq!(e_values, roots.iter().map(|r| r.to_hex()).collect());
}

#[test]
fn r09_consolidation_rebuilds_live_filters_without_resync() {
    let mut cfg = config();
    cfg.default_limits.max_live_filters = 10;
    let (mut h, k, repo) = with_repo(cfg, &[A]);
    h.connect_and_settle(A);
    assert_eq!(h.live_filter_count(A), 5, "L1 + state + #a #A #q");

    let mut roots = Vec::new();
    let mut consolidated = false;
    for i in 0..6u64 {
        let open_before: BTreeSet<_> = h
            .engine
            .live_subscriptions(&url(A))
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let root = issue(&k, &repo, T0 - 1000 + i, &format!("issue {i}"));
        roots.push(root.id);
        let cmds = accept_root(&mut h, &root);
        // History only for the new root, whatever happened to live subscriptions.
        assert!(negentropy(&cmds, A).is_empty());
        let hist: BTreeSet<Filter> = historic(&cmds, A)
            .iter()
            .map(|(_, f)| without_paging(f))
            .collect();
        assert_eq!(
            hist,
            root_filters(&root.id).into_iter().collect(),
            "no re-sync"
        );
        let closed = unsubscribes(&cmds, A);
        if open_before.is_subset(&closed) {
            consolidated = true;
            assert!(h.live_filter_count(A) <= 10, "rebuilt under the threshold");
            // Everything held is still live, in fewer filters.
            let filters: Vec<Filter> = h
                .engine
                .live_subscriptions(&url(A))
                .into_iter()
                .flat_map(|(_, f)| f)
                .collect();
            let e_values: BTreeSet<String> = filters
                .iter()
                .filter_map(|f| tag_values(f, 'e'))
                .flatten()
                .collect();
            assert_eq!(e_values, roots.iter().map(|r| r.to_hex()).collect());
            assert!(filters.contains(&as_live(layer1())));
            assert!(filters.contains(&as_live(state_filter("repo"))));
        } else {
            assert!(closed.is_empty() || closed.iter().all(|id| !open_before.contains(id)));
        }
        h.settle(A, &cmds);
        assert_eq!(h.status(A), ConnectionStatus::Connected);
    }
    assert!(
        consolidated,
        "live filters passed the threshold and were consolidated"
    );
    assert!(h.engine.metrics().consolidations >= 1);
    assert_eq!(
        h.engine
            .relay_index()
            .get(&url(A))
            .unwrap()
            .confirmed
            .root_events
            .len(),
        6
    );
}

// ---------------------------------------------------------------------------------------
// 10. Historic completion decided from state.
// ---------------------------------------------------------------------------------------

#[test]
fn r10_syncing_until_accepted_events_are_applied_and_their_batch_done() {
    let (mut h, k, repo) = with_repo(config(), &[A]);
    let connect_cmds = h.connect(A);
    // An accepted root event waits in the batch window while the history runs.
    let root = issue(&k, &repo, T0 - 1000, "bug");
    h.accept(&root);
    assert_eq!(
        h.status(A),
        ConnectionStatus::Syncing,
        "an unprocessed accepted event could still add work"
    );
    // The connect's history ends: the waiting event is applied then, not when the
    // window closes, and the root's history is asked at once (no time passes here).
    let cmds = h.settle(A, &connect_cmds);
    let asked: BTreeSet<Filter> = historic(&cmds, A).into_iter().map(|(_, f)| f).collect();
    for f in root_filters(&root.id) {
        assert!(
            asked
                .iter()
                .any(|a| tag_values(a, f_letter(&f)) == tag_values(&f, f_letter(&f))),
            "the root's history is asked when the batch before it ends: {f:?}"
        );
    }
    assert!(h.engine.pending_index().batches(&url(A)).is_empty());
    assert_eq!(h.status(A), ConnectionStatus::Connected);
    assert!(
        h.engine
            .relay_index()
            .get(&url(A))
            .unwrap()
            .historic_sync_completed
    );
}

#[test]
fn r10b_waiting_events_are_applied_once_no_batch_is_in_flight_anywhere() {
    let (mut h, k, repo) = with_repo(config(), &[A, B]);
    let a_cmds = h.connect(A);
    let b_cmds = h.connect(B);
    let root = issue(&k, &repo, T0 - 1000, "bug");
    h.accept(&root);
    let asks_root = |cmds: &[Command], relay: &str| {
        historic(cmds, relay)
            .iter()
            .any(|(_, f)| tag_values(f, 'e').is_some_and(|v| v.contains(&root.id.to_hex())))
    };
    // A's history ends while B's still runs: the round is not over, so the root waits
    // (its threads are asked in one batch per relay, not one per finished relay).
    let after_a = h.settle(A, &a_cmds);
    assert!(!asks_root(&after_a, A) && !asks_root(&after_a, B));
    // B's ends too: applied at once, no window waited for.
    let after_b = h.settle(B, &b_cmds);
    assert!(asks_root(&after_b, A), "A asked for the root's threads");
    assert!(asks_root(&after_b, B), "B asked for the root's threads");
}

#[test]
fn r10c_a_round_also_ends_when_its_last_batch_goes_with_its_relay() {
    let (mut h, k, repo) = with_repo(config(), &[A, B]);
    let a_cmds = h.connect(A);
    h.connect(B);
    let root = issue(&k, &repo, T0 - 1000, "bug");
    h.accept(&root);
    h.settle(A, &a_cmds);
    // B drops with its batch still in flight: nothing is left in flight, so the
    // waiting root is applied at once, not when the window closes.
    let cmds = h.feed(Input::RelayDisconnected { relay: url(B) });
    let asks_root = historic(&cmds, A)
        .iter()
        .any(|(_, f)| tag_values(f, 'e').is_some_and(|v| v.contains(&root.id.to_hex())));
    assert!(asks_root, "A asked for the root's threads when B dropped");
}

/// The one tag letter a single-tag filter of [`root_filters`] has.
fn f_letter(f: &Filter) -> char {
    ['e', 'E', 'q']
        .into_iter()
        .find(|c| tag_values(f, *c).is_some())
        .expect("a root filter")
}

// ---------------------------------------------------------------------------------------
// 11. Root events with their announcement, and before it.
// ---------------------------------------------------------------------------------------

#[test]
fn r11a_root_in_the_same_batch_as_its_announcement_is_kept() {
    let mut h = Harness::new(config());
    let k = keys(1);
    let repo = coord(&k, "repo");
    // The root is older than the announcement and arrives first within the window.
    let root = issue(&k, &repo, T0 - 500, "bug");
    h.accept(&root);
    h.accept(&announcement(&k, "repo", &[US, A], T0 - 100));
    h.advance(Duration::from_secs(5));
    let cmds = h.connect(A);
    let live_filters: BTreeSet<Filter> = live(&cmds, A).into_iter().flat_map(|(_, f)| f).collect();
    for f in root_filters(&root.id) {
        assert!(live_filters.contains(&as_live(f.clone())), "live {f:?}");
    }
    let neg: BTreeSet<Filter> = negentropy(&cmds, A).into_iter().map(|(_, f)| f).collect();
    for f in root_filters(&root.id) {
        assert!(neg.contains(&f), "history {f:?}");
    }
}

#[test]
fn r11b_root_before_its_announcement_is_adopted_when_it_comes() {
    let mut h = Harness::new(config());
    let k = keys(1);
    let repo = coord(&k, "repo");
    let root = issue(&k, &repo, T0 - 500, "bug");
    accept_root(&mut h, &root);
    assert!(h.engine.repo_index().is_empty());
    h.advance(Duration::from_secs(60));

    h.accept(&announcement(&k, "repo", &[US, A], T0 - 100));
    h.advance(Duration::from_secs(5));
    assert!(h
        .engine
        .repo_index()
        .get(&repo)
        .unwrap()
        .root_events
        .contains(&root.id));
    let cmds = h.connect(A);
    let live_filters: BTreeSet<Filter> = live(&cmds, A).into_iter().flat_map(|(_, f)| f).collect();
    assert!(live_filters.contains(&as_live(single_tag('e', &root.id.to_hex()))));
}

// ---------------------------------------------------------------------------------------
// 12. Purgatory announcements: StateOnly, upgraded on acceptance, never downgraded.
// ---------------------------------------------------------------------------------------

#[test]
fn r12_purgatory_is_state_only_until_accepted_and_never_downgraded() {
    let mut h = Harness::new(config());
    let k = keys(1);
    let repo = coord(&k, "repo");
    let ann = announcement(&k, "repo", &[US, A], T0 - 100);

    let cmds = h.advance(Duration::from_millis(1));
    assert!(cmds.contains(&Command::ReadPurgatoryAnnouncements));
    let cmds = h.feed(Input::PurgatoryAnnouncements {
        announcements: vec![ann.clone()],
    });
    assert_eq!(connects(&cmds), BTreeSet::from([url(A)]));
    assert_eq!(
        h.engine.repo_index().get(&repo).unwrap().sync_level,
        SyncLevel::StateOnly
    );

    let cmds = h.connect(A);
    let all: Vec<Filter> = live(&cmds, A)
        .into_iter()
        .flat_map(|(_, f)| f)
        .chain(negentropy(&cmds, A).into_iter().map(|(_, f)| f))
        .collect();
    assert_eq!(
        kinds_of(&all),
        BTreeSet::from(["L1".to_string(), "state".to_string()])
    );
    h.settle(A, &cmds);
    assert_eq!(h.status(A), ConnectionStatus::Connected);

    // Promoted out of purgatory: the host accepted it.
    let cmds = accept_root(&mut h, &ann);
    let read_again = cmds.contains(&Command::ReadPurgatoryAnnouncements);
    assert_eq!(
        h.engine.repo_index().get(&repo).unwrap().sync_level,
        SyncLevel::Full
    );
    let lives: BTreeSet<Filter> = live(&cmds, A).into_iter().flat_map(|(_, f)| f).collect();
    for f in repo_filters(&repo) {
        assert!(
            lives.contains(&as_live(f.clone())),
            "L2 live {f:?}: {cmds:?}"
        );
    }
    let hist: BTreeSet<String> = historic(&cmds, A).iter().map(|(_, f)| kind_of(f)).collect();
    assert!(hist.contains("#a") && hist.contains("#A") && hist.contains("#q"));
    h.settle(A, &cmds);

    // Next purgatory read no longer lists it (it left purgatory): still Full.
    assert!(read_again, "the purgatory timer kept reading");
    let live_now = h.engine.live_subscriptions(&url(A));
    let cmds = h.feed(Input::PurgatoryAnnouncements {
        announcements: vec![],
    });
    assert_eq!(
        h.engine.repo_index().get(&repo).unwrap().sync_level,
        SyncLevel::Full
    );
    assert!(
        unsubscribes(&cmds, A).is_empty(),
        "nothing closed: {cmds:?}"
    );
    assert_eq!(h.engine.live_subscriptions(&url(A)), live_now);
    // Even if it shows up in purgatory again (a stale read), no downgrade.
    h.advance(Duration::from_secs(5));
    h.feed(Input::PurgatoryAnnouncements {
        announcements: vec![ann],
    });
    assert_eq!(
        h.engine.repo_index().get(&repo).unwrap().sync_level,
        SyncLevel::Full
    );
    assert_eq!(h.status(A), ConnectionStatus::Connected);
}

// ---------------------------------------------------------------------------------------
// 13. Relays dropped from an announcement: filters closed, relay disconnected — except
//     bootstrap relays.
// ---------------------------------------------------------------------------------------

#[test]
fn r13_dropped_relay_is_closed_and_disconnected_but_bootstrap_stays() {
    let cfg = config().with_bootstrap_relay(url(C));
    let mut h = Harness::new(cfg);
    let k = keys(1);
    // The bootstrap relay is dialled at once, the listed ones after the batch window.
    let cmds = h.accept(&announcement(&k, "repo", &[US, A, B, C], T0 - 100));
    assert_eq!(connects(&cmds), BTreeSet::from([url(C)]));
    let cmds = h.advance(Duration::from_secs(5));
    assert_eq!(connects(&cmds), BTreeSet::from([url(A), url(B)]));
    for r in [A, B, C] {
        h.connect_and_settle(r);
        assert_eq!(h.status(r), ConnectionStatus::Connected);
    }
    let live_b: BTreeSet<_> = h
        .engine
        .live_subscriptions(&url(B))
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let live_c: Vec<_> = h.engine.live_subscriptions(&url(C));
    let repo_subs_c: BTreeSet<_> = live_c
        .iter()
        .filter(|(_, f)| kind_of(&f[0]) != "L1")
        .map(|(id, _)| id.clone())
        .collect();

    // The update lists A only.
    let cmds = accept_root(&mut h, &announcement(&k, "repo", &[US, A], T0 - 50));
    assert!(unsubscribes(&cmds, A).is_empty(), "A keeps its filters");
    assert!(live_b.is_subset(&unsubscribes(&cmds, B)));
    assert!(repo_subs_c.is_subset(&unsubscribes(&cmds, C)));
    let mut all = cmds.clone();
    all.extend(h.advance(Duration::from_secs(3600)));
    assert_eq!(disconnects(&all), BTreeSet::from([url(B)]), "{all:?}");
    assert!(h.engine.relay_index().get(&url(B)).is_none());
    assert!(h.status(C).is_connected());
    // The bootstrap relay still carries layer 1, and nothing about the repo.
    let c_filters: Vec<Filter> = h
        .engine
        .live_subscriptions(&url(C))
        .into_iter()
        .flat_map(|(_, f)| f)
        .collect();
    assert_eq!(c_filters, vec![as_live(layer1())]);
}

// ---------------------------------------------------------------------------------------
// 14. Restart from a snapshot: quick reconnect within 15 min, fresh start after.
// ---------------------------------------------------------------------------------------

fn restarted(h: &Harness, after: Duration) -> Harness {
    restarted_with(h, after, config())
}

/// The host restarts from `h`'s snapshot `after` later, with `cfg`.
fn restarted_with(h: &Harness, after: Duration, cfg: SyncConfig) -> Harness {
    let snapshot = h.engine.snapshot(h.now);
    let now = h.now + after;
    Harness {
        now,
        engine: SyncEngine::restore(
            cfg,
            snapshot,
            now,
            Arc::new(AllowAllRelays),
            Box::new(FixedRandom(0)),
        ),
        hold_verdicts: false,
        unanswered: Vec::new(),
    }
}

#[test]
fn r14_restart_within_15_minutes_is_a_quick_reconnect() {
    let (mut h, k, repo) = with_repo(config(), &[A]);
    h.connect_and_settle(A);
    let root = issue(&k, &repo, T0 - 50, "bug");
    let cmds = accept_root(&mut h, &root);
    h.settle(A, &cmds);
    h.advance(Duration::from_secs(60));
    assert_eq!(h.status(A), ConnectionStatus::Connected);
    let stopped_at = h.now;

    let mut h2 = restarted(&h, Duration::from_secs(10 * 60));
    let cmds = h2.advance(Duration::from_millis(1));
    assert_eq!(
        connects(&cmds),
        BTreeSet::from([url(A)]),
        "dials what it synced before"
    );
    let cmds = h2.connect(A);
    assert!(negentropy(&cmds, A).is_empty(), "no full re-sync: {cmds:?}");
    let since = Some((stopped_at - Duration::from_secs(60)).as_timestamp());
    let hist = historic(&cmds, A);
    assert!(!hist.is_empty());
    assert!(hist.iter().all(|(_, f)| f.since == since));
    let kinds = kinds_of(hist.iter().map(|(_, f)| f));
    for k in ["L1", "state", "#a", "#e", "#E"] {
        assert!(kinds.contains(k), "{k} back-filled after restart");
    }

    let mut h3 = restarted(&h, Duration::from_secs(20 * 60));
    h3.advance(Duration::from_millis(1));
    let cmds = h3.connect(A);
    assert!(!negentropy(&cmds, A).is_empty(), "fresh start after 20 min");
    assert!(historic(&cmds, A).is_empty());
}

// ---------------------------------------------------------------------------------------
// 15. Hostile input is dropped and counted, never panics.
// ---------------------------------------------------------------------------------------

#[test]
fn r15_hostile_input_is_dropped_and_counted() {
    let mut cfg = config();
    cfg.default_limits.page_limit = 3;
    let (mut h, k, repo) = with_repo(cfg, &[A]);
    h.connect_and_settle(A);
    let root = issue(&k, &repo, T0 - 1000, "bug");
    let cmds = accept_root(&mut h, &root);
    let reqs = historic(&cmds, A);
    let (sub, _) = reqs
        .iter()
        .find(|(_, f)| kind_of(f) == "#e")
        .unwrap()
        .clone();

    // An event on a subscription we never opened.
    let stray = reply(&k, &root.id, T0, "stray");
    let out = h.feed(Input::Event {
        relay: url(A),
        subscription: SubscriptionId::new("nope"),
        event: Box::new(stray.clone()),
    });
    assert!(ingested(&out).is_empty());
    assert_eq!(h.engine.metrics().dropped_unknown_subscription, 1);
    // ... and from a relay we do not know.
    h.feed(Input::Event {
        relay: url("wss://who.example"),
        subscription: sub.clone(),
        event: Box::new(stray.clone()),
    });
    assert_eq!(h.engine.metrics().dropped_unknown_subscription, 2);

    // An event that does not match the filter it came on (historic, then live).
    let unrelated = event(&k, 1, vec![], T0, "spam");
    h.feed(Input::Event {
        relay: url(A),
        subscription: sub.clone(),
        event: Box::new(unrelated.clone()),
    });
    let (live_id, _) = h
        .engine
        .live_subscriptions(&url(A))
        .into_iter()
        .next()
        .unwrap();
    let out = h.feed(Input::Event {
        relay: url(A),
        subscription: live_id,
        event: Box::new(unrelated),
    });
    assert!(ingested(&out).is_empty());
    assert_eq!(h.engine.metrics().dropped_unsolicited, 2);

    // A page larger than the limit asked (3): the extra events are dropped.
    let page: Vec<Event> = (0..5u64)
        .map(|i| reply(&k, &root.id, T0 - 900 + i, &format!("r{i}")))
        .collect();
    let out = h.answer(A, &sub, &page);
    assert_eq!(ingested(&out).len(), 3);
    assert_eq!(h.engine.metrics().dropped_flood, 2);

    // Malformed accepted events: announcement without `d`, root event without `a`.
    h.accept(&event(&k, 30617, vec![tag(&["relays", B])], T0, ""));
    h.accept(&event(
        &k,
        1621,
        vec![tag(&["a", "not-a-coordinate"])],
        T0,
        "",
    ));
    let cmds = h.advance(Duration::from_secs(5));
    assert!(!connects(&cmds).contains(&url(B)));
    assert_eq!(h.engine.metrics().dropped_malformed, 2);

    // 1000 relays in one announcement: capped at max_relays_per_announcement.
    let many: Vec<String> = (0..1000).map(|i| format!("wss://r{i}.example")).collect();
    let mut relays_tag = vec!["relays".to_string()];
    relays_tag.extend(many);
    let huge = event(
        &keys(2),
        30617,
        vec![tag(&["d", "huge"]), relays_tag],
        T0,
        "",
    );
    h.accept(&huge);
    let refused_before = h.engine.metrics().relays_refused;
    let cmds = h.advance(Duration::from_secs(5));
    let cap = SyncConfig::default().max_relays_per_announcement;
    assert_eq!(connects(&cmds).len(), cap);
    assert_eq!(
        h.engine.metrics().relays_refused - refused_before,
        (1000 - cap) as u64
    );
    assert_eq!(
        h.engine
            .repo_index()
            .get(&coord(&keys(2), "huge"))
            .unwrap()
            .relays
            .len(),
        cap
    );

    // Nonsense for sessions and subscriptions that do not exist.
    h.feed(Input::Eose {
        relay: url(A),
        subscription: SubscriptionId::new("x"),
    });
    h.closed(A, &SubscriptionId::new("x"), "");
    h.neg_result(A, &SubscriptionId::new("x"), &[root.id]);
    h.feed(Input::NegentropyFailed {
        relay: url(A),
        session: SubscriptionId::new("x"),
        reason: NegentropyFailure::Timeout,
    });
    h.notice(A, &"x".repeat(1 << 20));
    h.feed(Input::RelayDisconnected {
        relay: url("wss://who.example"),
    });
    h.feed(Input::RelayConnected {
        relay: url("wss://who.example"),
    });
}

// ---------------------------------------------------------------------------------------
// 16. The URL policy decides what may be dialled.
// ---------------------------------------------------------------------------------------

#[test]
fn r16_refused_hosts_are_never_dialled() {
    let cfg = config().with_bootstrap_relay(url("wss://evil.example"));
    let mut h = Harness::with(cfg, Arc::new(DenyHosts(vec!["evil.example"])), 0);
    let k = keys(1);
    h.accept(&announcement(
        &k,
        "repo",
        &[US, "wss://evil.example", A],
        T0,
    ));
    let cmds = h.advance(Duration::from_secs(3600));
    assert!(connects(&cmds).contains(&url(A)));
    assert!(
        cmds.iter()
            .all(|c| c.relay().is_none_or(|r| r.host() != "evil.example")),
        "{cmds:?}"
    );
    assert!(h
        .engine
        .relay_index()
        .get(&url("wss://evil.example"))
        .is_none());
    assert!(h.engine.metrics().relays_refused >= 1);
}

#[test]
fn r08b_rate_limit_outlives_a_dropped_connection() {
    // Relays often follow "slow down" by dropping the socket. Reconnecting does not end
    // the cooldown: nothing is subscribed until the 65 s are over.
    let (mut h, _k, _repo) = with_repo(config(), &[A]);
    h.connect_and_settle(A);
    h.advance(Duration::from_secs(600));
    let limited_at = h.now;
    h.notice(A, "rate-limited: slow down");
    h.disconnect(A);
    let mut cmds = h.advance(Duration::from_secs(10));
    cmds.extend(h.connect(A));
    cmds.extend(h.advance(Duration::from_secs(50)));
    assert!(h.now.saturating_since(limited_at) < Duration::from_secs(65));
    assert!(
        live(&cmds, A).is_empty()
            && historic(&cmds, A).is_empty()
            && negentropy(&cmds, A).is_empty(),
        "subscribed during the cooldown: {cmds:?}"
    );
    let cmds = h.advance(Duration::from_secs(10));
    assert!(
        !live(&cmds, A).is_empty(),
        "resumed after the cooldown: {cmds:?}"
    );
    h.settle(A, &cmds);
    assert_eq!(h.status(A), ConnectionStatus::Connected);
}

// ---------------------------------------------------------------------------------------
// 17–19. Durability: confirmation follows the host's verdicts; cursors stop at what is
//        still in flight; what the host could not take is asked again.
// ---------------------------------------------------------------------------------------

/// Answers the historic sync on `relay`: negentropy sessions and REQs whose filter
/// matches `event` get it (by need, then by REQ by ids), everything else "nothing".
fn settle_with(h: &mut Harness, relay: &str, cmds: &[Command], event: &Event) -> Vec<Command> {
    let mut todo: Vec<Command> = cmds.to_vec();
    let mut all = Vec::new();
    while !todo.is_empty() {
        let mut next = Vec::new();
        for (id, fs) in historic_reqs(&todo, relay) {
            let opts = nostr::filter::MatchEventOptions::new();
            let matches = fs.iter().any(|f| f.match_event(event, opts));
            let page = if matches { vec![event.clone()] } else { vec![] };
            next.extend(h.answer(relay, &id, &page));
        }
        for (id, f) in negentropy(&todo, relay) {
            let matches = f.match_event(event, nostr::filter::MatchEventOptions::new());
            let need = if matches { vec![event.id] } else { vec![] };
            next.extend(h.neg_result(relay, &id, &need));
        }
        all.extend(next.iter().cloned());
        todo = next;
    }
    all
}

#[test]
fn r17_items_are_confirmed_only_once_the_host_has_a_verdict_for_what_they_brought() {
    let (mut h, k, repo) = with_repo(config(), &[A]);
    h.hold_verdicts = true;
    let bug = issue(&k, &repo, T0 - 10, "bug");
    let cmds = h.connect(A);
    let all = settle_with(&mut h, A, &cmds, &bug);
    assert_eq!(ingested(&all), vec![bug.id], "the issue is handed over");
    h.advance(Duration::from_secs(10));
    let confirmed = |h: &Harness| {
        h.engine
            .relay_index()
            .get(&url(A))
            .is_some_and(|s| s.confirmed.repos.contains_key(&repo))
    };
    assert!(
        !confirmed(&h),
        "handed over is not stored: the repo is not confirmed yet"
    );
    assert_eq!(h.status(A), ConnectionStatus::Syncing);
    assert!(!h.engine.is_idle());
    // A snapshot now must not claim the repo either.
    let snap = h.engine.snapshot(h.now);
    let a = snap.relays.iter().find(|r| r.relay == url(A)).unwrap();
    assert!(!a.state.confirmed.repos.contains_key(&repo));

    h.verdict(bug.id, IngestOutcome::Accepted);
    assert!(confirmed(&h), "stored: now confirmed");
    h.advance(Duration::from_secs(2));
    assert_eq!(h.status(A), ConnectionStatus::Connected);
}

#[test]
fn r18_a_restart_resumes_from_the_oldest_event_still_in_flight_not_the_snapshot_time() {
    let (mut h, k, repo) = with_repo(config(), &[A]);
    h.connect_and_settle(A);
    h.advance(Duration::from_secs(10));
    assert_eq!(h.status(A), ConnectionStatus::Connected);
    let (live_id, _) = h.engine.live_subscriptions(&url(A)).pop().unwrap();

    // A live event arrives; the host is slow and has not stored it five minutes later.
    h.hold_verdicts = true;
    let arrived = h.now;
    let bug = issue(&k, &repo, arrived.as_secs(), "bug");
    let cmds = h.feed(Input::Event {
        relay: url(A),
        subscription: live_id,
        event: Box::new(bug.clone()),
    });
    assert_eq!(ingested(&cmds), vec![bug.id]);
    h.advance(Duration::from_secs(300));
    // kill -9: the snapshot taken now is what the next process starts from.
    let mut h2 = restarted(&h, Duration::from_secs(60));
    h2.advance(Duration::from_millis(1));
    let cmds = h2.connect(A);
    assert!(
        negentropy(&cmds, A).is_empty(),
        "a quick reconnect: {cmds:?}"
    );
    let since = Some((arrived - Duration::from_secs(60)).as_timestamp());
    let hist = historic(&cmds, A);
    assert!(!hist.is_empty());
    assert!(
        hist.iter().all(|(_, f)| f.since == since),
        "since = the unstored event's arrival − overlap, not the snapshot time: {hist:?}"
    );

    // Had the host stored it, the restart would resume from the snapshot time.
    h.verdict(bug.id, IngestOutcome::Accepted);
    let taken = h.now;
    let mut h3 = restarted(&h, Duration::from_secs(60));
    h3.advance(Duration::from_millis(1));
    let hist = historic(&h3.connect(A), A);
    let since = Some((taken - Duration::from_secs(60)).as_timestamp());
    assert!(hist.iter().all(|(_, f)| f.since == since), "{hist:?}");
}

#[test]
fn r19_what_the_host_could_not_take_is_asked_again() {
    // A live event the host failed: a `since` catch-up from its arrival brings it again.
    let (mut h, k, repo) = with_repo(config(), &[A]);
    h.connect_and_settle(A);
    h.advance(Duration::from_secs(10));
    let (live_id, _) = h.engine.live_subscriptions(&url(A)).pop().unwrap();
    h.hold_verdicts = true;
    let arrived = h.now;
    let bug = issue(&k, &repo, arrived.as_secs(), "bug");
    h.feed(Input::Event {
        relay: url(A),
        subscription: live_id,
        event: Box::new(bug.clone()),
    });
    h.advance(Duration::from_secs(3));
    h.hold_verdicts = false;
    let mut cmds = h.verdict(bug.id, IngestOutcome::Failed);
    cmds.extend(h.advance(Duration::from_secs(3)));
    let since = Some((arrived - Duration::from_secs(60)).as_timestamp());
    let hist = historic(&cmds, A);
    assert!(
        hist.iter()
            .any(|(_, f)| f.since == since && kind_of(f) == "#a"),
        "a catch-up from the failed event's arrival: {cmds:?}"
    );
    // It is handed over again when it comes back (the hand-over was forgotten).
    let (id, _) = hist
        .iter()
        .find(|(_, f)| kind_of(f) == "#a")
        .unwrap()
        .clone();
    let again = h.answer(A, &id, std::slice::from_ref(&bug));
    assert_eq!(ingested(&again), vec![bug.id]);
}

#[test]
fn r20_a_connected_relay_is_persisted_while_quiet_so_a_crash_stays_a_quick_reconnect() {
    let (mut h, _k, _repo) = with_repo(config(), &[A]);
    h.connect_and_settle(A);
    h.advance(Duration::from_secs(60));
    assert_eq!(h.status(A), ConnectionStatus::Connected);
    let cmds = h.advance(Duration::from_secs(2 * 3600));
    let persisted = cmds
        .iter()
        .filter(|c| matches!(c, Command::PersistState))
        .count();
    // Every 5 minutes although nothing changed: the cursor moves with time.
    assert!(
        (20..=25).contains(&persisted),
        "{persisted} snapshots in two quiet hours"
    );
    // Disconnected (and never answered again): one snapshot for the change, then none.
    h.disconnect(A);
    let quiet = h.advance(Duration::from_secs(3600));
    assert!(!h.status(A).is_connected());
    let persisted = quiet
        .iter()
        .filter(|c| matches!(c, Command::PersistState))
        .count();
    assert!(persisted <= 1, "{persisted} snapshots while disconnected");
}

// ---------------------------------------------------------------------------------------
// 21. Misbehaviour counts against a relay's health, and only its own.
// ---------------------------------------------------------------------------------------

#[test]
fn r21_a_relay_flooding_unsolicited_events_or_notices_is_dropped_and_backed_off() {
    let (mut h, k, _repo) = with_repo(config(), &[A, B]);
    h.connect_and_settle(A);
    h.connect_and_settle(B);
    h.advance(Duration::from_secs(10));
    let (live_id, _) = h.engine.live_subscriptions(&url(A)).pop().unwrap();
    // Events no filter asked for (another repo's issues): 999 are tolerated.
    let other = coord(&k, "unrelated");
    for i in 0..999u64 {
        let cmds = h.feed(Input::Event {
            relay: url(A),
            subscription: live_id.clone(),
            event: Box::new(issue(&k, &other, T0 + i, &format!("junk {i}"))),
        });
        assert!(disconnects(&cmds).is_empty(), "dropped after {i}");
    }
    assert!(h.status(A).is_connected());
    // The next one (a NOTICE counts too) drops A, as a failure.
    let cmds = h.notice(A, "spam");
    assert_eq!(disconnects(&cmds), BTreeSet::from([url(A)]));
    assert_eq!(h.status(A), ConnectionStatus::Disconnected);
    let status = h.engine.status(h.now);
    let a = status.iter().find(|s| s.relay == url(A)).unwrap();
    assert!(a.failures >= 1, "{a:?}");
    assert!(
        a.last_error
            .as_deref()
            .is_some_and(|e| e.contains("misbehaving")),
        "{a:?}"
    );
    assert_eq!(h.engine.metrics().relays_misbehaving, 1);
    // Nothing is ingested from it, and B is untouched.
    assert!(h.status(B).is_connected());
    let b = status.iter().find(|s| s.relay == url(B)).unwrap();
    assert_eq!(b.failures, 0);
    // It is dialled again only after a backoff.
    let cmds = h.advance(Duration::from_secs(1));
    assert!(!connects(&cmds).contains(&url(A)), "backed off");
}

/// Tampered events the driver dropped (id or signature not matching) are strikes too:
/// counted as malformed, and a relay sending a thousand is dropped and backed off.
#[test]
fn r21b_tampered_events_are_strikes() {
    let (mut h, _k, _repo) = with_repo(config(), &[A, B]);
    h.connect_and_settle(A);
    h.connect_and_settle(B);
    let before = h.engine.metrics().dropped_malformed;
    for i in 0..999u64 {
        let cmds = h.feed(Input::TamperedEvent { relay: url(A) });
        assert!(disconnects(&cmds).is_empty(), "dropped after {i}");
    }
    assert_eq!(h.engine.metrics().dropped_malformed, before + 999);
    let cmds = h.feed(Input::TamperedEvent { relay: url(A) });
    assert_eq!(disconnects(&cmds), BTreeSet::from([url(A)]));
    assert_eq!(h.engine.metrics().relays_misbehaving, 1);
    assert!(h.status(B).is_connected());
}

/// A relay sends what it had queued, or what was just published, until it reads our
/// CLOSE, and parts are closed early when messages were lost: events on a subscription
/// we closed that the relay's live filters want are taken as live events, and are no
/// strike (a busy relay would otherwise be dropped for misbehaving after a thousand of
/// them over a long connection). Anything else on a closed subscription is a strike,
/// so junk sent there is still capped.
#[test]
fn r21c_wanted_events_on_a_subscription_we_closed_are_taken_not_struck() {
    let (mut h, k, repo) = with_repo(config(), &[A]);
    h.connect_and_settle(A);
    let root = issue(&k, &repo, T0 - 1000, "bug");
    let cmds = accept_root(&mut h, &root);
    let (sub, _) = historic(&cmds, A)
        .into_iter()
        .next()
        .expect("a historic REQ");
    let cmds = h.answer(A, &sub, &[]);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::Unsubscribe { id, .. } if *id == sub)),
        "closed after EOSE: {cmds:?}"
    );
    let handed = h.engine.metrics().events_handed;
    for i in 0..1_500u64 {
        let wanted = reply(&k, &root.id, T0 + i, &format!("late {i}"));
        let cmds = h.feed(Input::Event {
            relay: url(A),
            subscription: sub.clone(),
            event: Box::new(wanted.clone()),
        });
        assert_eq!(ingested(&cmds), vec![wanted.id], "a late reply is taken");
        assert!(
            disconnects(&cmds).is_empty(),
            "dropped after {i} late events"
        );
    }
    assert!(h.status(A).is_connected());
    let m = h.engine.metrics();
    assert_eq!(
        (m.events_handed, m.events_after_close),
        (handed + 1_500, 1_500)
    );
    assert_eq!(m.relays_misbehaving, 0);
    // Junk on the closed subscription still counts against the relay.
    let other = coord(&k, "unrelated");
    let dropped = m.dropped_unknown_subscription;
    for i in 0..1_000u64 {
        let cmds = h.feed(Input::Event {
            relay: url(A),
            subscription: sub.clone(),
            event: Box::new(issue(&k, &other, T0 + i, &format!("junk {i}"))),
        });
        assert!(ingested(&cmds).is_empty());
    }
    let m = h.engine.metrics();
    assert_eq!(m.dropped_unknown_subscription, dropped + 1_000);
    assert_eq!(m.relays_misbehaving, 1, "dropped at the 1,000th strike");
}

/// A wanted event on a subscription id this engine never gave out is a strike: only
/// ids we issued are let off.
#[test]
fn r21d_wanted_events_on_an_id_we_never_gave_out_are_struck() {
    let (mut h, k, repo) = with_repo(config(), &[A]);
    h.connect_and_settle(A);
    let root = issue(&k, &repo, T0 - 1000, "bug");
    accept_root(&mut h, &root);
    for (i, id) in ["nope", "gs", "gs0", "gs99999999", "gsx"]
        .iter()
        .enumerate()
    {
        let cmds = h.feed(Input::Event {
            relay: url(A),
            subscription: SubscriptionId::new(*id),
            event: Box::new(reply(&k, &root.id, T0 + i as u64, "stray")),
        });
        assert!(ingested(&cmds).is_empty(), "taken on {id}");
    }
    assert_eq!(h.engine.metrics().events_after_close, 0);
    assert_eq!(h.engine.metrics().dropped_unknown_subscription, 5);
}

// ---------------------------------------------------------------------------------------
// 22. Where a relay says its `limit` cap, a batch's filters share REQs: an event matching
//     several (a comment's `#e` and `#E`) comes once; pagination stays per filter.
// ---------------------------------------------------------------------------------------

/// A relay whose NIP-11 says `max_limit` = `cap` (and we ask pages of that size).
fn capped(cap: usize) -> SyncConfig {
    let mut cfg = config();
    cfg.default_limits.page_limit = cap;
    cfg.default_limits.max_limit = Some(cap);
    cfg
}

/// A status (1630) on `root`: it tags the root by `e` only.
fn status_on(keys: &Keys, root: &EventId, created_at: u64, content: &str) -> Event {
    event(
        keys,
        1630,
        vec![tag(&["e", &root.to_hex()])],
        created_at,
        content,
    )
}

/// A repo on A (synced, REQ only) whose host then accepts an issue: the harness, the
/// keys, the issue and what accepting it produced (its history's REQs).
fn root_history(cfg: SyncConfig) -> (Harness, Keys, Event, Vec<Command>) {
    let (mut h, k, repo) = with_repo(cfg, &[A]);
    h.connect_and_settle(A);
    let root = issue(&k, &repo, T0 - 10_000, "bug");
    let cmds = accept_root(&mut h, &root);
    (h, k, root, cmds)
}

/// The relay is capped; the root's history is one REQ of three filters.
fn grouped_root_history(cap: usize) -> (Harness, Keys, Event, SubscriptionId) {
    let (h, k, root, cmds) = root_history(capped(cap));
    let reqs = historic_reqs(&cmds, A);
    assert_eq!(reqs.len(), 1, "one REQ: {reqs:?}");
    let (id, filters) = reqs.into_iter().next().unwrap();
    assert_eq!(
        kinds_of(&filters),
        BTreeSet::from(["#e".to_string(), "#E".into(), "#q".into()])
    );
    (h, k, root, id)
}

#[test]
fn r22_a_roots_tag_filters_share_one_req_and_a_reply_comes_once() {
    let (mut h, _, root, id) = grouped_root_history(50);
    let answer = reply(&keys(2), &root.id, T0 - 50, "me too");
    let cmds = h.answer(A, &id, std::slice::from_ref(&answer));
    assert_eq!(ingested(&cmds), vec![answer.id]);
    assert!(
        historic(&cmds, A).is_empty(),
        "a short page under a known cap is the end"
    );
    assert_eq!(h.status(A), ConnectionStatus::Connected);
    // Without a known cap, one filter per REQ (a short page proves nothing there).
    let (mut h, k, repo) = with_repo(config(), &[A]);
    h.connect_and_settle(A);
    let cmds = accept_root(&mut h, &issue(&k, &repo, T0 - 100, "bug"));
    assert!(historic_reqs(&cmds, A).iter().all(|(_, fs)| fs.len() == 1));
}

#[test]
fn r22b_a_full_grouped_page_goes_on_per_filter_from_each_filters_own_page() {
    let (mut h, k, root, id) = grouped_root_history(3);
    let s: Vec<Event> = (1..=4)
        .map(|i| status_on(&k, &root.id, T0 - 100 * i, &format!("status {i}")))
        .collect();
    let r1 = reply(&k, &root.id, T0 - 1_000, "older reply");
    let r2 = reply(&k, &root.id, T0 - 2_000, "oldest reply");
    // Per filter its newest three: `#e` the three newest statuses, `#E` the replies.
    let cmds = h.answer(A, &id, &[s[0].clone(), s[1].clone(), s[2].clone(), r1, r2]);
    let next = historic_reqs(&cmds, A);
    assert_eq!(next.len(), 1, "only `#e` had a full page: {next:?}");
    let (next_id, fs) = &next[0];
    assert_eq!(kinds_of(fs), BTreeSet::from(["#e".to_string()]));
    assert_eq!(
        fs[0].until,
        Some(Timestamp::from_secs(T0 - 300)),
        "from its own third newest, not from the replies another filter brought"
    );
    let cmds = h.answer(A, next_id, &[s[2].clone(), s[3].clone()]);
    assert_eq!(
        ingested(&cmds),
        vec![s[3].id],
        "the status between them arrives"
    );
    h.settle(A, &cmds);
    assert_eq!(h.status(A), ConnectionStatus::Connected);
}

#[test]
fn r22c_a_grouped_page_of_exactly_the_cap_proves_nothing_and_each_filter_goes_alone() {
    let (mut h, k, root, id) = grouped_root_history(3);
    let page: Vec<Event> = (1..=3)
        .map(|i| status_on(&k, &root.id, T0 - 100 * i, &format!("status {i}")))
        .collect();
    let cmds = h.answer(A, &id, &page);
    let again = historic_reqs(&cmds, A);
    assert_eq!(again.len(), 3, "{again:?}");
    assert!(again
        .iter()
        .all(|(_, fs)| fs.len() == 1 && fs[0].until.is_none()));
    h.settle(A, &cmds);
    assert_eq!(h.status(A), ConnectionStatus::Connected);
}

#[test]
fn r22d_a_relay_refusing_a_grouped_req_as_too_many_filters_gets_them_one_by_one() {
    let (mut h, _, _, id) = grouped_root_history(50);
    let cmds = h.closed(A, &id, "error: too many filters");
    let again = historic_reqs(&cmds, A);
    assert_eq!(again.len(), 3, "{again:?}");
    assert!(again.iter().all(|(_, fs)| fs.len() == 1));
    h.settle(A, &cmds);
    assert_eq!(h.status(A), ConnectionStatus::Connected, "nothing failed");
}

/// A relay's NIP-11 lowers the host's configured limits, never replaces them with the
/// library's defaults: a host asking pages of 40 keeps asking 40 from a relay that
/// allows 300, and now groups its filters there.
#[test]
fn r22f_nip11_limits_lower_the_configured_ones() {
    let mut cfg = config();
    cfg.default_limits.page_limit = 40;
    let (mut h, k, repo) = with_repo(cfg, &[A]);
    h.connect_and_settle(A);
    let doc = serde_json::json!({ "limitation": { "max_limit": 300 } });
    let limitation = grasp_sync::filters::Nip11Limitation::from_document(&doc);
    h.engine.apply_nip11_limits(&url(A), &limitation);
    let cmds = accept_root(&mut h, &issue(&k, &repo, T0 - 100, "bug"));
    let reqs = historic_reqs(&cmds, A);
    assert_eq!(reqs.len(), 1, "grouped under the known cap: {reqs:?}");
    assert!(reqs[0].1.iter().all(|f| f.limit == Some(40)), "{reqs:?}");
}

/// A grouped page that may have been cut proves nothing: events dropped past the flood
/// cap, or exactly as many as the relay's cap (a relay capping the whole REQ there).
/// Each filter is asked again alone.
#[test]
fn r22g_a_grouped_page_cut_by_the_flood_cap_or_at_the_relays_cap_proves_nothing() {
    let alone = |cmds: &[Command]| {
        let again = historic_reqs(cmds, A);
        again.len() == 3
            && again
                .iter()
                .all(|(_, fs)| fs.len() == 1 && fs[0].until.is_none())
    };
    // Flood: three filters of limit 3 take nine events at most; the tenth is dropped.
    let (mut h, k, root, id) = grouped_root_history(3);
    let page: Vec<Event> = (1..=10)
        .map(|i| status_on(&k, &root.id, T0 - 100 * i, &format!("status {i}")))
        .collect();
    let cmds = h.answer(A, &id, &page);
    assert!(alone(&cmds), "{:?}", historic_reqs(&cmds, A));
    // At the relay's cap (5, pages of 3): more than a page, but maybe cut over the REQ.
    let mut cfg = config();
    cfg.default_limits.page_limit = 3;
    cfg.default_limits.max_limit = Some(5);
    let (mut h, k, root, cmds) = root_history(cfg);
    let id = historic_ids(&cmds, A)[0].clone();
    let page: Vec<Event> = (1..=5)
        .map(|i| status_on(&k, &root.id, T0 - 100 * i, &format!("status {i}")))
        .collect();
    let cmds = h.answer(A, &id, &page);
    assert!(alone(&cmds), "{:?}", historic_reqs(&cmds, A));
}

/// "Too many filters" as a NOTICE names no REQ: the grouped ones that brought nothing
/// yet are closed and split, and later groups are smaller.
#[test]
fn r22h_too_many_filters_as_a_notice_splits_the_unanswered_groups() {
    let (mut h, _, _, id) = grouped_root_history(50);
    let cmds = h.notice(A, "ERROR: bad req: too many filters");
    assert!(unsubscribes(&cmds, A).contains(&id));
    let again = historic_reqs(&cmds, A);
    assert_eq!(again.len(), 3, "{again:?}");
    assert!(again.iter().all(|(_, fs)| fs.len() == 1));
    h.settle(A, &cmds);
    assert_eq!(h.status(A), ConnectionStatus::Connected);
}

/// A grouped REQ whose filters name different items (one root per chunk here) fails:
/// every item it named is asked again, not only the first filter's.
#[test]
fn r22i_a_failed_grouped_req_has_every_item_it_named_asked_again() {
    let mut cfg = capped(50);
    cfg.default_limits.chunk_size = 1;
    let (mut h, k, repo) = with_repo(cfg, &[A]);
    h.connect_and_settle(A);
    let r1 = issue(&k, &repo, T0 - 1_000, "one");
    let r2 = issue(&k, &repo, T0 - 900, "two");
    h.accept(&r1);
    let cmds = accept_root(&mut h, &r2);
    let reqs = historic_reqs(&cmds, A);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].1.len(), 6);
    h.closed(A, &reqs[0].0, "error: shutting down");
    assert_eq!(h.status(A), ConnectionStatus::ConnectedHistoricSyncFailures);
    let cmds = h.advance(Duration::from_secs(40));
    let retried: BTreeSet<String> = historic(&cmds, A)
        .iter()
        .filter_map(|(_, f)| tag_values(f, 'e'))
        .flatten()
        .collect();
    assert_eq!(retried, BTreeSet::from([r1.id.to_hex(), r2.id.to_hex()]));
    h.settle(A, &cmds);
    assert_eq!(h.status(A), ConnectionStatus::Connected);
}

/// Filters of `reqs` asking the same values under different tags that went on different
/// REQs (a chunk's `#e`, `#E` and `#q` split: its comments come twice).
fn split_families(reqs: &[(SubscriptionId, Vec<Filter>)]) -> Vec<String> {
    let values = |f: &Filter| {
        let mut f = f.clone();
        f.limit = None;
        f.until = None;
        (f.generic_tags.len() == 1).then(|| f.generic_tags.into_values().next().unwrap())
    };
    let mut req_of = std::collections::BTreeMap::new();
    let mut split = Vec::new();
    for (i, (_, fs)) in reqs.iter().enumerate() {
        for f in fs {
            if let Some(v) = values(f) {
                if *req_of.entry(v).or_insert(i) != i {
                    split.push(kind_of(f));
                }
            }
        }
    }
    split
}

/// Every historic REQ `cmds` and what answering each with nothing leads to.
fn all_historic_reqs(h: &mut Harness, cmds: &[Command]) -> Vec<(SubscriptionId, Vec<Filter>)> {
    let mut all = cmds.to_vec();
    all.extend(h.settle(A, cmds));
    historic_reqs(&all, A)
}

#[test]
fn r22l_a_chunks_tag_filters_are_never_split_across_grouped_reqs() {
    // Two roots per chunk: eight roots' `#e`/`#E`/`#q` are twelve filters, and ten to
    // a REQ in order would put the fourth chunk's `#E` and `#q` on a REQ of their own.
    let mut cfg = capped(50);
    cfg.default_limits.chunk_size = 2;
    let (mut h, k, repo) = with_repo(cfg, &[A]);
    h.connect_and_settle(A);
    let mut cmds = Vec::new();
    for i in 0..8 {
        cmds.extend(h.accept(&issue(&k, &repo, T0 - 1_000 - i, &format!("bug {i}"))));
    }
    cmds.extend(h.advance(Duration::from_secs(5)));
    let reqs = all_historic_reqs(&mut h, &cmds);
    let filters: usize = reqs.iter().map(|(_, fs)| fs.len()).sum();
    assert_eq!(filters, 12, "four chunks of three filters: {reqs:?}");
    assert!(reqs.iter().all(|(_, fs)| fs.len() <= 10));
    assert_eq!(split_families(&reqs), Vec::<String>::new(), "{reqs:?}");
    assert_eq!(reqs.len(), 2);
    assert_eq!(h.status(A), ConnectionStatus::Connected);
}

#[test]
fn r22m_grouped_reqs_stay_within_the_relays_message_length() {
    // 40 roots: each tag filter holds ~2.7 KB of ids, a family of three more than a
    // 4,000-byte message takes.
    let mut cfg = capped(50);
    cfg.default_limits.max_message_length = Some(4_000);
    let (mut h, k, repo) = with_repo(cfg, &[A]);
    h.connect_and_settle(A);
    let mut cmds = Vec::new();
    for i in 0..40 {
        cmds.extend(h.accept(&issue(&k, &repo, T0 - 1_000 - i, &format!("bug {i}"))));
    }
    cmds.extend(h.advance(Duration::from_secs(5)));
    let reqs = all_historic_reqs(&mut h, &cmds);
    assert_eq!(reqs.iter().map(|(_, fs)| fs.len()).sum::<usize>(), 3);
    for (id, filters) in &reqs {
        let len = {
            use nostr::JsonUtil;
            nostr::ClientMessage::req(id.clone(), filters.clone())
                .as_json()
                .len()
        };
        assert!(len <= 4_000, "a REQ of {len} bytes: {filters:?}");
    }
    assert_eq!(h.status(A), ConnectionStatus::Connected);
}

#[test]
fn r05f_a_capped_relay_refusing_nip77_gets_each_batchs_sessions_as_grouped_reqs() {
    let (mut h, k, repo) = with_repo(capped(500), &[A]);
    for i in 0..3 {
        h.accept(&issue(&k, &repo, T0 - 1_000 - i, &format!("bug {i}")));
    }
    h.advance(Duration::from_secs(5));
    let cmds = h.connect(A);
    let negs = negentropy(&cmds, A);
    assert!(negs.len() >= 2, "{negs:?}");
    let cmds = h.notice(A, "ERROR: bad msg: unknown cmd");
    assert_eq!(
        h.engine.metrics().negentropy_fallbacks,
        negs.len() as u64,
        "the open sessions fall back"
    );
    let reqs = all_historic_reqs(&mut h, &cmds);
    // Layer 1, then the repo's batch: state, `#a`/`#A`/`#q`, `#e`/`#E`/`#q` in one REQ
    // (one by one they were eight REQs and every comment came twice).
    let mut shapes: Vec<(usize, BTreeSet<String>)> = reqs
        .iter()
        .map(|(_, fs)| (fs.len(), kinds_of(fs)))
        .collect();
    shapes.sort();
    assert_eq!(
        shapes,
        vec![
            (1, BTreeSet::from(["L1".to_string()])),
            (
                7,
                BTreeSet::from(["state", "#a", "#A", "#q", "#e", "#E"].map(String::from))
            ),
        ],
        "{reqs:?}"
    );
    assert_eq!(split_families(&reqs), Vec::<String>::new());
    assert!(negentropy(&cmds, A).is_empty());
    assert_eq!(h.status(A), ConnectionStatus::Connected);
}

/// The executor reports "not supported" per session: the first such report ends every
/// open session, so a chunk's `#e`/`#E`/`#q` still go out as one REQ (one by one, each
/// became a REQ of its own and the relay sent each comment once per filter).
#[test]
fn r05i_one_sessions_unsupported_groups_every_open_session() {
    let (mut h, negs) = three_root_sessions();
    let cmds = h.feed(Input::NegentropyFailed {
        relay: url(A),
        session: negs[0].0.clone(),
        reason: NegentropyFailure::Unsupported,
    });
    assert_sessions_became_one_req(&mut h, &cmds);
}

/// The three sessions of [`three_root_sessions`] fell back together: one REQ holding
/// the chunk's `#e`, `#E` and `#q`.
fn assert_sessions_became_one_req(h: &mut Harness, cmds: &[Command]) {
    let reqs = all_historic_reqs(h, cmds);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        kinds_of(&reqs[0].1),
        BTreeSet::from(["#e", "#E", "#q"].map(String::from))
    );
    assert_eq!(h.engine.metrics().negentropy_fallbacks, 3);
}

/// A capped relay, reconciled, then `roots` new roots: the negentropy sessions of
/// their batch, open on it.
fn root_sessions(roots: u64) -> (Harness, Vec<(SubscriptionId, Filter)>) {
    let (mut h, k, repo) = with_repo(capped(500), &[A]);
    let cmds = h.connect(A);
    h.reconcile(A, cmds);
    for i in 0..roots {
        h.accept(&issue(&k, &repo, T0 - 1_000 - i, &format!("bug {i}")));
    }
    let cmds = h.advance(Duration::from_secs(5));
    let negs = negentropy(&cmds, A);
    (h, negs)
}

/// Three roots: one batch of three sessions (`#e`, `#E`, `#q`).
fn three_root_sessions() -> (Harness, Vec<(SubscriptionId, Filter)>) {
    let (h, negs) = root_sessions(3);
    assert_eq!(negs.len(), 3, "#e, #E, #q: {negs:?}");
    (h, negs)
}

/// A CLOSED for one NEG-OPEN (not a limit) ends every open session as grouped REQs,
/// as "not supported" does; one session at a time, a chunk's family was parted.
#[test]
fn r05j_a_closed_negentropy_session_groups_every_open_session() {
    let (mut h, negs) = three_root_sessions();
    let cmds = h.closed(A, &negs[0].0, "error: unknown command");
    assert_sessions_became_one_req(&mut h, &cmds);
}

/// A NEG-OPEN closed by a rate limit says nothing about NIP-77: the session is asked
/// again as a session once the cooldown is over, and no REQ replaces it.
#[test]
fn r05k_a_rate_limited_negentropy_session_stays_negentropy() {
    let (mut h, negs) = three_root_sessions();
    let mut cmds = h.closed(A, &negs[0].0, "rate-limited: slow down");
    for _ in 0..12 {
        cmds.extend(h.advance(Duration::from_secs(10)));
    }
    assert!(historic(&cmds, A).is_empty(), "{cmds:?}");
    let again: Vec<Filter> = negentropy(&cmds, A).into_iter().map(|(_, f)| f).collect();
    assert_eq!(again, vec![negs[0].1.clone()]);
    assert_eq!(h.engine.metrics().negentropy_fallbacks, 0);
}

/// Sessions that nobody answers expire together and fall back together: the chunk's
/// `#e`/`#E`/`#q` go out as one REQ, not one each.
#[test]
fn r05l_sessions_expiring_together_fall_back_as_grouped_reqs() {
    let (mut h, _negs) = three_root_sessions();
    let total = config().negentropy_total_timeout;
    let mut cmds = h.advance(total);
    cmds.extend(h.advance(grasp_sync::engine::NEGENTROPY_ANSWER_GRACE + Duration::from_secs(3)));
    let reqs = all_historic_reqs(&mut h, &cmds);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        kinds_of(&reqs[0].1),
        BTreeSet::from(["#e", "#E", "#q"].map(String::from))
    );
}

/// A relay that states its `limit` cap but not its message size: its refused sessions
/// (four REQ chunks wide) become REQ filters of one chunk each, grouped ten to a REQ.
/// As they were, ten 400-id filters made REQs of ~270 KB, past what relays accept.
#[test]
fn r05g_refused_sessions_become_req_sized_filters() {
    let (mut h, k, repo) = with_repo(capped(500), &[A]);
    let mut roots = BTreeSet::new();
    for i in 0..250 {
        let root = issue(&k, &repo, T0 - 1_000 - i, &format!("bug {i}"));
        roots.insert(root.id.to_hex());
        h.accept(&root);
    }
    h.advance(Duration::from_secs(5));
    let cmds = h.connect(A);
    let negs = negentropy(&cmds, A);
    assert!(
        negs.iter()
            .any(|(_, f)| tag_values(f, 'e').is_some_and(|v| v.len() == 250)),
        "one session holds every root: {negs:?}"
    );
    let cmds = h.notice(A, "ERROR: bad msg: unknown cmd");
    let reqs = all_historic_reqs(&mut h, &cmds);
    let chunk = grasp_sync::filters::RelayLimits::default().chunk_size;
    for (_, fs) in &reqs {
        assert!(fs.len() <= 10);
        for f in fs {
            let n: usize = f.generic_tags.values().map(BTreeSet::len).sum();
            assert!(n <= chunk, "{n} values in one filter");
        }
    }
    for letter in ['e', 'E', 'q'] {
        let asked: BTreeSet<String> = reqs
            .iter()
            .flat_map(|(_, fs)| fs)
            .filter_map(|f| tag_values(f, letter))
            .flatten()
            .filter(|v| v.len() == 64)
            .collect();
        assert_eq!(asked, roots, "every root asked by #{letter}");
    }
    assert_eq!(split_families(&reqs), Vec::<String>::new());
    assert_eq!(h.status(A), ConnectionStatus::Connected);
}

/// A session that failed with NEG-ERR is asked by REQ in REQ-sized filters too (it went
/// as one 250-id filter).
#[test]
fn r05m_a_failed_session_is_asked_in_req_sized_filters() {
    let (mut h, negs) = root_sessions(250);
    let (e, _) = negs
        .iter()
        .find(|(_, f)| tag_values(f, 'e').is_some_and(|v| v.len() == 250))
        .expect("one session holds every root");
    let cmds = h.feed(Input::NegentropyFailed {
        relay: url(A),
        session: e.clone(),
        reason: NegentropyFailure::Error("blocked: too big".into()),
    });
    let reqs = historic_reqs(&cmds, A);
    assert!(!reqs.is_empty(), "{cmds:?}");
    let asked: usize = reqs
        .iter()
        .flat_map(|(_, fs)| fs)
        .filter_map(|f| tag_values(f, 'e'))
        .map(|v| v.len())
        .sum();
    assert_eq!(asked, 250);
    for (_, fs) in &reqs {
        for f in fs {
            assert!(tag_values(f, 'e').is_none_or(|v| v.len() <= 100), "{f:?}");
        }
    }
}

/// The failure of a session that already ended (answered, or timed out by the engine
/// first) says nothing about the relay: it keeps NIP-77 for the next batch. It used to
/// mark the relay as refusing NIP-77 and turn its queued sessions into REQs.
#[test]
fn r05h_a_late_failure_of_an_ended_session_leaves_nip77_on() {
    let mut cfg = config();
    cfg.max_concurrent_historic = 2; // the fresh start's other sessions wait in the queue
    let (mut h, k, repo) = with_repo(cfg, &[A]);
    let cmds = h.connect(A);
    let negs = negentropy(&cmds, A);
    assert_eq!(negs.len(), 2, "{negs:?}");
    let (first, _) = &negs[0];
    let mut todo = h.neg_result(A, first, &[]);
    for reason in [NegentropyFailure::Timeout, NegentropyFailure::Unsupported] {
        todo.extend(h.feed(Input::NegentropyFailed {
            relay: url(A),
            session: first.clone(),
            reason,
        }));
    }
    todo.extend(h.neg_result(A, &negs[1].0, &[]));
    // The rest of the fresh start, then a root found later: NIP-77 all the way.
    let mut later = Some(issue(&k, &repo, T0 - 500, "later"));
    let mut sessions = 2;
    for _ in 0..20 {
        assert!(historic(&todo, A).is_empty(), "a REQ: {todo:?}");
        let negs = negentropy(&todo, A);
        sessions += negs.len();
        todo = negs
            .iter()
            .flat_map(|(id, _)| h.neg_result(A, id, &[]))
            .collect();
        if todo.is_empty() {
            match later.take() {
                Some(root) => todo = accept_root(&mut h, &root),
                None => break,
            }
        }
    }
    assert!(sessions > 5, "{sessions} sessions");
    assert_eq!(h.engine.metrics().negentropy_fallbacks, 0);
}

/// A reply tags a root of one negentropy session (`#e`) and a root of another (`#E`):
/// the second session leaves it to the first one's fetch. When the relay will not give
/// it by id and the REQ for the first session's filter fails, the whole batch is asked
/// again, so the second session's roots are not confirmed on the strength of a fetch
/// that never came.
#[test]
fn r22k_a_failure_after_a_shared_fetch_asks_the_whole_batch_again() {
    let mut cfg = config();
    cfg.default_limits.chunk_size = 1; // four roots per session
    let (mut h, k, repo) = with_repo(cfg, &[A]);
    let cmds = h.connect(A);
    h.reconcile(A, cmds);
    for i in 0..5 {
        h.accept(&issue(&k, &repo, T0 - 1_000 + i, &format!("root {i}")));
    }
    let cmds = h.advance(Duration::from_secs(5));
    let sessions = negentropy(&cmds, A);
    let values = |f: &Filter, c: char| tag_values(f, c).unwrap_or_default();
    // A root in an `#e` session and one in an `#E` session that does not hold it.
    let (e_roots, big_e_roots) = sessions
        .iter()
        .flat_map(|(_, e)| sessions.iter().map(move |(_, big)| (e, big)))
        .map(|(e, big)| (values(e, 'e'), values(big, 'E')))
        .find(|(e, big)| !e.is_empty() && !big.is_empty() && e.is_disjoint(big))
        .expect("two sessions over different roots");
    let root_a = e_roots.iter().next().unwrap().clone();
    let root_b = big_e_roots.iter().next().unwrap().clone();
    let answer = event(
        &keys(2),
        1111,
        vec![tag(&["e", &root_a]), tag(&["E", &root_b])],
        T0 - 100,
        "across two sessions",
    );
    let mut fetches = Vec::new();
    for (session, f) in &sessions {
        let opts = nostr::filter::MatchEventOptions::new();
        let need: Vec<EventId> = if f.match_event(&answer, opts) {
            vec![answer.id]
        } else {
            vec![]
        };
        fetches.extend(historic(&h.neg_result(A, session, &need), A));
    }
    assert_eq!(fetches.len(), 1, "fetched once: {fetches:?}");
    let cmds = h.answer(A, &fetches[0].0, &[]);
    let cmds = h.answer(A, &historic(&cmds, A)[0].0, &[]);
    // The session's filter by REQ, in REQ-sized chunks (one root each here); the relay
    // refuses them all.
    let by_req = historic(&cmds, A);
    assert!(!by_req.is_empty(), "{cmds:?}");
    assert!(by_req
        .iter()
        .all(|(_, f)| values(f, 'e').len() + values(f, 'E').len() + values(f, 'q').len() == 1));
    for (id, _) in &by_req {
        h.closed(A, id, "error: shutting down");
    }
    assert_eq!(h.status(A), ConnectionStatus::ConnectedHistoricSyncFailures);
    let cmds = h.advance(Duration::from_secs(40));
    let asked: BTreeSet<String> = negentropy(&cmds, A)
        .into_iter()
        .chain(historic(&cmds, A))
        .flat_map(|(_, f)| [values(&f, 'e'), values(&f, 'E')])
        .flatten()
        .collect();
    assert!(
        asked.contains(&root_a) && asked.contains(&root_b),
        "both sessions' roots asked again: {asked:?}"
    );
}

/// A relay (or the wire) repeating an event on a page: the repeat is ignored, not
/// counted against the page, so it cannot push the page's last event out and make a
/// full page look short (which, under a known cap, would end the history there).
#[test]
fn r22j_an_event_repeated_on_a_page_does_not_count_against_it() {
    let mut cfg = capped(3);
    cfg.default_limits.max_filters_per_req = 1;
    let (mut h, k, root, cmds) = root_history(cfg);
    let (id, _) = historic(&cmds, A)
        .into_iter()
        .find(|(_, f)| kind_of(f) == "#e")
        .expect("the #e REQ");
    let s: Vec<Event> = (1..=4)
        .map(|i| status_on(&k, &root.id, T0 - 100 * i, &format!("status {i}")))
        .collect();
    let before = h.engine.metrics().dropped_flood;
    let page = [s[0].clone(), s[0].clone(), s[1].clone(), s[2].clone()];
    let cmds = h.answer(A, &id, &page);
    assert_eq!(h.engine.metrics().dropped_flood, before, "no flood");
    assert_eq!(ingested(&cmds), vec![s[2].id, s[1].id, s[0].id]);
    let next = historic(&cmds, A);
    assert_eq!(next.len(), 1, "a full page: the next one is asked {next:?}");
    assert_eq!(next[0].1.until, Some(Timestamp::from_secs(T0 - 300)));
}

/// On a NIP-77 relay a reply is needed by the root's `#e` session and by its `#E`
/// session: it is fetched once; and when the relay will not return it by id, the REQ
/// for the filter of the session that asked brings it (nothing is lost by asking once).
#[test]
fn r22e_an_id_several_sessions_of_a_batch_need_is_fetched_once() {
    let (mut h, k, repo) = with_repo(config(), &[A]);
    let cmds = h.connect(A);
    h.reconcile(A, cmds);
    let root = issue(&k, &repo, T0 - 1000, "bug");
    let cmds = accept_root(&mut h, &root);
    let answer = reply(&keys(2), &root.id, T0 - 500, "me too");
    let mut fetches = Vec::new();
    for (session, f) in negentropy(&cmds, A) {
        let opts = nostr::filter::MatchEventOptions::new();
        let need: Vec<EventId> = if f.match_event(&answer, opts) {
            vec![answer.id]
        } else {
            vec![]
        };
        fetches.extend(historic(&h.neg_result(A, &session, &need), A));
    }
    assert_eq!(fetches.len(), 1, "asked once: {fetches:?}");
    assert_eq!(fetches[0].1.ids, Some(BTreeSet::from([answer.id])));
    // The relay will not return it by id: asked again, then by REQ for the filter of
    // the session that asked, which matches it too.
    let cmds = h.answer(A, &fetches[0].0, &[]);
    let retry = historic(&cmds, A);
    assert_eq!(retry.len(), 1, "{retry:?}");
    let cmds = h.answer(A, &retry[0].0, &[]);
    let by_req = historic(&cmds, A);
    assert_eq!(by_req.len(), 1, "{by_req:?}");
    assert!(by_req[0].1.ids.is_none());
    let cmds = h.answer(A, &by_req[0].0, std::slice::from_ref(&answer));
    assert_eq!(ingested(&cmds), vec![answer.id]);
    h.settle(A, &cmds);
    assert_eq!(h.status(A), ConnectionStatus::Connected);
}

// ---------------------------------------------------------------------------------------
// GRASP-03 Sync+: participants' outbox relays carry a Full repo's conversation.
// ---------------------------------------------------------------------------------------

const D: &str = "wss://d.example";

fn sync_plus(bounds: SyncPlusConfig) -> SyncConfig {
    config().with_sync_plus(bounds)
}

/// A participant's NIP-65 list (10002), signed for real: a lookup's answer never reaches
/// the host, so the engine checks it itself. `write` relays are marked so, `read` ones
/// too (those are not where the author publishes).
fn relay_list(keys: &Keys, write: &[&str], read: &[&str], created_at: u64) -> Event {
    let mut tags: Vec<Tag> = write
        .iter()
        .map(|r| Tag::parse(["r", r, "write"]).expect("r tag"))
        .collect();
    tags.extend(
        read.iter()
            .map(|r| Tag::parse(["r", r, "read"]).expect("r tag")),
    );
    EventBuilder::new(Kind::RelayList, "")
        .tags(tags)
        .custom_created_at(Timestamp::from_secs(created_at))
        .sign_with_keys(keys)
        .expect("signed")
}

/// The lookup REQs (kinds 10002 and 10317 by author) among `cmds` on `relay`, with the
/// authors each asks about.
fn lookups(cmds: &[Command], relay: &str) -> Vec<(SubscriptionId, BTreeSet<String>)> {
    historic(cmds, relay)
        .into_iter()
        .filter(|(_, f)| {
            f.kinds
                .as_ref()
                .is_some_and(|k| *k == BTreeSet::from([Kind::RelayList, Kind::from(10317)]))
        })
        .map(|(id, f)| {
            let authors = f.authors.iter().flatten().map(|a| a.to_hex()).collect();
            (id, authors)
        })
        .collect()
}

/// Answers every historic REQ on `relay` but the lookups with "nothing" (as `settle`),
/// returning the lookups met on the way, still open.
fn settle_but_lookups(
    h: &mut Harness,
    relay: &str,
    cmds: &[Command],
) -> Vec<(SubscriptionId, BTreeSet<String>)> {
    let mut found = lookups(cmds, relay);
    let open: BTreeSet<SubscriptionId> = found.iter().map(|(id, _)| id.clone()).collect();
    let mut todo: Vec<Command> = cmds
        .iter()
        .filter(|c| !matches!(c, Command::Subscribe { id, .. } if open.contains(id)))
        .cloned()
        .collect();
    while !todo.is_empty() {
        let mut next = Vec::new();
        for (id, fs) in historic_reqs(&todo, relay) {
            let lookup = fs.iter().find(|f| {
                f.kinds
                    .as_ref()
                    .is_some_and(|k| k.contains(&Kind::RelayList))
            });
            if let Some(f) = lookup {
                found.push((id, f.authors.iter().flatten().map(|a| a.to_hex()).collect()));
                continue;
            }
            next.extend(h.answer(relay, &id, &[]));
        }
        for (session, _) in negentropy(&todo, relay) {
            next.extend(h.feed(Input::NegentropyFailed {
                relay: url(relay),
                session,
                reason: NegentropyFailure::Unsupported,
            }));
        }
        todo = next;
    }
    found
}

/// A Sync+ host holding `repo` (listed on A) with A synced, that accepted an issue by
/// participant `keys(2)`: returns the issue and the lookup A was asked.
fn with_participant(bounds: SyncPlusConfig) -> (Harness, RepoRef, Event, SubscriptionId) {
    let (mut h, _, repo) = with_repo(sync_plus(bounds), &[A]);
    h.connect_and_settle(A);
    let root = issue(&keys(2), &repo, T0 - 50, "bug");
    let cmds = accept_root(&mut h, &root);
    let found = settle_but_lookups(&mut h, A, &cmds);
    assert_eq!(
        found.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>(),
        vec![BTreeSet::from([keys(2).public_key().to_hex()])],
        "the issue's author is asked about, once, on the repo's relay"
    );
    let lookup = found[0].0.clone();
    (h, repo, root, lookup)
}

#[test]
fn grasp03_a_participants_write_relay_carries_only_the_repos_conversation() {
    let (mut h, repo, root, lookup) = with_participant(SyncPlusConfig::default());
    let list = relay_list(&keys(2), &[B], &[C], T0 - 10);
    let cmds = h.answer(A, &lookup, &[list]);
    assert!(
        unsubscribes(&cmds, A).contains(&lookup),
        "the lookup ends at EOSE"
    );
    assert!(
        cmds.iter().all(|c| !matches!(c, Command::Ingest { .. })),
        "lists are not handed over"
    );
    let cmds = {
        let mut c = cmds;
        c.extend(h.advance(Duration::from_secs(5)));
        c
    };
    assert_eq!(
        connects(&cmds),
        BTreeSet::from([url(B)]),
        "the write relay, not the read one"
    );

    let cmds = h.connect(B);
    let asked: Vec<Filter> = historic(&cmds, B)
        .into_iter()
        .map(|(_, f)| without_paging(&f))
        .chain(negentropy(&cmds, B).into_iter().map(|(_, f)| f))
        .collect();
    let mut want: Vec<Filter> = repo_filters(&repo);
    want.extend(root_filters(&root.id));
    let asked_set: BTreeSet<String> = asked.iter().map(|f| format!("{f:?}")).collect();
    assert!(
        !asked.iter().any(|f| f
            .kinds
            .as_ref()
            .is_some_and(|k| k.contains(&Kind::from(30617)) || k.contains(&Kind::from(30618)))),
        "no layer 1 and no state on an outbox relay: {asked:?}"
    );
    for f in &want {
        assert!(
            asked.iter().any(|a| a.generic_tags == f.generic_tags),
            "{f:?} asked on B: {asked_set:?}"
        );
    }
    let live_b: Vec<Filter> = live(&cmds, B).into_iter().flat_map(|(_, f)| f).collect();
    assert!(
        !live_b.is_empty()
            && live_b.iter().all(|f| f.kinds.as_ref().is_none_or(|k| {
                !k.contains(&Kind::from(30617)) && !k.contains(&Kind::from(30618))
            })),
        "live on B: the conversation only, {live_b:?}"
    );

    // A comment only B has arrives through it (B without NIP-77, answering by REQ).
    let comment = reply(&keys(3), &root.id, T0 - 5, "seen on B only");
    let mut got = Vec::new();
    let mut todo = cmds;
    while !todo.is_empty() {
        let mut next = Vec::new();
        for (id, fs) in historic_reqs(&todo, B) {
            let opts = nostr::filter::MatchEventOptions::new();
            let has: Vec<Event> = [comment.clone()]
                .into_iter()
                .filter(|e| fs.iter().any(|f| f.match_event(e, opts)))
                .collect();
            next.extend(h.answer(B, &id, &has));
        }
        for (session, _) in negentropy(&todo, B) {
            next.extend(h.feed(Input::NegentropyFailed {
                relay: url(B),
                session,
                reason: NegentropyFailure::Unsupported,
            }));
        }
        got.extend(ingested(&next));
        todo = next;
    }
    assert_eq!(got, vec![comment.id]);
    assert_eq!(h.engine.metrics().sync_plus_relays, 1);
    assert_eq!(h.engine.metrics().sync_plus_lookups, 1);
}

#[test]
fn grasp03_off_by_default_asks_nobody_about_lists_and_dials_no_outbox_relay() {
    let (mut h, _, repo) = with_repo(config(), &[A]);
    h.connect_and_settle(A);
    let root = issue(&keys(2), &repo, T0 - 50, "bug");
    let cmds = accept_root(&mut h, &root);
    let mut all = cmds.clone();
    all.extend(h.settle(A, &cmds));
    assert!(lookups(&all, A).is_empty());
    // Even a list the host stored itself moves nothing.
    let mut cmds = h.accept(&relay_list(&keys(2), &[B], &[], T0 - 10));
    cmds.extend(h.advance(Duration::from_secs(60)));
    assert!(connects(&cmds).is_empty(), "{:?}", connects(&cmds));
    assert_eq!(h.engine.metrics().sync_plus_lookups, 0);
}

#[test]
fn grasp03_a_list_with_a_bad_signature_is_struck_and_dials_nothing() {
    let (mut h, _, _, lookup) = with_participant(SyncPlusConfig::default());
    // The right author and kind, but the dummy signature of `unsigned::event`.
    let forged = event(&keys(2), 10002, vec![tag(&["r", B])], T0 - 10, "");
    let before = h.engine.metrics().dropped_unsolicited;
    let mut cmds = h.answer(A, &lookup, &[forged]);
    cmds.extend(h.advance(Duration::from_secs(5)));
    assert!(connects(&cmds).is_empty());
    assert_eq!(h.engine.metrics().dropped_unsolicited, before + 1);
    // Nor is a list by someone nobody asked about believed.
    let (mut h, _, _, lookup) = with_participant(SyncPlusConfig::default());
    let stranger = relay_list(&keys(9), &[B], &[], T0 - 10);
    let mut cmds = h.answer(A, &lookup, &[stranger]);
    cmds.extend(h.advance(Duration::from_secs(5)));
    assert!(connects(&cmds).is_empty());
}

#[test]
fn grasp03_outbox_relays_are_ranked_by_participants_and_bounded_per_repo_and_in_total() {
    let bounds = SyncPlusConfig {
        max_authors_per_repo: 3,
        max_relays_per_repo: 2,
        max_relays_total: 2,
        max_relays_per_author: 3,
    };
    let (mut h, repo, root, lookup) = with_participant(bounds);
    // Two more participants comment; a fourth is over the per-repo author bound.
    for (n, at) in [(3u8, T0 - 40), (4, T0 - 30), (5, T0 - 20)] {
        h.accept(&reply(&keys(n), &root.id, at, "me too"));
    }
    h.advance(Duration::from_secs(5));
    // The first lookup is still open: the others wait for it (one per relay).
    let mut cmds = h.answer(
        A,
        &lookup,
        &[relay_list(&keys(2), &[B, C, D], &[], T0 - 10)],
    );
    cmds.extend(h.advance(Duration::from_secs(1)));
    let next = lookups(&cmds, A);
    assert_eq!(next.len(), 1, "{next:?}");
    let asked = &next[0].1;
    let expected: BTreeSet<String> = [3u8, 4]
        .iter()
        .map(|n| keys(*n).public_key().to_hex())
        .collect();
    assert_eq!(asked, &expected, "the fifth author is over the bound of 3");
    let mut cmds = h.answer(
        A,
        &next[0].0,
        &[
            relay_list(&keys(3), &[D, C], &[], T0 - 10),
            relay_list(&keys(4), &[D, "wss://e.example"], &[], T0 - 10),
        ],
    );
    cmds.extend(h.advance(Duration::from_secs(5)));
    // D is named by 3, C by 2, B and E by 1: the two most named.
    let needs = h.engine.repo_index().get(&repo).expect("repo");
    assert_eq!(needs.outbox_relays, BTreeSet::from([url(C), url(D)]));
    assert_eq!(h.engine.metrics().sync_plus_relays, 2);

    // A second repo whose participant names a new relay gets none: the total is 2.
    let k7 = keys(7);
    h.accept(&announcement(&k7, "other", &[US, A], T0 - 90));
    h.advance(Duration::from_secs(5));
    let other = coord(&k7, "other");
    let cmds = accept_root(&mut h, &issue(&keys(8), &other, T0 - 50, "other bug"));
    let found = settle_but_lookups(&mut h, A, &cmds);
    let (id, _) = found
        .into_iter()
        .next()
        .expect("a lookup about the new participant");
    let mut cmds = h.answer(
        A,
        &id,
        &[relay_list(&keys(8), &["wss://f.example", D], &[], T0 - 10)],
    );
    cmds.extend(h.advance(Duration::from_secs(5)));
    let needs = h.engine.repo_index().get(&other).expect("repo");
    assert_eq!(
        needs.outbox_relays,
        BTreeSet::from([url(D)]),
        "D is in use already, F is over the total"
    );
    assert!(!connects(&cmds).contains(&url("wss://f.example")));
}

#[test]
fn grasp03_the_url_policy_and_the_announcement_come_first() {
    let policy = Arc::new(DenyHosts(vec!["b.example"]));
    let mut h = Harness::with(sync_plus(SyncPlusConfig::default()), policy, 0);
    let k = keys(1);
    h.accept(&announcement(&k, "repo", &[US, A, C], T0 - 100));
    h.advance(Duration::from_secs(5));
    let repo = coord(&k, "repo");
    h.connect_and_settle(C);
    h.connect_and_settle(A);
    let root = issue(&keys(2), &repo, T0 - 50, "bug");
    let cmds = accept_root(&mut h, &root);
    let mut all = settle_but_lookups(&mut h, A, &cmds);
    all.extend(settle_but_lookups(&mut h, C, &cmds));
    assert_eq!(all.len(), 2, "asked on each listed relay: {all:?}");
    let on_a = lookups(&cmds, A).into_iter().next().expect("lookup on A").0;
    // B is refused by policy, C is listed already (it stays at the repo's own level).
    let mut cmds = h.answer(A, &on_a, &[relay_list(&keys(2), &[B, C], &[], T0 - 10)]);
    cmds.extend(h.advance(Duration::from_secs(5)));
    assert!(connects(&cmds).is_empty());
    let needs = h.engine.repo_index().get(&repo).expect("repo");
    assert!(needs.outbox_relays.is_empty());
    assert_eq!(
        h.engine.targets().get(&url(C)).expect("C").level(&repo),
        Some(SyncLevel::Full)
    );
}

#[test]
fn grasp03_a_restart_keeps_participants_and_outbox_relays() {
    let (mut h, repo, _, lookup) = with_participant(SyncPlusConfig::default());
    h.answer(A, &lookup, &[relay_list(&keys(2), &[B], &[], T0 - 10)]);
    h.advance(Duration::from_secs(5));
    let mut h2 = restarted_with(
        &h,
        Duration::from_secs(3600),
        sync_plus(SyncPlusConfig::default()),
    );
    let cmds = h2.advance(Duration::from_secs(5));
    assert!(connects(&cmds).contains(&url(B)), "{:?}", connects(&cmds));
    assert_eq!(
        h2.engine
            .repo_index()
            .get(&repo)
            .expect("repo")
            .outbox_relays,
        BTreeSet::from([url(B)])
    );
    // And the participant is asked about again on A, whose list may have changed.
    let cmds = h2.connect(A);
    let found = settle_but_lookups(&mut h2, A, &cmds);
    assert_eq!(found.len(), 1, "{found:?}");
}

#[test]
fn grasp03_a_restart_has_every_outbox_relay_at_once_not_only_the_first_list_back() {
    let (mut h, repo, root, lookup) = with_participant(SyncPlusConfig::default());
    h.accept(&reply(&keys(3), &root.id, T0 - 40, "me too"));
    h.advance(Duration::from_secs(5));
    let mut cmds = h.answer(A, &lookup, &[relay_list(&keys(2), &[B], &[], T0 - 10)]);
    cmds.extend(h.advance(Duration::from_secs(1)));
    let next = lookups(&cmds, A);
    assert_eq!(next.len(), 1, "{next:?}");
    h.answer(A, &next[0].0, &[relay_list(&keys(3), &[C], &[], T0 - 10)]);
    h.advance(Duration::from_secs(5));
    let both = BTreeSet::from([url(B), url(C)]);
    assert_eq!(
        h.engine.repo_index().get(&repo).unwrap().outbox_relays,
        both
    );

    let mut h2 = restarted_with(
        &h,
        Duration::from_secs(600),
        sync_plus(SyncPlusConfig::default()),
    );
    assert_eq!(
        h2.engine.repo_index().get(&repo).unwrap().outbox_relays,
        both
    );
    // The lookups after the restart come back one author at a time: nothing is dropped
    // in between (each list is the one kept).
    let cmds = h2.connect(A);
    let found = settle_but_lookups(&mut h2, A, &cmds);
    let (id, _) = found
        .into_iter()
        .next()
        .expect("participants asked about again");
    let mut cmds = h2.answer(A, &id, &[relay_list(&keys(2), &[B], &[], T0 - 10)]);
    cmds.extend(h2.advance(Duration::from_secs(5)));
    assert_eq!(
        h2.engine.repo_index().get(&repo).unwrap().outbox_relays,
        both
    );
    assert!(disconnects(&cmds).is_empty(), "{:?}", disconnects(&cmds));
}

#[test]
fn grasp03_a_refused_lookup_is_asked_again_after_a_backoff() {
    let (mut h, repo, _, lookup) = with_participant(SyncPlusConfig::default());
    let cmds = h.closed(A, &lookup, "rate-limited: slow down");
    assert!(lookups(&cmds, A).is_empty(), "not at once");
    assert_eq!(h.engine.metrics().sync_plus_lookups_failed, 1);
    // The rate limit's cooldown and the first backoff (30 s) pass.
    let cmds = h.advance(Duration::from_secs(90));
    let again = lookups(&cmds, A);
    assert_eq!(again.len(), 1, "asked again: {again:?}");
    let mut cmds = h.answer(A, &again[0].0, &[relay_list(&keys(2), &[B], &[], T0 - 10)]);
    cmds.extend(h.advance(Duration::from_secs(5)));
    assert!(connects(&cmds).contains(&url(B)));
    assert_eq!(
        h.engine.repo_index().get(&repo).unwrap().outbox_relays,
        BTreeSet::from([url(B)])
    );
}

#[test]
fn grasp03_a_list_the_host_accepted_with_its_authors_first_event_counts() {
    let (mut h, _, repo) = with_repo(sync_plus(SyncPlusConfig::default()), &[A]);
    h.connect_and_settle(A);
    // The list is older than the issue and arrives in the same batch.
    h.accept(&relay_list(&keys(2), &[B], &[], T0 - 60));
    h.accept(&issue(&keys(2), &repo, T0 - 50, "bug"));
    let cmds = h.advance(Duration::from_secs(5));
    assert!(connects(&cmds).contains(&url(B)), "{:?}", connects(&cmds));
}

#[test]
fn grasp03_a_relay_repeating_a_list_past_the_cap_is_struck() {
    let (mut h, _, _, lookup) = with_participant(SyncPlusConfig::default());
    let list = relay_list(&keys(2), &[B], &[], T0 - 10);
    let before = h.engine.metrics().dropped_unsolicited;
    let copies = vec![list; 10];
    h.answer(A, &lookup, &copies);
    // One author asked about: four copies are read, the other six are strikes.
    assert_eq!(h.engine.metrics().dropped_unsolicited, before + 6);
}

#[test]
fn grasp03_a_relay_no_announcement_lists_any_more_keeps_only_the_conversation() {
    let mut h = Harness::new(sync_plus(SyncPlusConfig::default()));
    let k = keys(1);
    h.accept(&announcement(&k, "repo", &[US, A, C], T0 - 100));
    h.advance(Duration::from_secs(5));
    let repo = coord(&k, "repo");
    h.connect_and_settle(C);
    h.connect_and_settle(A);
    let root = issue(&keys(2), &repo, T0 - 50, "bug");
    let cmds = accept_root(&mut h, &root);
    settle_but_lookups(&mut h, C, &cmds);
    let on_a = lookups(&cmds, A).into_iter().next().expect("lookup on A").0;
    settle_but_lookups(&mut h, A, &cmds);
    // The participant writes to C, which the announcement lists too.
    let mut cmds = h.answer(A, &on_a, &[relay_list(&keys(2), &[C], &[], T0 - 10)]);
    cmds.extend(h.advance(Duration::from_secs(5)));
    h.settle(C, &cmds);
    let layer1_live = |h: &Harness| {
        h.engine
            .live_subscriptions(&url(C))
            .iter()
            .flat_map(|(_, fs)| fs.iter())
            .any(|f| kind_of(f) == "L1")
    };
    assert!(layer1_live(&h));
    // A newer announcement drops C: C stays, for the participant, without layer 1.
    let mut cmds = h.accept(&announcement(&k, "repo", &[US, A], T0 - 5));
    cmds.extend(h.advance(Duration::from_secs(10)));
    h.settle(C, &cmds);
    assert_eq!(
        h.engine.repo_index().get(&repo).unwrap().outbox_relays,
        BTreeSet::from([url(C)])
    );
    assert!(h.status(C).is_connected());
    assert!(
        !layer1_live(&h),
        "{:?}",
        h.engine.live_subscriptions(&url(C))
    );
    let live_c: Vec<Filter> = h
        .engine
        .live_subscriptions(&url(C))
        .into_iter()
        .flat_map(|(_, fs)| fs)
        .collect();
    assert!(!kinds_of(&live_c).contains("state"), "{live_c:?}");
    assert!(kinds_of(&live_c).contains("#e"), "{live_c:?}");
}
