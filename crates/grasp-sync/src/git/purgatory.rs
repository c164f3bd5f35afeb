//! Purgatory: events the host accepted but does not serve until their git data arrives.
//!
//! GRASP-01 gives the host relay this holding area; the library does not own it. The
//! engine sees it through [`crate::ports::PurgatoryView`] (which announcements wait) and
//! the hunt through the [`crate::git::HuntRequest`]s the host adds.
//! [`InMemoryPurgatory`] is a complete holding area with the design's expiry rules, good
//! enough for the reference relay and for tests:
//! - a waiting event expires 30 min after it arrived and its id goes to the expired set;
//! - an announcement soft-expires instead: the host removes the empty bare repo, the event
//!   is kept 24 h more, and a late state event for the repo revives it (hunting resumes);
//!   after the 24 h it goes to the expired set too;
//! - the expired set is bounded (oldest forgotten first) and makes [`InMemoryPurgatory::admit`]
//!   refuse the id, so sync does not bring an expired event back every few minutes.
//!
//! Pure: time is a parameter, no locks inside (the host wraps it in whatever it needs).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;

use nostr::EventId;

use crate::git::scheduler::{HuntRequest, Origin, WaitKind, Want};
use crate::model::{RepoRef, WallTime};
use crate::url_policy::CloneUrl;

/// An event waiting for git data, as the hunt needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingEvent {
    /// The event.
    pub id: EventId,
    /// Its repo.
    pub repo: RepoRef,
    /// What kind of event.
    pub kind: WaitKind,
    /// What it needs.
    pub want: Want,
    /// Clone URLs it carries (announcement or PR `clone` tags), already parsed; the
    /// driver adds other maintainers' URLs.
    pub clone_urls: Vec<CloneUrl>,
    /// How it arrived.
    pub origin: Origin,
    /// When it arrived.
    pub received_at: WallTime,
}

/// Why an event was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PurgatoryError {
    /// The event expired here before.
    #[error("event {0} expired in purgatory before")]
    Expired(EventId),
}

/// Expiry settings; defaults from GRASP-01/02.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgatoryConfig {
    /// How long an event waits for data (30 min).
    pub ttl: Duration,
    /// How long a soft-expired announcement is kept, revivable (24 h).
    pub announcement_grace: Duration,
    /// How many expired ids are remembered (oldest forgotten first).
    pub expired_capacity: usize,
}

impl Default for PurgatoryConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30 * 60),
            announcement_grace: Duration::from_secs(24 * 3600),
            expired_capacity: 100_000,
        }
    }
}

/// What [`InMemoryPurgatory::admit`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admitted {
    /// Feed these to the scheduler ([`HuntScheduler::add`](super::HuntScheduler::add)).
    pub hunt: Vec<HuntRequest>,
    /// Soft-expired announcements this event revived: the host recreates their bare repos.
    pub revived: Vec<EventId>,
}

/// What [`InMemoryPurgatory::tick`] changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expiry<P> {
    /// Announcements that just soft-expired: the host removes their (empty) bare repos.
    pub soft_expired: Vec<(RepoRef, EventId)>,
    /// Events dropped for good (ids now in the expired set), with their payloads.
    pub dropped: Vec<(EventId, P)>,
}

#[derive(Debug)]
struct Held<P> {
    ev: WaitingEvent,
    payload: P,
    expires_at: WallTime,
    /// Set while soft-expired: the time it is dropped for good.
    soft_until: Option<WallTime>,
}

/// An in-memory purgatory holding a payload `P` per event (the `nostr::Event` itself in a
/// relay; `()` in tests).
#[derive(Debug)]
pub struct InMemoryPurgatory<P = nostr::Event> {
    config: PurgatoryConfig,
    held: BTreeMap<EventId, Held<P>>,
    expired: HashSet<EventId>,
    expired_order: VecDeque<EventId>,
}

impl<P> InMemoryPurgatory<P> {
    /// An empty purgatory.
    pub fn new(config: PurgatoryConfig) -> Self {
        Self {
            config,
            held: BTreeMap::new(),
            expired: HashSet::new(),
            expired_order: VecDeque::new(),
        }
    }

