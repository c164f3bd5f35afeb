//! The git hunt loop (feature `tokio`): a [`HuntScheduler`] driven with a
//! [`GitFetcher`] on tokio's blocking pool, so a host only wires it.
//!
//! The host sends what to hunt through a [`HuntSender`] (an event it holds in purgatory
//! becomes a [`HuntRequest`]) and hears back through its [`HuntHost`] port: which held
//! events have their data now (release them), and a tick on every turn of the loop to
//! run its purgatory's expiry rules; and every [`HuntOptions::recheck_interval`] (an
//! hour) it asks the host what its accepted repositories still lack, so missing data is
//! looked for at least hourly past the purgatory window. Fetches run at most as the
//! scheduler allows (per host, per repo, in total); their results feed the scheduler,
//! and its counters are readable at any time from the [`HuntHandle`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

#[cfg(feature = "metrics")]
use crate::git::FetchError;
use crate::git::{
    fetch_blocking_task, GitFetcher, HuntEvent, HuntMetrics, HuntRequest, HuntScheduler, JobId,
    JobResult,
};
use crate::ports::{Clock, HuntHost};

/// The loop wakes at least this often, to tick the host's purgatory.
const MAX_SLEEP: Duration = Duration::from_secs(5);

/// Where the host sends what to hunt: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct HuntSender(mpsc::UnboundedSender<Vec<HuntRequest>>);

impl HuntSender {
    /// Adds requests to the hunt. False once the hunt has stopped.
    pub fn add(&self, requests: Vec<HuntRequest>) -> bool {
        requests.is_empty() || self.0.send(requests).is_ok()
    }
}

/// The hunt's end of a [`hunt_channel`], handed to [`spawn_hunt`].
#[derive(Debug)]
pub struct HuntReceiver(mpsc::UnboundedReceiver<Vec<HuntRequest>>);

/// A channel for hunt requests: the sender goes to the host (which may exist before
/// the hunt starts), the receiver to [`spawn_hunt`].
pub fn hunt_channel() -> (HuntSender, HuntReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    (HuntSender(tx), HuntReceiver(rx))
}

/// What the hunt needs besides the scheduler, the fetcher and the host.
#[derive(Clone)]
pub struct HuntOptions {
    /// Wall time (tests use a fake one).
    pub clock: Arc<dyn Clock>,
    /// How often the host is asked for [`HuntHost::rechecks`]: git data accepted
    /// repositories still lack once an event's purgatory window is over. GRASP-02: at
    /// least hourly (the default). Zero: never.
    pub recheck_interval: Duration,
    /// Counts fetches by result in `hunts_total{result}` (feature `metrics`).
    #[cfg(feature = "metrics")]
    pub metrics: Option<super::SyncMetrics>,
}

impl HuntOptions {
    /// The system clock, no metrics.
    pub fn new() -> Self {
        Self {
            clock: Arc::new(crate::ports::SystemClock),
            recheck_interval: Duration::from_secs(3600),
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }
}

impl Default for HuntOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// A running hunt.
#[derive(Debug)]
pub struct HuntHandle {
    metrics: Arc<Mutex<HuntMetrics>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl HuntHandle {
    /// The scheduler's counters as of the loop's last turn.
    pub fn metrics(&self) -> HuntMetrics {
        *self.metrics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A shared view of the counters, for a status page that outlives this borrow.
    pub fn metrics_view(&self) -> Arc<Mutex<HuntMetrics>> {
        self.metrics.clone()
    }

    /// Stops the loop and waits for it. Fetches in flight finish on the blocking pool;
    /// their results are dropped (the events stay held and are hunted after a restart).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts the hunt loop on the current tokio runtime.
pub fn spawn_hunt(
    scheduler: HuntScheduler,
    fetcher: Arc<dyn GitFetcher>,
    host: Arc<dyn HuntHost>,
    requests: HuntReceiver,
    options: HuntOptions,
) -> HuntHandle {
    let metrics = Arc::new(Mutex::new(scheduler.metrics()));
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run(
        Hunt {
            scheduler,
            fetcher,
            host,
            options,
            metrics: metrics.clone(),
        },
        requests.0,
        stop_rx,
    ));
    HuntHandle {
        metrics,
        stop,
        task,
    }
}

struct Hunt {
    scheduler: HuntScheduler,
    fetcher: Arc<dyn GitFetcher>,
    host: Arc<dyn HuntHost>,
    options: HuntOptions,
    metrics: Arc<Mutex<HuntMetrics>>,
}

async fn run(
    mut hunt: Hunt,
    mut requests: mpsc::UnboundedReceiver<Vec<HuntRequest>>,
    mut stop: watch::Receiver<bool>,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(JobId, JobResult)>();
    let recheck_every = hunt.options.recheck_interval;
    let mut next_recheck = tokio::time::Instant::now() + recheck_every;
    loop {
        if !recheck_every.is_zero() && tokio::time::Instant::now() >= next_recheck {
            next_recheck = tokio::time::Instant::now() + recheck_every;
            let now = hunt.options.clock.now();
            for request in hunt.host.rechecks().await {
                hunt.scheduler.add(request, now);
            }
        }
        let now = hunt.options.clock.now();
        for job in hunt.scheduler.poll_jobs(now) {
            tracing::info!(repo = %job.repo, url = %job.url, oids = job.want.oids.len(), any_data = job.want.any_data, "fetching git data");
            let tx = done_tx.clone();
            let fetcher = hunt.fetcher.clone();
            tokio::spawn(async move {
                let result = fetch_blocking_task(fetcher, job.repo, job.url, job.want).await;
                let _ = tx.send((job.id, result));
            });
        }
        while let Some(event) = hunt.scheduler.poll_event() {
            match event {
                HuntEvent::Satisfied { repo, events } => hunt.host.release(&repo, &events).await,
                HuntEvent::Expired { repo, events } => {
                    tracing::info!(%repo, n = events.len(), "git hunt gave up (deadline)");
                }
            }
        }
        hunt.host.tick().await;
        *hunt.metrics.lock().unwrap_or_else(|p| p.into_inner()) = hunt.scheduler.metrics();
        let wake = hunt
            .scheduler
            .poll_timeout()
            .map_or(MAX_SLEEP, |t| {
                Duration::from_millis(t.0.saturating_sub(hunt.options.clock.now().0))
            })
            .min(MAX_SLEEP)
            .min(next_recheck.saturating_duration_since(tokio::time::Instant::now()));
        tokio::select! {
            Some(batch) = requests.recv() => {
                let now = hunt.options.clock.now();
                for request in batch {
                    hunt.scheduler.add(request, now);
                }
            }
            Some((id, result)) = done_rx.recv() => hunt.on_fetched(id, result),
            () = tokio::time::sleep(wake) => {}
            _ = stop.changed() => return,
        }
    }
}

impl Hunt {
    fn on_fetched(&mut self, id: JobId, result: JobResult) {
        if let Err(e) = &result {
            tracing::info!(error = %e, "git fetch failed");
        }
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.options.metrics {
            metrics.record_hunt(match &result {
                Ok(r) if !r.present.is_empty() || r.any_data => "complete",
                Ok(_) => "empty",
                Err(FetchError::Refused(_)) => "refused",
                Err(_) => "failed",
            });
        }
        self.scheduler
            .on_job_done(id, result, self.options.clock.now());
    }
}
