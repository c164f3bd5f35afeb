//! Test harness shared by the integration tests: real relays on 127.0.0.1.
//!
//! - [`start_relay`]: nostr-relay-builder's `LocalRelay` in-process, in-memory database,
//!   NIP-77 served, rate limit raised (its default of 60 events/min/connection makes
//!   publishing tests flaky).
//! - [`start_plain_relay`]: a tiny websocket relay written here, WITHOUT NIP-77 (REQ,
//!   EVENT, CLOSE only; stored events with `limit` honoured, no live push after EOSE).
//!   nostr-relay-builder cannot turn negentropy off, so this one answers NEG-OPEN the
//!   way strfry-style relays without NIP-77 do (NOTICE "bad msg: unknown cmd") or, in
//!   [`NegOpenAnswer::Silent`] mode, not at all. It logs every REQ
//!   ([`PlainRelay::reqs`]) and can refuse historic REQs with a rate-limit NOTICE
//!   ([`PlainRelay::rate_limit_next_historic_reqs`]).
//! - [`ChildRelay`]: a `LocalRelay` with LMDB storage in a child process that can be
//!   killed (crash simulation) and restarted on the same port with the same data. The
//!   child is this very test binary, re-run with `--exact --ignored` on the test that
//!   calls [`child_relay_main`]; each test file that uses it declares that test with
//!   [`child_relay_entry!`].
//! - NIP-34 fixtures ([`Repo`]) and [`publish`].
//!
//! Nothing here sleeps to assert: callers wait on conditions with bounded timeouts.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nostr::filter::MatchEventOptions;
use nostr::util::BoxedFuture;
use nostr::JsonUtil;
use nostr::{
    ClientMessage, Event, EventBuilder, EventId, Filter, Keys, Kind, RelayMessage, Tag, TagKind,
    Timestamp,
};
use nostr_database::{
    Backend, DatabaseError, DatabaseEventStatus, Events, MemoryDatabase, MemoryDatabaseOptions,
    NostrDatabase, SaveEventStatus,
};
use nostr_relay_builder::prelude::{LocalRelay, RateLimit, RelayBuilder};
use nostr_relay_pool::relay::RelayOptions;
use nostr_relay_pool::RelayPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// How long any harness step may take before the test fails.
pub const STEP: Duration = Duration::from_secs(10);

/// Env var telling the re-run test binary to serve a relay instead of testing.
const CHILD_PORT_ENV: &str = "GRASP_SYNC_CHILD_RELAY_PORT";
const CHILD_DIR_ENV: &str = "GRASP_SYNC_CHILD_RELAY_DIR";
const CHILD_READY: &str = "GRASP_SYNC_CHILD_RELAY_READY";

fn relay_builder() -> RelayBuilder {
    RelayBuilder::default()
        .addr("127.0.0.1".parse().expect("literal address"))
        .rate_limit(RateLimit {
            max_reqs: 10_000,
            notes_per_minute: 100_000,
        })
}

/// An in-process NIP-77 relay. Dropping it stops accepting new connections (open
/// connections may linger: use [`ChildRelay`] to simulate a crash).
pub struct TestRelay {
    relay: Listening,
    /// Its URL, e.g. `ws://127.0.0.1:40123`.
    pub url: String,
}

/// A running `LocalRelay`; dropping it stops accepting new connections.
pub struct Listening(LocalRelay);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// Runs `builder`'s relay on 127.0.0.1:`port`, or on a free port when `port` is 0, and
/// returns it with its `ws://` URL. For a free port the relay picks a random one, checks
/// that it is free, releases it and binds it again: a race other tests' sockets lose now
/// and then (CI saw "Address already in use"), so a lost race is tried again on another
/// port, a bounded number of times.
pub async fn listen(builder: RelayBuilder, port: u16) -> (Listening, String) {
    let mut attempts = 0;
    let relay = loop {
        let relay = if port == 0 {
            LocalRelay::new(builder.clone())
        } else {
            LocalRelay::new(builder.clone().port(port))
        };
        match relay.run().await {
            Ok(()) => break relay,
            Err(nostr_relay_builder::Error::IO(e))
                if port == 0 && e.kind() == std::io::ErrorKind::AddrInUse && attempts < 20 =>
            {
                attempts += 1;
            }
            Err(e) => panic!("local relay runs: {e}"),
        }
    };
    let url = relay
        .url()
        .await
        .to_string()
        .trim_end_matches('/')
        .to_owned();
    (Listening(relay), url)
}

