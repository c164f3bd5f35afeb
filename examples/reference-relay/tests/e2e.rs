//! End to end, all on 127.0.0.1: two reference relays A and B, one plain relay C
//! (nostr-relay-builder's LocalRelay), git data served by a local `git daemon`.
//! Every wait is bounded; nothing sleeps to assert.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use grasp_reference_relay::{start, RelayConfig, RunningRelay};
use nostr::{Event, EventBuilder, EventId, Filter, Keys, Kind, Tag, TagKind, Timestamp};
use nostr_database::{MemoryDatabase, MemoryDatabaseOptions};
use nostr_relay_builder::builder::RateLimit;
use nostr_relay_builder::{LocalRelay, RelayBuilder};
use nostr_relay_pool::relay::{RelayOptions, ReqExitPolicy};
use nostr_relay_pool::RelayPool;

mod support;
use support::{source_repo, tmp, GitDaemon};

const WAIT: Duration = Duration::from_secs(30);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

// ---------------------------------------------------------------- git fixtures

fn has_object(bare: &Path, oid: &str) -> bool {
    git_try(&[
        "--git-dir",
        &bare.display().to_string(),
        "cat-file",
        "-e",
        oid,
    ])
    .0
}

/// `git` with a neutral configuration; returns (success, stdout, stderr).
fn git_try(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("git")
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("git runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------- nostr fixtures

struct Repo {
    keys: Keys,
    d: String,
}

impl Repo {
    fn coordinate(&self) -> String {
        format!("30617:{}:{}", self.keys.public_key(), self.d)
    }

    fn announcement(&self, relays: &[String], clone: &str) -> Event {
        self.announcement_cloned_at(relays, &[clone.to_owned()])
    }

    fn announcement_cloned_at(&self, relays: &[String], clones: &[String]) -> Event {
        EventBuilder::new(Kind::Custom(30617), "")
            .tags([
                Tag::identifier(self.d.clone()),
                Tag::custom(TagKind::custom("name"), [self.d.clone()]),
                Tag::custom(TagKind::custom("relays"), relays.iter().cloned()),
                Tag::custom(TagKind::custom("clone"), clones.iter().cloned()),
            ])
            .sign_with_keys(&self.keys)
            .unwrap()
    }

    fn state(&self, main: &str, pr: &str) -> Event {
        EventBuilder::new(Kind::Custom(30618), "")
            .tags([
                Tag::identifier(self.d.clone()),
                Tag::custom(TagKind::custom("refs/heads/main"), [main.to_owned()]),
                Tag::custom(TagKind::custom("refs/heads/pr-1"), [pr.to_owned()]),
                Tag::custom(TagKind::custom("HEAD"), ["ref: refs/heads/main".to_owned()]),
            ])
            .sign_with_keys(&self.keys)
            .unwrap()
    }

    fn issue(&self, title: &str) -> Event {
        EventBuilder::new(Kind::Custom(1621), format!("body of {title}"))
            .tags([
                Tag::custom(TagKind::a(), [self.coordinate()]),
                Tag::custom(TagKind::p(), [self.keys.public_key().to_hex()]),
                Tag::custom(TagKind::custom("subject"), [title.to_owned()]),
            ])
            .sign_with_keys(&self.keys)
            .unwrap()
    }

    fn pr(&self, author: &Keys, tip: &str, clone: &str) -> Event {
        EventBuilder::new(Kind::Custom(1618), "please merge")
            .tags([
                Tag::custom(TagKind::a(), [self.coordinate()]),
                Tag::custom(TagKind::p(), [self.keys.public_key().to_hex()]),
                Tag::custom(TagKind::custom("subject"), ["a change".to_owned()]),
                Tag::custom(TagKind::custom("c"), [tip.to_owned()]),
                Tag::custom(TagKind::custom("clone"), [clone.to_owned()]),
            ])
            .sign_with_keys(author)
            .unwrap()
    }
}

fn comment(root: &Event, author: &Keys, text: &str) -> Event {
    EventBuilder::new(Kind::Custom(1111), text)
        .tags([
            Tag::custom(TagKind::custom("E"), [root.id.to_hex()]),
            Tag::custom(TagKind::custom("K"), [root.kind.as_u16().to_string()]),
            Tag::custom(TagKind::custom("P"), [root.pubkey.to_hex()]),
            Tag::custom(TagKind::e(), [root.id.to_hex()]),
            Tag::custom(TagKind::custom("k"), [root.kind.as_u16().to_string()]),
            Tag::custom(TagKind::p(), [root.pubkey.to_hex()]),
        ])
        .custom_created_at(Timestamp::now())
        .sign_with_keys(author)
        .unwrap()
}

/// Publishes and returns the relay's answer: `Ok(())` or `Err(message)`.
async fn publish(url: &str, event: &Event) -> Result<(), String> {
    let pool = RelayPool::new();
    pool.add_relay(url, RelayOptions::new().reconnect(false))
        .await
        .unwrap();
    pool.try_connect_relay(url, Duration::from_secs(10))
        .await
        .expect("connect to publish");
    let out = pool.send_event_to([url], event).await;
    pool.shutdown().await;
    let out = out.map_err(|e| e.to_string())?;
    if out.success.len() == 1 {
        Ok(())
    } else {
        Err(out.failed.values().next().cloned().unwrap_or_default())
    }
}

async fn publish_ok(url: &str, event: &Event) {
    if let Err(e) = publish(url, event).await {
        panic!("{url} refused kind {}: {e}", event.kind.as_u16());
    }
}

/// The ids among `ids` that `url` serves (REQ by ids).
async fn served(url: &str, ids: &[EventId]) -> Vec<EventId> {
    let pool = RelayPool::new();
    pool.add_relay(url, RelayOptions::new().reconnect(false))
        .await
        .unwrap();
    if pool
        .try_connect_relay(url, Duration::from_secs(5))
        .await
        .is_err()
    {
        return Vec::new();
    }
    let events = pool
        .fetch_events(
            Filter::new().ids(ids.iter().copied()),
            Duration::from_secs(5),
            ReqExitPolicy::ExitOnEOSE,
        )
        .await
        .map(|e| e.into_iter().map(|e| e.id).collect())
        .unwrap_or_default();
    pool.shutdown().await;
    events
}

/// Waits (bounded) until `cond` holds.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_served(relay: &RunningRelay, ids: &[EventId], what: &str) {
    wait_until(what, WAIT, || async {
        for id in ids {
            if !relay.serves(id).await {
                return false;
            }
        }
        true
    })
    .await;
}

/// A nostr-relay-builder relay on a free port. It picks a random port, checks that it
/// is free, releases it and binds it again, a race other tests' sockets lose now and
/// then: a lost race is tried again on another port, a bounded number of times.
async fn plain_relay() -> (LocalRelay, String) {
    let db = MemoryDatabase::with_opts(MemoryDatabaseOptions {
        events: true,
        max_events: None,
    });
    let builder = RelayBuilder::default().database(db).rate_limit(RateLimit {
        max_reqs: 10_000,
        notes_per_minute: 100_000,
    });
    for _ in 0..20 {
        let relay = LocalRelay::new(builder.clone());
        match relay.run().await {
            Ok(()) => {
                let url = relay.url().await.to_string();
                return (relay, url.trim_end_matches('/').to_owned());
            }
            Err(nostr_relay_builder::Error::IO(e)) if e.kind() == std::io::ErrorKind::AddrInUse => {
            }
            Err(e) => panic!("plain relay runs: {e}"),
        }
    }
    panic!("no free port for the plain relay in 20 tries")
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn announcement_and_repo_events_reach_b_with_git_data_and_live_events_from_c() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let (main_tip, pr_tip) = source_repo(&tmp(root.path(), "serve"));
    let daemon = GitDaemon::start(&root.path().join("serve"));
    let (_c, c_url) = plain_relay().await;
    let a = start(RelayConfig::for_tests(tmp(root.path(), "a")))
        .await
        .unwrap();
    let mut b_config = RelayConfig::for_tests(tmp(root.path(), "b"));
    b_config.bootstrap_relays = vec![grasp_sync::RelayUrl::parse(&a.url()).unwrap()];
    let b = start(b_config).await.unwrap();

    let repo = Repo {
        keys: Keys::generate(),
        d: "demo".into(),
    };
    let ann = repo.announcement(&[a.url(), b.url(), c_url.clone()], &daemon.url());

    // A holds the announcement until its git data arrives from the git daemon.
    let answer = publish(&a.url(), &ann).await;
    let reason = answer.expect_err("held in purgatory, not served yet");
    assert!(reason.contains("restricted: held in purgatory"), "{reason}");
    wait_served(&a, &[ann.id], "A releases the announcement").await;
    assert!(!a.is_held(&ann.id));

    // Repo events: the git data is present now, so A accepts them at once.
    let state = repo.state(&main_tip, &pr_tip);
    let issue = repo.issue("first issue");
    let contributor = Keys::generate();
    let note = comment(&issue, &contributor, "me too");
    let pr = repo.pr(&contributor, &pr_tip, &daemon.url());
    for e in [&state, &issue, &note, &pr] {
        publish_ok(&a.url(), e).await;
    }

    // B discovers the announcement from its bootstrap relay A, fetches the git data,
    // then syncs everything about the repo.
    let all = [ann.id, state.id, issue.id, note.id, pr.id];
    wait_served(
        &b,
        &all,
        "B has the announcement, state, issue, comment and PR",
    )
    .await;
    let repo_ref = grasp_sync::RepoRef::parse(&repo.coordinate()).unwrap();
    let bare = b.bare_repo_path(&repo_ref).unwrap();
    assert!(has_object(&bare, &main_tip), "main tip fetched into B");
    assert!(has_object(&bare, &pr_tip), "PR tip fetched into B");
    // B serves them over the websocket too.
    let mut got = served(&b.url(), &all).await;
    got.sort();
    let mut want = all.to_vec();
    want.sort();
    assert_eq!(got, want);

    // Live: an event published later to C reaches A and B.
    let later = repo.issue("second issue, published to C");
    publish_ok(&c_url, &later).await;
    wait_served(&a, &[later.id], "A gets C's new issue live").await;
    wait_served(&b, &[later.id], "B gets C's new issue live").await;

    // Status and metrics show the sync.
    let status = b.status().await;
    assert_eq!(status["health"], "ok");
    assert!(status["sync"]["relays"]
        .as_array()
        .is_some_and(|r| !r.is_empty()));

    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_carry_clear_prefixes() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let a = start(RelayConfig::for_tests(tmp(root.path(), "a")))
        .await
        .unwrap();
    let repo = Repo {
        keys: Keys::generate(),
        d: "elsewhere".into(),
    };
    // Not listing this relay.
    let ann = repo.announcement(&["ws://127.0.0.1:1".into()], "git://127.0.0.1:1/x.git");
    let e = publish(&a.url(), &ann).await.unwrap_err();
    assert!(
        e.starts_with("blocked:") && e.contains("does not list this relay"),
        "{e}"
    );
    // An issue for a repo not hosted here.
    let e = publish(&a.url(), &repo.issue("x")).await.unwrap_err();
    assert!(e.contains("does not tag a repository"), "{e}");
    // A random note.
    let note = EventBuilder::text_note("hello")
        .sign_with_keys(&Keys::generate())
        .unwrap();
    let e = publish(&a.url(), &note).await.unwrap_err();
    assert!(e.starts_with("blocked:"), "{e}");
    // An announcement without clone URLs that lists us is accepted directly.
    let bare = EventBuilder::new(Kind::Custom(30617), "")
        .tags([
            Tag::identifier("noclone"),
            Tag::custom(TagKind::custom("relays"), [a.url()]),
        ])
        .sign_with_keys(&repo.keys)
        .unwrap();
    publish_ok(&a.url(), &bare).await;
    assert!(a.serves(&bare.id).await);
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_answer() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let a = start(RelayConfig::for_tests(tmp(root.path(), "a")))
        .await
        .unwrap();
    let get = |path: &str, accept: &str| {
        let addr = a.local_addr();
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n");
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
                .await
                .unwrap()
                .unwrap();
            out
        }
    };
    let nip11 = get("/", "application/nostr+json").await;
    assert!(nip11.starts_with("HTTP/1.1 200"), "{nip11}");
    let body: serde_json::Value =
        serde_json::from_str(nip11.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        body["supported_grasps"],
        serde_json::json!(["GRASP-01", "GRASP-02"])
    );
    assert_eq!(body["supported_nips"], serde_json::json!([1, 11, 34, 77]));
    assert!(body.get("software").is_none(), "no placeholder URL: {body}");
    let metrics = get("/metrics", "*/*").await;
    assert!(metrics.contains("grasp_sync_events_synced"), "{metrics}");
    let status = get("/status", "*/*").await;
    assert!(status.contains("\"purgatory\""), "{status}");
    // A fresh relay's status page says why each table is empty.
    let page = get("/", "text/html").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("none yet: remote relays come from"), "{page}");
    assert!(page.contains("none yet: a repo is synced once"), "{page}");
    assert!(page.contains("nothing waits for git data"), "{page}");
    a.shutdown().await.unwrap();
}

