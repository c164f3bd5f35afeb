//! `GixFetcher`: the [`GitFetcher`] port implemented with gix (feature `git`).
//!
//! What it does for one job: open (or create) the repo's local bare repository, skip the
//! objects already present, check the URL with the policy (resolving the host and
//! checking every address), fetch every missing object by id in one request with refspecs
//! `<oid>:refs/grasp-sync/<oid>` (protocol v2 serves commits no ref points to), and if
//! that request fails — typically "not our ref" because the server lacks one of them —
//! fetch the objects one by one so one missing object never hides the others. Finally it
//! asks the object database which wanted objects are present, which is the only answer
//! that adds up correctly across several servers.
//!
//! Timeouts: for `git://` the fetcher opens the TCP connection itself, to an address the
//! policy checked (no second DNS lookup that a rebinding name could answer differently),
//! with a connect timeout and read/write timeouts on the socket, so a silent server
//! cannot hold a job forever. Every fetch also runs under a watchdog that trips gix's
//! interrupt flag at the overall deadline.
//!
//! Schemes: `https://`, `http://`, `git://`, and `file://` / local paths when the policy
//! allows them. `http(s)://` goes through gix's reqwest transport, configured per
//! connection (see [`GixFetcher`]'s `http_options`):
//! - the host name is **pinned** to the addresses the policy checked
//!   (`resolve_to_addrs`), and every other name fails to resolve, so neither DNS
//!   rebinding nor a proxy can send the request somewhere the policy did not see;
//! - redirects are **not followed** (a redirect could point at an address the policy
//!   never checked) and environment proxies (`HTTP_PROXY`, ...) are ignored;
//! - credentials are never asked for (no credential helpers, no prompts);
//! - connect timeout [`GixFetcherConfig::connect_timeout`]; [`GixFetcherConfig::io_timeout`]
//!   bounds the wait for response headers and every read of a response body; the
//!   watchdog bounds the whole call;
//! - TLS is rustls with the *ring* provider, from the process-level default that
//!   [`crate::install_default_crypto_provider`] installs (the fetcher calls it itself
//!   before the first https connection); certificates are checked against the
//!   platform's trust store (`rustls-platform-verifier`; on Linux the system CA bundle).

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use gix::protocol::transport::client::blocking_io::{http, Transport};
use gix::remote::Direction;

use crate::git::fetcher::{FetchError, FetchReport, FetchWant, GitFetcher, RemoteRef};
use crate::git::Oid;
use crate::model::RepoRef;
use crate::url_policy::{CloneUrl, UrlPolicy};

/// Serialises creation of bare repositories within this process.
static CREATE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One lock per local repository path: gix fetches writing into one repository at once
/// trip over each other ("Failed to prepare fetch negotiation"), so the *local* phase of
/// a fetch (negotiation, pack download, ref update) is serialised per repository. The
/// remote handshake runs outside the lock, so a silent server never holds it.
fn repo_lock(path: &Path) -> Arc<std::sync::Mutex<()>> {
    static LOCKS: std::sync::Mutex<Vec<(PathBuf, std::sync::Weak<std::sync::Mutex<()>>)>> =
        std::sync::Mutex::new(Vec::new());
    let mut locks = LOCKS.lock().unwrap_or_else(|p| p.into_inner());
    locks.retain(|(_, w)| w.strong_count() > 0);
    if let Some(l) = locks
        .iter()
        .find(|(p, _)| p == path)
        .and_then(|(_, w)| w.upgrade())
    {
        return l;
    }
    let l = Arc::new(std::sync::Mutex::new(()));
    locks.push((path.to_owned(), Arc::downgrade(&l)));
    l
}

/// Where the host keeps a repo's bare repository.
///
/// The default layout is GRASP's `<root>/<npub>/<identifier>.git`. Identifiers come from
/// strangers' events, so the default refuses any that could escape the root (`/`, `\`,
/// a leading `.`, NUL).
#[derive(Clone)]
pub struct BareRepoLocator(Arc<LocateFn>);

/// The mapping a [`BareRepoLocator`] wraps.
type LocateFn = dyn Fn(&RepoRef) -> Option<PathBuf> + Send + Sync;

