//! The reference relay: a real Nostr relay (nostr-relay-builder, nostr-lmdb) with GRASP
//! acceptance and grasp-sync's GRASP-02 proactive sync wired in. Read
//! `docs/embedding.md` for a walk through this wiring.
//!
//! - [`config`]: flags, environment variables, validation.
//! - [`host`]: the GRASP acceptance rules, purgatory, release — one path for user
//!   writes, synced writes and releases.
//! - [`ports`]: grasp-sync's ports on the host, the write policy, the accepted-event feed.
//! - [`http`]: one port for the websocket, NIP-11, `/metrics`, `/status`; the
//!   operator's page is [`status_page`]; the accepted repositories over git smart HTTP
//!   are [`git_http`].

pub mod config;
pub mod gate;
pub mod git_http;
mod git_local;
pub mod held_store;
pub mod host;
pub mod http;
pub mod ports;
pub mod status_page;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use config::{Cli, ConfigError, RelayConfig, Storage};
use grasp_sync::driver::{
    self, hunt_channel, spawn_hunt, DriverOptions, DriverPorts, HuntHandle, HuntOptions,
    SyncHandle, SyncMetrics,
};
use grasp_sync::git::{HuntConfig, HuntScheduler, PurgatoryConfig};
use grasp_sync::ports::{MemorySyncStateStore, SyncStateStore};
use grasp_sync::{GixFetcher, GixFetcherConfig, RelayUrl, RepoRef, SyncConfig, SyncPlusConfig};
use nostr::EventId;
use nostr_database::{MemoryDatabase, MemoryDatabaseOptions, NostrDatabase};
use nostr_relay_builder::builder::RateLimit;
use nostr_relay_builder::{LocalRelay, RelayBuilder};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::held_store::HeldStore;
use crate::host::Host;
use crate::http::HttpCtx;
use crate::ports::{FeedingDatabase, GraspWritePolicy, HostPorts, JsonStateStore};

/// Largest `limit` a REQ may ask (also in NIP-11).
pub const MAX_FILTER_LIMIT: usize = 5_000;
/// Longest subscription id (also in NIP-11).
pub const MAX_SUBID_LENGTH: usize = 64;

/// Why the relay could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Files or sockets.
    #[error("{0}")]
    Io(String),
    /// The event database.
    #[error("database: {0}")]
    Database(String),
    /// The sync driver.
    #[error("sync: {0}")]
    Sync(#[from] driver::DriverError),
}

/// Installs rustls' ring provider once per process. nostr-relay-pool's websockets use
/// rustls with ring; if another dependency brings aws-lc-rs (gix's https transport does)
/// rustls cannot choose and the first `wss://` connect panics. Harmless otherwise.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A running relay.
pub struct RunningRelay {
    host: Arc<Host>,
    sync: SyncHandle,
    local_addr: SocketAddr,
    config: RelayConfig,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    hunt: HuntHandle,
    http: Arc<HttpCtx>,
}