// A restarted relay (a child process of the real binary, LMDB on disk, stopped with
// SIGINT like Ctrl-C) catches up what it missed.

struct ChildRelay(Child);

impl ChildRelay {
    fn spawn(port: u16, data: &Path, bootstrap: &str) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_grasp-reference-relay"))
            .args([
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                &data.display().to_string(),
                "--bootstrap-relay",
                bootstrap,
                "--allow-private-urls",
                "--fast-timers",
                "--user-hunt-delay-secs",
                "0",
                "--log-level",
                "warn",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("relay binary starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "child relay did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }

    /// Ctrl-C, then wait for a clean exit.
    fn interrupt(mut self) {
        let pid = self.0.id().to_string();
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill runs");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                assert!(status.success(), "relay exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "relay did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildRelay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_relay_catches_up_what_it_missed() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let (main_tip, pr_tip) = source_repo(&tmp(root.path(), "serve"));
    let daemon = GitDaemon::start(&root.path().join("serve"));
    let a = start(RelayConfig::for_tests(tmp(root.path(), "a")))
        .await
        .unwrap();
    let b_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let b_url = format!("ws://127.0.0.1:{b_port}");
    let b_data = tmp(root.path(), "b");
    let b = ChildRelay::spawn(b_port, &b_data, &a.url());

    let repo = Repo {
        keys: Keys::generate(),
        d: "restart".into(),
    };
    let ann = repo.announcement(&[a.url(), b_url.clone()], &daemon.url());
    let _ = publish(&a.url(), &ann).await; // held until the git data arrives
    wait_served(&a, &[ann.id], "A releases the announcement").await;
    let state = repo.state(&main_tip, &pr_tip);
    let issue = repo.issue("before the restart");
    publish_ok(&a.url(), &state).await;
    publish_ok(&a.url(), &issue).await;
    // A second state in the same second: refused with a reason, not the store's error.
    let same_second = EventBuilder::new(Kind::Custom(30618), "")
        .tags([
            Tag::identifier(repo.d.clone()),
            Tag::custom(TagKind::custom("refs/heads/main"), [main_tip.clone()]),
        ])
        .custom_created_at(state.created_at)
        .sign_with_keys(&repo.keys)
        .unwrap();
    let e = publish(&a.url(), &same_second).await.unwrap_err();
    assert!(e.contains("same created_at"), "{e}");
    // A state naming no valid ref.
    let refless = EventBuilder::new(Kind::Custom(30618), "")
        .tags([
            Tag::identifier(repo.d.clone()),
            Tag::custom(TagKind::custom("refs/heads/main"), ["not-a-commit"]),
        ])
        .sign_with_keys(&repo.keys)
        .unwrap();
    let e = publish(&a.url(), &refless).await.unwrap_err();
    assert!(e.contains("invalid: ref") && e.contains("40-hex"), "{e}");
    let before = [ann.id, state.id, issue.id];
    wait_until("B has the repo", WAIT, || async {
        served(&b_url, &before).await.len() == before.len()
    })
    .await;

    b.interrupt();
    assert!(b_data.join("sync-state.json").exists(), "sync state saved");

    let missed = repo.issue("while B was down");
    publish_ok(&a.url(), &missed).await;

    let _b = ChildRelay::spawn(b_port, &b_data, &a.url());
    wait_until("restarted B catches up", WAIT, || async {
        served(&b_url, &[missed.id]).await.len() == 1
    })
    .await;
    // What it had survived the restart (LMDB).
    assert_eq!(served(&b_url, &before).await.len(), before.len());
    a.shutdown().await.unwrap();
}

// The operator's status page, rendered by a real browser (Debian's `chromium`, which
// `.ci/run` installs and names in CHROMIUM). With CHROMIUM or CI set a missing browser
// fails the test; elsewhere it is skipped with a line saying so.

fn chromium() -> Option<PathBuf> {
    // Named explicitly (`.ci/run` does) or running under CI: it must be there.
    let required = std::env::var_os("CHROMIUM").is_some() || std::env::var_os("CI").is_some();
    let path =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    if path.exists() {
        return Some(path);
    }
    assert!(
        !required,
        "no Chromium at {} (install Debian's chromium, or unset CHROMIUM and CI to skip)",
        path.display()
    );
    eprintln!(
        "skipped: no Chromium at {} (install Debian's chromium, or set CHROMIUM)",
        path.display()
    );
    None
}

/// Runs headless Chromium with `args`, bounded in time; kills its whole process group on
/// timeout so no browser process outlives the test. Returns stdout.
fn run_chromium(browser: &Path, profile: &Path, args: &[String]) -> String {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("chromium starts");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-9", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!("chromium did not finish within 60 s: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "chromium {args:?} exited with {status}");
    reader.join().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chromium_status_page_shows_relays_repos_and_purgatory() {
    init_tracing();
    let Some(browser) = chromium() else { return };
    let root = tempfile::tempdir().unwrap();
    let (main_tip, pr_tip) = source_repo(&tmp(root.path(), "serve"));
    let daemon = GitDaemon::start(&root.path().join("serve"));
    let a = start(RelayConfig::for_tests(tmp(root.path(), "a")))
        .await
        .unwrap();
    let b = start(RelayConfig::for_tests(tmp(root.path(), "b")))
        .await
        .unwrap();
    // A relay that is never up: B keeps failing to reach it.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ws://{}", l.local_addr().unwrap())
    };

    // A repo on both A and B, its events on A: B syncs them.
    let repo = Repo {
        keys: Keys::generate(),
        d: "status-demo".into(),
    };
    let ann = repo.announcement(&[a.url(), b.url(), dead.clone()], &daemon.url());
    let _ = publish(&a.url(), &ann).await;
    let _ = publish(&b.url(), &ann).await;
    wait_served(&a, &[ann.id], "A accepts the announcement").await;
    wait_served(&b, &[ann.id], "B accepts the announcement").await;
    let state = repo.state(&main_tip, &pr_tip);
    let issue = repo.issue("an issue B syncs from A");
    for e in [&state, &issue] {
        publish_ok(&a.url(), e).await;
    }
    wait_served(&b, &[state.id, issue.id], "B syncs the state and issue").await;

    // An announcement whose git data exists nowhere: held in B's purgatory.
    let orphan = Repo {
        keys: Keys::generate(),
        d: "no-data-yet".into(),
    };
    let missing = format!("{}/missing.git", daemon.url().rsplit_once('/').unwrap().0);
    let held = orphan.announcement(&[b.url(), a.url()], &missing);
    let answer = publish(&b.url(), &held).await;
    assert!(answer.is_err_and(|r| r.contains("held in purgatory")));

    // Wait until the dead relay has failed at least once (its error shows).
    wait_until("B records the dead relay's failure", WAIT, || async {
        b.status().await["sync"]["relays"]
            .as_array()
            .is_some_and(|rs| {
                rs.iter()
                    .any(|r| r["relay"] == dead.as_str() && !r["last_error"].is_null())
            })
    })
    .await;

    let profile = tmp(root.path(), "chromium-profile");
    // A browser asking for `/` gets the page; the DOM is read after it rendered.
    let dom = run_chromium(
        &browser,
        &profile,
        &["--dump-dom".into(), format!("{}/", b.http_url())],
    );
    let table = |id: &str| -> String {
        let start = dom
            .find(&format!("<table id=\"{id}\""))
            .unwrap_or_else(|| panic!("no table {id} in the rendered page:\n{dom}"));
        let end = dom[start..].find("</table>").unwrap() + start;
        dom[start..end].to_owned()
    };
    let relays = table("relays");
    assert!(relays.contains(&a.url()), "A listed: {relays}");
    assert!(relays.contains(&dead), "the dead relay listed: {relays}");
    let dead_row = relays.split("<tr").find(|row| row.contains(&dead)).unwrap();
    assert!(
        dead_row.contains("class=\"bad\""),
        "its failure is flagged: {dead_row}"
    );
    assert!(
        dead_row.contains(">in "),
        "its next retry is shown: {dead_row}"
    );
    let repos = table("repos");
    let synced_row = repos
        .split("<tr")
        .find(|row| row.contains("status-demo"))
        .unwrap_or_else(|| panic!("the synced repo listed: {repos}"));
    assert!(synced_row.contains("Full"), "{synced_row}");
    assert!(
        synced_row.contains("1 of 2"),
        "confirmed on A, not the dead relay: {synced_row}"
    );
    assert!(
        repos.contains("no-data-yet") && repos.contains("StateOnly"),
        "{repos}"
    );
    let purgatory = table("purgatory");
    assert!(purgatory.contains("no-data-yet"), "{purgatory}");
    assert!(purgatory.contains("any git data from"), "{purgatory}");
    assert!(purgatory.contains("missing.git"), "{purgatory}");
    assert!(purgatory.contains("a user"), "{purgatory}");
    let summary = table("summary");
    assert!(summary.contains("events synced"), "{summary}");

    // And a screenshot for a human to look at.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &browser,
        &profile,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1400,1000".into(),
            format!("{}/status.html", b.http_url()),
        ],
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    eprintln!("status page screenshot: {}", shot.display());

    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
    drop(daemon);
}

// ---------------------------------------------------------------- GRASP-01 git over HTTP

/// The relay's git smart-HTTP URL of `repo` (`http://<its address>/<npub>/<d>.git`).
fn http_clone_url(relay: &RunningRelay, repo: &Repo) -> String {
    let npub = nostr::ToBech32::to_bech32(&repo.keys.public_key()).unwrap();
    format!("http://{}/{npub}/{}.git", relay.local_addr(), repo.d)
}

/// A raw HTTP GET on `addr`: the whole response as text.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// An accepted repository is served over git smart HTTP on the relay's own port: it
/// clones, lists its refs, answers with CORS open; a push is refused with a reason; an
/// unknown repository is not found.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grasp01_http_accepted_repos_are_served_read_only() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let (main_tip, pr_tip) = source_repo(&tmp(root.path(), "serve"));
    let daemon = GitDaemon::start(&root.path().join("serve"));
    let a = start(RelayConfig::for_tests(tmp(root.path(), "a")))
        .await
        .unwrap();
    let repo = Repo {
        keys: Keys::generate(),
        d: "served".into(),
    };
    let url = http_clone_url(&a, &repo);
    let (found, _, _) = git_try(&["ls-remote", &url]);
    assert!(
        !found,
        "nothing is served before the announcement is accepted"
    );

