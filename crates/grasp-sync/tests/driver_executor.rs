//! The `PoolExecutor` against real relays on 127.0.0.1: commands in by hand, the
//! inputs it reports checked. Every wait is a condition with a bounded timeout.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use grasp_sync::driver::{Dialer, ExecuteError, ExecutorConfig, PoolExecutor, SystemResolver};
use grasp_sync::ports::{AllowAllRelays, EventStore, PortError};
use grasp_sync::{Command, Input, NegentropyFailure, RelayUrl, SubscriptionMode};
use nostr::{Event, EventId, Filter, Kind, SubscriptionId, Timestamp};
use tokio::sync::mpsc;

use support::{ChildRelay, NegOpenAnswer, Repo, STEP};

child_relay_entry!();

/// A have-set given by the test.
struct Have(Vec<(EventId, Timestamp)>);

#[async_trait]
impl EventStore for Have {
    async fn negentropy_items(
        &self,
        _filter: &Filter,
    ) -> Result<Vec<(EventId, Timestamp)>, PortError> {
        Ok(self.0.clone())
    }

    async fn stored_events(&self, _filter: &Filter) -> Result<Vec<nostr::Event>, PortError> {
        Ok(Vec::new())
    }
}

struct Harness {
    exec: PoolExecutor,
    rx: mpsc::Receiver<Input>,
    /// Inputs seen while waiting for others, in arrival order.
    seen: Vec<Input>,
}

impl Harness {
    fn new(have: Vec<(EventId, Timestamp)>) -> Self {
        Self::with_config(have, ExecutorConfig::default())
    }

    fn with_config(have: Vec<(EventId, Timestamp)>, config: ExecutorConfig) -> Self {
        let dialer = Dialer::new(Arc::new(AllowAllRelays), Arc::new(SystemResolver));
        let (exec, rx) = PoolExecutor::new(Arc::new(Have(have)), dialer, config);
        Self {
            exec,
            rx,
            seen: Vec::new(),
        }
    }

    async fn run(&mut self, cmd: Command) {
        self.exec.execute(cmd).await.expect("command accepted");
    }

    /// Waits for the first input matching `pred`; others are kept in `seen`.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&Input) -> bool) -> Input {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(input)) if pred(&input) => return input,
                Ok(Some(input)) => self.seen.push(input),
                Ok(None) => panic!("input channel closed while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}; seen: {:#?}", self.seen),
            }
        }
    }

    async fn connect(&mut self, relay: &RelayUrl) {
        self.run(Command::Connect {
            relay: relay.clone(),
        })
        .await;
        let r = relay.clone();
        self.wait_for(
            "RelayConnected",
            move |i| matches!(i, Input::RelayConnected { relay } if *relay == r),
        )
        .await;
    }

    /// Subscribes and collects events until EOSE on that subscription.
    async fn fetch(
        &mut self,
        relay: &RelayUrl,
        id: &str,
        filter: Filter,
        mode: SubscriptionMode,
    ) -> Vec<Event> {
        let sub = SubscriptionId::new(id);
        self.run(Command::Subscribe {
            relay: relay.clone(),
            id: sub.clone(),
            filters: vec![filter],
            mode,
        })
        .await;
        let mut events = Vec::new();
        loop {
            let (r, s) = (relay.clone(), sub.clone());
            let input = self
                .wait_for("event or EOSE", move |i| match i {
                    Input::Event {
                        relay,
                        subscription,
                        ..
                    }
                    | Input::Eose {
                        relay,
                        subscription,
                    } => *relay == r && *subscription == s,
                    _ => false,
                })
                .await;
            match input {
                Input::Event { event, .. } => events.push(*event),
                _ => return events,
            }
        }
    }

    /// A round trip on `relay`'s connection: once its EOSE is back, the relay has
    /// handled everything we sent before and sent us everything it had queued.
    async fn barrier(&mut self, relay: &RelayUrl, n: u32) {
        let id = format!("barrier-{n}");
        let never = Filter::new().id(EventId::all_zeros());
        let got = self
            .fetch(relay, &id, never, SubscriptionMode::Historic)
            .await;
        assert!(got.is_empty());
        self.run(Command::Unsubscribe {
            relay: relay.clone(),
            id: SubscriptionId::new(id),
        })
        .await;
    }

    fn seen_events_on(&self, sub: &SubscriptionId) -> Vec<EventId> {
        self.seen
            .iter()
            .filter_map(|i| match i {
                Input::Event {
                    subscription,
                    event,
                    ..
                } if subscription == sub => Some(event.id),
                _ => None,
            })
            .collect()
    }
}

