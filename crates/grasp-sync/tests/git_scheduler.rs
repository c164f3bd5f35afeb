//! Tests of the pure hunt scheduler: the design's timing rules as examples, and property
//! tests for per-host limits, fairness, backoff bounds and expiry. No IO: jobs are
//! "run" by the test, which decides when they finish and what they found.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use grasp_sync::git::{
    FetchReport, HuntConfig, HuntEvent, HuntJob, HuntRequest, HuntScheduler, Origin, WaitKind, Want,
};
use grasp_sync::{CloneUrl, FetchError, Oid, RepoRef, WallTime};
use nostr::EventId;
use proptest::prelude::*;

const PK: &str = "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1";
const T0: WallTime = WallTime(1_000_000);

fn repo(n: usize) -> RepoRef {
    RepoRef::parse(&format!("30617:{PK}:r{n}")).unwrap()
}

fn url(host: usize, repo: usize) -> CloneUrl {
    CloneUrl::parse(&format!("https://h{host}.example/{PK}/r{repo}.git")).unwrap()
}

fn oid(n: u8) -> Oid {
    Oid::from_bytes([n; 20])
}

fn eid(n: u32) -> EventId {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&n.to_be_bytes());
    EventId::from_byte_array(b)
}

fn req(
    id: u32,
    r: usize,
    oids: &[u8],
    urls: Vec<CloneUrl>,
    origin: Origin,
    now: WallTime,
) -> HuntRequest {
    HuntRequest {
        event_id: eid(id),
        repo: repo(r),
        kind: WaitKind::State,
        want: Want::Objects(oids.iter().map(|n| oid(*n)).collect()),
        clone_urls: urls,
        origin,
        expires_at: now + Duration::from_secs(1800),
    }
}

fn fail() -> Result<FetchReport, FetchError> {
    Err(FetchError::Unreachable("down".into()))
}

fn found(oids: &[u8]) -> Result<FetchReport, FetchError> {
    Ok(FetchReport {
        present: oids.iter().map(|n| oid(*n)).collect(),
        ..FetchReport::default()
    })
}

#[test]
fn first_attempt_after_500ms_for_sync_and_3min_for_user() {
    let mut s = HuntScheduler::new(HuntConfig::default());
    s.add(req(1, 0, &[1], vec![url(0, 0)], Origin::Sync, T0), T0);
    s.add(req(2, 1, &[2], vec![url(0, 1)], Origin::User, T0), T0);
    assert_eq!(s.poll_timeout(), Some(T0 + Duration::from_millis(500)));
    assert!(s.poll_jobs(T0 + Duration::from_millis(499)).is_empty());
    let jobs = s.poll_jobs(T0 + Duration::from_millis(500));
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].repo, repo(0));
    assert_eq!(s.next_round(&repo(1)), Some(T0 + Duration::from_secs(180)));
}

#[test]
fn backoff_doubles_from_20s_and_caps_at_2min() {
    let c = HuntConfig::default();
    let secs: Vec<u64> = (1..=6).map(|n| c.backoff(n).as_secs()).collect();
    assert_eq!(secs, [20, 40, 80, 120, 120, 120]);
    assert_eq!(c.backoff(u32::MAX), Duration::from_secs(120));

    let mut s = HuntScheduler::new(HuntConfig::default());
    s.add(req(1, 0, &[1], vec![url(0, 0)], Origin::Sync, T0), T0);
    let mut now = T0 + Duration::from_millis(500);
    for expect in [20u64, 40, 80, 120, 120] {
        let jobs = s.poll_jobs(now);
        assert_eq!(jobs.len(), 1);
        now = now + Duration::from_secs(1);
        s.on_job_done(jobs[0].id, fail(), now);
        assert_eq!(
            s.next_round(&repo(0)),
            Some(now + Duration::from_secs(expect))
        );
        now = now + Duration::from_secs(expect);
    }
}