/// Starts nostr-relay-builder's relay on a free port with an in-memory database that
/// keeps events (so it serves REQ and NIP-77).
pub async fn start_relay() -> TestRelay {
    serve(memory_store()).await
}

/// An in-memory store that keeps events.
fn memory_store() -> MemoryDatabase {
    MemoryDatabase::with_opts(MemoryDatabaseOptions {
        events: true,
        max_events: None,
    })
}

/// Runs nostr-relay-builder's relay on `db`, on a free port.
async fn serve(db: impl nostr_database::IntoNostrDatabase) -> TestRelay {
    let (relay, url) = listen(relay_builder().database(db), 0).await;
    TestRelay { relay, url }
}

/// Starts nostr-relay-builder's relay whose store reconciles every event it holds
/// (NIP-77) but answers every REQ by `ids` with nothing: a relay that offers ids and
/// then withholds them.
pub async fn start_relay_withholding_ids() -> TestRelay {
    serve(WithholdsIds(memory_store())).await
}

/// A memory store that finds nothing for a filter with ids; all else as the store.
#[derive(Debug)]
struct WithholdsIds(MemoryDatabase);

impl NostrDatabase for WithholdsIds {
    fn backend(&self) -> Backend {
        self.0.backend()
    }
    fn save_event<'a>(
        &'a self,
        event: &'a Event,
    ) -> BoxedFuture<'a, Result<SaveEventStatus, DatabaseError>> {
        self.0.save_event(event)
    }
    fn check_id<'a>(
        &'a self,
        event_id: &'a EventId,
    ) -> BoxedFuture<'a, Result<DatabaseEventStatus, DatabaseError>> {
        self.0.check_id(event_id)
    }
    fn event_by_id<'a>(
        &'a self,
        event_id: &'a EventId,
    ) -> BoxedFuture<'a, Result<Option<Event>, DatabaseError>> {
        self.0.event_by_id(event_id)
    }
    fn count(&self, filter: Filter) -> BoxedFuture<'_, Result<usize, DatabaseError>> {
        self.0.count(filter)
    }
    fn query(&self, filter: Filter) -> BoxedFuture<'_, Result<Events, DatabaseError>> {
        if filter.ids.is_some() {
            return Box::pin(async move { Ok(Events::new(&filter)) });
        }
        self.0.query(filter)
    }
    fn negentropy_items(
        &self,
        filter: Filter,
    ) -> BoxedFuture<'_, Result<Vec<(EventId, Timestamp)>, DatabaseError>> {
        self.0.negentropy_items(filter)
    }
    fn delete(&self, filter: Filter) -> BoxedFuture<'_, Result<(), DatabaseError>> {
        self.0.delete(filter)
    }
    fn wipe(&self) -> BoxedFuture<'_, Result<(), DatabaseError>> {
        self.0.wipe()
    }
}

