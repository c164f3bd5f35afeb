//! End-to-end sync benchmark (issue 5): K loopback relays holding generated, signed
//! NIP-34 events, a fresh local side (the library driver over an in-memory host) that
//! discovers them from the announcements and syncs everything, measured through a
//! counting TCP proxy in front of every relay.
//!
//! ```text
//! cargo run --release -p grasp-sync-benches --bin e2e -- [--events N] [--relays K]
//!     [--copies C] [--plain-every P] [--timeout SECS] [--default-timers]
//!     [--memory-relays]
//! ```
//!
//! - Relays: nostr-relay-builder `LocalRelay` (NIP-77, rate limits raised, filter `limit`
//!   capped at [`RELAY_MAX_LIMIT`]) on nostr-lmdb in a temporary directory — an indexed
//!   store, as deployed relays have: the in-memory database (`--memory-relays`) scans
//!   every event for each tag filter, so at 100k its queries, not the sync, dominated the
//!   run (57 % of the CPU in `Filter::tag_match` and `memcmp`); every P-th relay (default 3rd)
//!   is instead a small websocket relay written here WITHOUT NIP-77 (answers NEG-OPEN
//!   with `NOTICE "bad msg: unknown cmd"` as strfry-style relays do), same cap.
//! - World: N events (default 10,000) in repos of 10: announcement (listing the proxy
//!   URLs of its C relays, default 2, plus the local relay's own URL), state, 3 issues,
//!   2 patches, 1 PR, 2 NIP-22 comments; signed in parallel threads.
//! - Run 1: the local side holds only the announcements (as if users had published them
//!   to it) and must fetch everything else. Run 2: it already holds 90% of the other
//!   events, so the NIP-77 relays should only move the missing 10%.
//! - Per run: wall time to full convergence, events/s, bytes relay→client on the wire
//!   (TCP payload through the proxy: websocket frames, handshake and NIP-11 included)
//!   against the raw JSON size of the missing events, REQ / NEG-OPEN / filter counts per
//!   relay (parsed from the client's masked websocket frames in the proxy), peak RSS
//!   (VmHWM, reset between runs), and the signature-verification floor: `Event::verify`
//!   of the missing events single-threaded and on all cores.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use grasp_sync::driver::{start, DriverOptions, DriverPorts};
use grasp_sync::engine::NegentropySupport;
use grasp_sync::ports::{
    AllowAllRelays, MemoryEventStore, MemorySyncStateStore, PortError, PurgatoryView,
};
use grasp_sync::{RelayUrl, SyncConfig};
use grasp_sync_benches::front::{start_front, FrontMode, FrontObserver};
use grasp_sync_benches::Rng;
use nostr::{
    ClientMessage, Event, EventBuilder, EventId, Filter, JsonUtil, Keys, Kind, PublicKey,
    RelayMessage, SingleLetterTag, Tag, TagKind, Timestamp,
};
use nostr_database::{MemoryDatabase, MemoryDatabaseOptions, NostrDatabase};
use nostr_lmdb::NostrLMDB;
use nostr_relay_builder::prelude::{LocalRelay, RateLimit, RelayBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// The local relay's own URL: listed in every announcement, never dialled.
const OWN: &str = "ws://own-relay.invalid";
/// The cap every test relay puts on a filter's `limit` (and its default when absent).
const RELAY_MAX_LIMIT: usize = 500;
/// Events per repo (see [`repo_events`]).
const EVENTS_PER_REPO: usize = 10;
/// Seed of the generated world.
const SEED: u64 = 0x6532_6562_656e_6368;

// ---------------------------------------------------------------------------------------
// Arguments

#[derive(Debug, Clone)]
struct Args {
    events: usize,
    relays: usize,
    copies: usize,
    plain_every: usize,
    timeout: Duration,
    /// The library's default batch window and check interval (seconds), not the fast
    /// timers: what an operator who changes nothing gets.
    default_timers: bool,
    /// The NIP-77 relays on nostr-database's in-memory store (unindexed) instead of LMDB.
    memory_relays: bool,
    /// Every relay behind a websocket front (`grasp_sync_benches::front`) instead of the
    /// TCP proxy: `deflate` compresses as strfry does, `plain` is the same front without
    /// it (for A/B). Bytes are then the front's compressed TCP bytes.
    front: Option<FrontMode>,
    /// Each relay's notification channel in the pool (`ExecutorConfig::
    /// relay_notification_channel_size`); `None`: the library's default.
    relay_channel: Option<usize>,
}

fn parse_args() -> Args {
    let mut args = Args {
        events: 10_000,
        relays: 6,
        copies: 2,
        plain_every: 3,
        timeout: Duration::from_secs(600),
        default_timers: false,
        memory_relays: false,
        front: None,
        relay_channel: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match a.as_str() {
            "--events" => args.events = num("--events"),
            "--relays" => args.relays = num("--relays"),
            "--copies" => args.copies = num("--copies"),
            "--plain-every" => args.plain_every = num("--plain-every"),
            "--timeout" => args.timeout = Duration::from_secs(num("--timeout") as u64),
            "--default-timers" => args.default_timers = true,
            "--memory-relays" => args.memory_relays = true,
            "--relay-channel" => args.relay_channel = Some(num("--relay-channel")),
            "--front" => {
                args.front = Some(match it.next().as_deref() {
                    Some("deflate") => FrontMode::Deflate,
                    Some("plain") => FrontMode::Plain,
                    _ => panic!("--front needs deflate or plain"),
                })
            }
            "-h" | "--help" => {
                println!(
                    "e2e [--events N (10000)] [--relays K (6)] [--copies C (2)] \
                     [--plain-every P (3; 0 = all NIP-77)] [--timeout SECS (600)] \
                     [--default-timers (the library's, not the fast ones)] \
                     [--memory-relays (NIP-77 relays on the unindexed in-memory store)] \
                     [--front deflate|plain (a websocket front instead of the TCP proxy; \
                     deflate compresses as strfry does)] \
                     [--relay-channel N (each relay's notification channel in the pool)]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(args.relays >= 1 && args.copies >= 1 && args.events >= EVENTS_PER_REPO);
    args.copies = args.copies.min(args.relays);
    args
}

// ---------------------------------------------------------------------------------------
// Counting proxy

/// What one proxy saw (reset between runs).
#[derive(Default)]
struct ProxyStats {
    /// Bytes relay → client (TCP payload).
    down: AtomicU64,
    /// Bytes client → relay.
    up: AtomicU64,
    connections: AtomicU64,
    /// Of those, connections that agreed permessage-deflate (`--front deflate`).
    deflate_connections: AtomicU64,
    reqs: AtomicU64,
    req_filters: AtomicU64,
    max_filters_per_req: AtomicU64,
    /// Largest `limit` in any REQ filter.
    max_limit: AtomicU64,
    /// REQ filters without a `limit` (the relay applies its default).
    no_limit_filters: AtomicU64,
    neg_opens: AtomicU64,
    neg_msgs: AtomicU64,
    /// EVENT messages relay → client, and their payload bytes.
    event_msgs: AtomicU64,
    event_bytes: AtomicU64,
    /// Of those, announcements (which the local side always holds already).
    announcement_msgs: AtomicU64,
    /// EVENT messages per event kind.
    kinds: std::sync::Mutex<std::collections::BTreeMap<u64, u64>>,
    /// NEG-MSG payload bytes relay → client.
    neg_bytes: AtomicU64,
    /// Other relay → client payload bytes (EOSE, NOTICE, CLOSED, OK...).
    other_bytes: AtomicU64,
}

impl ProxyStats {
    fn reset(&self) {
        for c in [
            &self.down,
            &self.up,
            &self.connections,
            &self.deflate_connections,
            &self.reqs,
            &self.req_filters,
            &self.max_filters_per_req,
            &self.max_limit,
            &self.no_limit_filters,
            &self.neg_opens,
            &self.neg_msgs,
            &self.event_msgs,
            &self.event_bytes,
            &self.announcement_msgs,
            &self.neg_bytes,
            &self.other_bytes,
        ] {
            c.store(0, Ordering::SeqCst);
        }
        self.kinds.lock().expect("lock").clear();
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::SeqCst)
    }

    /// One relay text message: attributes its payload bytes (prefix and kind sniffed,
    /// no JSON parse).
    fn relay_message(&self, text: &[u8]) {
        let n = text.len() as u64;
        if text.starts_with(b"[\"EVENT\"") {
            self.event_msgs.fetch_add(1, Ordering::Relaxed);
            self.event_bytes.fetch_add(n, Ordering::Relaxed);
            if let Some(pos) = text.windows(7).position(|w| w == b"\"kind\":") {
                let kind: u64 = text[pos + 7..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .fold(0, |k, b| k * 10 + u64::from(b - b'0'));
                if kind == 30617 {
                    self.announcement_msgs.fetch_add(1, Ordering::Relaxed);
                }
                *self.kinds.lock().expect("lock").entry(kind).or_default() += 1;
            }
        } else if text.starts_with(b"[\"NEG-MSG\"") {
            self.neg_bytes.fetch_add(n, Ordering::Relaxed);
        } else {
            self.other_bytes.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// One client text message (already unmasked).
    fn client_message(&self, text: &[u8]) {
        let Ok(serde_json::Value::Array(arr)) = serde_json::from_slice(text) else {
            return;
        };
        match arr.first().and_then(|v| v.as_str()) {
            Some("REQ") => {
                let filters = &arr[2.min(arr.len())..];
                self.reqs.fetch_add(1, Ordering::Relaxed);
                self.req_filters
                    .fetch_add(filters.len() as u64, Ordering::Relaxed);
                self.max_filters_per_req
                    .fetch_max(filters.len() as u64, Ordering::Relaxed);
                for f in filters {
                    match f.get("limit").and_then(|l| l.as_u64()) {
                        Some(l) => {
                            self.max_limit.fetch_max(l, Ordering::Relaxed);
                        }
                        None => {
                            self.no_limit_filters.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            Some("NEG-OPEN") => {
                self.neg_opens.fetch_add(1, Ordering::Relaxed);
            }
            Some("NEG-MSG") => {
                self.neg_msgs.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// The websocket front (`--front`) reports what the TCP proxy would have seen.
impl FrontObserver for ProxyStats {
    fn connected(&self, deflate: bool) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        if deflate {
            self.deflate_connections.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn wire(&self, down: u64, up: u64) {
        self.down.fetch_add(down, Ordering::Relaxed);
        self.up.fetch_add(up, Ordering::Relaxed);
    }

    fn client_message(&self, text: &[u8]) {
        ProxyStats::client_message(self, text);
    }

    fn relay_message(&self, text: &[u8]) {
        ProxyStats::relay_message(self, text);
    }
}

/// Parses one direction of the byte stream: the HTTP request or response, then (when it
/// upgraded) websocket frames (masked from a client, plain from a relay), handing every
/// complete text message to `on_message`.
#[derive(Default)]
struct FrameStream {
    buf: Vec<u8>,
    header_done: bool,
    websocket: bool,
    fragment: Vec<u8>,
}

impl FrameStream {
    fn feed(&mut self, data: &[u8], mut on_message: impl FnMut(&[u8])) {
        self.buf.extend_from_slice(data);
        if !self.header_done {
            let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let header = String::from_utf8_lossy(&self.buf[..pos]).to_ascii_lowercase();
            self.websocket = header.contains("upgrade: websocket");
            self.header_done = true;
            self.buf.drain(..pos + 4);
        }
        if !self.websocket {
            self.buf.clear();
            return;
        }
        let mut at = 0;
        loop {
            let b = &self.buf[at..];
            if b.len() < 2 {
                break;
            }
            let fin = b[0] & 0x80 != 0;
            let opcode = b[0] & 0x0f;
            let masked = b[1] & 0x80 != 0;
            let (len, mut off) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(n) as usize, 10)
                }
                126 | 127 => break,
                n => (n as usize, 2),
            };
            let mut mask = [0u8; 4];
            if masked {
                if b.len() < off + 4 {
                    break;
                }
                mask.copy_from_slice(&b[off..off + 4]);
                off += 4;
            }
            if b.len() < off + len {
                break;
            }
            let mut payload = b[off..off + len].to_vec();
            if masked {
                for (i, byte) in payload.iter_mut().enumerate() {
                    *byte ^= mask[i % 4];
                }
            }
            at += off + len;
            match opcode {
                1 | 2 if fin => on_message(&payload),
                1 | 2 => self.fragment = payload,
                0 => {
                    self.fragment.extend_from_slice(&payload);
                    if fin {
                        let whole = std::mem::take(&mut self.fragment);
                        on_message(&whole);
                    }
                }
                _ => {}
            }
        }
        self.buf.drain(..at);
    }
}

/// A TCP proxy on 127.0.0.1 in front of `upstream`; returns its ws:// URL.
async fn start_proxy(upstream: SocketAddr, stats: Arc<ProxyStats>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let stats = Arc::clone(&stats);
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                stats.connections.fetch_add(1, Ordering::Relaxed);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up_stats = Arc::clone(&stats);
                let up = tokio::spawn(async move {
                    let mut parser = FrameStream::default();
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        up_stats.up.fetch_add(n as u64, Ordering::Relaxed);
                        parser.feed(&buf[..n], |m| up_stats.client_message(m));
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                let mut parser = FrameStream::default();
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    stats.down.fetch_add(n as u64, Ordering::Relaxed);
                    parser.feed(&buf[..n], |m| stats.relay_message(m));
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = cw.shutdown().await;
                up.abort();
            });
        }
    });
    format!("ws://{addr}")
}

// ---------------------------------------------------------------------------------------
// Relays

/// A relay without NIP-77 (adapted from the integration tests' plain relay): REQ served
/// from memory, newest first, each filter's `limit` capped at [`RELAY_MAX_LIMIT`] (also
/// the default), EOSE, no live push; NEG-OPEN answered `NOTICE "bad msg: unknown cmd"`.
struct PlainRelay {
    addr: SocketAddr,
    /// Newest first.
    events: Arc<RwLock<Arc<PlainStore>>>,
}

async fn start_plain_relay() -> PlainRelay {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let events: Arc<RwLock<Arc<PlainStore>>> = Arc::default();
    let shared = Arc::clone(&events);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let events = Arc::clone(&shared);
            tokio::spawn(async move {
                let _ = serve_plain(stream, events).await;
            });
        }
    });
    PlainRelay { addr, events }
}

/// The plain relay's events, newest first, with the indexes a real relay has (by id, by
/// author, by single-letter tag value) so that a query costs what it matches, not a scan
/// of everything (which would make the relay, not the sync, the bottleneck at 100k).
#[derive(Default)]
struct PlainStore {
    events: Vec<Event>,
    by_id: HashMap<EventId, usize>,
    by_author: HashMap<PublicKey, Vec<usize>>,
    by_tag: HashMap<(SingleLetterTag, String), Vec<usize>>,
}

impl PlainStore {
    fn new(mut events: Vec<Event>) -> Self {
        events.sort_by_key(|e| std::cmp::Reverse(e.created_at));
        let mut store = PlainStore::default();
        for (i, e) in events.iter().enumerate() {
            store.by_id.insert(e.id, i);
            store.by_author.entry(e.pubkey).or_default().push(i);
            for t in e.tags.iter() {
                if let (Some(l), Some(v)) = (t.single_letter_tag(), t.content()) {
                    store.by_tag.entry((l, v.to_owned())).or_default().push(i);
                }
            }
        }
        store.events = events;
        store
    }

    /// Indices (newest first) that may match `f`.
    fn candidates(&self, f: &Filter) -> Vec<usize> {
        let mut out: Vec<usize> = if let Some(ids) = &f.ids {
            ids.iter()
                .filter_map(|id| self.by_id.get(id).copied())
                .collect()
        } else if let Some((letter, values)) = f.generic_tags.iter().next() {
            values
                .iter()
                .filter_map(|v| self.by_tag.get(&(*letter, v.clone())))
                .flatten()
                .copied()
                .collect()
        } else if let Some(authors) = &f.authors {
            authors
                .iter()
                .filter_map(|a| self.by_author.get(a))
                .flatten()
                .copied()
                .collect()
        } else {
            return (0..self.events.len()).collect();
        };
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn plain_query(stored: &PlainStore, filters: &[Filter]) -> Vec<Event> {
    let mut seen: HashSet<EventId> = HashSet::new();
    let mut out = Vec::new();
    for f in filters {
        let limit = f.limit.unwrap_or(RELAY_MAX_LIMIT).min(RELAY_MAX_LIMIT);
        for e in stored
            .candidates(f)
            .into_iter()
            .map(|i| &stored.events[i])
            .filter(|e| grasp_sync::matching::matches(f, e))
            .take(limit)
        {
            if seen.insert(e.id) {
                out.push(e.clone());
            }
        }
    }
    out
}

async fn serve_plain(
    stream: TcpStream,
    events: Arc<RwLock<Arc<PlainStore>>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _ = stream.set_nodelay(true);
    let mut ws = tokio_tungstenite::accept_async(stream).await?;
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else { continue };
        let out: Vec<RelayMessage> = match ClientMessage::from_json(text.as_bytes()) {
            Ok(ClientMessage::Req {
                subscription_id,
                filters,
            }) => {
                let filters: Vec<Filter> = filters.into_iter().map(|f| f.into_owned()).collect();
                let stored = Arc::clone(&events.read().expect("lock"));
                let sub = subscription_id.into_owned();
                let mut out: Vec<RelayMessage> = plain_query(&stored, &filters)
                    .into_iter()
                    .map(|e| RelayMessage::event(sub.clone(), e))
                    .collect();
                out.push(RelayMessage::eose(sub));
                out
            }
            Ok(ClientMessage::Event(event)) => {
                vec![RelayMessage::ok(event.id, false, "blocked: read-only")]
            }
            Ok(ClientMessage::NegOpen { .. }) => {
                vec![RelayMessage::notice("bad msg: unknown cmd")]
            }
            Ok(_) => vec![],
            Err(_) => vec![RelayMessage::notice("could not parse command")],
        };
        for m in out {
            ws.feed(Message::Text(m.try_as_json()?.into())).await?;
        }
        ws.flush().await?;
    }
    Ok(())
}

enum Upstream {
    Nip77 {
        relay: Box<LocalRelay>,
        db: Arc<dyn NostrDatabase>,
        /// The LMDB directory, removed when the benchmark ends.
        _dir: Option<tempfile::TempDir>,
    },
    Plain(PlainRelay),
}

struct BenchRelay {
    upstream: Upstream,
    url: String,
    stats: Arc<ProxyStats>,
}

impl BenchRelay {
    fn kind(&self) -> &'static str {
        match self.upstream {
            Upstream::Nip77 { .. } => "NIP-77",
            Upstream::Plain(_) => "plain",
        }
    }
}

/// A NIP-77 relay on LMDB in a fresh temporary directory (or, with `memory`, on the
/// in-memory store), with the directory to keep alive as long as the relay.
async fn start_local_relay(
    memory: bool,
) -> (
    LocalRelay,
    Arc<dyn NostrDatabase>,
    Option<tempfile::TempDir>,
    SocketAddr,
) {
    let (db, dir): (Arc<dyn NostrDatabase>, _) = if memory {
        let db = MemoryDatabase::with_opts(MemoryDatabaseOptions {
            events: true,
            max_events: None,
        });
        (Arc::new(db), None)
    } else {
        let dir = tempfile::Builder::new()
            .prefix("grasp-e2e-relay-")
            .tempdir()
            .expect("temporary directory");
        let db = NostrLMDB::open(dir.path()).expect("open LMDB");
        (Arc::new(db), Some(dir))
    };
    let builder = RelayBuilder::default()
        .addr("127.0.0.1".parse().expect("literal address"))
        .rate_limit(RateLimit {
            max_reqs: 1_000_000,
            notes_per_minute: 10_000_000,
        })
        .max_filter_limit(RELAY_MAX_LIMIT)
        .default_filter_limit(RELAY_MAX_LIMIT)
        .database(Arc::clone(&db));
    let relay = LocalRelay::new(builder);
    relay.run().await.expect("local relay runs");
    let url = relay.url().await.to_string();
    let addr: SocketAddr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .expect("relay socket address");
    (relay, db, dir, addr)
}

// ---------------------------------------------------------------------------------------
// The world

struct World {
    /// Every event.
    events: Vec<Event>,
    /// Index in `events` of each announcement.
    announcements: Vec<usize>,
    /// Relays (indices) holding each event.
    holders: Vec<Vec<usize>>,
}

fn repo_relays(repo: usize, relays: usize, copies: usize) -> Vec<usize> {
    (0..copies).map(|j| (repo + j) % relays).collect()
}

fn at(base: u64, rng: &mut Rng) -> Timestamp {
    // Spread over a year so REQ pages never share one timestamp.
    Timestamp::from_secs(base + rng.below(365 * 24 * 3600) as u64)
}

/// The ten events of repo `i`: announcement first.
fn repo_events(i: usize, urls: &[&str], authors: &[Keys], base: u64) -> Vec<Event> {
    let mut rng = Rng::new(SEED ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let keys = Keys::generate();
    let d = format!("repo-{i}");
    let coord = format!("30617:{}:{d}", keys.public_key());
    let sign = |b: EventBuilder, k: &Keys| b.sign_with_keys(k).expect("sign");
    let mut out = Vec::with_capacity(EVENTS_PER_REPO);
    let mut relays: Vec<String> = urls.iter().map(|s| s.to_string()).collect();
    relays.push(OWN.to_owned());
    out.push(sign(
        EventBuilder::new(Kind::Custom(30617), "")
            .tags([
                Tag::identifier(d.clone()),
                Tag::custom(TagKind::custom("name"), [d.clone()]),
                Tag::custom(TagKind::custom("description"), [format!("bench repo {i}")]),
                Tag::custom(TagKind::custom("relays"), relays),
                Tag::custom(
                    TagKind::custom("clone"),
                    [format!("http://127.0.0.1:1/{d}.git")],
                ),
            ])
            .custom_created_at(at(base, &mut rng)),
        &keys,
    ));
    let commit = format!("{:016x}{:016x}{:08x}", rng.next_u64(), rng.next_u64(), i);
    out.push(sign(
        EventBuilder::new(Kind::Custom(30618), "")
            .tags([
                Tag::identifier(d.clone()),
                Tag::custom(TagKind::custom("refs/heads/main"), [commit]),
                Tag::custom(TagKind::custom("HEAD"), ["ref: refs/heads/main".to_owned()]),
            ])
            .custom_created_at(at(base, &mut rng)),
        &keys,
    ));
    let author = |rng: &mut Rng| &authors[rng.below(authors.len())];
    let root = |kind: u16, content: String, subject: Option<String>, rng: &mut Rng| {
        let mut tags = vec![
            Tag::custom(TagKind::a(), [coord.clone()]),
            Tag::custom(TagKind::p(), [keys.public_key().to_hex()]),
        ];
        if let Some(s) = subject {
            tags.push(Tag::custom(TagKind::custom("subject"), [s]));
        }
        if kind == 1617 {
            tags.push(Tag::custom(TagKind::t(), ["root".to_owned()]));
        }
        let who = author(rng).clone();
        sign(
            EventBuilder::new(Kind::Custom(kind), content)
                .tags(tags)
                .custom_created_at(at(base, rng)),
            &who,
        )
    };
    for n in 0..3 {
        out.push(root(
            1621,
            format!("Issue {n} of {d}: something breaks when syncing.\n\nSteps: run it."),
            Some(format!("issue {n}")),
            &mut rng,
        ));
    }
    for n in 0..2 {
        out.push(root(
            1617,
            format!(
                "From {commit:040x} Mon Sep 17 00:00:00 2001\nSubject: [PATCH] fix {n}\n\n\
                 ---\n src/lib.rs | 2 +-\n@@ -1 +1 @@\n-old line {n}\n+new line {n}\n",
                commit = rng.next_u64()
            ),
            None,
            &mut rng,
        ));
    }
    out.push(root(
        1618,
        format!("Pull request for {d}: add a feature"),
        Some("add a feature".to_owned()),
        &mut rng,
    ));
    // Comments on issue 0 and patch 0.
    for target in [2usize, 5] {
        let r = out[target].clone();
        let who = author(&mut rng).clone();
        out.push(sign(
            EventBuilder::new(Kind::Custom(1111), "Thanks, looks good to me.")
                .tags([
                    Tag::custom(TagKind::custom("E"), [r.id.to_hex()]),
                    Tag::custom(TagKind::custom("K"), [r.kind.as_u16().to_string()]),
                    Tag::custom(TagKind::custom("P"), [r.pubkey.to_hex()]),
                    Tag::custom(TagKind::e(), [r.id.to_hex()]),
                    Tag::custom(TagKind::custom("k"), [r.kind.as_u16().to_string()]),
                    Tag::custom(TagKind::p(), [r.pubkey.to_hex()]),
                ])
                .custom_created_at(at(base, &mut rng)),
            &who,
        ));
    }
    debug_assert_eq!(out.len(), EVENTS_PER_REPO);
    out
}

fn generate(args: &Args, urls: &[String]) -> World {
    let repos = args.events.div_ceil(EVENTS_PER_REPO);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let base = Timestamp::now().as_secs() - 2 * 365 * 24 * 3600;
    let per = repos.div_ceil(threads);
    let chunks: Vec<Vec<Vec<Event>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let authors: Vec<Keys> = (0..16).map(|_| Keys::generate()).collect();
                    (t * per..((t + 1) * per).min(repos))
                        .map(|i| {
                            let rs = repo_relays(i, args.relays, args.copies);
                            let u: Vec<&str> = rs.iter().map(|&r| urls[r].as_str()).collect();
                            repo_events(i, &u, &authors, base)
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("signer"))
            .collect()
    });
    let mut world = World {
        events: Vec::with_capacity(repos * EVENTS_PER_REPO),
        announcements: Vec::with_capacity(repos),
        holders: Vec::with_capacity(repos * EVENTS_PER_REPO),
    };
    for (i, repo) in chunks.into_iter().flatten().enumerate() {
        let rs = repo_relays(i, args.relays, args.copies);
        for (n, e) in repo.into_iter().enumerate() {
            if n == 0 {
                world.announcements.push(world.events.len());
            }
            world.events.push(e);
            world.holders.push(rs.clone());
        }
    }
    world
}

// ---------------------------------------------------------------------------------------
// Measurement helpers

struct EmptyPurgatory;

#[async_trait]
impl PurgatoryView for EmptyPurgatory {
    async fn announcements(&self) -> Result<Vec<Event>, PortError> {
        Ok(Vec::new())
    }
}

fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resets VmHWM to the current RSS (Linux `clear_refs` 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// `Event::verify` (id hash + Schnorr signature) of every event, single-threaded and on
/// all cores; best of three each.
fn verify_floor(events: &[&Event]) -> (Duration, Duration, usize) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = events.len().div_ceil(threads).max(1);
    let (mut single, mut all) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        let started = Instant::now();
        for e in events {
            e.verify().expect("valid event");
        }
        single = single.min(started.elapsed());
        let started = Instant::now();
        std::thread::scope(|s| {
            for chunk in events.chunks(per) {
                s.spawn(move || {
                    for e in chunk {
                        e.verify().expect("valid event");
                    }
                });
            }
        });
        all = all.min(started.elapsed());
    }
    (single, all, threads)
}

/// utime + stime of this process, in clock ticks (usually 1/100 s).
fn process_cpu_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit(')').next()?.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn kib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1024.0)
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

// ---------------------------------------------------------------------------------------
// One run

struct RunResult {
    name: String,
    missing: usize,
    missing_raw: u64,
    wall: Duration,
    converged: bool,
    down: u64,
    nip77_down: u64,
    nip77_missing_raw: u64,
    peak_rss_kb: u64,
    rss_before_kb: u64,
    verify_single: Duration,
    verify_all: Duration,
    threads: usize,
    max_filters_per_req: u64,
    max_limit: u64,
    /// The engine's own counters at the end of the run.
    reqs: u64,
    neg_opens: u64,
    received: u64,
    accepted: u64,
    /// Relay messages lost to a full notification channel (asked again).
    lagged: u64,
}

async fn run(
    name: &str,
    args: &Args,
    world: &World,
    relays: &[BenchRelay],
    preheld: &HashSet<usize>,
) -> RunResult {
    for r in relays {
        r.stats.reset();
    }
    let store = Arc::new(MemoryEventStore::new());
    let state = Arc::new(MemorySyncStateStore::new());
    let anns: HashSet<usize> = world.announcements.iter().copied().collect();
    for &i in anns.iter().chain(preheld.iter()) {
        store.insert(world.events[i].clone());
    }
    let missing: Vec<usize> = (0..world.events.len())
        .filter(|i| !anns.contains(i) && !preheld.contains(i))
        .collect();
    let raw = |i: usize| world.events[i].as_json().len() as u64;
    let missing_raw: u64 = missing.iter().map(|&i| raw(i)).sum();
    let mut missing_raw_per_relay = vec![0u64; relays.len()];
    let mut nip77_missing_raw = 0u64;
    for &i in &missing {
        let mut on_nip77 = false;
        for &r in &world.holders[i] {
            missing_raw_per_relay[r] += raw(i);
            on_nip77 |= matches!(relays[r].upstream, Upstream::Nip77 { .. });
        }
        if on_nip77 {
            nip77_missing_raw += raw(i);
        }
    }
    let total = world.events.len();

    let mut config = SyncConfig::default().with_own_relay(RelayUrl::parse(OWN).expect("own url"));
    if !args.default_timers {
        config = config.with_fast_timers();
    }
    // The test relays cap `limit` at RELAY_MAX_LIMIT but publish no NIP-11 document.
    config.default_limits.page_limit = RELAY_MAX_LIMIT;
    config.default_limits.max_limit = Some(RELAY_MAX_LIMIT);
    let limits = config.default_limits;

    reset_peak_rss();
    let rss_before_kb = proc_status_kb("VmRSS:");
    let started = Instant::now();
    let ports = DriverPorts::new(
        store.clone(),
        store.clone(),
        Arc::new(EmptyPurgatory),
        state,
        Arc::new(AllowAllRelays),
    );
    let mut options = DriverOptions::new();
    if let Some(n) = args.relay_channel {
        options.executor.relay_notification_channel_size = n;
    }
    let handle = start(config, ports, options).await.expect("driver starts");
    // The host tells the driver about what it accepted: the announcements and (run 2)
    // the events it already held, so the engine knows their root events without a
    // persisted sync state.
    for &i in world.announcements.iter().chain(preheld.iter()) {
        handle.accepted(world.events[i].clone());
    }
    let mut converged = false;
    while started.elapsed() < args.timeout {
        if store.len() >= total {
            converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = started.elapsed();
    let peak_rss_kb = proc_status_kb("VmHWM:");
    let down_per: Vec<u64> = relays
        .iter()
        .map(|r| ProxyStats::get(&r.stats.down))
        .collect();
    // The store is complete before the engine has counted every outcome the driver
    // reports back: wait (briefly, outside the wall time) until its count caught up, so
    // the summary's `accepted` is the engine's whole count.
    let mut status = handle.status().await.expect("driver running");
    let counted = Instant::now();
    while converged
        && (status.metrics.events_accepted as usize) < missing.len()
        && counted.elapsed() < Duration::from_secs(2)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
        status = handle.status().await.expect("driver running");
    }
    handle.shutdown().await.expect("clean shutdown");
    // Let the relays notice the closed connections before measuring the floor, and
    // report whether anything still burns CPU while idle (it would skew the floor).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu_before = process_cpu_ticks();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_cpu_ticks = process_cpu_ticks().saturating_sub(cpu_before);

    let missing_events: Vec<&Event> = missing.iter().map(|&i| &world.events[i]).collect();
    let (verify_single, verify_all, threads) = verify_floor(&missing_events);

    println!("\n### {name}\n");
    println!("(CPU used by the process in 0.5 s idle after shutdown: {idle_cpu_ticks} ticks)\n");
    if !converged {
        println!(
            "**NOT CONVERGED** after {}: {} of {total} events",
            secs(wall),
            store.len()
        );
    }
    println!(
        "| relay | kind | missing raw KiB | received KiB | ratio | conns | REQ | filters | max filters/REQ | max limit | no-limit filters | NEG-OPEN | NEG-MSG | EVENT msgs by kind | EVENT KiB | NEG-MSG KiB | other KiB | negentropy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut nip77_down = 0;
    let (mut max_filters_per_req, mut max_limit) = (0, 0);
    for (i, r) in relays.iter().enumerate() {
        let s = &r.stats;
        let snap = status
            .relays
            .iter()
            .find(|x| x.relay.as_str().trim_end_matches('/') == r.url);
        if matches!(r.upstream, Upstream::Nip77 { .. }) {
            nip77_down += down_per[i];
        }
        max_filters_per_req = max_filters_per_req.max(ProxyStats::get(&s.max_filters_per_req));
        max_limit = max_limit.max(ProxyStats::get(&s.max_limit));
        println!(
            "| {i} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} |",
            r.kind(),
            kib(missing_raw_per_relay[i]),
            kib(down_per[i]),
            down_per[i] as f64 / missing_raw_per_relay[i].max(1) as f64,
            match ProxyStats::get(&s.deflate_connections) {
                0 => ProxyStats::get(&s.connections).to_string(),
                d => format!("{} ({d} deflate)", ProxyStats::get(&s.connections)),
            },
            ProxyStats::get(&s.reqs),
            ProxyStats::get(&s.req_filters),
            ProxyStats::get(&s.max_filters_per_req),
            ProxyStats::get(&s.max_limit),
            ProxyStats::get(&s.no_limit_filters),
            ProxyStats::get(&s.neg_opens),
            ProxyStats::get(&s.neg_msgs),
            ProxyStats::get(&s.event_msgs),
            s.kinds
                .lock()
                .expect("lock")
                .iter()
                .map(|(k, n)| format!("{k}:{n}"))
                .collect::<Vec<_>>()
                .join(" "),
            kib(ProxyStats::get(&s.event_bytes)),
            kib(ProxyStats::get(&s.neg_bytes)),
            kib(ProxyStats::get(&s.other_bytes)),
            snap.map_or("-".to_owned(), |x| match x.negentropy {
                NegentropySupport::Supported => "supported".to_owned(),
                NegentropySupport::Unsupported => "unsupported".to_owned(),
                other => format!("{other:?}"),
            }),
        );
    }
    let m = &status.metrics;
    println!(
        "\nengine: reqs_sent {} negentropy_sessions {} fallbacks {} batches {} ok / {} failed, \
         events received {} accepted {} duplicate {}; relay limits assumed: \
         max_filters_per_req {}, max_limit {:?}",
        m.reqs_sent,
        m.negentropy_sessions,
        m.negentropy_fallbacks,
        m.batches_completed,
        m.batches_failed,
        m.events_received,
        m.events_accepted,
        m.events_duplicate,
        limits.max_filters_per_req,
        limits.max_limit,
    );
    RunResult {
        name: name.to_owned(),
        missing: missing.len(),
        missing_raw,
        wall,
        converged,
        down: down_per.iter().sum(),
        nip77_down,
        nip77_missing_raw,
        peak_rss_kb,
        rss_before_kb,
        verify_single,
        verify_all,
        threads,
        max_filters_per_req,
        max_limit,
        reqs: m.reqs_sent,
        neg_opens: m.negentropy_sessions,
        received: m.events_received,
        accepted: m.events_accepted,
        lagged: status.lagged_messages,
    }
}

// ---------------------------------------------------------------------------------------

fn main() {
    grasp_sync::install_default_crypto_provider();
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(args));
}

async fn bench(args: Args) {
    // Relays and their proxies.
    let mut relays = Vec::with_capacity(args.relays);
    for i in 0..args.relays {
        let plain = args.plain_every > 0 && i % args.plain_every == args.plain_every - 1;
        let stats: Arc<ProxyStats> = Arc::default();
        let (upstream, addr) = if plain {
            let p = start_plain_relay().await;
            let addr = p.addr;
            (Upstream::Plain(p), addr)
        } else {
            let (relay, db, dir, addr) = start_local_relay(args.memory_relays).await;
            (
                Upstream::Nip77 {
                    relay: Box::new(relay),
                    db,
                    _dir: dir,
                },
                addr,
            )
        };
        let url = match args.front {
            None => start_proxy(addr, Arc::clone(&stats)).await,
            Some(mode) => {
                start_front(addr, mode, Arc::clone(&stats) as Arc<dyn FrontObserver>).await
            }
        };
        relays.push(BenchRelay {
            upstream,
            url,
            stats,
        });
    }
    let urls: Vec<String> = relays.iter().map(|r| r.url.clone()).collect();

    let started = Instant::now();
    let gen_args = args.clone();
    let world = tokio::task::spawn_blocking(move || generate(&gen_args, &urls))
        .await
        .expect("generate");
    let sign_time = started.elapsed();

    // Load the relays. LMDB's ingester commits what is queued at once in one
    // transaction: saves are issued concurrently, a thousand at a time.
    let mut plain_sets: Vec<Vec<Event>> = vec![Vec::new(); relays.len()];
    let mut saves = Vec::new();
    for (i, e) in world.events.iter().enumerate() {
        for &r in &world.holders[i] {
            match &relays[r].upstream {
                Upstream::Nip77 { db, .. } => saves.push(db.save_event(e)),
                Upstream::Plain(_) => plain_sets[r].push(e.clone()),
            }
        }
        if saves.len() >= 1000 {
            for status in futures_util::future::join_all(saves.drain(..)).await {
                assert!(status.expect("save").is_success(), "relay refused an event");
            }
        }
    }
    for status in futures_util::future::join_all(saves).await {
        assert!(status.expect("save").is_success(), "relay refused an event");
    }
    for (r, set) in plain_sets.into_iter().enumerate() {
        if let Upstream::Plain(p) = &relays[r].upstream {
            *p.events.write().expect("lock") = Arc::new(PlainStore::new(set));
        }
    }
    let raw_total: u64 = world.events.iter().map(|e| e.as_json().len() as u64).sum();

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("## grasp-sync end-to-end benchmark\n");
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average at start (other processes share these cores): {}",
        loadavg.trim()
    );
    println!(
        "machine: {cores} cores ({cpu}); events {} in {} repos ({:.1} MiB raw JSON), \
         relays {} ({} NIP-77, {} plain), {} relays per repo; signed in {} on {cores} threads",
        world.events.len(),
        world.announcements.len(),
        raw_total as f64 / 1048576.0,
        relays.len(),
        relays.iter().filter(|r| r.kind() == "NIP-77").count(),
        relays.iter().filter(|r| r.kind() == "plain").count(),
        args.copies,
        secs(sign_time),
    );

    let cold = run(
        "run 1: fresh local side (only the announcements)",
        &args,
        &world,
        &relays,
        &HashSet::new(),
    )
    .await;

    // Run 2: 90% of the non-announcement events already held.
    let mut rng = Rng::new(SEED ^ 0x90);
    let anns: HashSet<usize> = world.announcements.iter().copied().collect();
    let preheld: HashSet<usize> = (0..world.events.len())
        .filter(|i| !anns.contains(i))
        .filter(|_| rng.below(10) != 0)
        .collect();
    let warm = run(
        "run 2: local side already holds 90% of the events",
        &args,
        &world,
        &relays,
        &preheld,
    )
    .await;

    println!("\n### summary\n");
    println!(
        "| run | converged | missing events | missing raw MiB | wall s | events/s | received MiB | bytes ratio (all) | bytes ratio (NIP-77 relays) | verify 1 core s | verify {} cores s | wall / verify (all cores) | wall / verify (1 core) | peak RSS MiB (start of run) | max filters/REQ | max limit |",
        cold.threads
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in [&cold, &warm] {
        println!(
            "| {} | {} | {} | {:.2} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {:.2} | {:.2} | {:.0} ({:.0}) | {} | {} |",
            r.name.split(':').next().unwrap_or(""),
            r.converged,
            r.missing,
            r.missing_raw as f64 / 1048576.0,
            secs(r.wall),
            r.missing as f64 / r.wall.as_secs_f64(),
            r.down as f64 / 1048576.0,
            r.down as f64 / r.missing_raw.max(1) as f64,
            r.nip77_down as f64 / r.nip77_missing_raw.max(1) as f64,
            secs(r.verify_single),
            secs(r.verify_all),
            r.wall.as_secs_f64() / r.verify_all.as_secs_f64(),
            r.wall.as_secs_f64() / r.verify_single.as_secs_f64(),
            r.peak_rss_kb as f64 / 1024.0,
            r.rss_before_kb as f64 / 1024.0,
            r.max_filters_per_req,
            r.max_limit,
        );
    }
    // One machine-readable line per run. The floor is signature verification of the
    // missing events on 2 cores (this machine's figure scaled when it has more or fewer).
    println!();
    for r in [&cold, &warm] {
        let floor_2 = r.verify_single.as_secs_f64() / 2.0;
        println!(
            "summary: run={} events={} wall_s={:.3} floor_s={:.3} wall_over_floor={:.2} bytes_ratio_all={:.2} bytes_ratio_nip77={:.2} reqs={} neg_opens={} received={} accepted={} lagged={}",
            r.name.split(':').next().unwrap_or("").replace(' ', "_"),
            r.missing,
            r.wall.as_secs_f64(),
            floor_2,
            r.wall.as_secs_f64() / floor_2,
            r.down as f64 / r.missing_raw.max(1) as f64,
            r.nip77_down as f64 / r.nip77_missing_raw.max(1) as f64,
            r.reqs,
            r.neg_opens,
            r.received,
            r.accepted,
            r.lagged,
        );
    }
    println!("\n### targets\n");
    for r in [&cold, &warm] {
        let tag = r.name.split(':').next().unwrap_or("");
        let ratio = r.wall.as_secs_f64() / r.verify_all.as_secs_f64();
        println!(
            "- {tag}: wall ≤ 2× verify floor (all cores): {:.2}× → {}",
            ratio,
            if ratio <= 2.0 { "pass" } else { "MISS" }
        );
    }
    let b = warm.nip77_down as f64 / warm.nip77_missing_raw.max(1) as f64;
    println!(
        "- run 2: bytes from NIP-77 relays ≤ 1.3× missing raw size: {b:.2}× → {}",
        if b <= 1.3 { "pass" } else { "MISS" }
    );
    let limits = grasp_sync::filters::RelayLimits::default();
    let ok = [&cold, &warm].iter().all(|r| {
        r.max_filters_per_req <= limits.max_filters_per_req as u64
            && r.max_limit <= RELAY_MAX_LIMIT as u64
    });
    println!(
        "- filters per REQ ≤ {} and limit ≤ {RELAY_MAX_LIMIT} on every relay: {}",
        limits.max_filters_per_req,
        if ok { "pass" } else { "MISS" }
    );
    for r in &relays {
        if let Upstream::Nip77 { relay, .. } = &r.upstream {
            relay.shutdown();
        }
    }
}