#[test]
fn new_event_resets_backoff_and_pulls_the_next_attempt_earlier() {
    let mut s = HuntScheduler::new(HuntConfig::default());
    s.add(req(1, 0, &[1], vec![url(0, 0)], Origin::Sync, T0), T0);
    let mut now = T0 + Duration::from_millis(500);
    for _ in 0..3 {
        let jobs = s.poll_jobs(now);
        s.on_job_done(jobs[0].id, fail(), now);
        now = s.next_round(&repo(0)).unwrap();
    }
    let before = s.next_round(&repo(0)).unwrap();
    assert_eq!(s.attempts(&repo(0)), 3);
    // A late event arrives by sync: reset and go again in 500 ms.
    let t = now - Duration::from_secs(60);
    s.add(req(2, 0, &[2], vec![], Origin::Sync, t), t);
    assert_eq!(s.attempts(&repo(0)), 0);
    assert_eq!(s.next_round(&repo(0)), Some(t + Duration::from_millis(500)));
    assert!(s.next_round(&repo(0)).unwrap() < before);
    // A user event never pushes the attempt later.
    s.add(req(3, 0, &[3], vec![], Origin::User, t), t);
    assert_eq!(s.next_round(&repo(0)), Some(t + Duration::from_millis(500)));
}

#[test]
fn event_during_a_round_reruns_without_backoff() {
    let mut s = HuntScheduler::new(HuntConfig::default());
    s.add(req(1, 0, &[1], vec![url(0, 0)], Origin::Sync, T0), T0);
    let now = T0 + Duration::from_millis(500);
    let jobs = s.poll_jobs(now);
    s.add(req(2, 0, &[2], vec![url(1, 0)], Origin::Sync, now), now);
    // The new URL joins the running round at once.
    let more = s.poll_jobs(now);
    assert_eq!(more.len(), 1);
    assert_eq!(more[0].url, url(1, 0));
    let later = now + Duration::from_secs(5);
    s.on_job_done(jobs[0].id, found(&[1]), later);
    s.on_job_done(more[0].id, fail(), later);
    assert_eq!(
        s.poll_event(),
        Some(HuntEvent::Satisfied {
            repo: repo(0),
            events: vec![eid(1)]
        })
    );
    assert_eq!(s.next_round(&repo(0)), Some(later));
    assert_eq!(s.attempts(&repo(0)), 0);
}

#[test]
fn partial_results_from_two_servers_add_up() {
    let mut s = HuntScheduler::new(HuntConfig::default());
    s.add(
        req(1, 0, &[1, 2], vec![url(0, 0), url(1, 0)], Origin::Sync, T0),
        T0,
    );
    let now = T0 + Duration::from_secs(1);
    let jobs = s.poll_jobs(now);
    assert_eq!(jobs.len(), 2);
    s.on_job_done(jobs[0].id, found(&[1]), now);
    assert_eq!(s.poll_event(), None);
    assert_eq!(
        s.missing(&repo(0)).unwrap().oids,
        [oid(2)].into_iter().collect()
    );
    s.on_job_done(jobs[1].id, found(&[2]), now);
    assert_eq!(
        s.poll_event(),
        Some(HuntEvent::Satisfied {
            repo: repo(0),
            events: vec![eid(1)]
        })
    );
    assert!(!s.is_waiting(&repo(0)));
    let m = s.metrics();
    assert_eq!(
        (m.hunts_partial, m.events_satisfied, m.repos_waiting),
        (2, 1, 0)
    );
}

#[test]
fn own_hosts_and_repos_of_the_same_name_by_different_owners() {
    let cfg = HuntConfig {
        own_hosts: ["h0.example".to_owned()].into_iter().collect(),
        ..HuntConfig::default()
    };
    let mut s = HuntScheduler::new(cfg);
    let other = RepoRef::parse(&format!("30617:{}:r0", "b".repeat(64))).unwrap();
    s.add(
        req(1, 0, &[1], vec![url(0, 0), url(1, 0)], Origin::Sync, T0),
        T0,
    );
    let mut r2 = req(2, 0, &[1], vec![url(2, 0)], Origin::Sync, T0);
    r2.repo = other.clone();
    s.add(r2, T0);
    let jobs = s.poll_jobs(T0 + Duration::from_secs(1));
    assert!(jobs.iter().all(|j| j.url.host() != "h0.example"));
    assert_eq!(jobs.len(), 2);
    s.mark_present(&repo(0), &[oid(1)].into_iter().collect(), false);
    assert!(!s.is_waiting(&repo(0)));
    assert!(
        s.is_waiting(&other),
        "same identifier, other owner: still waiting"
    );
}

