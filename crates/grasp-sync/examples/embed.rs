//! Embedding grasp-sync in a relay: the ports, the driver, the two calls a relay makes.
//! (README.md and the crate's front page show this file; `cargo test` compiles it.)
use std::sync::Arc;

use grasp_sync::driver::{start, DriverOptions, DriverPorts};
use grasp_sync::ports::{MemoryEventStore, MemoryPurgatoryView, MemorySyncStateStore};
use grasp_sync::{RelayUrl, SyncConfig, UrlPolicy};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Your relay implements the ports. In-memory versions serve tests and small hosts:
    // MemoryEventStore is both the EventStore (negentropy have-set, stored events) and
    // the Ingestion port (the write path for synced events, answering a typed outcome).
    let store = Arc::new(MemoryEventStore::new());
    let purgatory = Arc::new(MemoryPurgatoryView::new()); // announcements waiting for git data
    let state = Arc::new(MemorySyncStateStore::new()); // yours: a file or a table

    let config = SyncConfig::default().with_own_relay(RelayUrl::parse("wss://git.example.com")?);
    let ports = DriverPorts::new(
        store.clone(),
        store.clone(),
        purgatory,
        state,
        // Refuses loopback, private and link-local relays, by name or address.
        // UrlPolicy::allow_private() (or ports::AllowAllRelays) for tests on 127.0.0.1.
        Arc::new(UrlPolicy::default()),
    );
    let sync = start(config, ports, DriverOptions::new()).await?;

    // Whenever your relay accepts an event from a user (or releases one from purgatory),
    // tell the engine: announcements and root events are what it syncs for.
    let keys = nostr::Keys::generate();
    let announcement = nostr::EventBuilder::new(nostr::Kind::Custom(30617), "")
        .tags([
            nostr::Tag::identifier("my-repo"),
            nostr::Tag::custom(
                nostr::TagKind::custom("relays"),
                ["wss://git.example.com", "wss://other.example.org"],
            ),
        ])
        .sign_with_keys(&keys)?;
    store.insert(announcement.clone());
    sync.accepted(announcement);

    // For a status page: per relay health, progress, last error.
    let status = sync.status().await?;
    println!(
        "tracking {} repos on {} relays",
        status.repos,
        status.relays.len()
    );

    // On shutdown: stops intake, lets what was handed over be stored, persists state (a
    // restart within 15 minutes is then a quick reconnect).
    sync.shutdown().await?;
    Ok(())
}