fn url(s: &str) -> RelayUrl {
    RelayUrl::parse(s).expect("relay url")
}

fn issues_filter(repo: &Repo) -> Filter {
    Filter::new().kind(Kind::Custom(1621)).custom_tag(
        nostr::SingleLetterTag::lowercase(nostr::Alphabet::A),
        repo.coordinate(),
    )
}

#[tokio::test]
async fn historic_then_live_then_close_on_one_relay() {
    let relay = support::start_relay().await;
    let r = url(&relay.url);
    let repo = Repo::new("alpha");
    let old: Vec<Event> = (0..3)
        .map(|i| repo.issue(&format!("old {i}"), 100 + i))
        .collect();
    support::publish(&relay.url, &old).await;

    let mut h = Harness::new(vec![]);
    h.connect(&r).await;

    // Historic: stored events, then EOSE, all under our subscription id.
    let got = h
        .fetch(&r, "hist", issues_filter(&repo), SubscriptionMode::Historic)
        .await;
    let got: BTreeSet<EventId> = got.iter().map(|e| e.id).collect();
    assert_eq!(got, old.iter().map(|e| e.id).collect());

    // Live: limit 0, stays open; a new event arrives on it.
    let live = h
        .fetch(
            &r,
            "live",
            issues_filter(&repo).limit(0),
            SubscriptionMode::Live,
        )
        .await;
    assert!(live.is_empty());
    // Close the historic one; the barrier makes sure the relay processed the CLOSE.
    h.run(Command::Unsubscribe {
        relay: r.clone(),
        id: SubscriptionId::new("hist"),
    })
    .await;
    h.barrier(&r, 1).await;
    let new = repo.issue("new", 0);
    support::publish(&relay.url, std::slice::from_ref(&new)).await;
    let (rr, id) = (r.clone(), new.id);
    let input = h
        .wait_for("live event", move |i| {
            matches!(i, Input::Event { relay, event, .. } if *relay == rr && event.id == id)
        })
        .await;
    let Input::Event { subscription, .. } = input else {
        unreachable!()
    };
    assert_eq!(subscription, SubscriptionId::new("live"));
    h.barrier(&r, 2).await;
    assert!(
        h.seen_events_on(&SubscriptionId::new("hist")).is_empty(),
        "closed subscription still delivered"
    );
    h.exec.shutdown().await;
}

