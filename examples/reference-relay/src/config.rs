//! Configuration: clap flags with environment variables, validated into a
//! [`RelayConfig`]. A bad value is a [`ConfigError`] with a clear message, never a panic.

use crate::gate::Caps;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use grasp_sync::archive::ArchivePolicy;
use grasp_sync::{RelayUrl, UrlPolicy};

/// Where events are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// nostr-lmdb under `<data-dir>/events` (the default): survives restarts.
    Lmdb,
    /// In memory (tests, demos): events, sync state and purgatory are lost on exit.
    InMemory,
}

/// Everything the relay needs to start.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Address to listen on (websocket, NIP-11, `/metrics`, `/status` share it). Port 0
    /// picks a free port.
    pub bind: SocketAddr,
    /// This relay's public websocket URLs, as announcements list them. Empty: `ws://<bound
    /// address>`. An announcement is accepted only if its `relays` tag lists one of them.
    pub public_urls: Vec<RelayUrl>,
    /// Data directory: `events/` (LMDB), `git/` (bare repos), `sync-state.json`,
    /// `purgatory/` (held events, one file each).
    pub data_dir: PathBuf,
    /// Event storage.
    pub storage: Storage,
    /// Relays always connected for announcements (layer 1).
    pub bootstrap_relays: Vec<RelayUrl>,
    /// GRASP-05 archive: repositories kept (synced, their git data fetched and served
    /// read only) although their announcements do not list this relay.
    pub archive: ArchivePolicy,
    /// Allow private / loopback addresses for relays and clone URLs (local testing only).
    pub allow_private_urls: bool,
    /// How long to wait before hunting git data for an event a *user* submitted (a push
    /// is probably on its way). GRASP-02 default: 3 minutes.
    pub user_hunt_delay: Duration,
    /// Shrink the sync engine's timers (tests).
    pub fast_timers: bool,
    /// What a client may make the relay spend: message and event sizes, tags, filters,
    /// subscriptions, connections, events per IP per minute (see `gate.rs`).
    pub caps: Caps,
    /// How often the sync summary is logged.
    pub status_log_interval: Duration,
    /// How long a held event waits for its git data (GRASP-01: 30 minutes).
    pub purgatory_ttl: Duration,
    /// How often accepted repositories' missing git data is looked for again, past the
    /// purgatory window (GRASP-02: at least hourly).
    pub git_recheck_interval: Duration,
    /// GRASP-03 Sync+: also take an accepted repo's conversation from the relays its
    /// participants write to (their NIP-65 and GRASP lists), within the library's
    /// default bounds. Off by default: it dials relays no announcement lists.
    pub sync_plus: bool,
}