    let ann = repo.announcement(&[a.url()], &daemon.url());
    let _held = publish(&a.url(), &ann).await;
    wait_served(
        &a,
        &[ann.id],
        "A accepts the announcement with its git data",
    )
    .await;
    publish_ok(&a.url(), &repo.state(&main_tip, &pr_tip)).await;

    let (ok, refs, err) = git_try(&["ls-remote", &url]);
    assert!(ok, "ls-remote {url}: {err}");
    assert!(
        refs.contains(&format!("{main_tip}\trefs/heads/main")),
        "{refs}"
    );
    let clone = root.path().join("clone");
    let (ok, _, err) = git_try(&["clone", "-q", &url, &clone.display().to_string()]);
    assert!(ok, "clone {url}: {err}");
    let (ok, _, _) = git_try(&[
        "-C",
        &clone.display().to_string(),
        "cat-file",
        "-e",
        &main_tip,
    ]);
    assert!(ok, "the clone has main's tip");

    let (pushed, _, err) = git_try(&[
        "-C",
        &clone.display().to_string(),
        "push",
        &url,
        "HEAD:refs/heads/other",
    ]);
    assert!(!pushed, "a push is refused");
    assert!(err.contains("pushes are not accepted here"), "{err}");

    let npub = nostr::ToBech32::to_bech32(&repo.keys.public_key()).unwrap();
    let (found, _, _) = git_try(&[
        "ls-remote",
        &format!("http://{}/{npub}/nope.git", a.local_addr()),
    ]);
    assert!(!found, "an unknown repository is not served");

