//! `HuntScheduler`: decides *when* to look for which repo's git data on *which* server.
//!
//! Sans-IO in the quinn-proto style: the driver feeds inputs ([`HuntScheduler::add`],
//! [`HuntScheduler::on_job_done`], [`HuntScheduler::mark_present`]) and the current time,
//! drains fetch jobs with [`HuntScheduler::poll_jobs`] and outcomes with
//! [`HuntScheduler::poll_event`], and sleeps until [`HuntScheduler::poll_timeout`]. No
//! clock, no locks, no sockets: every rule (500 ms / 3 min first attempt, 20 s × 2^n
//! backoff capped at 2 min, 30 min expiry, 5 in flight and 30 per minute per host) is
//! tested in microseconds with injected time.
//!
//! Model: one entry per repo (keyed by the full [`RepoRef`], so two owners' repos with
//! the same name never share an entry) holding the events that wait and the candidate
//! clone URLs. An *attempt* is a round over every candidate URL; a round's URLs are queued
//! on their hosts, and each host serves its waiting repos round-robin within its limits.
//! A round that leaves something missing schedules the next one with backoff; a new
//! event for the repo resets the backoff and pulls the next round earlier.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use nostr::EventId;

use crate::git::fetcher::{FetchError, FetchReport, FetchWant};
use crate::git::metrics::HuntMetrics;
use crate::git::Oid;
use crate::model::{RepoRef, WallTime};
use crate::url_policy::CloneUrl;

/// How an event reached the relay; decides how soon the first hunt starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Brought by sync from another relay: its data should exist somewhere already, so
    /// hunt soon (500 ms batches a burst of events for one repo into one round).
    Sync,
    /// Submitted by a user: a `git push` to us is probably on its way, so wait (3 min)
    /// before bothering other servers.
    User,
}

/// Which kind of event waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WaitKind {
    /// Repository announcement (30617): waits for any git data.
    Announcement,
    /// Repository state (30618): waits for the objects its refs name.
    State,
    /// Pull request (1618): waits for its tip commit.
    PullRequest,
    /// Pull request update (1619): waits for its new tip commit.
    PullRequestUpdate,
}

/// What an event needs before it can leave purgatory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// Any git data at all (announcements).
    AnyData,
    /// These objects must be present (state events, PR tips).
    Objects(BTreeSet<Oid>),
}

impl Want {
    fn is_satisfied(&self) -> bool {
        matches!(self, Want::Objects(o) if o.is_empty())
    }
}

/// One event to hunt data for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HuntRequest {
    /// The waiting event.
    pub event_id: EventId,
    /// The repo it belongs to.
    pub repo: RepoRef,
    /// What kind of event it is (for reporting).
    pub kind: WaitKind,
    /// What it needs.
    pub want: Want,
    /// Candidate clone URLs this event brings (announcement or PR `clone` tags). More
    /// can be added later with [`HuntScheduler::add_clone_urls`] (e.g. from other
    /// maintainers' announcements).
    pub clone_urls: Vec<CloneUrl>,
    /// How it arrived.
    pub origin: Origin,
    /// When the hunt for it stops (the purgatory's deadline, normally arrival + 30 min).
    pub expires_at: WallTime,
}

/// Scheduler settings; defaults are the design's numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HuntConfig {
    /// First attempt after an event that came by sync (500 ms).
    pub first_delay_sync: Duration,
    /// First attempt after an event a user submitted (3 min).
    pub first_delay_user: Duration,
    /// Backoff base: the n-th retry waits `base × 2^(n-1)` (20 s).
    pub backoff_base: Duration,
    /// Backoff cap (2 min).
    pub backoff_cap: Duration,
    /// Fetch jobs in flight per git host (5).
    pub max_in_flight_per_host: usize,
    /// Fetch jobs started per git host per rolling window (30).
    pub max_starts_per_window: usize,
    /// The rolling window for `max_starts_per_window` (1 min).
    pub rate_window: Duration,
    /// Hosts never contacted: our own (the data would already be here).
    pub own_hosts: BTreeSet<String>,
    /// Candidate URLs kept per repo; more are ignored (hostile announcements).
    pub max_urls_per_repo: usize,
}