    /// Takes an event in. Returns the hunt requests to feed the scheduler: the event's
    /// own, and for a state event a revived soft-expired announcement's. A duplicate is
    /// accepted silently with nothing to hunt.
    pub fn admit(
        &mut self,
        ev: WaitingEvent,
        payload: P,
        now: WallTime,
    ) -> Result<Admitted, PurgatoryError> {
        if self.expired.contains(&ev.id) {
            return Err(PurgatoryError::Expired(ev.id));
        }
        let mut out = Admitted::default();
        if self.held.contains_key(&ev.id) {
            return Ok(out);
        }
        if ev.kind == WaitKind::State {
            for held in self.held.values_mut() {
                if held.ev.repo == ev.repo && held.soft_until.is_some() {
                    held.soft_until = None;
                    held.expires_at = now + self.config.ttl;
                    out.revived.push(held.ev.id);
                    out.hunt.push(request(&held.ev, held.expires_at));
                }
            }
        }
        let expires_at = ev.received_at.max(now) + self.config.ttl;
        out.hunt.push(request(&ev, expires_at));
        self.held.insert(
            ev.id,
            Held {
                ev,
                payload,
                expires_at,
                soft_until: None,
            },
        );
        Ok(out)
    }

    /// Applies the expiry rules at `now`.
    pub fn tick(&mut self, now: WallTime) -> Expiry<P> {
        let mut out = Expiry {
            soft_expired: Vec::new(),
            dropped: Vec::new(),
        };
        let mut drop_ids = Vec::new();
        for (id, held) in self.held.iter_mut() {
            match held.soft_until {
                Some(until) if until <= now => drop_ids.push(*id),
                Some(_) => {}
                None if held.expires_at <= now => {
                    if held.ev.kind == WaitKind::Announcement {
                        held.soft_until = Some(now + self.config.announcement_grace);
                        out.soft_expired.push((held.ev.repo.clone(), *id));
                    } else {
                        drop_ids.push(*id);
                    }
                }
                None => {}
            }
        }
        for id in drop_ids {
            if let Some(held) = self.held.remove(&id) {
                self.remember_expired(id);
                out.dropped.push((id, held.payload));
            }
        }
        out
    }

    /// The earliest time [`tick`](Self::tick) would change something.
    pub fn next_deadline(&self) -> Option<WallTime> {
        self.held
            .values()
            .map(|h| h.soft_until.unwrap_or(h.expires_at))
            .min()
    }

    /// Releases events and returns their payloads (for the host to store and serve).
    pub fn take(&mut self, events: &[EventId]) -> Vec<(EventId, P)> {
        events
            .iter()
            .filter_map(|id| self.held.remove(id).map(|h| (*id, h.payload)))
            .collect()
    }

    /// True when the event is held (waiting or soft-expired).
    pub fn contains(&self, id: &EventId) -> bool {
        self.held.contains_key(id)
    }

    /// True when the event is a soft-expired announcement.
    pub fn is_soft_expired(&self, id: &EventId) -> bool {
        self.held.get(id).is_some_and(|h| h.soft_until.is_some())
    }

    /// Number of events held (waiting or soft-expired).
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    fn remember_expired(&mut self, id: EventId) {
        if self.config.expired_capacity == 0 {
            return;
        }
        if self.expired.insert(id) {
            self.expired_order.push_back(id);
        }
        while self.expired_order.len() > self.config.expired_capacity {
            if let Some(old) = self.expired_order.pop_front() {
                self.expired.remove(&old);
            }
        }
    }
}

fn request(ev: &WaitingEvent, expires_at: WallTime) -> HuntRequest {
    HuntRequest {
        event_id: ev.id,
        repo: ev.repo.clone(),
        kind: ev.kind,
        want: ev.want.clone(),
        clone_urls: ev.clone_urls.clone(),
        origin: ev.origin,
        expires_at,
    }
}

impl<P> InMemoryPurgatory<P> {
    /// Every event waiting for data now (soft-expired announcements excluded), so a
    /// driver starting up can seed the scheduler.
    pub fn waiting(&self) -> Vec<WaitingEvent> {
        self.held
            .values()
            .filter(|h| h.soft_until.is_none())
            .map(|h| h.ev.clone())
            .collect()
    }