    let answer = http_get(
        a.local_addr(),
        &format!("/{npub}/served.git/info/refs?service=git-upload-pack"),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("Access-Control-Allow-Origin: *"),
        "{answer}"
    );
    assert!(
        answer.contains("application/x-git-upload-pack-advertisement"),
        "{answer}"
    );
    a.shutdown().await.unwrap();
}

/// Two reference relays and no other git server: the data is in A (as if pushed
/// there); B, which holds the announcement without data, hunts it from A's smart-HTTP
/// URL and then serves it too — with the PR's tip at `refs/nostr/<PR id>`, as A does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grasp01_http_two_relays_sync_git_data_without_another_server() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let (main_tip, pr_tip) = source_repo(&tmp(root.path(), "src"));
    let a = start(RelayConfig::for_tests(tmp(root.path(), "a")))
        .await
        .unwrap();
    let b = start(RelayConfig::for_tests(tmp(root.path(), "b")))
        .await
        .unwrap();
    let repo = Repo {
        keys: Keys::generate(),
        d: "twin".into(),
    };
    let repo_ref = grasp_sync::RepoRef::parse(&repo.coordinate()).unwrap();
    // The maintainer's data, in A's bare repository.
    let in_a = a.bare_repo_path(&repo_ref).unwrap();
    std::fs::create_dir_all(in_a.parent().unwrap()).unwrap();
    let (ok, _, err) = git_try(&[
        "clone",
        "-q",
        "--bare",
        &root.path().join("src/work").display().to_string(),
        &in_a.display().to_string(),
    ]);
    assert!(ok, "{err}");

    let ann = repo.announcement_cloned_at(
        &[a.url(), b.url()],
        &[http_clone_url(&a, &repo), http_clone_url(&b, &repo)],
    );
    publish_ok(&a.url(), &ann).await;
    let state = repo.state(&main_tip, &pr_tip);
    publish_ok(&a.url(), &state).await;
    let pr = repo.pr(&Keys::generate(), &pr_tip, &http_clone_url(&a, &repo));
    publish_ok(&a.url(), &pr).await;
    // B gets the announcement from its author (held: no data yet) and by sync from A.
    let _held = publish(&b.url(), &ann).await;
    let all = [ann.id, state.id, pr.id];
    wait_served(&b, &all, "B has the announcement, state and PR").await;
    let in_b = b.bare_repo_path(&repo_ref).unwrap();
    assert!(
        has_object(&in_b, &main_tip),
        "main's tip came from A over HTTP"
    );
    // Each proposed change is served at refs/nostr/<PR event id>, on A and on B.
    let pr_ref = format!("{pr_tip}\trefs/nostr/{}", pr.id.to_hex());
    for relay in [&a, &b] {
        let (ok, refs, err) = git_try(&["ls-remote", &http_clone_url(relay, &repo)]);
        assert!(ok, "{} serves it: {err}", relay.url());
        assert!(refs.contains(&main_tip), "{refs}");
        assert!(
            refs.contains(&pr_ref),
            "{} serves the PR tip: {refs}",
            relay.url()
        );
    }
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