#[tokio::test]
async fn negentropy_reports_exactly_the_missing_ids() {
    let relay = support::start_relay().await;
    let r = url(&relay.url);
    let repo = Repo::new("beta");
    let events: Vec<Event> = (0..5)
        .map(|i| repo.issue(&format!("i{i}"), 50 + i))
        .collect();
    support::publish(&relay.url, &events).await;

    // We hold 3 of the 5 (plus one the relay does not have: must not matter).
    let mut have: Vec<(EventId, Timestamp)> =
        events[..3].iter().map(|e| (e.id, e.created_at)).collect();
    let ours_only = repo.issue("only ours", 10);
    have.push((ours_only.id, ours_only.created_at));
    // The have-set is a union (stored ∪ purgatory ∪ rejected): overlaps happen.
    have.push((events[0].id, events[0].created_at));
    have.push((events[1].id, Timestamp::zero()));
    let mut h = Harness::new(have);
    h.connect(&r).await;

    let session = SubscriptionId::new("neg-1");
    h.run(Command::Negentropy {
        relay: r.clone(),
        session: session.clone(),
        filter: issues_filter(&repo),
    })
    .await;
    let input = h
        .wait_for("negentropy answer", |i| {
            matches!(
                i,
                Input::NegentropyResult { .. } | Input::NegentropyFailed { .. }
            )
        })
        .await;
    let Input::NegentropyResult {
        relay,
        session: s,
        need,
    } = input
    else {
        panic!("negentropy failed: {input:?}");
    };
    assert_eq!(relay, r);
    assert_eq!(s, session);
    let need: BTreeSet<EventId> = need.into_iter().collect();
    assert_eq!(need, events[3..].iter().map(|e| e.id).collect());
    // Dry run: nothing was downloaded behind the engine's back.
    assert!(h.seen.iter().all(|i| !matches!(i, Input::Event { .. })));
    h.exec.shutdown().await;
}

/// Runs one negentropy session for `filter` on `relay` and returns its answer: the ids
/// it found missing, or `None` when it failed.
async fn negentropy_answer(
    h: &mut Harness,
    relay: &RelayUrl,
    id: &str,
    filter: Filter,
) -> Option<BTreeSet<EventId>> {
    let session = SubscriptionId::new(id);
    h.run(Command::Negentropy {
        relay: relay.clone(),
        session: session.clone(),
        filter,
    })
    .await;
    let s = session.clone();
    let input = h
        .wait_for("negentropy answer", move |i| match i {
            Input::NegentropyResult { session, .. } | Input::NegentropyFailed { session, .. } => {
                *session == s
            }
            _ => false,
        })
        .await;
    match input {
        Input::NegentropyResult { need, .. } => Some(need.into_iter().collect()),
        _ => None,
    }
}

/// A relay's channel in the pool overflows while a session runs (a historic REQ floods
/// it, the session's reader falls behind): the answer must then be a failure, which the
/// engine asks again by REQ, never part of the difference presented as all of it. The
/// pool's own reconciliation ends its loop on the first lost message and reports what
/// it had so far; the events it did not name stayed missing until the daily sync.
#[tokio::test]
async fn durable_negentropy_answers_all_of_the_difference_or_fails_when_messages_are_lost() {
    let relay = support::start_relay().await;
    let r = url(&relay.url);
    let repo = Repo::new("flood");
    let events: Vec<Event> = (0..400)
        .map(|i| repo.issue(&format!("i{i}"), 100 + i))
        .collect();
    support::publish(&relay.url, &events).await;
    let all: BTreeSet<EventId> = events.iter().map(|e| e.id).collect();

    let config = ExecutorConfig {
        relay_notification_channel_size: 16,
        ..ExecutorConfig::default()
    };
    let mut h = Harness::with_config(Vec::new(), config);
    h.connect(&r).await;
    let mut failed = 0;
    for round in 0..5 {
        // 400 events ahead of the relay's NEG-MSG on one connection, 16 slots.
        h.run(Command::Subscribe {
            relay: r.clone(),
            id: SubscriptionId::new(format!("flood-{round}")),
            filters: vec![issues_filter(&repo)],
            mode: SubscriptionMode::Historic,
        })
        .await;
        match negentropy_answer(&mut h, &r, &format!("neg-{round}"), issues_filter(&repo)).await {
            Some(need) => assert_eq!(
                need.len(),
                all.len(),
                "round {round}: a session answered {} of the {} missing ids",
                need.len(),
                all.len()
            ),
            None => failed += 1,
        }
        h.run(Command::Unsubscribe {
            relay: r.clone(),
            id: SubscriptionId::new(format!("flood-{round}")),
        })
        .await;
        h.barrier(&r, round).await;
    }
    // 16 slots cannot hold the flood: had no session lost a message, this test would
    // not have tested the loss.
    assert!(failed > 0, "no flooded session lost a message");
    assert!(h.exec.lagged_messages() > 0);
    // Without a flood the same small channel carries a whole session.
    let need = negentropy_answer(&mut h, &r, "neg-quiet", issues_filter(&repo)).await;
    assert_eq!(
        need.as_ref(),
        Some(&all),
        "{failed} flooded sessions failed"
    );
    h.exec.shutdown().await;
}