#[test]
fn events_expire_and_their_hunt_stops() {
    let mut s = HuntScheduler::new(HuntConfig::default());
    s.add(req(1, 0, &[1], vec![url(0, 0)], Origin::Sync, T0), T0);
    let end = T0 + Duration::from_secs(1800);
    let mut now = T0;
    while now < end + Duration::from_secs(300) {
        for j in s.poll_jobs(now) {
            assert!(now < end, "job after expiry");
            s.on_job_done(j.id, fail(), now);
        }
        now = s
            .poll_timeout()
            .map_or(now + Duration::from_secs(1), |t| t.max(now));
        if s.poll_timeout().is_none() {
            break;
        }
    }
    let _ = s.poll_jobs(end);
    let evs: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
    assert_eq!(
        evs,
        vec![HuntEvent::Expired {
            repo: repo(0),
            events: vec![eid(1)]
        }]
    );
    assert!(!s.is_waiting(&repo(0)));
    assert_eq!(s.poll_timeout(), None);
    // A retry at least hourly (GRASP-02): the cap is 2 min.
    assert!(s.config().backoff_cap <= Duration::from_secs(3600));
}

#[test]
fn rate_limited_host_wakes_the_driver_when_its_window_reopens() {
    let cfg = HuntConfig {
        max_in_flight_per_host: 100,
        max_starts_per_window: 2,
        ..HuntConfig::default()
    };
    let mut s = HuntScheduler::new(cfg);
    for r in 0..3 {
        s.add(
            req(r as u32, r, &[1], vec![url(0, r)], Origin::Sync, T0),
            T0,
        );
    }
    let now = T0 + Duration::from_secs(1);
    assert_eq!(s.poll_jobs(now).len(), 2);
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(60)));
    assert_eq!(s.poll_jobs(now + Duration::from_secs(60)).len(), 1);
}

/// A simulated run: `jobs` finish after `dur_ms[i % len]` and fail or find nothing.
struct Sim {
    s: HuntScheduler,
    now: WallTime,
    running: BTreeMap<(WallTime, u64), HuntJob>,
    starts: Vec<(WallTime, HuntJob)>,
    ends: Vec<(WallTime, HuntJob)>,
    durations: Vec<u64>,
    k: usize,
}

impl Sim {
    fn new(cfg: HuntConfig, durations: Vec<u64>) -> Self {
        Self {
            s: HuntScheduler::new(cfg),
            now: T0,
            running: BTreeMap::new(),
            starts: vec![],
            ends: vec![],
            durations,
            k: 0,
        }
    }