/// Starts the relay: storage, GRASP policy, sync engine, git hunter, HTTP/websocket.
pub async fn start(config: RelayConfig) -> Result<RunningRelay, RelayError> {
    install_crypto_provider();
    config.validate()?;
    let io = |what: &str, e: &dyn std::fmt::Display| RelayError::Io(format!("{what}: {e}"));
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        io(
            &format!("cannot create data dir {}", config.data_dir.display()),
            &e,
        )
    })?;
    let git_root = config.data_dir.join("git");
    std::fs::create_dir_all(&git_root).map_err(|e| io("cannot create git dir", &e))?;

    // Storage.
    let db: Arc<dyn NostrDatabase> = match config.storage {
        Storage::Lmdb => {
            let path = config.data_dir.join("events");
            Arc::new(nostr_lmdb::NostrLMDB::open(&path).map_err(|e| {
                RelayError::Database(format!("cannot open LMDB at {}: {e}", path.display()))
            })?)
        }
        Storage::InMemory => Arc::new(MemoryDatabase::with_opts(MemoryDatabaseOptions {
            events: true,
            max_events: None,
        })),
    };

    // The port: bound first, so port 0 gives the real URL.
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| io(&format!("cannot listen on {}", config.bind), &e))?;
    let local_addr = listener.local_addr().map_err(|e| io("local address", &e))?;
    let mut config = config;
    if config.public_urls.is_empty() {
        let url = RelayUrl::parse(&format!("ws://{local_addr}"))
            .map_err(|e| RelayError::Config(ConfigError(format!("public URL: {e}"))))?;
        config.public_urls.push(url);
    }

    // Metrics.
    let mut registry = Registry::default();
    let metrics = SyncMetrics::register(&mut registry, driver::metrics::DEFAULT_PREFIX);

    // The host: acceptance rules, purgatory (written through next to the events, so a
    // crash loses no held event), repos.
    let persistent = config.storage == Storage::Lmdb;
    let held_store = HeldStore::open(persistent.then(|| config.data_dir.join("purgatory")))
        .map_err(|e| io("cannot create the purgatory directory", &e))?;
    let (hunt_tx, hunt_rx) = hunt_channel();
    let host = Arc::new(
        Host::new(
            db.clone(),
            config.public_urls.clone(),
            git_root.clone(),
            config.url_policy(),
            metrics.clone(),
            held_store,
            hunt_tx,
        )
        .with_purgatory(PurgatoryConfig {
            ttl: config.purgatory_ttl,
            ..PurgatoryConfig::default()
        })
        .with_archive(config.archive.clone()),
    );
    let accepted_repos = host.load_repos().await.map_err(RelayError::Database)?;

    // The nostr relay, served through our own accept loop (see http.rs).
    let builder = RelayBuilder::default()
        .database(FeedingDatabase {
            inner: db.clone(),
            host: Arc::downgrade(&host),
        })
        .write_policy(GraspWritePolicy(Arc::downgrade(&host)))
        .rate_limit(RateLimit {
            // The gate enforces the real caps first (per IP, with reasons).
            max_reqs: config.caps.max_subscriptions,
            notes_per_minute: config.caps.events_per_ip_per_minute,
        })
        .max_filter_limit(MAX_FILTER_LIMIT)
        .max_subid_length(MAX_SUBID_LENGTH);
    let relay = LocalRelay::new(builder);
    let _ = host.relay.set(relay);

    // Held events from the last run (stopped or killed): held again, hunts resumed.
    host.restore_held().await;

    // Sync engine.
    let mut sync_config = SyncConfig::default();
    if config.fast_timers {
        sync_config = sync_config.with_fast_timers();
    }
    for url in &config.public_urls {
        sync_config = sync_config.with_own_relay(url.clone());
    }
    for url in &config.bootstrap_relays {
        sync_config = sync_config.with_bootstrap_relay(url.clone());
    }
    if config.sync_plus {
        sync_config = sync_config.with_sync_plus(SyncPlusConfig::default());
    }
    let state_store: Arc<dyn SyncStateStore> = if persistent {
        Arc::new(JsonStateStore {
            path: config.data_dir.join("sync-state.json"),
        })
    } else {
        Arc::new(MemorySyncStateStore::new())
    };
    let host_ports = Arc::new(HostPorts(host.clone()));
    let ports = DriverPorts::new(
        host_ports.clone(),
        host_ports.clone(),
        host_ports,
        state_store,
        Arc::new(config.url_policy()),
    );
    let mut options = DriverOptions::new();
    options.metrics = Some(metrics.clone());
    let sync = driver::start(sync_config, ports, options).await?;
    let _ = host.sync.set(sync.clone());

    // The git hunt: the library's loop, fetching into our bare repos; it calls back
    // `HuntHost` (ports.rs) to release what it found data for.
    let hunt_config = HuntConfig {
        first_delay_user: config.user_hunt_delay,
        ..HuntConfig::default()
    };
    let fetcher = Arc::new(GixFetcher::new(
        GixFetcherConfig::new(host.locator.clone()).with_policy(config.url_policy()),
    ));
    let hunt = spawn_hunt(
        HuntScheduler::new(hunt_config),
        fetcher,
        host.clone(),
        hunt_rx,
        HuntOptions {
            metrics: Some(metrics.clone()),
            recheck_interval: config.git_recheck_interval,
            ..HuntOptions::new()
        },
    );

    // HTTP + websocket.
    let (stop, stop_rx) = watch::channel(false);
    let http = Arc::new(HttpCtx {
        host: host.clone(),
        registry,
        nip11: nip11_document(&config),
        hunt: hunt.metrics_view(),
        started: Instant::now(),
        gate: gate::Gate::new(config.caps),
        stop: stop_rx.clone(),
    });
    let mut tasks = vec![tokio::spawn(http::serve(
        listener,
        http.clone(),
        stop_rx.clone(),
    ))];
    tasks.push(tokio::spawn(log_status(
        http.clone(),
        config.status_log_interval,
        stop_rx,
    )));

    tracing::info!(
        url = %config.public_urls[0],
        http = %format!("http://{local_addr}"),
        data = %config.data_dir.display(),
        storage = ?config.storage,
        accepted_repos,
        held_events = host.held_events().len(),
        "relay listening"
    );
    Ok(RunningRelay {
        host,
        sync,
        local_addr,
        config,
        stop,
        tasks,
        hunt,
        http,
    })
}