impl Default for HuntConfig {
    fn default() -> Self {
        Self {
            first_delay_sync: Duration::from_millis(500),
            first_delay_user: Duration::from_secs(180),
            backoff_base: Duration::from_secs(20),
            backoff_cap: Duration::from_secs(120),
            max_in_flight_per_host: 5,
            max_starts_per_window: 30,
            rate_window: Duration::from_secs(60),
            own_hosts: BTreeSet::new(),
            max_urls_per_repo: 32,
        }
    }
}

impl HuntConfig {
    /// The wait before retry number `n` (1-based): `base × 2^(n-1)`, capped.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.backoff_base
            .saturating_mul(factor)
            .min(self.backoff_cap)
    }

    fn first_delay(&self, origin: Origin) -> Duration {
        match origin {
            Origin::Sync => self.first_delay_sync,
            Origin::User => self.first_delay_user,
        }
    }
}

/// Identifies one fetch job, to report its completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

/// A fetch the driver should run (with a [`GitFetcher`](super::GitFetcher)), then report
/// with [`HuntScheduler::on_job_done`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HuntJob {
    /// Report the result under this id.
    pub id: JobId,
    /// Whose data.
    pub repo: RepoRef,
    /// Where from.
    pub url: CloneUrl,
    /// What is still missing at the moment the job starts.
    pub want: FetchWant,
}

/// The result of a job, as the driver reports it.
pub type JobResult = Result<FetchReport, FetchError>;

