//! The tokio driver side (feature `tokio`): the IO that carries out the engine's
//! commands and turns what relays say into engine inputs.
//!
//! - [`executor`]: [`PoolExecutor`] runs `Connect`, `Disconnect`, `Subscribe`,
//!   `Unsubscribe` and `Negentropy` on nostr-relay-pool and reports [`crate::Input`]s.
//! - `negentropy`: one dry-run NIP-77 reconciliation, run by the executor (not the
//!   pool's, which reports part of the difference as all of it when its channel
//!   overflows).
//! - [`nip11`]: fetches a relay's NIP-11 document (for its limits).
//! - [`dial`]: every relay connection resolved once, checked address by address with
//!   the relay policy, and pinned to a checked address.
//! - [`hunt`]: the git hunt loop, fetching what purgatory events wait for.
//! - `metrics` (feature `metrics`): the Prometheus metrics of the design, registered in
//!   the host's registry.
//!
//! The loop around them (sketch; the engine decides, the loop only moves data):
//!
//! ```text
//! let dialer = Dialer::new(relay_policy, Arc::new(SystemResolver));
//! let (mut exec, mut inputs) = PoolExecutor::new(event_store, dialer, ExecutorConfig::default());
//! loop {
//!     while let Some(cmd) = engine.poll_command() {
//!         if PoolExecutor::is_pool_command(&cmd) {
//!             // Errors are informational: the inputs tell the engine the truth.
//!             if let Err(e) = exec.execute(cmd).await { tracing::debug!(%e) }
//!         } else {
//!             // Ingest (in order!), ReadPurgatoryAnnouncements, PersistState: host ports,
//!             // answered with Input::IngestOutcome / Input::PurgatoryAnnouncements.
//!         }
//!     }
//!     let wake = engine.poll_timeout();            // sleep until then (or forever)
//!     tokio::select! {
//!         Some(input) = inputs.recv() => engine.handle_input(now(), input),
//!         Some(event) = accepted.recv() => engine.handle_input(now(), Input::Accepted { .. }),
//!         _ = sleep_until(wake) => engine.handle_timeout(now()),
//!         _ = shutdown.notified() => { persist; exec.shutdown().await; break }
//!     }
//! }
//! ```

pub mod dial;
pub mod executor;
pub mod hunt;
#[cfg(feature = "metrics")]
pub mod metrics;
mod negentropy;
pub mod nip11;
mod runner;
mod verify;
mod wire;

pub use dial::{DialError, Dialer, PinnedTransport, Resolver, SystemResolver};
pub use executor::{ExecuteError, ExecutorConfig, PoolExecutor};
pub use hunt::{hunt_channel, spawn_hunt, HuntHandle, HuntOptions, HuntReceiver, HuntSender};
#[cfg(feature = "metrics")]
pub use metrics::SyncMetrics;
pub use nip11::{fetch_nip11, Nip11Error};
pub use runner::{start, DriverError, DriverOptions, DriverPorts, DriverStatus, SyncHandle};
pub use wire::WireBytes;