/// The NIP-11 document: what this relay supports and the limits it enforces.
pub fn nip11_document(config: &RelayConfig) -> serde_json::Value {
    let mut supported_grasps = vec!["GRASP-01", "GRASP-02"];
    let mut description = "A GRASP relay for Nostr git repositories, with GRASP-02 proactive sync (grasp-sync reference relay). Git is served read only over smart HTTP at /<npub>/<identifier>.git for accepted repositories; pushes are not accepted.".to_owned();
    if config.sync_plus {
        supported_grasps.push("GRASP-03");
        description.push_str(" Sync+ (GRASP-03): it also syncs accepted repositories' issues, patches and comments from the relays their participants write to.");
    }
    if config.archive.is_enabled() {
        supported_grasps.push("GRASP-05");
        description.push_str(" Archive (GRASP-05): it also keeps, read only, repositories whose announcements do not list it, by an allow-list of keys and identifiers.");
    }
    serde_json::json!({
        "name": "grasp-reference-relay",
        "description": description,
        "version": env!("CARGO_PKG_VERSION"),
        "supported_nips": [1, 11, 34, 77],
        "supported_grasps": supported_grasps,
        "limitation": {
            "max_message_length": config.caps.max_message_bytes,
            "max_content_length": config.caps.max_event_bytes,
            "max_event_tags": config.caps.max_event_tags,
            "max_filters": config.caps.max_filters,
            "max_subscriptions": config.caps.max_subscriptions,
            "max_limit": MAX_FILTER_LIMIT,
            "max_subid_length": MAX_SUBID_LENGTH,
            // Not in NIP-11; this relay's own caps, named as its flags.
            "max_event_bytes": config.caps.max_event_bytes,
            "max_connections": config.caps.max_connections,
            "max_connections_per_ip": config.caps.max_connections_per_ip,
            "auth_required": false,
            "payment_required": false,
            "restricted_writes": true,
            "events_per_ip_per_minute": config.caps.events_per_ip_per_minute,
        },
    })
}

/// A `sync status` line every `every` (zero: never), only when something changed.
async fn log_status(ctx: Arc<HttpCtx>, every: Duration, mut stop: watch::Receiver<bool>) {
    if every.is_zero() {
        let _ = stop.changed().await;
        return;
    }
    let mut last = String::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let Some(handle) = ctx.host.sync.get() else {
            continue;
        };
        let Ok(s) = handle.status().await else {
            continue;
        };
        let relays: Vec<String> = s
            .relays
            .iter()
            .map(|r| {
                format!(
                    "{} {:?}/{:?} live={} historic_done={} rx={}",
                    r.relay,
                    r.status,
                    r.health,
                    r.live_filters,
                    r.historic_sync_completed,
                    r.events_received
                )
            })
            .collect();
        let line = format!(
            "repos={} synced={} purgatory={} relays=[{}]",
            s.repos,
            s.metrics.events_accepted,
            ctx.host.held_events().len(),
            relays.join("; ")
        );
        if line != last {
            tracing::info!("sync status: {line}");
            last = line;
        }
    }
}

impl RunningRelay {
    /// This relay's (first) public websocket URL, e.g. `ws://127.0.0.1:7777`.
    pub fn url(&self) -> String {
        self.config.public_urls[0].as_str().to_owned()
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://<addr>` for NIP-11, `/metrics`, `/status`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// The sync engine's handle.
    pub fn sync(&self) -> &SyncHandle {
        &self.sync
    }

    /// The configuration in use (public URLs filled in).
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// The `/status` document.
    pub async fn status(&self) -> serde_json::Value {
        http::status_json(&self.http).await
    }

    /// Whether the relay stores and serves `id`.
    pub async fn serves(&self, id: &EventId) -> bool {
        matches!(
            self.host.db.check_id(id).await,
            Ok(nostr_database::DatabaseEventStatus::Saved)
        )
    }

    /// Whether `id` is held in purgatory.
    pub fn is_held(&self, id: &EventId) -> bool {
        self.host.is_held(id)
    }

    /// Where `repo`'s bare repository lives.
    pub fn bare_repo_path(&self, repo: &RepoRef) -> Option<PathBuf> {
        self.host.locator.locate(repo)
    }

    /// Graceful shutdown: stops accepting, closes connections, lets the sync engine
    /// drain what it handed over and persist its state. (Held events are on disk
    /// already: the purgatory is written through.)
    pub async fn shutdown(self) -> Result<(), RelayError> {
        let _ = self.stop.send(true);
        self.hunt.shutdown().await;
        if let Some(relay) = self.host.relay.get() {
            relay.shutdown();
        }
        let sync_result = self.sync.shutdown().await;
        for task in self.tasks {
            let _ = task.await;
        }
        tracing::info!("relay stopped; sync state saved");
        sync_result.map_err(RelayError::from)
    }
}