impl RelayConfig {
    /// Production defaults: `127.0.0.1:7777`, LMDB under `data_dir`, strict URL policy.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 7777)),
            public_urls: Vec::new(),
            data_dir: data_dir.into(),
            storage: Storage::Lmdb,
            bootstrap_relays: Vec::new(),
            archive: ArchivePolicy::default(),
            allow_private_urls: false,
            user_hunt_delay: Duration::from_secs(180),
            fast_timers: false,
            caps: Caps::default(),
            status_log_interval: Duration::from_secs(5),
            purgatory_ttl: Duration::from_secs(30 * 60),
            git_recheck_interval: Duration::from_secs(3600),
            sync_plus: false,
        }
    }

    /// Test settings: free port on 127.0.0.1, in-memory storage, private URLs allowed,
    /// fast timers, user hunts after 100 ms.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            storage: Storage::InMemory,
            allow_private_urls: true,
            user_hunt_delay: Duration::from_millis(100),
            fast_timers: true,
            status_log_interval: Duration::from_secs(2),
            ..Self::new(data_dir)
        }
    }

    /// The URL policy for relays and clone URLs.
    pub fn url_policy(&self) -> UrlPolicy {
        if self.allow_private_urls {
            UrlPolicy::allow_private()
        } else {
            UrlPolicy::default()
        }
    }

    /// Checks what can be checked before binding.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let policy = self.url_policy();
        for url in &self.bootstrap_relays {
            policy.check_relay_url(url).map_err(|e| {
                ConfigError(format!(
                    "bootstrap relay {url} is refused by the URL policy ({e}); for local testing pass --allow-private-urls"
                ))
            })?;
        }
        let c = &self.caps;
        for (flag, value) in [
            ("--events-per-minute", c.events_per_ip_per_minute as usize),
            ("--max-message-bytes", c.max_message_bytes),
            ("--max-event-bytes", c.max_event_bytes),
            ("--max-filters", c.max_filters),
            ("--max-subscriptions", c.max_subscriptions),
            ("--max-connections", c.max_connections),
            ("--max-connections-per-ip", c.max_connections_per_ip),
        ] {
            if value == 0 {
                return Err(ConfigError(format!("{flag} must be at least 1")));
            }
        }
        if c.max_event_bytes > c.max_message_bytes {
            return Err(ConfigError(
                "--max-event-bytes cannot exceed --max-message-bytes".into(),
            ));
        }
        Ok(())
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// Command line (every flag also reads an environment variable).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "grasp-reference-relay",
    version,
    about = "A Nostr git relay (GRASP) with GRASP-02 proactive sync"
)]
pub struct Cli {
    /// Address to listen on (websocket, NIP-11, /metrics, /status).
    #[arg(long, env = "GRASP_RELAY_BIND", default_value = "127.0.0.1:7777")]
    pub bind: String,
    /// This relay's public websocket URL (repeat or comma-separate for several).
    /// Default: ws://<bind>.
    #[arg(
        long = "public-url",
        env = "GRASP_RELAY_PUBLIC_URLS",
        value_delimiter = ','
    )]
    pub public_urls: Vec<String>,
    /// Data directory (events, bare git repos, sync state, purgatory).
    #[arg(long, env = "GRASP_RELAY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Bootstrap relay to discover announcements from (repeat or comma-separate).
    #[arg(
        long = "bootstrap-relay",
        env = "GRASP_RELAY_BOOTSTRAP",
        value_delimiter = ','
    )]
    pub bootstrap_relays: Vec<String>,
    /// GRASP-05 archive: also keep repositories whose announcements do not list this
    /// relay — `npub1…` (all of that key's), `npub1…/<identifier>`, `<identifier>`, or
    /// `*` (repeat or comma-separate). Announcements are found through the bootstrap
    /// relays.
    #[arg(long = "archive", env = "GRASP_RELAY_ARCHIVE", value_delimiter = ',')]
    pub archive: Vec<String>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `grasp_sync=debug,info`.
    /// The default keeps LMDB's set-up chatter (a "migration" on every fresh directory)
    /// out.
    #[arg(long, env = "GRASP_RELAY_LOG", default_value = "info,nostr_lmdb=warn")]
    pub log_level: String,
    /// Allow private and loopback addresses for relays and clone URLs (local testing).
    #[arg(long, env = "GRASP_RELAY_ALLOW_PRIVATE_URLS")]
    pub allow_private_urls: bool,
    /// Keep events in memory instead of LMDB (nothing survives a restart).
    #[arg(long, env = "GRASP_RELAY_IN_MEMORY")]
    pub in_memory: bool,
    /// Seconds to wait before hunting git data for a user-submitted event.
    #[arg(long, env = "GRASP_RELAY_USER_HUNT_DELAY_SECS", default_value_t = 180)]
    pub user_hunt_delay_secs: u64,
    /// Events one IP address may publish per minute (over all its connections).
    #[arg(long, env = "GRASP_RELAY_EVENTS_PER_MINUTE", default_value_t = Caps::default().events_per_ip_per_minute)]
    pub events_per_minute: u32,
    /// Largest websocket message a client may send, in bytes.
    #[arg(long, env = "GRASP_RELAY_MAX_MESSAGE_BYTES", default_value_t = Caps::default().max_message_bytes)]
    pub max_message_bytes: usize,
    /// Largest event a client may publish (its JSON), in bytes.
    #[arg(long, env = "GRASP_RELAY_MAX_EVENT_BYTES", default_value_t = Caps::default().max_event_bytes)]
    pub max_event_bytes: usize,
    /// Most tags on one published event.
    #[arg(long, env = "GRASP_RELAY_MAX_EVENT_TAGS", default_value_t = Caps::default().max_event_tags)]
    pub max_event_tags: usize,
    /// Most filters in one REQ.
    #[arg(long, env = "GRASP_RELAY_MAX_FILTERS", default_value_t = Caps::default().max_filters)]
    pub max_filters: usize,
    /// Most subscriptions open on one connection.
    #[arg(long, env = "GRASP_RELAY_MAX_SUBSCRIPTIONS", default_value_t = Caps::default().max_subscriptions)]
    pub max_subscriptions: usize,
    /// Most websocket connections open at once.
    #[arg(long, env = "GRASP_RELAY_MAX_CONNECTIONS", default_value_t = Caps::default().max_connections)]
    pub max_connections: usize,
    /// Most websocket connections open at once from one IP address.
    #[arg(long, env = "GRASP_RELAY_MAX_CONNECTIONS_PER_IP", default_value_t = Caps::default().max_connections_per_ip)]
    pub max_connections_per_ip: usize,
    /// Seconds between sync summary log lines, written only when something changed
    /// (0: never).
    #[arg(long, env = "GRASP_RELAY_STATUS_LOG_SECS", default_value_t = 5)]
    pub status_log_secs: u64,
    /// Shrink the sync engine's timers (tests and demos).
    #[arg(long, env = "GRASP_RELAY_FAST_TIMERS")]
    pub fast_timers: bool,
    /// Seconds a held event waits for its git data (GRASP-01: 1800).
    #[arg(long, env = "GRASP_RELAY_PURGATORY_SECS", default_value_t = 1800)]
    pub purgatory_secs: u64,
    /// Seconds between looks for git data accepted repositories still lack past the
    /// purgatory window (GRASP-02: at least hourly; 0: never).
    #[arg(long, env = "GRASP_RELAY_GIT_RECHECK_SECS", default_value_t = 3600)]
    pub git_recheck_secs: u64,
    /// GRASP-03 Sync+: also sync accepted repos' issues, patches and comments from the
    /// relays their participants write to (at most 24 per repo, 256 in all).
    #[arg(long, env = "GRASP_RELAY_SYNC_PLUS")]
    pub sync_plus: bool,
}

