//! Process-level durability, all on 127.0.0.1: relay B (the `grasp-reference-relay`
//! binary, LMDB storage) syncs a repository's history from relay A while the test
//! kills it with SIGKILL or stops it with SIGINT at random moments and starts it
//! again. After the last restart B must hold every event A holds, each once, within a
//! bound, although nothing (announcement, issue or comment) is published again: what
//! was stored survives, and what was not is asked for again by the restart, not by the
//! daily sync 23–25 h later.
//!
//! Seeds: `DURABLE_SEEDS=1,2,3` (default `1,2`). Each run prints one line of figures.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use grasp_reference_relay::{start, RelayConfig, RunningRelay};
use grasp_sync::ports::{RandomSource, SeededRandom};
use nostr::{Event, EventId, Keys};

mod support;
use support::{client, free_port, history, publish_all, served_by, source_repo, tmp, GitDaemon};

/// Issues in the repository; each gets `COMMENTS` comments.
const ISSUES: usize = 300;
const COMMENTS: usize = 8;
/// After the last restart, B must hold everything within this.
const CONVERGE: Duration = Duration::from_secs(120);
/// Interruptions per seed.
const KILLS: usize = 5;

/// The test's only randomness, so a seed replays the same moments.
struct Rng(SeededRandom);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n.max(1)
    }
}

/// Publishes one event: `Ok(())` or the relay's refusal.
async fn publish(url: &str, event: &Event) -> Result<(), String> {
    let pool = client(url).await;
    let out = pool
        .send_event_to([url], event)
        .await
        .map_err(|e| e.to_string());
    pool.shutdown().await;
    match out? {
        out if out.success.len() == 1 => Ok(()),
        out => Err(format!("{:?}", out.failed)),
    }
}