#[tokio::test]
async fn negentropy_on_relay_without_nip77_fails_fast_and_req_still_works() {
    let relay = support::start_plain_relay(NegOpenAnswer::UnknownCmdNotice).await;
    let repo = Repo::new("gamma");
    let stored = repo.issue("x", 5);
    relay.insert(stored.clone());
    let r = url(&relay.url);
    let mut h = Harness::new(vec![]);
    h.connect(&r).await;

    let started = Instant::now();
    h.run(Command::Negentropy {
        relay: r.clone(),
        session: SubscriptionId::new("neg"),
        filter: issues_filter(&repo),
    })
    .await;
    let input = h
        .wait_for("negentropy failure", |i| {
            matches!(
                i,
                Input::NegentropyResult { .. } | Input::NegentropyFailed { .. }
            )
        })
        .await;
    assert!(
        matches!(
            input,
            Input::NegentropyFailed {
                reason: NegentropyFailure::Unsupported,
                ..
            }
        ),
        "{input:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    // The fallback path the engine takes next: REQ + EOSE.
    let got = h
        .fetch(
            &r,
            "fallback",
            issues_filter(&repo),
            SubscriptionMode::Historic,
        )
        .await;
    assert_eq!(
        got.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![stored.id]
    );
    h.exec.shutdown().await;
}

#[tokio::test]
async fn negentropy_on_silent_relay_times_out_after_the_initial_timeout() {
    let relay = support::start_plain_relay(NegOpenAnswer::Silent).await;
    let r = url(&relay.url);
    let config = ExecutorConfig {
        negentropy_idle_timeout: Duration::from_millis(500),
        ..ExecutorConfig::default()
    };
    let mut h = Harness::with_config(vec![], config);
    h.connect(&r).await;
    let started = Instant::now();
    h.run(Command::Negentropy {
        relay: r.clone(),
        session: SubscriptionId::new("neg"),
        filter: Filter::new().kind(Kind::Custom(1621)),
    })
    .await;
    let input = h
        .wait_for("negentropy failure", |i| {
            matches!(i, Input::NegentropyFailed { .. })
        })
        .await;
    assert!(
        matches!(
            input,
            Input::NegentropyFailed {
                reason: NegentropyFailure::Timeout,
                ..
            }
        ),
        "{input:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    h.exec.shutdown().await;
}

#[tokio::test]
async fn connect_to_closed_port_fails_fast() {
    let r = url(&support::closed_port_url().await);
    let mut h = Harness::new(vec![]);
    let started = Instant::now();
    h.run(Command::Connect { relay: r.clone() }).await;
    let rr = r.clone();
    let input = h
        .wait_for("connect failure", move |i| {
            matches!(i, Input::RelayConnectFailed { relay, .. } | Input::RelayConnected { relay } if *relay == rr)
        })
        .await;
    assert!(
        matches!(input, Input::RelayConnectFailed { .. }),
        "{input:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    // No disconnect is reported for a connection that never came up.
    assert!(h
        .seen
        .iter()
        .all(|i| !matches!(i, Input::RelayDisconnected { .. })));
}

#[tokio::test]
async fn killed_relay_reports_disconnect_and_reconnect_works_without_stale_reqs() {
    let dir = support::temp_dir("child");
    let mut child = ChildRelay::spawn(CHILD_ENTRY, 0, &dir).await;
    let r = url(&child.url);
    let repo = Repo::new("delta");
    let first = repo.issue("before crash", 20);
    support::publish(&child.url, std::slice::from_ref(&first)).await;

    let mut h = Harness::new(vec![]);
    h.connect(&r).await;
    let live = h
        .fetch(
            &r,
            "live",
            issues_filter(&repo).limit(0),
            SubscriptionMode::Live,
        )
        .await;
    assert!(live.is_empty());

    child.kill().await;
    let rr = r.clone();
    h.wait_for(
        "RelayDisconnected",
        move |i| matches!(i, Input::RelayDisconnected { relay } if *relay == rr),
    )
    .await;

    // Commands for a relay that is down are refused, not queued for later.
    let err = h
        .exec
        .execute(Command::Subscribe {
            relay: r.clone(),
            id: SubscriptionId::new("while-down"),
            filters: vec![issues_filter(&repo)],
            mode: SubscriptionMode::Historic,
        })
        .await
        .expect_err("must refuse");
    assert!(matches!(err, ExecuteError::NotConnected(_)), "{err}");

    // Restart on the same port with the same data; the engine reconnects.
    let child2 = ChildRelay::spawn(CHILD_ENTRY, child.port, &dir).await;
    assert_eq!(child2.url, child.url);
    h.connect(&r).await;
    // The old live REQ is not re-sent by the pool: a new event reaches no subscription
    // until the engine subscribes again.
    let second = repo.issue("after restart", 0);
    support::publish(&child2.url, std::slice::from_ref(&second)).await;
    h.barrier(&r, 1).await;
    assert!(
        h.seen_events_on(&SubscriptionId::new("live")).is_empty(),
        "stale REQ re-sent"
    );
    let got = h
        .fetch(
            &r,
            "again",
            issues_filter(&repo),
            SubscriptionMode::Historic,
        )
        .await;
    let got: BTreeSet<EventId> = got.iter().map(|e| e.id).collect();
    assert_eq!(got, [first.id, second.id].into_iter().collect());
    h.exec.shutdown().await;
    drop(child2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn same_event_from_two_relays_is_reported_twice() {
    let a = support::start_relay().await;
    let b = support::start_relay().await;
    let repo = Repo::new("epsilon");
    let event = repo.issue("shared", 3);
    support::publish(&a.url, std::slice::from_ref(&event)).await;
    support::publish(&b.url, std::slice::from_ref(&event)).await;
    let (ra, rb) = (url(&a.url), url(&b.url));

    let mut h = Harness::new(vec![]);
    h.connect(&ra).await;
    h.connect(&rb).await;
    let from_a = h
        .fetch(&ra, "s", issues_filter(&repo), SubscriptionMode::Historic)
        .await;
    let from_b = h
        .fetch(&rb, "s", issues_filter(&repo), SubscriptionMode::Historic)
        .await;
    assert_eq!(
        from_a.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![event.id]
    );
    assert_eq!(
        from_b.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![event.id]
    );
    h.exec.shutdown().await;
}

/// A copy of `event` as a hostile relay could send it: `edit` changes its JSON, the
/// id stays (nostr parses without checking it).
fn tampered(event: &Event, edit: impl FnOnce(&mut serde_json::Value)) -> Event {
    let mut json = serde_json::to_value(event).expect("json");
    edit(&mut json);
    serde_json::from_value(json).expect("still parses")
}

/// nostr-relay-pool caches its signature check by event id alone: once one relay
/// delivered an event, a copy with the same id from another relay — other content, or
/// another signature — passed it unchecked (and the engine trusts the driver's check).
/// The executor checks such copies itself: they are dropped and counted.
#[tokio::test]
async fn copies_of_a_verified_id_with_other_content_or_signature_are_dropped() {
    let a = support::start_relay().await;
    let repo = Repo::new("forgery");
    let genuine = repo.issue("genuine", 3);
    support::publish(&a.url, std::slice::from_ref(&genuine)).await;
    let other = repo.issue("other", 2);
    let forged_content = tampered(&genuine, |j| j["content"] = "pay attacker".into());
    let forged_sig = tampered(&genuine, |j| j["sig"] = other.sig.to_string().into());
    assert_eq!(forged_content.id, genuine.id);
    assert!(forged_content.verify().is_err() && forged_sig.verify().is_err());
    let b = support::start_plain_relay(support::NegOpenAnswer::UnknownCmdNotice).await;
    b.insert(forged_content);
    let c = support::start_plain_relay(support::NegOpenAnswer::UnknownCmdNotice).await;
    c.insert(forged_sig);
    let d = support::start_plain_relay(support::NegOpenAnswer::UnknownCmdNotice).await;
    d.insert(genuine.clone());
    let (ra, rb, rc, rd) = (url(&a.url), url(&b.url), url(&c.url), url(&d.url));
    let by_id = Filter::new().id(genuine.id);

    let mut h = Harness::new(vec![]);
    h.connect(&ra).await;
    let from_a = h
        .fetch(&ra, "a", by_id.clone(), SubscriptionMode::Historic)
        .await;
    assert_eq!(from_a, vec![genuine.clone()], "the genuine event passes");
    for relay in [&rb, &rc] {
        h.connect(relay).await;
        let got = h
            .fetch(relay, "x", by_id.clone(), SubscriptionMode::Historic)
            .await;
        assert!(got.is_empty(), "a tampered copy got through: {got:?}");
        // The engine hears of it (before the EOSE that followed): a strike.
        assert!(
            h.seen
                .iter()
                .any(|i| matches!(i, Input::TamperedEvent { relay: r } if r == relay)),
            "{:#?}",
            h.seen
        );
    }
    assert_eq!(h.exec.forged_events(), 2);
    // The genuine event from yet another relay still passes (its exact id and
    // signature were checked before: only the id is hashed again).
    h.connect(&rd).await;
    let from_d = h.fetch(&rd, "d", by_id, SubscriptionMode::Historic).await;
    assert_eq!(from_d, vec![genuine]);
    assert_eq!(h.exec.forged_events(), 2);
    h.exec.shutdown().await;
}

/// A repo's state event lists every ref as a tag; a big repo has thousands. The pool
/// drops events with more than 2,000 tags by default (silently); the executor lifts
/// that limit (the websocket message limit still bounds an event).
#[tokio::test]
async fn a_state_event_with_thousands_of_refs_gets_through() {
    let repo = Repo::new("big");
    let refs: Vec<nostr::Tag> = (0..2_500)
        .map(|i| {
            nostr::Tag::custom(
                nostr::TagKind::custom(format!("refs/tags/v{i}")),
                ["0".repeat(40)],
            )
        })
        .collect();
    let state = nostr::EventBuilder::new(Kind::Custom(30618), "")
        .tags([nostr::Tag::identifier("big")])
        .tags(refs)
        .sign_with_keys(&repo.keys)
        .expect("sign");
    let relay = support::start_plain_relay(support::NegOpenAnswer::UnknownCmdNotice).await;
    relay.insert(state.clone());
    let r = url(&relay.url);
    let mut h = Harness::new(vec![]);
    h.connect(&r).await;
    let got = h
        .fetch(
            &r,
            "s",
            Filter::new().id(state.id),
            SubscriptionMode::Historic,
        )
        .await;
    assert_eq!(got.len(), 1, "the state event came through");
    h.exec.shutdown().await;
}

#[tokio::test]
async fn disconnect_command_and_refusals() {
    let relay = support::start_relay().await;
    let r = url(&relay.url);
    let mut h = Harness::new(vec![]);

    // Unknown relay, and commands that are not for the pool.
    let err = h
        .exec
        .execute(Command::Unsubscribe {
            relay: r.clone(),
            id: SubscriptionId::new("x"),
        })
        .await
        .expect_err("unknown relay");
    assert!(matches!(err, ExecuteError::NotConnected(_)));
    // Disconnecting it is a no-op: it has no socket.
    h.run(Command::Disconnect { relay: r.clone() }).await;
    assert!(matches!(
        h.exec.execute(Command::PersistState).await,
        Err(ExecuteError::NotAPoolCommand)
    ));
    assert!(!PoolExecutor::is_pool_command(
        &Command::ReadPurgatoryAnnouncements
    ));

    h.connect(&r).await;
    // Connect while connected answers RelayConnected again (idempotent).
    h.connect(&r).await;
    h.run(Command::Disconnect { relay: r.clone() }).await;
    let rr = r.clone();
    h.wait_for(
        "RelayDisconnected",
        move |i| matches!(i, Input::RelayDisconnected { relay } if *relay == rr),
    )
    .await;
    // Negentropy on a relay that is down answers at once with a failure.
    h.run(Command::Negentropy {
        relay: r.clone(),
        session: SubscriptionId::new("n"),
        filter: Filter::new(),
    })
    .await;
    let input = h
        .wait_for("negentropy failure", |i| {
            matches!(i, Input::NegentropyFailed { .. })
        })
        .await;
    assert!(matches!(
        input,
        Input::NegentropyFailed {
            reason: NegentropyFailure::Error(_),
            ..
        }
    ));
    // And the relay can be connected again after an engine-requested disconnect.
    h.connect(&r).await;
    h.exec.shutdown().await;
}

/// Every relay object holds its whole notification channel (the pool allocates it up
/// front), so one whose connection ended — a failed attempt, a disconnect — is dropped
/// from the pool; the next `Connect` makes a new one. Otherwise every relay ever
/// dialled stayed, connected or not.
#[tokio::test]
async fn relay_objects_are_released_when_their_connection_ends() {
    let mut h = Harness::new(vec![]);
    let closed = support::closed_port_url().await;
    let unreachable: Vec<RelayUrl> = (0..20).map(|i| url(&format!("{closed}/r{i}"))).collect();
    for r in &unreachable {
        h.run(Command::Connect { relay: r.clone() }).await;
    }
    for _ in &unreachable {
        h.wait_for("RelayConnectFailed", |i| {
            matches!(i, Input::RelayConnectFailed { .. })
        })
        .await;
    }
    wait_until_pool_holds(&mut h, 0).await;

    let relay = support::start_relay().await;
    let r = url(&relay.url);
    h.connect(&r).await;
    assert_eq!(h.exec.pool().relays().await.len(), 1);
    h.run(Command::Disconnect { relay: r.clone() }).await;
    let rr = r.clone();
    h.wait_for(
        "RelayDisconnected",
        move |i| matches!(i, Input::RelayDisconnected { relay } if *relay == rr),
    )
    .await;
    wait_until_pool_holds(&mut h, 0).await;
    // Connected again on a new object, it works.
    h.connect(&r).await;
    h.barrier(&r, 0).await;
    h.exec.shutdown().await;
}

/// Waits until the executor's pool holds `n` relay objects; the executor forgets
/// ended ones when it next executes a command, so commands are sent meanwhile.
async fn wait_until_pool_holds(h: &mut Harness, n: usize) {
    let deadline = Instant::now() + STEP;
    let nobody = url("ws://127.0.0.1:9/nobody");
    loop {
        // A no-op (no such relay), but the executor tidies up first.
        h.run(Command::Disconnect {
            relay: nobody.clone(),
        })
        .await;
        let held = h.exec.pool().relays().await.len();
        if held == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the pool still holds {held} relays, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn reconnect_right_after_disconnect_gives_a_working_socket() {
    let relay = support::start_relay().await;
    let r = url(&relay.url);
    let mut h = Harness::new(vec![]);
    h.connect(&r).await;
    for round in 0..5 {
        h.run(Command::Disconnect { relay: r.clone() }).await;
        let rr = r.clone();
        h.wait_for(
            "RelayDisconnected",
            move |i| matches!(i, Input::RelayDisconnected { relay } if *relay == rr),
        )
        .await;
        h.connect(&r).await;
        // A round trip proves the socket really carries messages.
        h.barrier(&r, round).await;
    }
    h.exec.shutdown().await;
}
