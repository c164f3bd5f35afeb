//! Helpers shared by the reference relay's process-level tests: git on the command
//! line with a neutral configuration, a source repository, and a `git daemon`; a
//! repository's history as events, and a client to publish and read them.
#![allow(dead_code)] // each test binary uses some of them

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nostr::{Event, EventBuilder, EventId, Filter, Keys, Kind, Tag, TagKind, Timestamp};
use nostr_relay_pool::relay::{RelayOptions, ReqExitPolicy};
use nostr_relay_pool::RelayPool;

// ---------------------------------------------------------------- git fixtures

/// Runs `git` in `dir` with a neutral configuration; panics with git's stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A source repo served as `<base>/repo.git`: `main` with two commits and a `pr-1`
/// branch with one more. Returns (main tip, pr tip).
pub fn source_repo(base: &Path) -> (String, String) {
    let work = base.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q"]);
    for i in 0..2 {
        std::fs::write(work.join("file.txt"), format!("line {i}\n")).unwrap();
        git(&work, &["add", "."]);
        git(&work, &["commit", "-q", "-m", &format!("commit {i}")]);
    }
    let main = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["checkout", "-q", "-b", "pr-1"]);
    std::fs::write(work.join("pr.txt"), "a change\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "pr"]);
    let pr = git(&work, &["rev-parse", "HEAD"]);
    git(base, &["clone", "-q", "--bare", "work", "repo.git"]);
    (main, pr)
}

/// A `git daemon` serving a directory on 127.0.0.1, killed on drop.
pub struct GitDaemon {
    child: Child,
    pub port: u16,
}

impl GitDaemon {
    /// Serves `base` on a free port.
    pub fn start(base: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(base, port)
    }

    /// Serves `base` on a port chosen earlier (a URL that must not change).
    pub fn start_on(base: &Path, port: u16) -> Self {
        // The daemon itself, not the `git` wrapper (which would leave it orphaned).
        let exec_path = git(base, &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args([
                "--export-all",
                &format!("--base-path={}", base.display()),
                &format!("--port={port}"),
                "--listen=127.0.0.1",
                "--reuseaddr",
            ])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, port }
    }

    /// The clone URL of `repo.git`.
    pub fn url(&self) -> String {
        format!("git://127.0.0.1:{}/repo.git", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- places and ports

/// A free TCP port on 127.0.0.1 (for a relay whose URL must be known before it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `root/name`, created.
pub fn tmp(root: &Path, name: &str) -> std::path::PathBuf {
    let p = root.join(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}

// ---------------------------------------------------------------- events

/// A repository's history: its announcement (identifier `d`, listing `relays`, cloned
/// from `clone` if given), `issues` issues and `comments` NIP-22 comments on each, on
/// timestamps shared in threes (ties across page boundaries), a day old.
pub fn history(
    keys: &Keys,
    d: &str,
    relays: &[String],
    clone: Option<&str>,
    issues: usize,
    comments: usize,
) -> Vec<Event> {
    let coordinate = format!("30617:{}:{d}", keys.public_key());
    let base = Timestamp::now().as_secs() - 86_400;
    let mut tags = vec![
        Tag::identifier(d),
        Tag::custom(TagKind::custom("name"), [d]),
        Tag::custom(TagKind::custom("relays"), relays.iter().cloned()),
    ];
    tags.extend(clone.map(|c| Tag::custom(TagKind::custom("clone"), [c])));
    let mut events = vec![EventBuilder::new(Kind::Custom(30617), "")
        .tags(tags)
        .custom_created_at(Timestamp::from_secs(base))
        .sign_with_keys(keys)
        .unwrap()];
    let mut n = 0u64;
    let mut at = || {
        n += 1;
        Timestamp::from_secs(base + 1 + n / 3)
    };
    for i in 0..issues {
        let issue = EventBuilder::new(Kind::Custom(1621), format!("issue {i}"))
            .tags([
                Tag::custom(TagKind::a(), [coordinate.clone()]),
                Tag::custom(TagKind::custom("subject"), [format!("issue {i}")]),
            ])
            .custom_created_at(at())
            .sign_with_keys(keys)
            .unwrap();
        let root = issue.id;
        events.push(issue);
        for c in 0..comments {
            events.push(comment(keys, &root, &format!("comment {c} on {i}"), at()));
        }
    }
    events
}

/// A NIP-22 comment on `root` (an issue), at `at`.
pub fn comment(keys: &Keys, root: &EventId, text: &str, at: Timestamp) -> Event {
    EventBuilder::new(Kind::Custom(1111), text)
        .tags([
            Tag::custom(TagKind::custom("E"), [root.to_hex()]),
            Tag::custom(TagKind::custom("K"), ["1621"]),
            Tag::custom(TagKind::e(), [root.to_hex()]),
            Tag::custom(TagKind::custom("k"), ["1621"]),
        ])
        .custom_created_at(at)
        .sign_with_keys(keys)
        .unwrap()
}

// ---------------------------------------------------------------- a client

/// A pool connected to `url` (no reconnect).
pub async fn client(url: &str) -> RelayPool {
    let pool = RelayPool::new();
    pool.add_relay(url, RelayOptions::new().reconnect(false))
        .await
        .unwrap();
    let _ = pool.try_connect_relay(url, Duration::from_secs(5)).await;
    pool
}

/// Publishes every event on one connection: `Err` lists the relay's refusals.
pub async fn publish_all(url: &str, events: &[Event]) -> Result<(), String> {
    let pool = client(url).await;
    let mut refused = Vec::new();
    for e in events {
        match pool.send_event_to([url], e).await {
            Ok(out) if out.success.len() == 1 => {}
            Ok(out) => refused.push(format!("kind {} {}: {:?}", e.kind, e.id, out.failed)),
            Err(err) => refused.push(format!("kind {} {}: {err}", e.kind, e.id)),
        }
    }
    pool.shutdown().await;
    if refused.is_empty() {
        Ok(())
    } else {
        Err(refused.join("; "))
    }
}

/// Every event `url` serves by `author`, as a list (a duplicate would show); `None`
/// when it did not answer.
pub async fn served_by(url: &str, author: &Keys) -> Option<Vec<EventId>> {
    let pool = client(url).await;
    let events = pool
        .fetch_events(
            Filter::new().author(author.public_key()).limit(5_000),
            Duration::from_secs(5),
            ReqExitPolicy::ExitOnEOSE,
        )
        .await
        .ok()
        .map(|e| e.into_iter().map(|e| e.id).collect());
    pool.shutdown().await;
    events
}