/// Relay B as a child process on a fixed address (its URL is in the announcement).
struct RelayB {
    bind: String,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RelayB {
    /// Not started yet; on a free port, data and log under `root`.
    fn new(root: &Path, extra: &[&str]) -> Self {
        Self {
            bind: format!("127.0.0.1:{}", free_port()),
            data: tmp(root, "b"),
            log: root.join("b.log"),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.bind)
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_grasp-reference-relay"))
            .args([
                "--bind",
                &self.bind,
                "--data-dir",
                &self.data.display().to_string(),
                "--allow-private-urls",
                "--fast-timers",
                "--status-log-secs",
                "3600",
                "--log-level",
                "info,nostr_relay_pool=warn,nostr_relay_builder=warn,nostr_lmdb=warn",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the relay binary starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&self.bind).is_err() {
            assert!(
                Instant::now() < deadline,
                "B did not listen; log: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (`graceful == false`) or SIGINT, then wait for the process to end.
    fn stop(&mut self, graceful: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if graceful {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("B ignored SIGINT for 30 s; log: {}", self.log_tail());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let status = child.wait().unwrap();
            assert!(
                status.success(),
                "B exited with {status} after SIGINT; log: {}",
                self.log_tail()
            );
        } else {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for RelayB {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn run_seed(seed: u64) {
    let root = tempfile::tempdir().unwrap();
    let mut rng = Rng(SeededRandom::new(seed));
    let a: RunningRelay = start(RelayConfig::for_tests(tmp(root.path(), "a")))
        .await
        .expect("relay A starts");
    let mut b = RelayB::new(root.path(), &[]);
    let keys = Keys::generate();
    let events = history(
        &keys,
        "durable",
        &[a.url(), b.url()],
        None,
        ISSUES,
        COMMENTS,
    );
    publish_all(&a.url(), &events)
        .await
        .expect("A takes the history");
    let total = events.len();

    // B learns of the repository the way a user would tell it: the announcement.
    b.start();
    publish_all(&b.url(), &events[..1])
        .await
        .expect("B takes the announcement");

    let mut kills = 0;
    let mut sigints = 0;
    let mut counts = Vec::new();
    for round in 0..KILLS {
        // Interrupt at a random moment: after a random share of what is missing has
        // arrived, or after a random time, whichever comes first.
        let have = served_by(&b.url(), &keys).await.map_or(0, |v| v.len());
        let target = have + (rng.below(70) as usize + 5) * (total - have) / 100;
        let deadline = Instant::now() + Duration::from_millis(200 + rng.below(2_500));
        let mut now_have = have;
        while Instant::now() < deadline && now_have < target {
            tokio::time::sleep(Duration::from_millis(50)).await;
            now_have = served_by(&b.url(), &keys)
                .await
                .map_or(now_have, |v| v.len());
        }
        let graceful = round % 2 == 1 || rng.below(3) == 0;
        if graceful {
            sigints += 1;
        } else {
            kills += 1;
        }
        b.stop(graceful);
        counts.push(now_have);
        b.start();
    }

    let (converge, missing) = converge(&b, &keys, &events).await;
    println!(
        "durable: seed={seed} events={total} sigkills={kills} sigints={sigints} held_at_interruptions={counts:?} converged_s={:.1} missing={missing}",
        converge.as_secs_f64()
    );
    b.stop(true);
    a.shutdown().await.unwrap();
}

/// Waits (at most [`CONVERGE`]) until B serves exactly `events`, each once; panics
/// with B's log otherwise. Returns how long it took (and 0 missing).
async fn converge(b: &RelayB, keys: &Keys, events: &[Event]) -> (Duration, usize) {
    let started = Instant::now();
    let expected: BTreeSet<EventId> = events.iter().map(|e| e.id).collect();
    let mut last = Vec::new();
    let mut unanswered = 0;
    while started.elapsed() < CONVERGE {
        let answer = served_by(&b.url(), keys).await;
        if answer.is_none() {
            unanswered += 1;
        }
        if let Some(ids) = answer {
            let done = ids.len() == events.len();
            last = ids;
            if done {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let got: BTreeSet<EventId> = last.iter().copied().collect();
    assert_eq!(got.len(), last.len(), "B serves an event twice");
    assert!(got.is_subset(&expected), "B serves events nobody published");
    let missing = expected.difference(&got).count();
    assert_eq!(
        missing,
        0,
        "B holds {} of {} events {CONVERGE:?} after its last restart ({unanswered} queries \
         unanswered); log:\n{}",
        got.len(),
        events.len(),
        b.log_tail()
    );
    (started.elapsed(), missing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durable_sigkill_and_sigint_mid_sync_lose_nothing() {
    grasp_reference_relay::install_crypto_provider();
    let seeds: Vec<u64> = std::env::var("DURABLE_SEEDS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2]);
    for seed in seeds {
        run_seed(seed).await;
    }
}

/// kill -9 while the announcement waits in B's purgatory for git data that is not
/// reachable yet: the restart must hold it again (the purgatory is written through),
/// resume the hunt, and — once the data is there — sync the whole history.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durable_sigkill_while_the_announcement_waits_for_git_data() {
    grasp_reference_relay::install_crypto_provider();
    let root = tempfile::tempdir().unwrap();
    let serve = tmp(root.path(), "serve");
    source_repo(&serve);
    let port = free_port();
    let clone = format!("git://127.0.0.1:{port}/repo.git");
    let a: RunningRelay = start(RelayConfig::for_tests(tmp(root.path(), "a")))
        .await
        .expect("relay A starts");
    let mut b = RelayB::new(root.path(), &["--user-hunt-delay-secs", "0"]);
    let keys = Keys::generate();
    let events = history(
        &keys,
        "durable",
        &[a.url(), b.url()],
        Some(&clone),
        ISSUES,
        COMMENTS,
    );

    // A takes the repository while its git data is served, then the server goes away.
    let daemon = GitDaemon::start_on(&serve, port);
    let _ = publish(&a.url(), &events[0]).await; // held until A has fetched the data
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a.serves(&events[0].id).await {
        assert!(Instant::now() < deadline, "A never fetched the git data");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish_all(&a.url(), &events[1..])
        .await
        .expect("A takes the history");
    drop(daemon);

    // B holds the announcement: nothing to fetch from.
    b.start();
    let held = publish(&b.url(), &events[0]).await;
    assert!(
        held.as_ref()
            .is_err_and(|e| e.contains("\"restricted: held in purgatory")),
        "B holds the announcement: {held:?}"
    );
    let file = b
        .data
        .join("purgatory")
        .join(format!("{}.json", events[0].id.to_hex()));
    assert!(file.exists(), "held means written: {}", file.display());
    b.stop(false);

    // The git server is back; so is B, which must remember what it held.
    let _daemon = GitDaemon::start_on(&serve, port);
    b.start();
    let (took, _) = converge(&b, &keys, &events).await;
    println!(
        "durable: purgatory sigkill events={} converged_s={:.1}",
        events.len(),
        took.as_secs_f64()
    );
    b.stop(true);
    a.shutdown().await.unwrap();
}
