//! The tokio driver side (feature `tokio`): the IO that carries out the engine's
//! commands and turns what relays say into engine inputs.
//!
//! - [`executor`]: [`PoolExecutor`] runs `Connect`, `Disconnect`, `Subscribe`,
//!   `Unsubscribe` and `Negentropy` on nostr-relay-pool and reports [`crate::Input`]s.
//! - [`nip11`]: fetches a relay's NIP-11 document (for its limits).
//! - [`metrics`]: the Prometheus metrics of the design, registered in the host's registry.

pub mod executor;
pub mod metrics;
pub mod nip11;

pub use executor::{ExecuteError, ExecutorConfig, PoolExecutor};
pub use metrics::SyncMetrics;
pub use nip11::{fetch_nip11, Nip11Error};