/// How the plain relay answers NEG-OPEN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NegOpenAnswer {
    /// NOTICE "bad msg: unknown cmd", as strfry-style relays without NIP-77 do.
    UnknownCmdNotice,
    /// No answer at all (some relays drop unknown commands silently).
    Silent,
    /// A NOTICE with this text (khatru: "failed to parse envelope"; strfry with NIP-77
    /// off: "ERROR: bad msg: negentropy disabled").
    Notice(&'static str),
    /// NEG-ERR with this reason (strfry over `maxSyncEvents`: "blocked: too many query
    /// results"; khatru after 7 s idle: a bare "CLOSED").
    NegErr(&'static str),
    /// CLOSED for the session id with this reason ("closed: nip77 disabled").
    Closed(&'static str),
    /// NEG-MSG holding only a protocol version byte other than ours (a relay speaking
    /// another negentropy version), hex-encoded.
    VersionOnly(&'static str),
}

/// One REQ as the plain relay received it.
#[derive(Debug, Clone)]
pub struct ReqRecord {
    /// When it arrived.
    pub at: std::time::Instant,
    /// Its subscription id.
    pub id: String,
    /// Its filters.
    pub filters: Vec<Filter>,
    /// Whether the relay answered it with the rate-limit NOTICE instead of serving it.
    pub rate_limited: bool,
}

/// Shared state of a [`PlainRelay`].
#[derive(Default)]
struct PlainState {
    events: Mutex<Vec<Event>>,
    reqs: Mutex<Vec<ReqRecord>>,
    /// Historic REQs still to be answered with the rate-limit NOTICE.
    rate_limit_next: AtomicUsize,
}

/// The rate-limit text the plain relay sends (NIP-01 machine-readable prefix).
pub const RATE_LIMIT_NOTICE: &str = "rate-limited: slow down";

/// A relay without NIP-77, serving REQ/EVENT/CLOSE from memory (stored events only:
/// `limit` is honoured, newest first, and nothing is pushed to open subscriptions after
/// EOSE). It logs every REQ and can answer historic REQs with a rate-limit NOTICE.
pub struct PlainRelay {
    /// Its URL.
    pub url: String,
    state: Arc<PlainState>,
    task: tokio::task::JoinHandle<()>,
}

impl PlainRelay {
    /// Stores an event directly (as if published earlier).
    pub fn insert(&self, event: Event) {
        self.state.events.lock().expect("lock").push(event);
    }

    /// The next `n` historic REQs (`limit` absent or > 0: not a live subscription) are
    /// not served: the relay answers each with NOTICE [`RATE_LIMIT_NOTICE`] and
    /// `CLOSED <sub> "rate-limited: slow down"`, as a relay enforcing a REQ rate does.
    pub fn rate_limit_next_historic_reqs(&self, n: usize) {
        self.state.rate_limit_next.store(n, Ordering::SeqCst);
    }

    /// Every REQ received so far, in arrival order.
    pub fn reqs(&self) -> Vec<ReqRecord> {
        self.state.reqs.lock().expect("lock").clone()
    }
}

impl Drop for PlainRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the plain (non-NIP-77) relay on a free port.
pub async fn start_plain_relay(answer: NegOpenAnswer) -> PlainRelay {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state: Arc<PlainState> = Arc::default();
    let shared = Arc::clone(&state);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = Arc::clone(&shared);
            tokio::spawn(async move {
                let _ = serve_plain(stream, state, answer).await;
            });
        }
    });
    PlainRelay {
        url: format!("ws://{addr}"),
        state,
        task,
    }
}

/// Stored events matching `filters`, each filter's `limit` honoured (newest first).
fn query(stored: &[Event], filters: &[Filter]) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    for f in filters {
        let mut hits: Vec<&Event> = stored
            .iter()
            .filter(|e| f.match_event(e, MatchEventOptions::new()))
            .collect();
        hits.sort_by_key(|e| std::cmp::Reverse(e.created_at));
        if let Some(limit) = f.limit {
            hits.truncate(limit);
        }
        for e in hits {
            if !out.iter().any(|o| o.id == e.id) {
                out.push(e.clone());
            }
        }
    }
    out
}

async fn serve_plain(
    stream: tokio::net::TcpStream,
    state: Arc<PlainState>,
    answer: NegOpenAnswer,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut ws = tokio_tungstenite::accept_async(stream).await?;
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else { continue };
        let out: Vec<RelayMessage> = match ClientMessage::from_json(text.as_bytes()) {
            Ok(ClientMessage::Req {
                subscription_id,
                filters,
            }) => {
                let filters: Vec<Filter> = filters.into_iter().map(|f| f.into_owned()).collect();
                let historic = filters.iter().any(|f| f.limit != Some(0));
                let rate_limited = historic
                    && state
                        .rate_limit_next
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                state.reqs.lock().expect("lock").push(ReqRecord {
                    at: std::time::Instant::now(),
                    id: subscription_id.to_string(),
                    filters: filters.clone(),
                    rate_limited,
                });
                let sub = subscription_id.into_owned();
                if rate_limited {
                    vec![
                        RelayMessage::notice(RATE_LIMIT_NOTICE),
                        RelayMessage::closed(sub, RATE_LIMIT_NOTICE),
                    ]
                } else {
                    let stored = state.events.lock().expect("lock").clone();
                    let mut out: Vec<RelayMessage> = query(&stored, &filters)
                        .into_iter()
                        .map(|e| RelayMessage::event(sub.clone(), e))
                        .collect();
                    out.push(RelayMessage::eose(sub));
                    out
                }
            }
            Ok(ClientMessage::Event(event)) => {
                let event = event.into_owned();
                let id = event.id;
                state.events.lock().expect("lock").push(event);
                vec![RelayMessage::ok(id, true, "")]
            }
            Ok(ClientMessage::NegOpen {
                subscription_id, ..
            }) => match answer {
                NegOpenAnswer::UnknownCmdNotice => {
                    vec![RelayMessage::notice("bad msg: unknown cmd")]
                }
                NegOpenAnswer::Silent => vec![],
                NegOpenAnswer::Notice(text) => vec![RelayMessage::notice(text)],
                NegOpenAnswer::NegErr(reason) => vec![RelayMessage::NegErr {
                    subscription_id: std::borrow::Cow::Owned(subscription_id.into_owned()),
                    message: std::borrow::Cow::Borrowed(reason),
                }],
                NegOpenAnswer::Closed(reason) => {
                    vec![RelayMessage::closed(subscription_id.into_owned(), reason)]
                }
                NegOpenAnswer::VersionOnly(hex) => vec![RelayMessage::NegMsg {
                    subscription_id: std::borrow::Cow::Owned(subscription_id.into_owned()),
                    message: std::borrow::Cow::Borrowed(hex),
                }],
            },
            Ok(_) => vec![],
            Err(_) => vec![RelayMessage::notice("could not parse command")],
        };
        for m in out {
            ws.send(Message::Text(m.try_as_json()?.into())).await?;
        }
    }
    Ok(())
}