impl BareRepoLocator {
    /// GRASP layout under `root`.
    pub fn grasp_layout(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Self(Arc::new(move |repo: &RepoRef| {
            let id = repo.identifier();
            if id.starts_with('.') || id.contains(['/', '\\', '\0']) {
                return None;
            }
            let npub = nostr::ToBech32::to_bech32(&repo.public_key().ok()?).ok()?;
            Some(root.join(npub).join(format!("{id}.git")))
        }))
    }

    /// Any mapping the host uses; `None` means "this repo has no local path".
    pub fn custom<F>(f: F) -> Self
    where
        F: Fn(&RepoRef) -> Option<PathBuf> + Send + Sync + 'static,
    {
        Self(Arc::new(f))
    }

    /// The path for `repo`.
    pub fn locate(&self, repo: &RepoRef) -> Option<PathBuf> {
        (self.0)(repo)
    }

    /// Opens `repo`'s bare repository, creating it if it does not exist.
    ///
    /// Creation is atomic: the repository is initialised in a staging directory beside
    /// it (`.<name>.creating`, a name no repository can have) and renamed into place, so
    /// a process killed mid-creation leaves no half-made repository that every later
    /// fetch would trip over. A directory at the path that does not open as a repository
    /// (left by an older version, or by hand) is renamed aside to
    /// `<name>.unreadable-<unix seconds>`, never deleted.
    pub fn open_or_create(&self, repo: &RepoRef) -> Result<PathBuf, FetchError> {
        let path = self
            .locate(repo)
            .ok_or_else(|| FetchError::Local(format!("no local path for {repo}")))?;
        open_or_create_bare(&path)?;
        Ok(path)
    }
}

/// See [`BareRepoLocator::open_or_create`].
fn open_or_create_bare(path: &Path) -> Result<gix::Repository, FetchError> {
    let local = |e: &dyn std::fmt::Display| FetchError::Local(format!("{}: {e}", path.display()));
    if let Ok(r) = gix::open(path) {
        return Ok(r);
    }
    // Two jobs for one repo (on two hosts) may race to create it: serialise creation.
    let _guard = CREATE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Ok(r) = gix::open(path) {
        return Ok(r);
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(local(&"not a repository path"));
    };
    let name = name.to_string_lossy();
    std::fs::create_dir_all(parent).map_err(|e| local(&e))?;
    if path.exists() {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = parent.join(format!("{name}.unreadable-{secs}"));
        std::fs::rename(path, &aside).map_err(|e| local(&e))?;
        tracing::warn!(
            path = %path.display(),
            moved_to = %aside.display(),
            "a directory that is not a git repository was in the way; moved aside"
        );
    }
    let staging = parent.join(format!(".{name}.creating"));
    if staging.exists() {
        // Left by a process killed mid-creation.
        std::fs::remove_dir_all(&staging).map_err(|e| local(&e))?;
    }
    std::fs::create_dir_all(&staging).map_err(|e| local(&e))?;
    gix::init_bare(&staging).map_err(|e| local(&e))?;
    std::fs::rename(&staging, path).map_err(|e| local(&e))?;
    gix::open(path).map_err(|e| local(&e))
}

impl std::fmt::Debug for BareRepoLocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BareRepoLocator(..)")
    }
}

/// Settings for [`GixFetcher`].
#[derive(Debug, Clone)]
pub struct GixFetcherConfig {
    /// Which URLs may be contacted (resolving check before each connection).
    pub policy: UrlPolicy,
    /// Where bare repositories live.
    pub locator: BareRepoLocator,
    /// TCP connect timeout (per address tried).
    pub connect_timeout: Duration,
    /// Socket read/write timeout: the longest a server may stay silent.
    pub io_timeout: Duration,
    /// Deadline for one whole `fetch` call, including per-object fallbacks.
    pub op_timeout: Duration,
    /// At most this many objects are fetched one by one after a batch fetch failed.
    pub max_individual_fetches: usize,
    /// Create the bare repository when it does not exist.
    pub create_missing_repos: bool,
}

impl GixFetcherConfig {
    /// Production defaults (strict policy, 10 s connect, 30 s silence, 2 min per job).
    pub fn new(locator: BareRepoLocator) -> Self {
        Self {
            policy: UrlPolicy::default(),
            locator,
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            op_timeout: Duration::from_secs(120),
            max_individual_fetches: 64,
            create_missing_repos: true,
        }
    }

    /// Replaces the URL policy.
    pub fn with_policy(mut self, policy: UrlPolicy) -> Self {
        self.policy = policy;
        self
    }
}

