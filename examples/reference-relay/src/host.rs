//! The host relay's GRASP acceptance, in one place: user writes (the websocket write
//! policy), synced writes (the `Ingestion` port) and purgatory releases all go through
//! [`Host::decide`] and [`Host::apply_sync`] / [`Host::release`].
//!
//! Rules (GRASP-01, kept simple where the issue allows):
//! - **30617 announcement**: must list one of our public URLs in `relays`, else
//!   `blocked:`. With no `clone` URL, or when the local bare repo already has data, it is
//!   accepted at once; otherwise it is held in purgatory until any git data arrives.
//! - **30618 state**: its repo (author + `d`) must be announced here (accepted or held).
//!   Accepted when every OID it names is in the bare repo, else held.
//! - **1618 PR / 1619 PR update**: must tag an accepted repo (`a`) or an accepted root
//!   event; accepted when its tip (`c`) is present, else held.
//! - **anything else**: accepted when it tags an accepted repo (`a`/`A`/`q`) or an event
//!   we serve (`e`/`E`/`q`); otherwise `blocked:`.
//!
//! Purgatory events are *held, not served*: the event is kept in [`InMemoryPurgatory`]
//! (plus a map of the events), never written to the database, so no REQ can return it;
//! it is written through to the [`HeldStore`] before anyone is told it is held, so a
//! crash loses no held event.
//! A user who publishes one gets `OK false "restricted: held in purgatory until its git
//! data arrives"` (nostr-relay-builder prefixes every write-policy rejection with
//! `blocked:`; the client gate drops that second prefix). When the git hunter finds the
//! data the event is saved, broadcast to live subscribers and fed to the sync engine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use grasp_sync::archive::ArchivePolicy;
use grasp_sync::driver::HuntSender;
use grasp_sync::driver::{SyncHandle, SyncMetrics};
use grasp_sync::git::{
    HuntRequest, InMemoryPurgatory, Origin, PurgatoryConfig, WaitKind, WaitingEvent, Want,
};
use grasp_sync::nip34::{self, parse_announcement, Nip34Kind};
use grasp_sync::{
    BareRepoLocator, CloneUrl, IngestOutcome, Oid, RelayUrl, RepoRef, UrlPolicy, WallTime,
};
use nostr::{Event, EventId, Filter, Timestamp};
use nostr_database::{DatabaseEventStatus, NostrDatabase};
use nostr_relay_builder::LocalRelay;

use crate::git_local;
use crate::held_store::HeldStore;

/// How many refused events are remembered (so sync does not bring them back).
const REJECTED_CAPACITY: usize = 10_000;

/// What the acceptance rules decided.
#[derive(Debug)]
pub enum Verdict {
    /// Store and serve.
    Accept,
    /// Hold in purgatory until this data arrives.
    Hold(WaitingEvent),
    /// Refuse, with the NIP-01 reason. `remember`: refused for good (sync must not bring
    /// it back), as opposed to "not yet" (e.g. its repo is not accepted yet).
    Reject {
        /// Reason, starting with its machine-readable prefix.
        reason: String,
        /// Remember the id in the rejected set.
        remember: bool,
    },
    /// Already stored or held.
    Duplicate,
}

fn reject(reason: impl Into<String>, remember: bool) -> Verdict {
    Verdict::Reject {
        reason: reason.into(),
        remember,
    }
}

/// A held event.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HeldEvent {
    /// The event.
    pub event: Event,
    /// Submitted by a user (`true`) or brought by sync.
    pub from_user: bool,
    /// Arrival, ms since the epoch.
    pub received_at_ms: u64,
}

/// What we know about a repo.
#[derive(Debug, Clone, Default)]
struct RepoInfo {
    accepted: bool,
    clone_urls: Vec<CloneUrl>,
}

#[derive(Debug)]
struct State {
    purgatory: InMemoryPurgatory<()>,
    held: BTreeMap<EventId, HeldEvent>,
    rejected: BTreeMap<EventId, Event>,
    rejected_order: VecDeque<EventId>,
    repos: BTreeMap<RepoRef, RepoInfo>,
    /// Per accepted repo, the newest state whose objects never arrived within its
    /// purgatory window: hunted again at every recheck (GRASP-02: at least hourly),
    /// stored once its data is here.
    stale_states: BTreeMap<RepoRef, Event>,
}

