//! Checking each received event's id and signature ourselves.
//!
//! nostr-relay-pool checks every event it receives, but remembers what it checked by
//! event id alone: a second copy of an id it has seen passes unchecked, whatever its
//! content or signature. The engine trusts the driver's check, so a hostile relay could
//! replay a known id with other content (or a junk signature) and have the host store
//! it — blocking the genuine event for good, since stores de-duplicate by id. Here the
//! id is recomputed from the content for every event (a hash, cheap), and the signature
//! is checked unless this exact (id, signature) pair was checked before: a genuine copy
//! from a second relay costs the hash only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use nostr::secp256k1::schnorr::Signature;
use nostr::{Event, EventId};

/// Pairs remembered before the memory is cleared (~130 bytes each, ~13 MB at most):
/// forgetting only costs a signature check again.
const REMEMBERED: usize = 100_000;

/// The executor's own check, shared by its per-relay readers.
#[derive(Debug, Default)]
pub(super) struct SignatureCheck {
    checked: Mutex<HashMap<EventId, Signature>>,
    refused: AtomicU64,
}

impl SignatureCheck {
    /// Whether `event` is genuine: its id is the hash of its content and its signature
    /// signs that id. Refusals are counted.
    pub fn genuine(&self, event: &Event) -> bool {
        let ok = event.verify_id() && (self.known(event) || self.check_signature(event));
        if !ok {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Events refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn known(&self, event: &Event) -> bool {
        self.lock().get(&event.id) == Some(&event.sig)
    }

    fn check_signature(&self, event: &Event) -> bool {
        if event.verify_signature() {
            let mut checked = self.lock();
            if checked.len() >= REMEMBERED {
                checked.clear();
            }
            checked.insert(event.id, event.sig);
            true
        } else {
            false
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EventId, Signature>> {
        // Plain data: a panic elsewhere leaves nothing half-written that matters.
        self.checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