// ---------------------------------------------------------------- GRASP-02 rechecks

/// A state whose objects are nowhere when it arrives is dropped from purgatory after
/// its window, but the accepted repository keeps being looked at (GRASP-02: at least
/// hourly; here every second): once the data shows up on a clone URL, the state is
/// fetched, stored and its refs written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grasp02_hourly_missing_data_is_looked_for_again_past_the_purgatory_window() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let serve = tmp(root.path(), "serve");
    let (main_tip, pr_tip) = source_repo(&serve);
    let daemon = GitDaemon::start(&serve);
    let mut config = RelayConfig::for_tests(tmp(root.path(), "a"));
    config.purgatory_ttl = Duration::from_secs(2);
    config.git_recheck_interval = Duration::from_secs(1);
    let a = start(config).await.unwrap();
    let repo = Repo {
        keys: Keys::generate(),
        d: "later".into(),
    };
    let ann = repo.announcement(&[a.url()], &daemon.url());
    let _held = publish(&a.url(), &ann).await;
    wait_served(&a, &[ann.id], "A accepts the announcement").await;

    // A commit nobody serves yet.
    let work = serve.join("work");
    support::git(&work, &["checkout", "-q", "-b", "later"]);
    std::fs::write(work.join("later.txt"), "later\n").unwrap();
    support::git(&work, &["add", "."]);
    support::git(&work, &["commit", "-q", "-m", "later"]);
    let later = support::git(&work, &["rev-parse", "HEAD"]);
    let state = repo.state(&later, &pr_tip);
    let answer = publish(&a.url(), &state).await;
    assert!(answer.is_err(), "held: its data is nowhere yet");
    // Past the purgatory window: dropped, not served.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!a.is_held(&state.id), "dropped from purgatory");
    assert!(!a.serves(&state.id).await, "not served without its data");

    // The data shows up on the clone URL; the next recheck finds it.
    support::git(
        &work,
        &["push", "-q", "../repo.git", "later:refs/heads/main"],
    );
    // The hunt's backoff for this repo (20 s after a miss) may delay the next fetch.
    wait_until(
        "A stores the state once a recheck found its data",
        Duration::from_secs(90),
        || a.serves(&state.id),
    )
    .await;
    let (ok, refs, err) = git_try(&["ls-remote", &http_clone_url(&a, &repo)]);
    assert!(ok, "{err}");
    assert!(
        refs.contains(&format!("{later}\trefs/heads/main")),
        "main points at the later commit: {refs}"
    );
    assert_ne!(later, main_tip);
    a.shutdown().await.unwrap();
}

