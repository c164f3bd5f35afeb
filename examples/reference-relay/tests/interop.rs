//! Interop with a relay nobody here wrote: nostr-rs-relay 0.8.12 (SQLite, no NIP-77, no
//! `max_limit` in NIP-11), started by the test on 127.0.0.1, and the reference relay
//! syncing from it — history, live, and across a restart; 300 events on one timestamp.
//!
//! The binary is found through `NOSTR_RS_RELAY` (which `.ci/run` sets after installing
//! it), else `~/.cache/grasp-ci/nostr-rs-relay/bin/nostr-rs-relay`, else `PATH`. Missing,
//! the tests fail when `NOSTR_RS_RELAY` or `CI` is set and are skipped with a line
//! saying so otherwise. Install: `cargo install nostr-rs-relay --version 0.8.12` (not
//! `--locked`: its locked `time` does not build on current Rust) with Debian's
//! `protobuf-compiler libsqlite3-dev libssl-dev pkg-config`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use grasp_reference_relay::{start, RelayConfig, RunningRelay, Storage};
use nostr::{Event, EventId, Keys, Timestamp};

mod support;
use support::{comment, free_port, history, publish_all, served_by, source_repo, tmp, GitDaemon};

/// How long B may take to hold what it should.
const WAIT: Duration = Duration::from_secs(90);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn nostr_rs_relay_binary() -> Option<PathBuf> {
    let named = std::env::var_os("NOSTR_RS_RELAY").map(PathBuf::from);
    let required = named.is_some() || std::env::var_os("CI").is_some();
    let candidates: Vec<PathBuf> = match named {
        // Named: that one or nothing.
        Some(path) => vec![path],
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache/grasp-ci/nostr-rs-relay/bin/nostr-rs-relay"))
            .into_iter()
            .chain(
                std::env::var_os("PATH")
                    .into_iter()
                    .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                    .map(|d| d.join("nostr-rs-relay")),
            )
            .collect(),
    };
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Some(found.clone());
    }
    assert!(
        !required,
        "nostr-rs-relay not found (looked at {candidates:?}); install it as this file's \
         header says, or unset NOSTR_RS_RELAY and CI to skip"
    );
    eprintln!("skipped: nostr-rs-relay not found (set NOSTR_RS_RELAY)");
    None
}

/// nostr-rs-relay as a child process on 127.0.0.1, killed on drop.
struct NostrRsRelay {
    child: Child,
    url: String,
    log: PathBuf,
}