impl Cli {
    /// Validates the flags into a [`RelayConfig`].
    pub fn into_config(self) -> Result<RelayConfig, ConfigError> {
        let bind: SocketAddr = self.bind.parse().map_err(|e| {
            ConfigError(format!(
                "--bind {:?} is not an address like 127.0.0.1:7777 ({e})",
                self.bind
            ))
        })?;
        let parse_urls = |flag: &str, raw: &[String]| -> Result<Vec<RelayUrl>, ConfigError> {
            raw.iter()
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    RelayUrl::parse(s.trim()).map_err(|e| {
                        ConfigError(format!(
                            "{flag} {s:?} is not a websocket URL like ws://host:port ({e})"
                        ))
                    })
                })
                .collect()
        };
        let config = RelayConfig {
            bind,
            public_urls: parse_urls("--public-url", &self.public_urls)?,
            data_dir: self.data_dir,
            storage: if self.in_memory {
                Storage::InMemory
            } else {
                Storage::Lmdb
            },
            bootstrap_relays: parse_urls("--bootstrap-relay", &self.bootstrap_relays)?,
            archive: ArchivePolicy::parse(self.archive.iter().filter(|s| !s.trim().is_empty()))
                .map_err(|e| ConfigError(format!("--archive: {e}")))?,
            allow_private_urls: self.allow_private_urls,
            user_hunt_delay: Duration::from_secs(self.user_hunt_delay_secs),
            fast_timers: self.fast_timers,
            caps: Caps {
                max_message_bytes: self.max_message_bytes,
                max_event_bytes: self.max_event_bytes,
                max_event_tags: self.max_event_tags,
                max_filters: self.max_filters,
                max_subscriptions: self.max_subscriptions,
                max_connections: self.max_connections,
                max_connections_per_ip: self.max_connections_per_ip,
                events_per_ip_per_minute: self.events_per_minute,
            },
            status_log_interval: Duration::from_secs(self.status_log_secs),
            purgatory_ttl: Duration::from_secs(self.purgatory_secs),
            git_recheck_interval: Duration::from_secs(self.git_recheck_secs),
            sync_plus: self.sync_plus,
        };
        config.validate()?;
        Ok(config)
    }
}