/// The gix implementation of [`GitFetcher`]. Stateless apart from its configuration, so
/// one instance can serve many threads.
#[derive(Debug, Clone)]
pub struct GixFetcher {
    config: GixFetcherConfig,
}

/// A prepared remote endpoint: the policy has checked it and resolved its addresses.
struct Endpoint<'a> {
    url: &'a CloneUrl,
    addrs: Vec<SocketAddr>,
}

impl GixFetcher {
    /// A fetcher with `config`.
    pub fn new(config: GixFetcherConfig) -> Self {
        Self { config }
    }

    /// The configuration in use.
    pub fn config(&self) -> &GixFetcherConfig {
        &self.config
    }

    fn open_repo(&self, repo: &RepoRef) -> Result<(PathBuf, gix::Repository), FetchError> {
        let path = self
            .config
            .locator
            .locate(repo)
            .ok_or_else(|| FetchError::Local(format!("no local path for {repo}")))?;
        if let Ok(r) = gix::open(&path) {
            return Ok((path, r));
        }
        if !self.config.create_missing_repos {
            return Err(FetchError::Local(format!(
                "{} does not exist",
                path.display()
            )));
        }
        let r = open_or_create_bare(&path)?;
        Ok((path, r))
    }

    fn endpoint<'a>(&self, url: &'a CloneUrl) -> Result<Endpoint<'a>, FetchError> {
        match url.scheme() {
            "git" | "file" | "http" | "https" => {}
            other => {
                return Err(FetchError::Unsupported(format!(
                    "{other}:// is not supported"
                )))
            }
        }
        let addrs = self.config.policy.resolve_clone_url(url)?;
        Ok(Endpoint { url, addrs })
    }

    /// One connection, one request: fetch `specs` into `repo`.
    fn fetch_once(
        &self,
        repo: &gix::Repository,
        ep: &Endpoint<'_>,
        specs: &[String],
        deadline: Instant,
    ) -> Result<(u64, Vec<RemoteRef>), FetchError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(FetchError::Timeout(format!(
                "deadline reached before fetching from {}",
                ep.url
            )));
        }
        let remote = repo
            .remote_at(remote_url(ep.url).as_str())
            .and_then(|r| r.with_refspecs(specs.iter().map(String::as_str), Direction::Fetch))
            .map_err(|e| FetchError::Local(format!("cannot set up remote {}: {e}", ep.url)))?
            .with_fetch_tags(gix::remote::fetch::Tags::None);
        let interrupt = Arc::new(AtomicBool::new(false));
        let _watchdog = Watchdog::start(remaining, interrupt.clone());
        let result = if ep.url.scheme() == "git" {
            let transport = self.git_transport(ep)?;
            receive(
                remote
                    .to_connection_with_transport(transport)
                    .with_credentials(no_credentials),
                &interrupt,
                repo,
            )
        } else {
            receive(self.connect(&remote, ep)?, &interrupt, repo)
        };
        result.map_err(|e| classify(ep.url, &e, &interrupt))
    }

    /// Connects for `file://` and `http(s)://`: gix's own transport, with our HTTP options
    /// (pinned addresses, timeouts, no redirects, no proxy) and no credentials.
    fn connect<'r, 'repo>(
        &self,
        remote: &'r gix::Remote<'repo>,
        ep: &Endpoint<'_>,
    ) -> Result<gix::remote::Connection<'r, 'static, 'repo, Box<dyn Transport + Send>>, FetchError>
    {
        let con = remote
            .connect(Direction::Fetch)
            .map_err(|e| FetchError::Unreachable(format!("{}: {e}", ep.url)))?;
        let con = if matches!(ep.url.scheme(), "http" | "https") {
            con.with_transport_options(Box::new(self.http_options(ep)))
        } else {
            con
        };
        Ok(con.with_credentials(no_credentials))
    }

    /// gix's HTTP options for one connection to `ep`. gix's reqwest backend reads only
    /// `follow_redirects`, `extra_headers` and the backend's `configure_client`; the
    /// timeouts and the address pinning therefore go into the reqwest client itself.
    fn http_options(&self, ep: &Endpoint<'_>) -> http::Options {
        let connect_timeout = self.config.connect_timeout;
        let io_timeout = self.config.io_timeout;
        let host = ep
            .url
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        // IP literals are never resolved; names are pinned to what the policy checked.
        let pin = host
            .parse::<std::net::IpAddr>()
            .is_err()
            .then(|| ep.addrs.clone());
        let backend = http::reqwest::Options {
            configure_client: Some(Box::new(move |builder| {
                // reqwest (feature `rustls-no-provider`) panics without a process default.
                crate::install_default_crypto_provider();
                let mut builder = builder
                    .connect_timeout(connect_timeout)
                    .timeout(io_timeout)
                    .no_proxy()
                    .dns_resolver(Arc::new(PinnedOnly));
                if let Some(addrs) = &pin {
                    builder = builder.resolve_to_addrs(&host, addrs);
                }
                Ok(builder)
            })),
            configure_request: None,
        };
        http::Options {
            follow_redirects: http::options::FollowRedirects::None,
            connect_timeout: Some(connect_timeout),
            backend: Some(Arc::new(std::sync::Mutex::new(backend))),
            ..Default::default()
        }
    }

    /// Opens the TCP connection for `git://` ourselves: to a policy-checked address, with
    /// timeouts gix's own connector does not offer for reads and writes.
    fn git_transport(
        &self,
        ep: &Endpoint<'_>,
    ) -> Result<
        gix::protocol::transport::client::git::blocking_io::Connection<TcpStream, TcpStream>,
        FetchError,
    > {
        let mut last = None;
        let mut stream = None;
        for addr in &ep.addrs {
            match TcpStream::connect_timeout(addr, self.config.connect_timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(FetchError::Timeout(format!(
                    "connecting to {}: {e}",
                    ep.url
                )))
            }
            (None, Some(e)) => return Err(FetchError::Unreachable(format!("{}: {e}", ep.url))),
            (None, None) => return Err(FetchError::Unreachable(format!("{}: no address", ep.url))),
        };
        let io = |e: std::io::Error| FetchError::Unreachable(format!("{}: {e}", ep.url));
        stream
            .set_read_timeout(Some(self.config.io_timeout))
            .map_err(io)?;
        stream
            .set_write_timeout(Some(self.config.io_timeout))
            .map_err(io)?;
        let write = stream.try_clone().map_err(io)?;
        let port = (ep.url.port() != 9418).then_some(ep.url.port());
        Ok(
            gix::protocol::transport::client::git::blocking_io::Connection::new(
                stream,
                write,
                gix::protocol::transport::Protocol::V2,
                ep.url.path().to_owned(),
                Some((ep.url.host().to_owned(), port)),
                gix::protocol::transport::client::git::ConnectMode::Daemon,
                false,
            ),
        )
    }

    fn present(path: &Path, want: &BTreeSet<Oid>) -> Result<BTreeSet<Oid>, FetchError> {
        // Re-open so the object database sees packs written by the fetch.
        let repo =
            gix::open(path).map_err(|e| FetchError::Local(format!("{}: {e}", path.display())))?;
        Ok(want
            .iter()
            .copied()
            .filter(|o| repo.has_object(to_gix(o)))
            .collect())
    }
}

