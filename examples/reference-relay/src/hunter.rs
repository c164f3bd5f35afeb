//! The git hunter task: a [`HuntScheduler`] driven with a [`GixFetcher`] on tokio's
//! blocking pool. Satisfied events are released from purgatory (stored, served, fed to
//! the sync engine); the purgatory's expiry rules run on the same loop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use grasp_sync::git::fetch_blocking_task;
use grasp_sync::git::{HuntEvent, HuntMetrics, HuntScheduler, JobId, JobResult};
use grasp_sync::ports::{Clock, SystemClock};
use grasp_sync::{FetchError, GixFetcher, WallTime};
use tokio::sync::{mpsc, watch};

use crate::host::{Host, HuntMsg};

/// Runs until `stop` flips.
pub async fn run(
    host: Arc<Host>,
    mut scheduler: HuntScheduler,
    fetcher: Arc<GixFetcher>,
    mut rx: mpsc::UnboundedReceiver<HuntMsg>,
    metrics: Arc<Mutex<HuntMetrics>>,
    mut stop: watch::Receiver<bool>,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(JobId, JobResult)>();
    loop {
        let now = SystemClock.now();
        for job in scheduler.poll_jobs(now) {
            tracing::info!(repo = %job.repo, url = %job.url, oids = job.want.oids.len(), any_data = job.want.any_data, "fetching git data");
            let tx = done_tx.clone();
            let fetcher = fetcher.clone();
            tokio::spawn(async move {
                let result = fetch_blocking_task(fetcher, job.repo, job.url, job.want).await;
                let _ = tx.send((job.id, result));
            });
        }
        while let Some(ev) = scheduler.poll_event() {
            match ev {
                HuntEvent::Satisfied { repo, events } => host.release(&repo, &events).await,
                HuntEvent::Expired { repo, events } => {
                    tracing::info!(%repo, n = events.len(), "git hunt gave up (deadline)");
                }
            }
        }
        host.tick_purgatory().await;
        *metrics.lock().unwrap_or_else(|p| p.into_inner()) = scheduler.metrics();
        let wake = scheduler
            .poll_timeout()
            .map(|t| Duration::from_millis(t.0.saturating_sub(SystemClock.now().0)))
            .unwrap_or(Duration::from_secs(5))
            .min(Duration::from_secs(5));
        tokio::select! {
            Some(msg) = rx.recv() => match msg {
                HuntMsg::Add(requests) => {
                    let now: WallTime = SystemClock.now();
                    for r in requests {
                        scheduler.add(r, now);
                    }
                }
            },
            Some((id, result)) = done_rx.recv() => {
                let label = match &result {
                    Ok(r) if !r.present.is_empty() || r.any_data => "complete",
                    Ok(_) => "empty",
                    Err(FetchError::Refused(_)) => "refused",
                    Err(_) => "failed",
                };
                if let Err(e) = &result {
                    tracing::info!(error = %e, "git fetch failed");
                }
                host.metrics.record_hunt(label);
                scheduler.on_job_done(id, result, SystemClock.now());
            }
            _ = tokio::time::sleep(wake) => {}
            _ = stop.changed() => return,
        }
    }
}