// ---------------------------------------------------------------- GRASP-05 archive

/// B archives one maintainer's repositories: their announcement lists only A, B finds
/// it through its bootstrap relay A, keeps it (git data fetched, events synced), and
/// says GRASP-05 in NIP-11; an announcement by someone else that does not list B is not
/// kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grasp05_archive_keeps_allowed_repositories_that_do_not_list_it() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let (main_tip, _pr_tip) = source_repo(&tmp(root.path(), "serve"));
    let daemon = GitDaemon::start(&root.path().join("serve"));
    let a = start(RelayConfig::for_tests(tmp(root.path(), "a")))
        .await
        .unwrap();
    let archived = Repo {
        keys: Keys::generate(),
        d: "archived".into(),
    };
    let stranger = Repo {
        keys: Keys::generate(),
        d: "not-ours".into(),
    };
    let mut b_config = RelayConfig::for_tests(tmp(root.path(), "b"));
    b_config.bootstrap_relays = vec![grasp_sync::RelayUrl::parse(&a.url()).unwrap()];
    let npub = nostr::ToBech32::to_bech32(&archived.keys.public_key()).unwrap();
    b_config.archive = grasp_sync::archive::ArchivePolicy::parse([npub]).unwrap();
    let nip11 = grasp_reference_relay::nip11_document(&b_config);
    assert!(
        nip11["supported_grasps"]
            .as_array()
            .is_some_and(|g| g.iter().any(|v| v == "GRASP-05")),
        "{nip11}"
    );
    let b = start(b_config).await.unwrap();

    let other = stranger.announcement(&[a.url()], &daemon.url());
    let _held = publish(&a.url(), &other).await;
    wait_served(&a, &[other.id], "A keeps the stranger's repository").await;
    let ann = archived.announcement(&[a.url()], &daemon.url());
    let _held = publish(&a.url(), &ann).await;
    wait_served(&a, &[ann.id], "A keeps the archived repository").await;
    wait_served(&b, &[ann.id], "B archives it, found through A").await;
    let repo_ref = grasp_sync::RepoRef::parse(&archived.coordinate()).unwrap();
    assert!(
        has_object(&b.bare_repo_path(&repo_ref).unwrap(), &main_tip),
        "B fetched its git data"
    );
    let issue = archived.issue("synced to the archive");
    publish_ok(&a.url(), &issue).await;
    wait_served(&b, &[issue.id], "B syncs the archived repository's events").await;
    assert!(
        !b.serves(&other.id).await,
        "not in the allow-list: not kept"
    );
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

