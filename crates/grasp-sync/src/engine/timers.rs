//! Which relays the periodic check looks at. A relay with something going on (a
//! connection attempt, history in flight, held-back work, a rate-limit cooldown) is
//! *watched*: checked every `check_interval`, as the design's timers expect. A relay
//! with nothing going on *sleeps* until its own next deadline (connect attempt, daily
//! sync, history retry, NIP-77 re-probe), or until the engine wakes it because
//! something about it changed (an input from it, new work, a verdict on an event it
//! sent). So a check costs what is happening, not how many relays the engine keeps.

use std::collections::{BTreeSet, HashMap};

use crate::model::{RelayUrl, WallTime};

/// Watched relays and sleeping relays with their wake-up times.
#[derive(Debug, Default)]
pub(super) struct RelayTimers {
    watched: BTreeSet<RelayUrl>,
    sleeping: BTreeSet<(WallTime, RelayUrl)>,
    wakes_at: HashMap<RelayUrl, WallTime>,
}

impl RelayTimers {
    /// Looks at `relay` at every check from now on.
    pub fn watch(&mut self, relay: &RelayUrl) {
        if let Some(at) = self.wakes_at.remove(relay) {
            self.sleeping.remove(&(at, relay.clone()));
        }
        self.watched.insert(relay.clone());
    }

    /// Leaves `relay` alone until `until` (or until it is watched again).
    pub fn sleep(&mut self, relay: &RelayUrl, until: WallTime) {
        self.watched.remove(relay);
        if let Some(at) = self.wakes_at.insert(relay.clone(), until) {
            self.sleeping.remove(&(at, relay.clone()));
        }
        self.sleeping.insert((until, relay.clone()));
    }

    /// Forgets `relay` (dropped).
    pub fn forget(&mut self, relay: &RelayUrl) {
        self.watched.remove(relay);
        if let Some(at) = self.wakes_at.remove(relay) {
            self.sleeping.remove(&(at, relay.clone()));
        }
    }

    /// Watches every sleeping relay whose time has come.
    pub fn wake_due(&mut self, now: WallTime) {
        while let Some((at, relay)) = self.sleeping.first().cloned() {
            if at > now {
                break;
            }
            self.watch(&relay);
        }
    }

    /// The watched relays, in order.
    pub fn watched(&self) -> Vec<RelayUrl> {
        self.watched.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> RelayUrl {
        RelayUrl::parse(s).unwrap()
    }

    #[test]
    fn sleepers_wake_at_their_time_or_when_watched() {
        let (a, b) = (url("wss://a.example"), url("wss://b.example"));
        let mut t = RelayTimers::default();
        t.watch(&a);
        t.watch(&b);
        t.sleep(&a, WallTime(100));
        t.sleep(&b, WallTime(50));
        assert!(t.watched().is_empty());
        t.wake_due(WallTime(60));
        assert_eq!(t.watched(), vec![b.clone()]);
        t.watch(&a);
        assert_eq!(t.watched(), vec![a.clone(), b.clone()]);
        t.wake_due(WallTime(1_000));
        assert_eq!(t.watched().len(), 2, "a is not woken twice");
        t.sleep(&a, WallTime(10));
        t.sleep(&a, WallTime(500));
        t.wake_due(WallTime(100));
        assert_eq!(
            t.watched(),
            vec![b.clone()],
            "the later sleep replaced the earlier"
        );
        t.forget(&a);
        t.wake_due(WallTime(1_000));
        assert_eq!(t.watched(), vec![b]);
    }
}