impl GitFetcher for GixFetcher {
    fn list_refs(&self, url: &CloneUrl) -> Result<Vec<RemoteRef>, FetchError> {
        let ep = self.endpoint(url)?;
        // gix hangs a remote on a repository (for its configuration) even when only
        // listing; a scratch bare repository serves all listings.
        let dir = std::env::temp_dir().join("grasp-sync-scratch.git");
        let repo = gix::open(&dir)
            .or_else(|_| gix::init_bare(&dir))
            .or_else(|_| gix::open(&dir))
            .map_err(|e| FetchError::Local(format!("{}: {e}", dir.display())))?;
        let deadline = Instant::now() + self.config.op_timeout;
        let remote = repo
            .remote_at(remote_url(url).as_str())
            .and_then(|r| {
                r.with_refspecs(
                    ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                    Direction::Fetch,
                )
            })
            .map_err(|e| FetchError::Local(format!("cannot set up remote {url}: {e}")))?
            .with_fetch_tags(gix::remote::fetch::Tags::None);
        let interrupt = Arc::new(AtomicBool::new(false));
        let _watchdog = Watchdog::start(
            deadline.saturating_duration_since(Instant::now()),
            interrupt.clone(),
        );
        let options = gix::remote::ref_map::Options {
            prefix_from_spec_as_filter_on_remote: false,
            ..Default::default()
        };
        let map = if url.scheme() == "git" {
            let t = self.git_transport(&ep)?;
            remote
                .to_connection_with_transport(t)
                .with_credentials(no_credentials)
                .ref_map(gix::progress::Discard, options)
        } else {
            self.connect(&remote, &ep)?
                .ref_map(gix::progress::Discard, options)
        };
        let (map, _handshake) = map.map_err(|e| classify(url, &e, &interrupt))?;
        Ok(remote_refs(&map.remote_refs, |_| true))
    }