/// A relay in a child process (LMDB in `dir`), killable to simulate a crash.
pub struct ChildRelay {
    child: tokio::process::Child,
    /// Its URL.
    pub url: String,
    /// Its port (restart on the same one to come back "the same relay").
    pub port: u16,
    /// Its data directory.
    pub dir: PathBuf,
}

impl ChildRelay {
    /// Re-runs this test binary as a relay on `port` (0: any free port) with data in
    /// `dir`. `entry` is the test name declared with [`child_relay_entry!`].
    pub async fn spawn(entry: &str, port: u16, dir: &Path) -> ChildRelay {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = tokio::process::Command::new(exe)
            .args([
                entry,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_PORT_ENV, port.to_string())
            .env(CHILD_DIR_ENV, dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn child relay");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(STEP, async {
            while let Ok(Some(line)) = lines.next_line().await {
                // libtest prints "test <name> ... " on the same line first.
                if let Some(pos) = line.find(CHILD_READY) {
                    return line[pos + CHILD_READY.len()..].trim().to_owned();
                }
            }
            panic!("child relay exited before it was ready");
        })
        .await
        .expect("child relay ready in time");
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in child url");
        ChildRelay {
            child,
            url,
            port,
            dir: dir.to_owned(),
        }
    }

    /// SIGKILL: the sockets drop without a websocket close.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Body of the child relay: serves until killed. Does nothing (returns at once) when
/// the test binary was not started as a child relay.
pub fn child_relay_main() {
    let Ok(port) = std::env::var(CHILD_PORT_ENV) else {
        return;
    };
    let port: u16 = port.parse().expect("port");
    let dir = PathBuf::from(std::env::var(CHILD_DIR_ENV).expect("dir"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        std::fs::create_dir_all(&dir).expect("data dir");
        let db = nostr_lmdb::NostrLMDB::open(&dir).expect("lmdb");
        let (_relay, url) = listen(relay_builder().database(db), port).await;
        println!("{CHILD_READY} {url}");
        std::future::pending::<()>().await;
    });
}

/// Declares the ignored test that a [`ChildRelay`] re-runs. Use once per test file:
/// `child_relay_entry!();` then `ChildRelay::spawn(CHILD_ENTRY, ...)`.
#[macro_export]
macro_rules! child_relay_entry {
    () => {
        /// Not a test: the entry point of a child relay process (see support).
        #[test]
        #[ignore = "entry point of the child relay process, run by the harness"]
        fn child_relay_process() {
            support::child_relay_main();
        }
        /// Name to pass to `ChildRelay::spawn`.
        const CHILD_ENTRY: &str = "child_relay_process";
    };
}

/// A fresh, unique temp directory (removed by the caller if it cares).
pub fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("grasp-sync-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A free port on 127.0.0.1 (bound then released; fine for tests).
pub async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
}

/// A port nothing listens on (for "connect fails fast").
pub async fn closed_port_url() -> String {
    format!("ws://127.0.0.1:{}", free_port().await)
}

/// Publishes events to `url` and waits for each OK (true).
pub async fn publish(url: &str, events: &[Event]) {
    let pool = RelayPool::new();
    pool.add_relay(url, RelayOptions::new().reconnect(false))
        .await
        .expect("add relay");
    pool.try_connect_relay(url, STEP)
        .await
        .expect("connect to publish");
    for e in events {
        let out = pool.send_event_to([url], e).await.expect("send");
        assert!(
            out.success.len() == 1,
            "relay refused {}: {:?}",
            e.id,
            out.failed
        );
    }
    pool.shutdown().await;
}

/// A NIP-34 repository fixture: one maintainer key and a `d` identifier.
pub struct Repo {
    /// The maintainer.
    pub keys: Keys,
    /// The repo identifier.
    pub d: String,
}

impl Repo {
    /// A new repo with a random key.
    pub fn new(d: &str) -> Self {
        Self {
            keys: Keys::generate(),
            d: d.to_owned(),
        }
    }