impl NostrRsRelay {
    fn start(root: &Path) -> Option<Self> {
        let binary = nostr_rs_relay_binary()?;
        let dir = tmp(root, "nostr-rs-relay");
        let port = free_port();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[info]\nrelay_url = \"ws://127.0.0.1:{port}/\"\nname = \"interop\"\n\
                 [database]\ndata_directory = \"{data}\"\n\
                 [network]\naddress = \"127.0.0.1\"\nport = {port}\n\
                 [options]\nreject_future_seconds = 1800\n",
                data = dir.display()
            ),
        )
        .unwrap();
        let log = dir.join("log.txt");
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .arg("--db")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("nostr-rs-relay starts");
        let relay = Self {
            child,
            url: format!("ws://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nostr-rs-relay did not listen within 30 s: {}",
                std::fs::read_to_string(&relay.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(relay)
    }
}

impl Drop for NostrRsRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until B serves exactly `expected` (by their author); panics with what is
/// missing after [`WAIT`]. Returns how long it took.
async fn wait_holds(b: &str, author: &Keys, expected: &[Event], what: &str) -> Duration {
    let started = Instant::now();
    let want: BTreeSet<EventId> = expected.iter().map(|e| e.id).collect();
    loop {
        let got = served_by(b, author).await.unwrap_or_default();
        let set: BTreeSet<EventId> = got.iter().copied().collect();
        assert_eq!(set.len(), got.len(), "{what}: B serves an event twice");
        if want.is_subset(&set) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < WAIT,
            "{what}: B holds {} of {} after {WAIT:?}",
            want.intersection(&set).count(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reference relay B on a fixed address with LMDB under `data` (so a restart is the
/// same relay with the same store).
async fn start_b(bind: SocketAddr, data: &Path) -> RunningRelay {
    let mut config = RelayConfig::for_tests(data);
    config.bind = bind;
    config.storage = Storage::Lmdb;
    start(config).await.expect("B starts")
}

/// What both tests start from: nostr-rs-relay A, a `git daemon` with the repository's
/// data, B's address (fixed: the announcement lists it), and the repository's history
/// (`issues` issues with `comments` comments each) published to A.
struct Scene {
    root: tempfile::TempDir,
    a: NostrRsRelay,
    /// Serves the git data while the scene lives.
    _daemon: GitDaemon,
    b_addr: SocketAddr,
    b_url: String,
    keys: Keys,
    events: Vec<Event>,
    /// The tip of `main` in the git daemon's repository.
    main_tip: String,
}

impl Scene {
    /// `None` when nostr-rs-relay is not installed (and not required).
    async fn new(issues: usize, comments: usize) -> Option<Self> {
        grasp_reference_relay::install_crypto_provider();
        init_tracing();
        let root = tempfile::tempdir().unwrap();
        let a = NostrRsRelay::start(root.path())?;
        let serve = tmp(root.path(), "serve");
        let (main_tip, _) = source_repo(&serve);
        let daemon = GitDaemon::start(&serve);
        let b_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let b_url = format!("ws://{b_addr}");
        let keys = Keys::generate();
        let relays = [a.url.clone(), b_url.clone()];
        let events = history(
            &keys,
            "interop",
            &relays,
            Some(&daemon.url()),
            issues,
            comments,
        );
        publish_all(&a.url, &events)
            .await
            .expect("nostr-rs-relay takes the history");
        Some(Self {
            root,
            a,
            _daemon: daemon,
            b_addr,
            b_url,
            keys,
            events,
            main_tip,
        })
    }
}

/// B takes the announcement from a user (fetching its git data), then syncs the
/// history from nostr-rs-relay, hears a new comment live, and after a restart catches
/// up what was published while it was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_nostr_rs_relay_history_live_and_restart() {
    let Some(mut scene) = Scene::new(100, 4).await else {
        return;
    };
    let b_data = tmp(scene.root.path(), "b");
    let b = start_b(scene.b_addr, &b_data).await;
    // Held until B has fetched the git data, then accepted.
    let _ = publish_all(&scene.b_url, &scene.events[..1]).await;
    let took = wait_holds(&scene.b_url, &scene.keys, &scene.events, "history").await;
    println!(
        "interop: nostr-rs-relay history events={} synced_s={:.1}",
        scene.events.len(),
        took.as_secs_f64()
    );

    // Live: a comment published to nostr-rs-relay now reaches B.
    let live = comment(&scene.keys, &scene.events[1].id, "live", Timestamp::now());
    publish_all(&scene.a.url, std::slice::from_ref(&live))
        .await
        .unwrap();
    scene.events.push(live);
    wait_holds(&scene.b_url, &scene.keys, &scene.events, "live").await;

    // Restart: what was published while B was down arrives after it is back.
    b.shutdown().await.expect("B stops cleanly");
    let missed: Vec<Event> = (0..3)
        .map(|i| {
            comment(
                &scene.keys,
                &scene.events[1].id,
                &format!("while B was down {i}"),
                Timestamp::now(),
            )
        })
        .collect();
    publish_all(&scene.a.url, &missed).await.unwrap();
    scene.events.extend(missed);
    let b = start_b(scene.b_addr, &b_data).await;
    let took = wait_holds(&scene.b_url, &scene.keys, &scene.events, "after restart").await;
    println!(
        "interop: nostr-rs-relay restart caught_up_s={:.1}",
        took.as_secs_f64()
    );
    b.shutdown().await.unwrap();
}

/// 300 comments on one timestamp, on a relay that advertises no `max_limit` (so a short
/// page of one timestamp cannot prove the tie group complete): B ends up with all 300,
/// each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_nostr_rs_relay_300_events_on_one_timestamp() {
    let Some(mut scene) = Scene::new(1, 0).await else {
        return;
    };
    let tie = Timestamp::from_secs(Timestamp::now().as_secs() - 3_600);
    let issue = scene.events[1].id;
    let tied: Vec<Event> = (0..300)
        .map(|i| comment(&scene.keys, &issue, &format!("tied {i}"), tie))
        .collect();
    publish_all(&scene.a.url, &tied)
        .await
        .expect("nostr-rs-relay takes them");
    scene.events.extend(tied);

    let mut config = RelayConfig::for_tests(tmp(scene.root.path(), "b"));
    config.bind = scene.b_addr;
    let b = start(config).await.expect("B starts");
    let _ = publish_all(&scene.b_url, &scene.events[..1]).await; // held, then accepted
    let took = wait_holds(
        &scene.b_url,
        &scene.keys,
        &scene.events,
        "300 on one timestamp",
    )
    .await;
    println!(
        "interop: nostr-rs-relay tie events={} synced_s={:.1}",
        scene.events.len(),
        took.as_secs_f64()
    );
    b.shutdown().await.unwrap();
}

/// GRASP-03 Sync+ against relays nobody here wrote: B (`--sync-plus`) keeps a repo
/// whose announcement lists nostr-rs-relay A and B. Someone comments on an issue on A;
/// their NIP-65 list, also on A, names a second nostr-rs-relay O as where they write. A
/// reply published only to O reaches B; the repo's state published only to O does not
/// (an outbox relay carries the conversation, not the state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grasp03_interop_nostr_rs_relay_as_a_participants_outbox() {
    let Some(scene) = Scene::new(1, 0).await else {
        return;
    };
    let Some(o) = NostrRsRelay::start(&tmp(scene.root.path(), "o")) else {
        return;
    };
    let mut config = RelayConfig::for_tests(tmp(scene.root.path(), "b"));
    config.bind = scene.b_addr;
    config.sync_plus = true;
    let b = start(config).await.expect("B starts");
    let _ = publish_all(&scene.b_url, &scene.events[..1]).await; // held, then accepted
    wait_holds(&scene.b_url, &scene.keys, &scene.events, "history").await;

    let issue = scene.events[1].id;
    let participant = Keys::generate();
    let list = nostr::EventBuilder::new(nostr::Kind::RelayList, "")
        .tags([nostr::Tag::parse(["r", o.url.as_str(), "write"]).unwrap()])
        .sign_with_keys(&participant)
        .unwrap();
    let theirs = comment(&participant, &issue, "seen it too", Timestamp::now());
    publish_all(&scene.a.url, &[list, theirs.clone()])
        .await
        .expect("A takes the list and the comment");
    wait_holds(
        &scene.b_url,
        &participant,
        &[theirs],
        "the participant's comment",
    )
    .await;

    let replier = Keys::generate();
    let reply = comment(
        &replier,
        &issue,
        "answered where they write",
        Timestamp::now(),
    );
    // A state B would take (its `main` is in the git daemon) if anything asked for it.
    let state = nostr::EventBuilder::new(nostr::Kind::Custom(30618), "")
        .tags([
            nostr::Tag::identifier("interop"),
            nostr::Tag::parse(["refs/heads/main", scene.main_tip.as_str()]).unwrap(),
            nostr::Tag::parse(["HEAD", "ref: refs/heads/main"]).unwrap(),
        ])
        .sign_with_keys(&scene.keys)
        .unwrap();
    publish_all(&o.url, &[reply.clone(), state.clone()])
        .await
        .expect("O takes them");
    let took = wait_holds(&scene.b_url, &replier, &[reply], "the reply only O has").await;
    println!(
        "interop: nostr-rs-relay sync_plus reply_s={:.1}",
        took.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !b.serves(&state.id).await && !b.is_held(&state.id),
        "no state from an outbox relay (neither stored nor held)"
    );
    b.shutdown().await.unwrap();
}