    /// The data for `events` is present: releases them and returns the ids that were
    /// actually released (ids no longer held are skipped).
    pub fn release(&mut self, events: &[EventId]) -> Vec<EventId> {
        self.take(events).into_iter().map(|(id, _)| id).collect()
    }

    /// True when `id` expired here: sync must not bring it back.
    pub fn is_expired(&self, id: &EventId) -> bool {
        self.expired.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::Oid;

    const PK: &str = "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1";

    fn id(n: u8) -> EventId {
        EventId::from_byte_array([n; 32])
    }

    fn ev(n: u8, kind: WaitKind, at: WallTime) -> WaitingEvent {
        let want = match kind {
            WaitKind::Announcement => Want::AnyData,
            _ => Want::Objects([Oid::from_bytes([n; 20])].into_iter().collect()),
        };
        WaitingEvent {
            id: id(n),
            repo: RepoRef::parse(&format!("30617:{PK}:r")).unwrap(),
            kind,
            want,
            clone_urls: vec![],
            origin: Origin::Sync,
            received_at: at,
        }
    }

    #[test]
    fn events_expire_after_30_min_and_stay_expired() {
        let mut p: InMemoryPurgatory<()> = InMemoryPurgatory::new(PurgatoryConfig::default());
        let t0 = WallTime::from_secs(1000);
        let a = p.admit(ev(1, WaitKind::State, t0), (), t0).unwrap();
        assert_eq!(a.hunt[0].expires_at, t0 + Duration::from_secs(1800));
        assert!(p.tick(t0 + Duration::from_secs(1799)).dropped.is_empty());
        let x = p.tick(t0 + Duration::from_secs(1800));
        assert_eq!(x.dropped.len(), 1);
        assert!(p.is_expired(&id(1)));
        assert_eq!(
            p.admit(ev(1, WaitKind::State, t0), (), t0),
            Err(PurgatoryError::Expired(id(1)))
        );
    }

    #[test]
    fn announcements_soft_expire_and_revive() {
        let mut p: InMemoryPurgatory<()> = InMemoryPurgatory::new(PurgatoryConfig::default());
        let t0 = WallTime::from_secs(1000);
        p.admit(ev(1, WaitKind::Announcement, t0), (), t0).unwrap();
        let t1 = t0 + Duration::from_secs(1800);
        let x = p.tick(t1);
        assert_eq!(x.soft_expired.len(), 1);
        assert!(x.dropped.is_empty());
        assert!(p.is_soft_expired(&id(1)));
        assert!(p.waiting().is_empty());
        // A late state event revives it, with a fresh deadline.
        let t2 = t1 + Duration::from_secs(3600);
        let a = p.admit(ev(2, WaitKind::State, t2), (), t2).unwrap();
        assert_eq!(a.revived, vec![id(1)]);
        assert_eq!(a.hunt.len(), 2);
        assert!(!p.is_soft_expired(&id(1)));
        // Without revival it is dropped after 24 h.
        let t3 = t2 + Duration::from_secs(1800);
        assert_eq!(p.tick(t3).soft_expired.len(), 1);
        let x = p.tick(t3 + Duration::from_secs(24 * 3600));
        assert!(x.dropped.iter().any(|(i, _)| *i == id(1)));
        assert!(p.is_expired(&id(1)));
    }

    #[test]
    fn expired_set_is_bounded() {
        let cfg = PurgatoryConfig {
            expired_capacity: 2,
            ..PurgatoryConfig::default()
        };
        let mut p: InMemoryPurgatory<()> = InMemoryPurgatory::new(cfg);
        let t0 = WallTime::from_secs(1000);
        for n in 1..=3 {
            p.admit(ev(n, WaitKind::State, t0), (), t0).unwrap();
        }
        p.tick(t0 + Duration::from_secs(3600));
        let remembered = (1..=3).filter(|n| p.is_expired(&id(*n))).count();
        assert_eq!(remembered, 2);
    }
}
