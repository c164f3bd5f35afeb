//! The library's git hunt loop (`driver::spawn_hunt`) with a scripted fetcher and host:
//! what the fetcher brings is released through the host port, the host's purgatory is
//! ticked, counters are readable, and shutdown ends the loop.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use grasp_sync::driver::{hunt_channel, spawn_hunt, HuntOptions};
use grasp_sync::git::{
    FetchReport, FetchWant, HuntConfig, HuntRequest, HuntScheduler, Origin, RemoteRef, WaitKind,
    Want,
};
use grasp_sync::ports::HuntHost;
use grasp_sync::{CloneUrl, FetchError, GitFetcher, Oid, RepoRef, WallTime};
use nostr::EventId;

const PK: &str = "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1";

/// Has every object on `good.example`, nothing reachable elsewhere.
struct Fetcher;

impl GitFetcher for Fetcher {
    fn fetch(
        &self,
        _repo: &RepoRef,
        url: &CloneUrl,
        want: &FetchWant,
    ) -> Result<FetchReport, FetchError> {
        if !url.as_str().contains("good.example") {
            return Err(FetchError::Unreachable("down".into()));
        }
        Ok(FetchReport {
            present: want.oids.clone(),
            ..FetchReport::default()
        })
    }

    fn list_refs(&self, _url: &CloneUrl) -> Result<Vec<RemoteRef>, FetchError> {
        Ok(Vec::new())
    }
}

#[derive(Default)]
struct Host {
    released: Mutex<Vec<(RepoRef, Vec<EventId>)>>,
    ticks: Mutex<u32>,
}

#[async_trait]
impl HuntHost for Host {
    async fn release(&self, repo: &RepoRef, events: &[EventId]) {
        self.released
            .lock()
            .unwrap()
            .push((repo.clone(), events.to_vec()));
    }
    async fn tick(&self) {
        *self.ticks.lock().unwrap() += 1;
    }
}

fn now() -> WallTime {
    grasp_sync::ports::Clock::now(&grasp_sync::ports::SystemClock)
}

#[tokio::test]
async fn hunt_driver_releases_what_the_fetcher_brings() {
    let repo = RepoRef::parse(&format!("30617:{PK}:r")).unwrap();
    let event = EventId::from_byte_array([9; 32]);
    let oid = Oid::from_bytes([7; 20]);
    let host = Arc::new(Host::default());
    let (sender, receiver) = hunt_channel();
    let hunt = spawn_hunt(
        HuntScheduler::new(HuntConfig::default()),
        Arc::new(Fetcher),
        host.clone(),
        receiver,
        HuntOptions::new(),
    );
    assert!(sender.add(vec![HuntRequest {
        event_id: event,
        repo: repo.clone(),
        kind: WaitKind::State,
        want: Want::Objects([oid].into()),
        clone_urls: vec![
            CloneUrl::parse(&format!("https://down.example/{PK}/r.git")).unwrap(),
            CloneUrl::parse(&format!("https://good.example/{PK}/r.git")).unwrap(),
        ],
        origin: Origin::Sync,
        expires_at: now() + Duration::from_secs(1800),
    }]));
    let started = Instant::now();
    while host.released.lock().unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing released; counters {:?}",
            hunt.metrics()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(*host.released.lock().unwrap(), vec![(repo, vec![event])]);
    assert!(*host.ticks.lock().unwrap() > 0, "the purgatory is ticked");
    let m = hunt.metrics();
    assert_eq!(m.events_satisfied, 1, "{m:?}");
    assert!(m.hunts_complete >= 1, "{m:?}");
    hunt.shutdown().await;
    assert!(
        !sender.add(vec![HuntRequest {
            event_id: EventId::from_byte_array([1; 32]),
            repo: RepoRef::parse(&format!("30617:{PK}:x")).unwrap(),
            kind: WaitKind::State,
            want: Want::Objects([oid].into()),
            clone_urls: Vec::new(),
            origin: Origin::Sync,
            expires_at: now(),
        }]),
        "the hunt has stopped"
    );
}