/// A NIP-65 relay list naming `write` as the author's write relay.
fn write_relays(author: &Keys, write: &str) -> Event {
    EventBuilder::new(Kind::RelayList, "")
        .tags([Tag::custom(
            TagKind::custom("r"),
            [write.to_owned(), "write".to_owned()],
        )])
        .sign_with_keys(author)
        .unwrap()
}

/// GRASP-03 Sync+: B (`--sync-plus`) keeps a repo listed on A and B. Someone who
/// commented on its issue writes to O, a relay the announcement does not list, as their
/// NIP-65 list on A says; a comment published only to O reaches B, and O's state events and other
/// announcements do not (an outbox relay carries the conversation only). Without the
/// flag nothing asks O, so the reply never arrives (the engine rules check that off
/// means off: `grasp03_off_by_default_`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grasp03_a_comment_only_on_a_participants_write_relay_reaches_the_repo() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let (main_tip, pr_tip) = source_repo(&tmp(root.path(), "serve"));
    let daemon = GitDaemon::start(&root.path().join("serve"));
    let (_a, a_url) = plain_relay().await;
    let (_o, o_url) = plain_relay().await;
    let mut b_config = RelayConfig::for_tests(tmp(root.path(), "b"));
    b_config.sync_plus = true;
    let nip11 = grasp_reference_relay::nip11_document(&b_config);
    assert!(
        nip11["supported_grasps"]
            .as_array()
            .is_some_and(|g| g.iter().any(|v| v == "GRASP-03")),
        "{nip11}"
    );
    let b = start(b_config).await.unwrap();

    let repo = Repo {
        keys: Keys::generate(),
        d: "sync-plus".into(),
    };
    let ann = repo.announcement(&[a_url.clone(), b.url()], &daemon.url());
    publish_ok(&a_url, &ann).await;
    let _held = publish(&b.url(), &ann).await;
    wait_served(&b, &[ann.id], "B keeps the repository").await;

    // The maintainer's issue on A; a participant comments on it there (B syncs both),
    // and their list, also on A, names O as where they write.
    let issue = repo.issue("a bug");
    publish_ok(&a_url, &issue).await;
    let participant = Keys::generate();
    publish_ok(&a_url, &write_relays(&participant, &o_url)).await;
    let theirs = comment(&issue, &participant, "seen it too");
    publish_ok(&a_url, &theirs).await;
    wait_served(
        &b,
        &[issue.id, theirs.id],
        "B syncs the issue and the comment from A",
    )
    .await;

    // Only O has the reply, a new state and a stranger's announcement.
    let reply = comment(&issue, &Keys::generate(), "answered where I write");
    let state = repo.state(&main_tip, &pr_tip);
    let stranger = Repo {
        keys: Keys::generate(),
        d: "elsewhere".into(),
    };
    let other_ann = stranger.announcement(std::slice::from_ref(&o_url), &daemon.url());
    for e in [&reply, &state, &other_ann] {
        publish_ok(&o_url, e).await;
    }
    wait_served(
        &b,
        &[reply.id],
        "B gets the reply from the participant's relay O",
    )
    .await;
    // Settle: what else O could send would have come with the reply.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !b.serves(&state.id).await && !b.is_held(&state.id),
        "no state from an outbox relay (neither stored nor held)"
    );
    assert!(
        !b.serves(&other_ann.id).await && !b.is_held(&other_ann.id),
        "no layer 1 from an outbox relay"
    );
    let metrics = http_get(b.local_addr(), "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("grasp_sync_relays_sync_plus") && l.ends_with(" 1")),
        "{metrics}"
    );

    b.shutdown().await.unwrap();
}