    /// `30617:<pubkey>:<d>`.
    pub fn coordinate(&self) -> String {
        format!("30617:{}:{}", self.keys.public_key(), self.d)
    }

    fn sign(&self, builder: EventBuilder) -> Event {
        builder.sign_with_keys(&self.keys).expect("sign")
    }

    /// Kind 30617 announcement listing `relays` and a clone URL.
    pub fn announcement(&self, relays: &[&str]) -> Event {
        self.sign(EventBuilder::new(Kind::Custom(30617), "").tags([
            Tag::identifier(self.d.clone()),
            Tag::custom(TagKind::custom("name"), [self.d.clone()]),
            Tag::custom(
                TagKind::custom("relays"),
                relays.iter().map(|s| s.to_string()),
            ),
            Tag::custom(
                TagKind::custom("clone"),
                [format!("http://127.0.0.1:1/{}.git", self.d)],
            ),
        ]))
    }

    /// Kind 30618 state with `main` at `commit` (40 hex digits).
    pub fn state(&self, commit: &str) -> Event {
        self.state_at(commit, 0)
    }

    /// Kind 30618 state created `secs_ago` seconds in the past.
    pub fn state_at(&self, commit: &str, secs_ago: u64) -> Event {
        self.sign(
            EventBuilder::new(Kind::Custom(30618), "")
                .tags([
                    Tag::identifier(self.d.clone()),
                    Tag::custom(TagKind::custom("refs/heads/main"), [commit.to_owned()]),
                    Tag::custom(TagKind::custom("HEAD"), ["ref: refs/heads/main".to_owned()]),
                ])
                .custom_created_at(ago(secs_ago)),
        )
    }

    /// Kind 1621 issue about this repo, with a distinct `created_at` offset (seconds in
    /// the past) so tests can make many distinct events quickly.
    pub fn issue(&self, title: &str, secs_ago: u64) -> Event {
        let a = self.coordinate();
        self.sign(
            EventBuilder::new(Kind::Custom(1621), format!("issue body: {title}"))
                .tags([
                    Tag::custom(TagKind::a(), [a]),
                    Tag::custom(TagKind::p(), [self.keys.public_key().to_hex()]),
                    Tag::custom(TagKind::custom("subject"), [title.to_owned()]),
                ])
                .custom_created_at(ago(secs_ago)),
        )
    }

    /// Kind 1111 (NIP-22) comment on `root` (an issue), by `author`.
    pub fn comment(&self, root: &Event, author: &Keys, text: &str) -> Event {
        self.comment_at(root, author, text, 0)
    }

    /// Kind 1111 comment created `secs_ago` seconds in the past.
    pub fn comment_at(&self, root: &Event, author: &Keys, text: &str, secs_ago: u64) -> Event {
        EventBuilder::new(Kind::Custom(1111), text)
            .tags([
                Tag::custom(TagKind::custom("E"), [root.id.to_hex()]),
                Tag::custom(TagKind::custom("K"), [root.kind.as_u16().to_string()]),
                Tag::custom(TagKind::custom("P"), [root.pubkey.to_hex()]),
                Tag::custom(TagKind::e(), [root.id.to_hex()]),
                Tag::custom(TagKind::custom("k"), [root.kind.as_u16().to_string()]),
                Tag::custom(TagKind::p(), [root.pubkey.to_hex()]),
            ])
            .custom_created_at(ago(secs_ago))
            .sign_with_keys(author)
            .expect("sign")
    }
}

/// `secs_ago` seconds before now.
fn ago(secs_ago: u64) -> Timestamp {
    Timestamp::from_secs(Timestamp::now().as_secs().saturating_sub(secs_ago))
}