/// What the hunt concluded about waiting events.
#[derive(Debug, Clone, PartialEq, Eq)]
// Deliberately exhaustive: a host must act on every hunt event, so a new one is meant to break its `match`.
pub enum HuntEvent {
    /// The data these events need is present: release them from purgatory.
    Satisfied {
        /// The repo.
        repo: RepoRef,
        /// The events to release.
        events: Vec<EventId>,
    },
    /// The hunt for these events reached their deadline without the data.
    Expired {
        /// The repo.
        repo: RepoRef,
        /// The events given up on.
        events: Vec<EventId>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UrlState {
    /// Not part of the current round (or no round running).
    Idle,
    /// Queued on its host for the current round.
    Pending,
    /// A job runs.
    InFlight(JobId),
}

#[derive(Debug)]
struct WaitingEv {
    want: Want,
    expires_at: WallTime,
}

#[derive(Debug)]
struct Entry {
    events: BTreeMap<EventId, WaitingEv>,
    urls: BTreeMap<CloneUrl, UrlState>,
    /// Failed rounds since the last reset.
    attempt: u32,
    /// When the next round starts (in the `due` set), if one is scheduled.
    next_round: Option<WallTime>,
    in_round: bool,
    /// A new event arrived during a round: run again at this time instead of backing off.
    rerun_at: Option<WallTime>,
}

impl Entry {
    fn want(&self) -> FetchWant {
        let mut w = FetchWant::default();
        for ev in self.events.values() {
            match &ev.want {
                Want::AnyData => w.any_data = true,
                Want::Objects(o) => w.oids.extend(o.iter().copied()),
            }
        }
        w
    }

    fn round_busy(&self) -> bool {
        self.urls.values().any(|s| !matches!(s, UrlState::Idle))
    }
}

#[derive(Debug, Default)]
struct Host {
    in_flight: usize,
    starts: VecDeque<WallTime>,
    queue: VecDeque<RepoRef>,
    queued: BTreeSet<RepoRef>,
}

#[derive(Debug)]
struct JobInfo {
    repo: RepoRef,
    url: CloneUrl,
    asked: FetchWant,
}

/// The pure hunt scheduler. See the module docs for the model.
#[derive(Debug)]
pub struct HuntScheduler {
    config: HuntConfig,
    entries: BTreeMap<RepoRef, Entry>,
    due: BTreeSet<(WallTime, RepoRef)>,
    expiry: BTreeSet<(WallTime, EventId)>,
    event_repo: HashMap<EventId, RepoRef>,
    hosts: BTreeMap<String, Host>,
    jobs: HashMap<JobId, JobInfo>,
    next_job: u64,
    events: VecDeque<HuntEvent>,
    metrics: HuntMetrics,
}

impl HuntScheduler {
    /// A scheduler with `config`.
    pub fn new(config: HuntConfig) -> Self {
        Self {
            config,
            entries: BTreeMap::new(),
            due: BTreeSet::new(),
            expiry: BTreeSet::new(),
            event_repo: HashMap::new(),
            hosts: BTreeMap::new(),
            jobs: HashMap::new(),
            next_job: 0,
            events: VecDeque::new(),
            metrics: HuntMetrics::default(),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &HuntConfig {
        &self.config
    }

    /// Starts (or joins) the hunt for an event's data. A new event for a repo resets the
    /// repo's backoff and pulls its next round earlier (never later). An event already
    /// known only contributes its clone URLs. An event already past its deadline, or one
    /// that needs nothing, is ignored.
    pub fn add(&mut self, req: HuntRequest, now: WallTime) {
        if req.expires_at <= now || req.want.is_satisfied() {
            return;
        }
        let target = now + self.config.first_delay(req.origin);
        let is_new_event = !self.event_repo.contains_key(&req.event_id);
        let entry = self
            .entries
            .entry(req.repo.clone())
            .or_insert_with(|| Entry {
                events: BTreeMap::new(),
                urls: BTreeMap::new(),
                attempt: 0,
                next_round: None,
                in_round: false,
                rerun_at: None,
            });
        if is_new_event {
            entry.events.insert(
                req.event_id,
                WaitingEv {
                    want: req.want,
                    expires_at: req.expires_at,
                },
            );
            self.event_repo.insert(req.event_id, req.repo.clone());
            self.expiry.insert((req.expires_at, req.event_id));
        }
        self.insert_urls(&req.repo, req.clone_urls);
        if is_new_event {
            self.pull_earlier(&req.repo, target);
        } else {
            self.schedule_if_idle(&req.repo, target);
        }
    }

    /// Adds candidate clone URLs for a repo that is being hunted (e.g. from another
    /// maintainer's announcement). URLs on own hosts, duplicates and URLs beyond the
    /// per-repo cap are ignored. If a round is running, new URLs join it.
    pub fn add_clone_urls<I>(&mut self, repo: &RepoRef, urls: I, now: WallTime)
    where
        I: IntoIterator<Item = CloneUrl>,
    {
        if !self.entries.contains_key(repo) {
            return;
        }
        self.insert_urls(repo, urls);
        let target = now + self.config.first_delay_sync;
        self.schedule_if_idle(repo, target);
    }

    /// Stops hunting for an event (released by a push, or dropped by the host). Jobs in
    /// flight still count against their host until reported.
    pub fn remove_event(&mut self, id: &EventId) {
        let Some(repo) = self.event_repo.remove(id) else {
            return;
        };
        if let Some(entry) = self.entries.get_mut(&repo) {
            if let Some(ev) = entry.events.remove(id) {
                self.expiry.remove(&(ev.expires_at, *id));
            }
        }
        self.drop_entry_if_empty(&repo);
    }

    /// Data arrived some other way (a push to us): apply it as if a job had found it.
    pub fn mark_present(&mut self, repo: &RepoRef, present: &BTreeSet<Oid>, any_data: bool) {
        self.apply_found(repo, present, any_data);
    }

    /// Reports a job's outcome. Every job returned by [`poll_jobs`](Self::poll_jobs) must
    /// be reported exactly once (its host slot is held until then); unknown ids are
    /// ignored. Call [`poll_jobs`](Self::poll_jobs) afterwards: the freed slot may start
    /// more work.
    pub fn on_job_done(&mut self, id: JobId, result: JobResult, now: WallTime) {
        let Some(info) = self.jobs.remove(&id) else {
            return;
        };
        if let Some(host) = self.hosts.get_mut(info.url.host()) {
            host.in_flight = host.in_flight.saturating_sub(1);
        }
        match &result {
            Ok(report) => {
                self.metrics.bytes_fetched =
                    self.metrics.bytes_fetched.saturating_add(report.bytes);
                let asked_n = info.asked.oids.len() + usize::from(info.asked.any_data);
                let got_n = info
                    .asked
                    .oids
                    .iter()
                    .filter(|o| report.present.contains(o))
                    .count()
                    + usize::from(info.asked.any_data && report.any_data);
                if got_n == asked_n {
                    self.metrics.hunts_complete += 1;
                } else if got_n > 0 {
                    self.metrics.hunts_partial += 1;
                } else {
                    self.metrics.hunts_empty += 1;
                }
            }
            Err(FetchError::Refused(_)) => self.metrics.hunts_refused += 1,
            Err(_) => self.metrics.hunts_failed += 1,
        }
        if let Some(entry) = self.entries.get_mut(&info.repo) {
            if let Some(state) = entry.urls.get_mut(&info.url) {
                if *state == UrlState::InFlight(id) {
                    *state = UrlState::Idle;
                }
            }
        }
        if let Ok(report) = &result {
            self.apply_found(&info.repo, &report.present, report.any_data);
        }
        self.maybe_end_round(&info.repo, now);
    }

    /// Expires events past their deadline, starts rounds that are due, and returns the
    /// fetch jobs to start now within the per-host limits.
    #[must_use]
    pub fn poll_jobs(&mut self, now: WallTime) -> Vec<HuntJob> {
        self.expire(now);
        while let Some((t, repo)) = self.due.first().cloned() {
            if t > now {
                break;
            }
            self.due.remove(&(t, repo.clone()));
            self.start_round(&repo, now);
        }
        self.dispatch(now)
    }

    /// The next instant [`poll_jobs`](Self::poll_jobs) has work to do without any other
    /// input: a round falling due, an event expiring, or a rate-limited host's window
    /// reopening. `None` means: only new inputs can create work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<WallTime> {
        let mut t = self.due.first().map(|(t, _)| *t);
        if let Some((e, _)) = self.expiry.first() {
            t = Some(t.map_or(*e, |x| x.min(*e)));
        }
        for host in self.hosts.values() {
            if !host.queue.is_empty()
                && host.in_flight < self.config.max_in_flight_per_host
                && host.starts.len() >= self.config.max_starts_per_window
            {
                if let Some(first) = host.starts.front() {
                    let reopen = *first + self.config.rate_window;
                    t = Some(t.map_or(reopen, |x| x.min(reopen)));
                }
            }
        }
        t
    }

    /// The next outcome to act on (release or give up), if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<HuntEvent> {
        self.events.pop_front()
    }

    /// Counters and gauges.
    pub fn metrics(&self) -> HuntMetrics {
        let mut m = self.metrics;
        m.repos_waiting = self.entries.len() as u64;
        m.events_waiting = self.event_repo.len() as u64;
        m.jobs_in_flight = self.jobs.len() as u64;
        m
    }

    /// Jobs in flight on `host`.
    pub fn in_flight(&self, host: &str) -> usize {
        self.hosts.get(host).map_or(0, |h| h.in_flight)
    }

    /// True while some event of `repo` waits.
    pub fn is_waiting(&self, repo: &RepoRef) -> bool {
        self.entries.contains_key(repo)
    }

    /// When `repo`'s next round is scheduled, if it is between rounds.
    pub fn next_round(&self, repo: &RepoRef) -> Option<WallTime> {
        self.entries.get(repo).and_then(|e| e.next_round)
    }

    /// Failed rounds for `repo` since its last reset.
    pub fn attempts(&self, repo: &RepoRef) -> u32 {
        self.entries.get(repo).map_or(0, |e| e.attempt)
    }

    /// The objects (and whether any data) still missing for `repo`.
    pub fn missing(&self, repo: &RepoRef) -> Option<FetchWant> {
        self.entries.get(repo).map(Entry::want)
    }

    fn insert_urls<I>(&mut self, repo: &RepoRef, urls: I)
    where
        I: IntoIterator<Item = CloneUrl>,
    {
        let Some(entry) = self.entries.get_mut(repo) else {
            return;
        };
        for url in urls {
            if self.config.own_hosts.contains(url.host()) || entry.urls.contains_key(&url) {
                continue;
            }
            if entry.urls.len() >= self.config.max_urls_per_repo {
                break;
            }
            let state = if entry.in_round {
                UrlState::Pending
            } else {
                UrlState::Idle
            };
            if state == UrlState::Pending {
                let host = self.hosts.entry(url.host().to_owned()).or_default();
                if host.queued.insert(repo.clone()) {
                    host.queue.push_back(repo.clone());
                }
            }
            entry.urls.insert(url, state);
        }
    }

    /// New event: reset the backoff and run no later than `target`.
    fn pull_earlier(&mut self, repo: &RepoRef, target: WallTime) {
        let Some(entry) = self.entries.get_mut(repo) else {
            return;
        };
        entry.attempt = 0;
        if entry.in_round {
            entry.rerun_at = Some(entry.rerun_at.map_or(target, |t| t.min(target)));
            return;
        }
        let new = entry.next_round.map_or(target, |t| t.min(target));
        if let Some(old) = entry.next_round.replace(new) {
            self.due.remove(&(old, repo.clone()));
        }
        self.due.insert((new, repo.clone()));
    }

    /// An entry with nothing scheduled (e.g. it had no URLs) gets a round at `target`.
    fn schedule_if_idle(&mut self, repo: &RepoRef, target: WallTime) {
        let Some(entry) = self.entries.get_mut(repo) else {
            return;
        };
        if entry.in_round || entry.next_round.is_some() {
            return;
        }
        entry.next_round = Some(target);
        self.due.insert((target, repo.clone()));
    }

    fn start_round(&mut self, repo: &RepoRef, now: WallTime) {
        let Some(entry) = self.entries.get_mut(repo) else {
            return;
        };
        entry.next_round = None;
        if entry.urls.is_empty() {
            // Nothing to try yet; `add_clone_urls` will schedule a round.
            return;
        }
        entry.in_round = true;
        entry.rerun_at = None;
        for (url, state) in entry.urls.iter_mut() {
            if *state == UrlState::Idle {
                *state = UrlState::Pending;
                let host = self.hosts.entry(url.host().to_owned()).or_default();
                if host.queued.insert(repo.clone()) {
                    host.queue.push_back(repo.clone());
                }
            }
        }
        self.maybe_end_round(repo, now);
    }

    fn maybe_end_round(&mut self, repo: &RepoRef, now: WallTime) {
        let Some(entry) = self.entries.get_mut(repo) else {
            return;
        };
        if !entry.in_round || entry.round_busy() {
            return;
        }
        entry.in_round = false;
        let next = match entry.rerun_at.take() {
            Some(t) => {
                entry.attempt = 0;
                t.max(now)
            }
            None => {
                entry.attempt = entry.attempt.saturating_add(1);
                now + self.config.backoff(entry.attempt)
            }
        };
        entry.next_round = Some(next);
        self.due.insert((next, repo.clone()));
    }

    fn dispatch(&mut self, now: WallTime) -> Vec<HuntJob> {
        let mut out = Vec::new();
        let window = self.config.rate_window;
        let max_in_flight = self.config.max_in_flight_per_host;
        let max_starts = self.config.max_starts_per_window;
        for (host_name, host) in self.hosts.iter_mut() {
            while host.starts.front().is_some_and(|t| *t + window <= now) {
                host.starts.pop_front();
            }
            while host.in_flight < max_in_flight && host.starts.len() < max_starts {
                let Some(repo) = host.queue.pop_front() else {
                    break;
                };
                host.queued.remove(&repo);
                let Some(entry) = self.entries.get_mut(&repo) else {
                    continue;
                };
                let mut on_host = entry
                    .urls
                    .iter()
                    .filter(|(u, s)| **s == UrlState::Pending && u.host() == host_name)
                    .map(|(u, _)| u.clone());
                let Some(url) = on_host.next() else { continue };
                let more = on_host.next().is_some();
                let want = entry.want();
                let id = JobId(self.next_job);
                self.next_job += 1;
                entry.urls.insert(url.clone(), UrlState::InFlight(id));
                host.in_flight += 1;
                host.starts.push_back(now);
                if more && host.queued.insert(repo.clone()) {
                    host.queue.push_back(repo.clone());
                }
                self.jobs.insert(
                    id,
                    JobInfo {
                        repo: repo.clone(),
                        url: url.clone(),
                        asked: want.clone(),
                    },
                );
                out.push(HuntJob {
                    id,
                    repo,
                    url,
                    want,
                });
            }
        }
        out
    }

    fn apply_found(&mut self, repo: &RepoRef, present: &BTreeSet<Oid>, any_data: bool) {
        let Some(entry) = self.entries.get_mut(repo) else {
            return;
        };
        let mut done = Vec::new();
        for (id, ev) in entry.events.iter_mut() {
            let satisfied = match &mut ev.want {
                Want::AnyData => any_data,
                Want::Objects(o) => {
                    o.retain(|x| !present.contains(x));
                    o.is_empty()
                }
            };
            if satisfied {
                done.push((*id, ev.expires_at));
            }
        }
        if done.is_empty() {
            return;
        }
        for (id, exp) in &done {
            entry.events.remove(id);
            self.event_repo.remove(id);
            self.expiry.remove(&(*exp, *id));
        }
        self.metrics.events_satisfied += done.len() as u64;
        self.events.push_back(HuntEvent::Satisfied {
            repo: repo.clone(),
            events: done.into_iter().map(|(id, _)| id).collect(),
        });
        self.drop_entry_if_empty(repo);
    }

    fn expire(&mut self, now: WallTime) {
        let mut by_repo: BTreeMap<RepoRef, Vec<EventId>> = BTreeMap::new();
        while let Some((t, id)) = self.expiry.first().copied() {
            if t > now {
                break;
            }
            self.expiry.remove(&(t, id));
            let Some(repo) = self.event_repo.remove(&id) else {
                continue;
            };
            if let Some(entry) = self.entries.get_mut(&repo) {
                entry.events.remove(&id);
            }
            by_repo.entry(repo).or_default().push(id);
        }
        for (repo, events) in by_repo {
            self.metrics.events_expired += events.len() as u64;
            self.drop_entry_if_empty(&repo);
            self.events.push_back(HuntEvent::Expired { repo, events });
        }
    }

    fn drop_entry_if_empty(&mut self, repo: &RepoRef) {
        let empty = self.entries.get(repo).is_some_and(|e| e.events.is_empty());
        if !empty {
            return;
        }
        if let Some(entry) = self.entries.remove(repo) {
            if let Some(t) = entry.next_round {
                self.due.remove(&(t, repo.clone()));
            }
            // Stale host-queue items are skipped lazily by `dispatch`; jobs in flight keep
            // their host slot until reported.
        }
    }
}