    /// Runs until `until`, checking the per-host in-flight limit on every step.
    fn run(&mut self, until: WallTime) {
        loop {
            for j in self.s.poll_jobs(self.now) {
                let d = self.durations[self.k % self.durations.len()];
                self.k += 1;
                self.starts.push((self.now, j.clone()));
                self.running
                    .insert((self.now + Duration::from_millis(d), j.id.0), j);
            }
            let max = self.s.config().max_in_flight_per_host;
            let mut per_host: BTreeMap<&str, usize> = BTreeMap::new();
            for j in self.running.values() {
                *per_host.entry(j.url.host()).or_default() += 1;
            }
            assert!(
                per_host.values().all(|n| *n <= max),
                "in flight {per_host:?} > {max}"
            );
            let next_end = self.running.keys().next().map(|k| k.0);
            let next = match (next_end, self.s.poll_timeout()) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => return,
                },
            };
            if next > until {
                return;
            }
            self.now = next.max(self.now);
            while let Some(entry) = self.running.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let j = entry.remove();
                self.s.on_job_done(j.id, fail(), self.now);
                self.ends.push((self.now, j));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Never more than the per-host limits in flight (checked in `Sim::run`) or started
    /// per rolling window; and every waiting repo is tried on every candidate URL
    /// (fairness), even when one host is busy with many repos.
    #[test]
    fn limits_hold_and_every_repo_is_tried_on_every_host(
        repos in prop::collection::vec(prop::collection::btree_set(0usize..4, 1..4), 1..25),
        in_flight in 1usize..4,
        per_window in 1usize..8,
        durations in prop::collection::vec(1u64..5_000, 1..8),
        user in prop::collection::vec(any::<bool>(), 1..8),
    ) {
        let cfg = HuntConfig {
            max_in_flight_per_host: in_flight,
            max_starts_per_window: per_window,
            ..HuntConfig::default()
        };
        let mut sim = Sim::new(cfg.clone(), durations);
        let mut expected = BTreeSet::new();
        for (r, hosts) in repos.iter().enumerate() {
            let urls: Vec<CloneUrl> = hosts.iter().map(|h| url(*h, r)).collect();
            expected.extend(urls.iter().map(|u| (repo(r), u.clone())));
            let origin = if user[r % user.len()] { Origin::User } else { Origin::Sync };
            sim.s.add(req(r as u32, r, &[1], urls, origin, T0), T0);
        }
        let end = T0 + Duration::from_secs(1799);
        sim.run(end);
        // Rolling-window limit per host.
        let mut by_host: BTreeMap<String, Vec<WallTime>> = BTreeMap::new();
        for (t, j) in &sim.starts {
            by_host.entry(j.url.host().to_owned()).or_default().push(*t);
        }
        for (host, times) in &by_host {
            for (i, t) in times.iter().enumerate() {
                let in_window = times[..=i].iter().filter(|x| **x + cfg.rate_window > *t).count();
                prop_assert!(in_window <= per_window, "{host}: {in_window} starts in a window");
            }
        }
        // Fairness: every (repo, url) pair tried at least once before expiry.
        let tried: BTreeSet<(RepoRef, CloneUrl)> =
            sim.starts.iter().map(|(_, j)| (j.repo.clone(), j.url.clone())).collect();
        let never: Vec<_> = expected.difference(&tried).collect();
        prop_assert!(never.is_empty(), "never tried: {never:?}");
        // Expiry: nothing runs after the deadline, nothing is left waiting.
        sim.run(T0 + Duration::from_secs(4000));
        prop_assert!(sim.starts.iter().all(|(t, _)| *t < T0 + Duration::from_secs(1800)));
        prop_assert_eq!(sim.s.metrics().repos_waiting, 0);
        prop_assert_eq!(sim.s.metrics().jobs_in_flight, 0);
        prop_assert_eq!(sim.s.poll_timeout(), None);
    }

    /// Between the end of a failed round and the next round: exactly the backoff, which
    /// is always within [20 s, 2 min] (limits not binding here).
    #[test]
    fn backoff_bounds(n_urls in 1usize..4, durations in prop::collection::vec(1u64..30_000, 1..6)) {
        let mut sim = Sim::new(HuntConfig::default(), durations);
        let urls: Vec<CloneUrl> = (0..n_urls).map(|h| url(h, 0)).collect();
        sim.s.add(req(1, 0, &[1], urls, Origin::Sync, T0), T0);
        sim.run(T0 + Duration::from_secs(1800));
        // Group starts into rounds (a round starts all its URLs at once here).
        let mut round_starts: Vec<WallTime> = sim.starts.iter().map(|(t, _)| *t).collect();
        round_starts.dedup();
        prop_assert!(round_starts.len() >= 2);
        let mut ends = sim.ends.iter().map(|(t, _)| *t);
        for (i, pair) in round_starts.windows(2).enumerate() {
            // The round ends when its last job ends.
            let round_end = ends.by_ref().take(n_urls).max().unwrap();
            let gap = pair[1].saturating_since(round_end);
            let expect = sim.s.config().backoff((i + 1) as u32);
            prop_assert_eq!(gap, expect);
            prop_assert!(gap >= Duration::from_secs(20) && gap <= Duration::from_secs(120));
        }
    }
}