/// The shared host: database, purgatory, repos, and the handles wired in at start.
pub struct Host {
    /// The database the relay serves from (LMDB or memory), without the feeding wrapper.
    pub db: Arc<dyn NostrDatabase>,
    /// This relay's URLs.
    pub public_urls: Vec<RelayUrl>,
    /// Bare repos.
    pub locator: BareRepoLocator,
    /// Git root.
    pub git_root: PathBuf,
    /// Relay and clone URL policy.
    pub url_policy: UrlPolicy,
    /// The nostr relay (set once started).
    pub relay: OnceLock<LocalRelay>,
    /// The sync engine (set once started).
    pub sync: OnceLock<SyncHandle>,
    /// Metrics.
    pub metrics: SyncMetrics,
    /// Where held events are written through.
    pub held_store: HeldStore,
    hunt: HuntSender,
    archive: ArchivePolicy,
    state: Mutex<State>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("public_urls", &self.public_urls)
            .finish_non_exhaustive()
    }
}

/// How long one recheck's hunt may run.
const RECHECK_WINDOW: std::time::Duration = std::time::Duration::from_secs(10 * 60);

fn now() -> WallTime {
    grasp_sync::ports::Clock::now(&grasp_sync::ports::SystemClock)
}

impl Host {
    /// A host; `hunt` reaches the git hunt.
    pub fn new(
        db: Arc<dyn NostrDatabase>,
        public_urls: Vec<RelayUrl>,
        git_root: PathBuf,
        url_policy: UrlPolicy,
        metrics: SyncMetrics,
        held_store: HeldStore,
        hunt: HuntSender,
    ) -> Self {
        Self {
            db,
            public_urls,
            locator: BareRepoLocator::grasp_layout(git_root.clone()),
            git_root,
            url_policy,
            relay: OnceLock::new(),
            sync: OnceLock::new(),
            metrics,
            held_store,
            hunt,
            archive: ArchivePolicy::default(),
            state: Mutex::new(State {
                purgatory: InMemoryPurgatory::new(PurgatoryConfig::default()),
                held: BTreeMap::new(),
                rejected: BTreeMap::new(),
                rejected_order: VecDeque::new(),
                repos: BTreeMap::new(),
                stale_states: BTreeMap::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Loads the accepted repos from the stored announcements (at start).
    pub async fn load_repos(&self) -> Result<usize, String> {
        let events = self
            .db
            .query(Filter::new().kind(nip34::KIND_REPO_ANNOUNCEMENT))
            .await
            .map_err(|e| e.to_string())?;
        let mut n = 0;
        for event in events {
            if let Ok(ann) = parse_announcement(&event) {
                if self.keeps(&ann) {
                    let urls = self.clone_urls(&ann.clone_urls);
                    let mut st = self.state();
                    let info = st.repos.entry(ann.repo).or_default();
                    info.accepted = true;
                    info.clone_urls = urls;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Whether this relay keeps the repository an announcement is about: it lists this
    /// relay in `relays` (GRASP-01), or the archive allow-list covers it (GRASP-05).
    fn keeps(&self, ann: &nip34::Announcement) -> bool {
        ann.relays.iter().any(|r| self.public_urls.contains(r)) || self.archive.covers(&ann.repo)
    }

    fn clone_urls(&self, raw: &[String]) -> Vec<CloneUrl> {
        raw.iter()
            .filter_map(|u| self.url_policy.check_clone_url(u).ok())
            .collect()
    }

    /// The same host keeping, by GRASP-05 archive, the repositories `archive` covers.
    pub fn with_archive(mut self, archive: ArchivePolicy) -> Self {
        self.archive = archive;
        self
    }

    /// The same host with other purgatory rules (the window a held event waits).
    pub fn with_purgatory(self, config: PurgatoryConfig) -> Self {
        self.state().purgatory = InMemoryPurgatory::new(config);
        self
    }

    /// True once `repo`'s announcement is accepted here (its git data is served).
    pub fn repo_accepted(&self, repo: &RepoRef) -> bool {
        self.state().repos.get(repo).is_some_and(|r| r.accepted)
    }

    /// True while `id` is held in purgatory.
    pub fn is_held(&self, id: &EventId) -> bool {
        self.state().held.contains_key(id)
    }

    /// Held events (for `/status` and persistence).
    pub fn held_events(&self) -> Vec<HeldEvent> {
        self.state().held.values().cloned().collect()
    }

    /// What each held event waits for: its repo, the git data it needs and where it is
    /// hunted (for the status page).
    pub fn waiting(&self) -> Vec<WaitingEvent> {
        self.state().purgatory.waiting()
    }

    /// Held announcements (the `PurgatoryView` port).
    pub fn held_announcements(&self) -> Vec<Event> {
        self.state()
            .held
            .values()
            .filter(|h| h.event.kind == nip34::KIND_REPO_ANNOUNCEMENT)
            .map(|h| h.event.clone())
            .collect()
    }

    /// Ids and timestamps of held and refused events matching `filter` (added to the
    /// negentropy have-set).
    pub fn held_and_rejected_items(&self, filter: &Filter) -> Vec<(EventId, Timestamp)> {
        let st = self.state();
        st.held
            .values()
            .map(|h| &h.event)
            .chain(st.rejected.values())
            .filter(|e| grasp_sync::matching::matches(filter, e))
            .map(|e| (e.id, e.created_at))
            .collect()
    }

    /// Whether the id is held or was refused for good.
    pub fn held_or_rejected(&self, id: &EventId) -> bool {
        let st = self.state();
        st.held.contains_key(id) || st.rejected.contains_key(id) || st.purgatory.is_expired(id)
    }

    async fn stored(&self, id: &EventId) -> bool {
        matches!(self.db.check_id(id).await, Ok(DatabaseEventStatus::Saved))
    }

    async fn serves(&self, id: &EventId) -> bool {
        self.stored(id).await
    }

    async fn present(&self, repo: &RepoRef, oids: BTreeSet<Oid>) -> BTreeSet<Oid> {
        let locator = self.locator.clone();
        let repo = repo.clone();
        tokio::task::spawn_blocking(move || git_local::present(&locator, &repo, &oids))
            .await
            .unwrap_or_default()
    }

    /// The objects a state's refs name that `repo`'s bare repository lacks.
    async fn missing(&self, repo: &RepoRef, refs: &[(String, Oid)]) -> BTreeSet<Oid> {
        let oids: BTreeSet<Oid> = refs.iter().map(|(_, oid)| *oid).collect();
        let present = self.present(repo, oids.clone()).await;
        oids.difference(&present).copied().collect()
    }

    async fn has_any_data(&self, repo: &RepoRef) -> bool {
        let locator = self.locator.clone();
        let repo = repo.clone();
        tokio::task::spawn_blocking(move || git_local::has_any_data(&locator, &repo))
            .await
            .unwrap_or(false)
    }

    async fn ensure_bare(&self, repo: &RepoRef) {
        let locator = self.locator.clone();
        let r = repo.clone();
        match tokio::task::spawn_blocking(move || git_local::ensure_bare(&locator, &r)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(%repo, error = %e, "cannot create bare repository"),
            Err(e) => tracing::warn!(%repo, error = %e, "bare repository task failed"),
        }
    }

    /// The GRASP acceptance rules. Pure apart from reading the database and the bare
    /// repos; changes nothing.
    pub async fn decide(&self, event: &Event, from_user: bool) -> Verdict {
        if self.stored(&event.id).await {
            return Verdict::Duplicate;
        }
        {
            let st = self.state();
            if st.held.contains_key(&event.id) {
                return Verdict::Duplicate;
            }
            if st.purgatory.is_expired(&event.id) {
                return reject(
                    "restricted: its git data did not arrive in time (expired from purgatory)",
                    false,
                );
            }
            if st.rejected.contains_key(&event.id) {
                return reject("blocked: refused before", false);
            }
        }
        let origin = if from_user {
            Origin::User
        } else {
            Origin::Sync
        };
        let received_at = now();
        let waiting = |repo: RepoRef, kind: WaitKind, want: Want, clone_urls: Vec<CloneUrl>| {
            Verdict::Hold(WaitingEvent {
                id: event.id,
                repo,
                kind,
                want,
                clone_urls,
                origin,
                received_at,
            })
        };
        match Nip34Kind::of(event.kind) {
            Nip34Kind::Announcement => {
                let ann = match parse_announcement(event) {
                    Ok(a) => a,
                    Err(e) => return reject(format!("invalid: {e}"), true),
                };
                if !self.keeps(&ann) {
                    return reject(
                        format!(
                            "blocked: this announcement does not list this relay ({}) in `relays`, and it archives no such repository",
                            self.public_urls
                                .first()
                                .map(RelayUrl::as_str)
                                .unwrap_or("?")
                        ),
                        true,
                    );
                }
                let urls = self.clone_urls(&ann.clone_urls);
                if ann.clone_urls.is_empty()
                    || self.repo_accepted(&ann.repo)
                    || self.has_any_data(&ann.repo).await
                {
                    return Verdict::Accept;
                }
                if urls.is_empty() {
                    // Holding it would wait 30 minutes for data that can never come.
                    let why = ann
                        .clone_urls
                        .iter()
                        .find_map(|u| self.url_policy.check_clone_url(u).err())
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    return reject(
                        format!("blocked: none of its clone URLs may be fetched from here ({why})"),
                        false,
                    );
                }
                waiting(ann.repo, WaitKind::Announcement, Want::AnyData, urls)
            }
            Nip34Kind::State => {
                let Some(d) = event.tags.identifier() else {
                    return reject("invalid: state event without `d` tag", true);
                };
                let Ok(repo) = RepoRef::new(&event.pubkey, d) else {
                    return reject("invalid: bad repository identifier", true);
                };
                let urls = match self.state().repos.get(&repo) {
                    Some(info) => info.clone_urls.clone(),
                    None => {
                        return reject(
                            "blocked: no announcement of this repository is accepted here",
                            false,
                        )
                    }
                };
                let refs = match nip34::state_refs(event) {
                    Ok(refs) => refs,
                    Err(why) => return reject(format!("invalid: {why}"), true),
                };
                if let Some(why) = self.same_second_state(event).await {
                    return reject(why, false);
                }
                let missing = self.missing(&repo, &refs).await;
                if missing.is_empty() {
                    return Verdict::Accept;
                }
                waiting(repo, WaitKind::State, Want::Objects(missing), urls)
            }
            kind @ (Nip34Kind::PullRequest | Nip34Kind::PullRequestUpdate) => {
                let repos = nip34::tagged_repos(event);
                let accepted: Vec<RepoRef> = repos
                    .iter()
                    .filter(|r| self.repo_accepted(r))
                    .cloned()
                    .collect();
                let Some(repo) = accepted.first().cloned() else {
                    return reject(
                        "blocked: this PR does not tag a repository accepted here",
                        false,
                    );
                };
                let Some(tip) = nip34::pull_request_tip(event) else {
                    return Verdict::Accept;
                };
                let want: BTreeSet<Oid> = [tip].into_iter().collect();
                if !self.present(&repo, want.clone()).await.is_empty() {
                    return Verdict::Accept;
                }
                let mut urls = self.clone_urls(&nip34::clone_tags(event));
                if let Some(info) = self.state().repos.get(&repo) {
                    urls.extend(info.clone_urls.iter().cloned());
                }
                let kind = if kind == Nip34Kind::PullRequest {
                    WaitKind::PullRequest
                } else {
                    WaitKind::PullRequestUpdate
                };
                waiting(repo, kind, Want::Objects(want), urls)
            }
            _ => {
                let refs = nip34::references(event);
                if refs.repos.iter().any(|r| self.repo_accepted(r)) {
                    return Verdict::Accept;
                }
                for id in &refs.events {
                    if self.serves(id).await {
                        return Verdict::Accept;
                    }
                }
                reject(
                    "blocked: this event does not tag a repository or thread hosted here",
                    false,
                )
            }
        }
    }

    /// A stored state of the same repository with the same `created_at` (and another
    /// id): NIP-01 would keep the lower id, which makes a same-second update a coin
    /// toss; refuse it with a reason instead of the store's bare error.
    async fn same_second_state(&self, event: &Event) -> Option<String> {
        let d = event.tags.identifier()?;
        let filter = Filter::new()
            .kind(nip34::KIND_REPO_STATE)
            .author(event.pubkey)
            .identifier(d)
            .since(event.created_at)
            .until(event.created_at);
        let stored = self.db.query(filter).await.ok()?;
        stored.into_iter().find(|s| s.id != event.id).map(|_| {
            "invalid: a state of this repository with the same created_at is already stored; publish the update with a later created_at".to_owned()
        })
    }

    /// Holds an event in purgatory (written through to the [`HeldStore`] before this
    /// returns) and starts the hunt for its data. `Ok(false)`: the purgatory refused it
    /// (full, or expired before); `Err`: it could not be written, so it is not held.
    async fn hold(&self, w: WaitingEvent, event: &Event, from_user: bool) -> Result<bool, String> {
        let held = HeldEvent {
            event: event.clone(),
            from_user,
            received_at_ms: w.received_at.0,
        };
        self.held_store.put(&held).await?;
        let admitted = {
            let mut st = self.state();
            match st.purgatory.admit(w.clone(), (), w.received_at) {
                Ok(a) => {
                    st.held.insert(event.id, held);
                    if w.kind == WaitKind::Announcement {
                        let info = st.repos.entry(w.repo.clone()).or_default();
                        if info.clone_urls.is_empty() {
                            info.clone_urls = w.clone_urls.clone();
                        }
                    }
                    self.metrics.set_purgatory_waiting(st.held.len());
                    Ok(a.hunt)
                }
                Err(e) => Err(e),
            }
        };
        let requests = match admitted {
            Ok(requests) => requests,
            Err(e) => {
                tracing::debug!(error = %e, "not admitted to purgatory");
                self.held_store.remove(&event.id).await;
                return Ok(false);
            }
        };
        self.hunt.add(requests);
        Ok(true)
    }

    fn remember_rejected(&self, event: &Event) {
        let mut st = self.state();
        if st.rejected.insert(event.id, event.clone()).is_none() {
            st.rejected_order.push_back(event.id);
        }
        while st.rejected_order.len() > REJECTED_CAPACITY {
            if let Some(old) = st.rejected_order.pop_front() {
                st.rejected.remove(&old);
            }
        }
    }

    /// Bookkeeping after an event is stored (whoever stored it).
    pub async fn on_stored(&self, event: &Event) {
        if event.kind == nip34::KIND_REPO_ANNOUNCEMENT {
            if let Ok(ann) = parse_announcement(event) {
                let urls = self.clone_urls(&ann.clone_urls);
                {
                    let mut st = self.state();
                    let info = st.repos.entry(ann.repo.clone()).or_default();
                    info.accepted = true;
                    if !urls.is_empty() {
                        info.clone_urls = urls;
                    }
                }
                self.ensure_bare(&ann.repo).await;
            }
        } else if event.kind == nip34::KIND_REPO_STATE {
            if let Some(repo) = nip34::state_repo(event) {
                {
                    let mut st = self.state();
                    if st
                        .stale_states
                        .get(&repo)
                        .is_some_and(|e| e.created_at <= event.created_at)
                    {
                        st.stale_states.remove(&repo);
                    }
                }
                let refs = nip34::state_refs(event).unwrap_or_default();
                let locator = self.locator.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    git_local::apply_state_refs(&locator, &repo, &refs)
                })
                .await;
            }
        } else if matches!(
            Nip34Kind::of(event.kind),
            Nip34Kind::PullRequest | Nip34Kind::PullRequestUpdate
        ) {
            let Some(tip) = nip34::pull_request_tip(event) else {
                return;
            };
            let repos: Vec<RepoRef> = nip34::tagged_repos(event)
                .into_iter()
                .filter(|r| self.repo_accepted(r))
                .collect();
            let (locator, id) = (self.locator.clone(), event.id);
            let _ = tokio::task::spawn_blocking(move || {
                for repo in &repos {
                    git_local::apply_pr_ref(&locator, repo, &id, tip);
                }
            })
            .await;
        }
    }

    /// Stores an event that did not come through the websocket: save, broadcast to live
    /// subscribers, bookkeeping.
    async fn store(&self, event: &Event) -> Result<bool, String> {
        let status = self.db.save_event(event).await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Ok(false);
        }
        if let Some(relay) = self.relay.get() {
            relay.notify_event(event.clone());
        }
        self.on_stored(event).await;
        Ok(true)
    }

    /// The user write path (websocket): `Ok(())` lets the relay store it; `Err(reason)`
    /// is sent back as `OK false`.
    pub async fn admit_user(&self, event: &Event) -> Result<(), String> {
        match self.decide(event, true).await {
            Verdict::Accept | Verdict::Duplicate if !self.is_held(&event.id) => Ok(()),
            Verdict::Accept | Verdict::Duplicate => {
                Err("restricted: held in purgatory until its git data arrives".into())
            }
            Verdict::Hold(w) => match self.hold(w, event, true).await {
                Ok(true) => Err("restricted: held in purgatory until its git data arrives".into()),
                Ok(false) => Err("restricted: its git data did not arrive in time".into()),
                Err(e) => {
                    tracing::warn!(id = %event.id, error = %e, "cannot hold an event");
                    Err("error: could not hold the event; try again".into())
                }
            },
            Verdict::Reject { reason, remember } => {
                if remember {
                    self.remember_rejected(event);
                }
                Err(reason)
            }
        }
    }

    /// The sync write path (the `Ingestion` port): same rules, typed outcome.
    pub async fn apply_sync(&self, event: &Event) -> Result<IngestOutcome, String> {
        Ok(match self.decide(event, false).await {
            Verdict::Accept => {
                if self.store(event).await? {
                    IngestOutcome::Accepted
                } else {
                    IngestOutcome::Duplicate
                }
            }
            Verdict::Duplicate => IngestOutcome::Duplicate,
            Verdict::Hold(w) => {
                if self.hold(w, event, false).await? {
                    IngestOutcome::Purgatory
                } else {
                    IngestOutcome::Rejected
                }
            }
            Verdict::Reject { reason, remember } => {
                tracing::debug!(id = %event.id, kind = event.kind.as_u16(), reason, "synced event refused");
                if remember {
                    self.remember_rejected(event);
                }
                IngestOutcome::Rejected
            }
        })
    }

    /// The git hunter found the data: store and serve the events, tell the sync engine.
    pub async fn release(&self, repo: &RepoRef, ids: &[EventId]) {
        let released: Vec<HeldEvent> = {
            let mut st = self.state();
            let held = st.purgatory.release(ids);
            let mut out: Vec<HeldEvent> = held.iter().filter_map(|id| st.held.remove(id)).collect();
            // A stale state whose data a recheck found.
            if st
                .stale_states
                .get(repo)
                .is_some_and(|e| ids.contains(&e.id))
            {
                if let Some(event) = st.stale_states.remove(repo) {
                    out.push(HeldEvent {
                        event,
                        from_user: false,
                        received_at_ms: now().0,
                    });
                }
            }
            self.metrics.set_purgatory_waiting(st.held.len());
            out
        };
        // Announcements first: what follows depends on them.
        let mut released = released;
        released.sort_by_key(|h| h.event.kind != nip34::KIND_REPO_ANNOUNCEMENT);
        for held in released {
            let event = held.event;
            match self.store(&event).await {
                Ok(stored) => {
                    self.held_store.remove(&event.id).await;
                    if stored {
                        tracing::info!(id = %event.id, kind = event.kind.as_u16(), %repo, "released from purgatory: git data arrived");
                        if let Some(sync) = self.sync.get() {
                            sync.accepted(event);
                        }
                    }
                }
                Err(e) => {
                    // Its file stays: the next start holds it again and hunts again.
                    tracing::warn!(id = %event.id, error = %e, "could not store a released event")
                }
            }
        }
    }

    /// What accepted repositories still lack: for each stale state, the objects it names
    /// that are not here, to hunt again on the repo's clone URLs.
    pub async fn rechecks(&self) -> Vec<HuntRequest> {
        let stale: Vec<(RepoRef, Event, Vec<CloneUrl>)> = {
            let st = self.state();
            st.stale_states
                .iter()
                .map(|(repo, event)| {
                    let urls = st.repos.get(repo).map(|i| i.clone_urls.clone());
                    (repo.clone(), event.clone(), urls.unwrap_or_default())
                })
                .collect()
        };
        let mut requests = Vec::new();
        for (repo, event, clone_urls) in stale {
            let refs = nip34::state_refs(&event).unwrap_or_default();
            let missing = self.missing(&repo, &refs).await;
            if missing.is_empty() {
                // Arrived meanwhile (another hunt, by hand): store it now.
                self.release(&repo, &[event.id]).await;
                continue;
            }
            tracing::info!(%repo, missing = missing.len(), "looking again for a state's git data");
            requests.push(HuntRequest {
                event_id: event.id,
                repo,
                kind: WaitKind::State,
                want: Want::Objects(missing),
                clone_urls,
                origin: Origin::Sync,
                expires_at: now() + RECHECK_WINDOW,
            });
        }
        requests
    }

    /// Expiry: the purgatory's own rules (30 min; announcements soft-expire for 24 h).
    pub async fn tick_purgatory(&self) {
        let dropped: Vec<EventId> = {
            let mut st = self.state();
            let expiry = st.purgatory.tick(now());
            let mut dropped = Vec::new();
            for (id, ()) in expiry.dropped {
                let Some(held) = st.held.remove(&id) else {
                    continue;
                };
                dropped.push(id);
                // An accepted repo's state keeps being looked for (rechecks).
                let repo = nip34::state_repo(&held.event)
                    .filter(|r| st.repos.get(r).is_some_and(|i| i.accepted));
                if let Some(repo) = repo {
                    let newer = st
                        .stale_states
                        .get(&repo)
                        .is_none_or(|e| e.created_at <= held.event.created_at);
                    if newer {
                        st.stale_states.insert(repo, held.event);
                    }
                }
            }
            self.metrics.set_purgatory_waiting(st.held.len());
            dropped
        };
        for id in dropped {
            tracing::info!(%id, "dropped from purgatory: git data never arrived");
            self.held_store.remove(&id).await;
        }
    }

    /// Re-admits the held events the [`HeldStore`] kept (after a stop or a crash):
    /// each is decided again — its data may have arrived meanwhile — and held again
    /// (its hunt and its deadline start over), stored, or forgotten.
    pub async fn restore_held(&self) {
        let mut held = self.held_store.load();
        // Announcements first: a held state event is decided against its repo.
        held.sort_by_key(|h| h.event.kind != nip34::KIND_REPO_ANNOUNCEMENT);
        for h in held {
            match self.decide(&h.event, h.from_user).await {
                Verdict::Hold(w) => {
                    if let Err(e) = self.hold(w, &h.event, h.from_user).await {
                        tracing::warn!(id = %h.event.id, error = %e, "cannot hold a restored event");
                    }
                    continue;
                }
                Verdict::Accept => {
                    if let Err(e) = self.store(&h.event).await {
                        // Keep the file: the next start tries again.
                        tracing::warn!(id = %h.event.id, error = %e, "cannot store a restored event");
                        continue;
                    }
                }
                Verdict::Duplicate | Verdict::Reject { .. } => {}
            }
            self.held_store.remove(&h.event.id).await;
        }
    }
}