    fn fetch(
        &self,
        repo: &RepoRef,
        url: &CloneUrl,
        want: &FetchWant,
    ) -> Result<FetchReport, FetchError> {
        let deadline = Instant::now() + self.config.op_timeout;
        // Policy first: a refused URL must not even create a local directory.
        let ep = self.endpoint(url)?;
        let (path, local) = self.open_repo(repo)?;
        let missing: Vec<Oid> = want
            .oids
            .iter()
            .copied()
            .filter(|o| !local.has_object(to_gix(o)))
            .collect();
        let mut report = FetchReport::default();
        if missing.is_empty() && !want.any_data {
            report.present = want.oids.clone();
            return Ok(report);
        }

        let mut batch_error = None;
        if want.any_data {
            let specs = vec![
                "+refs/heads/*:refs/grasp-sync/heads/*".to_owned(),
                "+refs/tags/*:refs/grasp-sync/tags/*".to_owned(),
            ];
            let (bytes, tips) = self.fetch_once(&local, &ep, &specs, deadline)?;
            report.bytes += bytes;
            report.tips = tips;
        }
        if !missing.is_empty() {
            let specs: Vec<String> = missing.iter().map(oid_spec).collect();
            match self.fetch_once(&local, &ep, &specs, deadline) {
                Ok((bytes, _)) => report.bytes += bytes,
                // The server cannot be talked to at all: one-by-one would fail the same way.
                Err(
                    e
                    @ (FetchError::Unreachable(_) | FetchError::Timeout(_) | FetchError::Local(_)),
                ) => return Err(e),
                Err(e) => batch_error = Some(e),
            }
        }
        if batch_error.is_some() && missing.len() > 1 {
            // Usually "not our ref": the server lacks one of them. Fetch one by one.
            for oid in missing.iter().take(self.config.max_individual_fetches) {
                if local.has_object(to_gix(oid)) {
                    continue;
                }
                match self.fetch_once(&local, &ep, &[oid_spec(oid)], deadline) {
                    Ok((bytes, _)) => report.bytes += bytes,
                    Err(FetchError::Protocol(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        report.present = Self::present(&path, &want.oids)?;
        if want.any_data {
            let tips: BTreeSet<Oid> = report.tips.iter().map(|t| t.target).collect();
            report.any_data = !tips.is_empty() && Self::present(&path, &tips)?.len() == tips.len();
        }
        Ok(report)
    }
}

/// The credentials callback for every connection: never any credentials (no helpers, no
/// prompts). A server that wants authentication fails the job.
fn no_credentials(
    _action: gix::credentials::helper::Action,
) -> gix::Result<Option<gix::credentials::protocol::Outcome>> {
    Ok(None)
}

/// reqwest's resolver for names other than the pinned one: refuses them all, so nothing
/// (a proxy, a redirect) can make the client look up and reach an unchecked name.
struct PinnedOnly;

impl reqwest::dns::Resolve for PinnedOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let msg = format!("{}: name not checked by the URL policy", name.as_str());
        Box::pin(std::future::ready(Err(msg.into())))
    }
}

fn oid_spec(oid: &Oid) -> String {
    format!("{oid}:refs/grasp-sync/{oid}")
}

/// gix parses `file:///x` and plain paths; hand it the path form for local URLs.
fn remote_url(url: &CloneUrl) -> String {
    if url.scheme() == "file" {
        url.path().to_owned()
    } else {
        url.as_str().to_owned()
    }
}

fn to_gix(oid: &Oid) -> gix::ObjectId {
    gix::ObjectId::from_bytes_or_panic(oid.as_bytes())
}

fn from_gix(oid: &gix::oid) -> Option<Oid> {
    let bytes: [u8; 20] = oid.as_bytes().try_into().ok()?;
    Some(Oid::from_bytes(bytes))
}

fn remote_refs(
    refs: &[gix::protocol::handshake::Ref],
    keep: impl Fn(&str) -> bool,
) -> Vec<RemoteRef> {
    refs.iter()
        .filter_map(|r| {
            let (name, target, peeled) = r.unpack();
            let name = std::str::from_utf8(name).ok()?;
            let target = from_gix(peeled.or(target)?)?;
            keep(name).then(|| RemoteRef {
                name: name.to_owned(),
                target,
            })
        })
        .collect()
}

fn receive<T: Transport>(
    con: gix::remote::Connection<'_, '_, '_, T>,
    interrupt: &AtomicBool,
    local: &gix::Repository,
) -> Result<(u64, Vec<RemoteRef>), gix::Error> {
    let prepare = con.prepare_fetch(gix::progress::Discard, Default::default())?;
    let lock = repo_lock(local.path());
    let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
    // gix negotiates with object-store refreshes turned off, so packs another job wrote
    // since this handle last looked would be invisible while their refs are not ("could
    // not peel reference"). A lookup that misses makes the shared store rescan the pack
    // directory first.
    let _ = local.has_object(gix::ObjectId::from_bytes_or_panic(&[0xff; 20]));
    let outcome = prepare.receive(gix::progress::Discard, interrupt)?;
    let bytes = match &outcome.status {
        gix::remote::fetch::Status::Change {
            write_pack_bundle, ..
        } => write_pack_bundle
            .data_path
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len()),
        _ => 0,
    };
    let tips = remote_refs(&outcome.ref_map.remote_refs, |n| {
        n.starts_with("refs/heads/") || n.starts_with("refs/tags/")
    });
    Ok((bytes, tips))
}

fn classify(url: &CloneUrl, e: &gix::Error, interrupt: &AtomicBool) -> FetchError {
    if interrupt.load(Ordering::Relaxed) {
        return FetchError::Timeout(format!("{url}: overall deadline reached"));
    }
    let mut kind = None;
    for err in e.iter_errors() {
        visit_sources(err, &mut |x| {
            kind = kind.or_else(|| failure_kind(x));
        });
    }
    let text = e
        .iter_errors()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    match kind {
        Some(Failure::Timeout) => FetchError::Timeout(format!("{url}: {text}")),
        Some(Failure::Connect) => FetchError::Unreachable(format!("{url}: {text}")),
        None => FetchError::Protocol(format!("{url}: {text}")),
    }
}

#[derive(Clone, Copy)]
enum Failure {
    Timeout,
    Connect,
}

/// What one error in a chain says about the failure, if anything: socket timeouts
/// (`git://`), reqwest's timeout and connect errors (`http(s)://`).
fn failure_kind(err: &(dyn std::error::Error + 'static)) -> Option<Failure> {
    if let Some(r) = err.downcast_ref::<reqwest::Error>() {
        if r.is_timeout() {
            return Some(Failure::Timeout);
        }
        if r.is_connect() {
            return Some(Failure::Connect);
        }
    }
    let io = err.downcast_ref::<std::io::Error>()?;
    use std::io::ErrorKind as K;
    match io.kind() {
        K::TimedOut | K::WouldBlock => Some(Failure::Timeout),
        K::ConnectionRefused | K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
            Some(Failure::Connect)
        }
        _ => None,
    }
}

/// Calls `f` on `err` and everything beneath it, including the error *inside* an
/// `io::Error` (whose `source()` skips it) — gix's HTTP transport wraps reqwest's
/// errors that way.
fn visit_sources(
    err: &(dyn std::error::Error + 'static),
    f: &mut dyn FnMut(&(dyn std::error::Error + 'static)),
) {
    let mut cur = Some(err);
    let mut depth = 0;
    while let Some(e) = cur {
        f(e);
        depth += 1;
        if depth > 32 {
            return;
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            visit_sources(inner, f);
        }
        cur = e.source();
    }
}

/// Trips gix's interrupt flag when the deadline passes; dropping it cancels the timer.
struct Watchdog {
    _cancel: mpsc::Sender<()>,
}

impl Watchdog {
    fn start(after: Duration, flag: Arc<AtomicBool>) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("grasp-sync-git-watchdog".into())
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(after) {
                    flag.store(true, Ordering::Relaxed);
                }
            });
        // If no thread can be spawned the socket timeouts still bound the operation.
        drop(spawned);
        Self { _cancel: tx }
    }
}
