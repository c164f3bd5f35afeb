//! The driver loop: one tokio task that owns a [`SyncEngine`], feeds it what the relays
//! and the host say, carries out its commands, and sleeps until it next wants waking.
//! The host talks to it through a [`SyncHandle`]. Every decision stays in the engine;
//! this file only moves data between the engine, the pool executor and the host's ports.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use nostr::Event;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::dial::{Dialer, Resolver, SystemResolver, REFUSED_BY_POLICY};
use super::executor::{ExecutorConfig, PoolExecutor};
#[cfg(feature = "metrics")]
use super::metrics::{MetricsReporter, SyncMetrics};
use super::nip11::fetch_nip11;
use super::wire::WireBytes;
use crate::engine::{
    Command, EngineMetrics, IngestOutcome, Input, RelayStatusSnapshot, RepoStatusSnapshot,
    SyncConfig, SyncEngine,
};
use crate::filters::Nip11Limitation;
use crate::model::{RelayUrl, WallTime};
use crate::nip34;
use crate::ports::{
    Clock, EventStore, Ingestion, PortError, PurgatoryView, RelayUrlPolicy, SeededRandom,
    SyncStateStore, SystemClock,
};

/// What the host provides to a running driver.
#[derive(Clone)]
pub struct DriverPorts {
    /// Negentropy have-set (stored ∪ purgatory ∪ rejected).
    pub event_store: Arc<dyn EventStore>,
    /// Where synced events go.
    pub ingestion: Arc<dyn Ingestion>,
    /// Announcements waiting for git data.
    pub purgatory: Arc<dyn PurgatoryView>,
    /// Where sync state survives restarts.
    pub state_store: Arc<dyn SyncStateStore>,
    /// Which relay URLs may be dialled.
    pub relay_policy: Arc<dyn RelayUrlPolicy>,
    /// Wall clock (tests may pass their own).
    pub clock: Arc<dyn Clock>,
}

impl DriverPorts {
    /// Ports with the system clock.
    pub fn new(
        event_store: Arc<dyn EventStore>,
        ingestion: Arc<dyn Ingestion>,
        purgatory: Arc<dyn PurgatoryView>,
        state_store: Arc<dyn SyncStateStore>,
        relay_policy: Arc<dyn RelayUrlPolicy>,
    ) -> Self {
        Self {
            event_store,
            ingestion,
            purgatory,
            state_store,
            relay_policy,
            clock: Arc::new(SystemClock),
        }
    }
}

/// Driver settings beyond the engine's own.
#[derive(Clone, Default)]
pub struct DriverOptions {
    /// Pool executor settings.
    pub executor: ExecutorConfig,
    /// Fetch each relay's NIP-11 document for its limits (on by default via
    /// [`DriverOptions::new`]).
    pub fetch_nip11: bool,
    /// Metrics to keep up to date, if the host exposes them (feature `metrics`).
    #[cfg(feature = "metrics")]
    pub metrics: Option<SyncMetrics>,
    /// Seed of the daily-sync jitter; 0 takes one from the clock.
    pub seed: u64,
    /// Events handed to the host's `Ingestion` port and not yet processed, at most
    /// (0: the default, 1,024). When the host is slower than the relays, the
    /// driver waits for room here: relay messages then wait in the executor's bounded
    /// channels, and what overflows is reported as lost and asked again.
    pub ingest_queue: usize,
    /// Resolves relay host names for the policy's address check (`None`: the system
    /// resolver). Tests pass their own, so no real DNS is needed.
    pub resolver: Option<Arc<dyn Resolver>>,
    /// How long a graceful shutdown waits for the ingestion queue to drain before it
    /// gives up on the rest (0: the default, 10 s). Whatever is given up is
    /// not confirmed in the persisted state, so the next start asks for it again.
    pub shutdown_drain: Duration,
}

/// Default [`DriverOptions::ingest_queue`].
pub const DEFAULT_INGEST_QUEUE: usize = 1024;
/// Default [`DriverOptions::shutdown_drain`].
pub const DEFAULT_SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

impl DriverOptions {
    /// Defaults: NIP-11 on, no metrics.
    pub fn new() -> Self {
        Self {
            fetch_nip11: true,
            ..Self::default()
        }
    }
}

/// Why the driver could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// A port failed (loading or saving sync state).
    #[error(transparent)]
    Port(#[from] PortError),
    /// The driver task is gone (it panicked or was already shut down).
    #[error("the sync driver task has stopped")]
    Stopped,
}

/// A snapshot for the host's status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DriverStatus {
    /// Per relay, in order.
    pub relays: Vec<RelayStatusSnapshot>,
    /// Engine counters.
    pub metrics: EngineMetrics,
    /// Repos tracked (Full and StateOnly).
    pub repos: usize,
    /// Relay messages lost to a lagging notification channel.
    pub lagged_messages: u64,
    /// Events dropped as tampered: id or signature not matching (see
    /// [`PoolExecutor::forged_events`](crate::driver::PoolExecutor::forged_events)).
    pub forged_events: u64,
    /// Bytes on the wire per relay since the driver started, in relay order: what each
    /// relay's sync costs, and (against the inflated message bytes) whether it
    /// compresses.
    pub wire: Vec<(RelayUrl, WireBytes)>,
}

enum Control {
    Accepted(Box<Event>),
    Status(oneshot::Sender<DriverStatus>),
    RepoStatus(usize, oneshot::Sender<Vec<RepoStatusSnapshot>>),
    Shutdown(oneshot::Sender<Result<(), DriverError>>),
}

/// The host's handle on a running driver. Cheap to clone.
#[derive(Clone)]
pub struct SyncHandle {
    tx: mpsc::UnboundedSender<Control>,
    task: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl SyncHandle {
    /// Tells the engine the host accepted (stored) an event: from a user, or promoted
    /// out of purgatory. Events the driver itself ingested are fed automatically.
    pub fn accepted(&self, event: Event) {
        let _ = self.tx.send(Control::Accepted(Box::new(event)));
    }

    /// Status of every relay, engine counters.
    pub async fn status(&self) -> Result<DriverStatus, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Control::Status(tx))
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)
    }

    /// Up to `limit` repos, in order, with their sync level and how many of their relays
    /// confirmed them: what a status page lists (bounded, as a relay may hold 100k).
    pub async fn repo_status(&self, limit: usize) -> Result<Vec<RepoStatusSnapshot>, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Control::RepoStatus(limit, tx))
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)
    }

    /// Stops syncing: closes every connection (no more intake), lets the events already
    /// handed to the host finish (up to [`DriverOptions::shutdown_drain`]), then
    /// persists a sync state that matches exactly what the host stored, and ends the
    /// task.
    pub async fn shutdown(&self) -> Result<(), DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Control::Shutdown(tx))
            .map_err(|_| DriverError::Stopped)?;
        let result = rx.await.map_err(|_| DriverError::Stopped)?;
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        result
    }
}

/// Starts syncing: loads the saved sync state (so a restart within 15 minutes is a
/// quick reconnect), tells the engine what the host already stores (accepted
/// announcements and root events: they may be newer than the snapshot, or there may be
/// no snapshot at all), then runs the engine in a tokio task.
pub async fn start(
    config: SyncConfig,
    ports: DriverPorts,
    options: DriverOptions,
) -> Result<SyncHandle, DriverError> {
    // Before any websocket or NIP-11 TLS connection: one rustls provider for the process
    // (see the crate docs, "TLS").
    crate::install_default_crypto_provider();
    // One negentropy timeout for engine and executor: the engine's.
    // One setting each, shared by engine and executor.
    let executor = ExecutorConfig {
        connect_timeout: config.health.connection_timeout(),
        negentropy_idle_timeout: config.negentropy_idle_timeout,
        negentropy_total_timeout: config.negentropy_total_timeout,
        ..options.executor.clone()
    };
    let now = ports.clock.now();
    let seed = if options.seed == 0 {
        now.0 ^ 0x6772_6173_702d_7379
    } else {
        options.seed
    };
    let rng = Box::new(SeededRandom::new(seed));
    let mut engine = match ports.state_store.load().await? {
        Some(snapshot) => {
            SyncEngine::restore(config, snapshot, now, ports.relay_policy.clone(), rng)
        }
        None => SyncEngine::new(config, now, ports.relay_policy.clone(), rng),
    };
    for kinds in [
        vec![nip34::KIND_REPO_ANNOUNCEMENT],
        nip34::ROOT_KINDS.to_vec(),
    ] {
        let stored = ports
            .event_store
            .stored_events(&nostr::Filter::new().kinds(kinds))
            .await?;
        for event in stored {
            engine.handle_input(
                now,
                Input::Accepted {
                    event: Box::new(event),
                },
            );
        }
    }
    // The host's stored events are all in: applied now, not a batch window from now
    // (at the time it is now: loading them may have taken a while, and connection
    // deadlines start here).
    engine.apply_accepted_now(ports.clock.now());
    let resolver = options
        .resolver
        .clone()
        .unwrap_or_else(|| Arc::new(SystemResolver));
    let dialer = Dialer::new(ports.relay_policy.clone(), resolver);
    let (exec, inputs) = PoolExecutor::new(ports.event_store.clone(), dialer.clone(), executor);
    let (tx, rx) = mpsc::unbounded_channel();
    let (side_tx, side_rx) = mpsc::unbounded_channel();
    let capacity = match options.ingest_queue {
        0 => DEFAULT_INGEST_QUEUE,
        n => n,
    };
    let (ingest_tx, ingest_rx) = mpsc::channel(capacity);
    let ingest_task = tokio::spawn(ingest_in_order(
        ports.ingestion.clone(),
        ingest_rx,
        side_tx.clone(),
    ));
    let driver = Driver {
        engine,
        exec,
        ports,
        side_tx,
        dialer,
        inputs_seen_until: now,
        ingest_tx: Some(ingest_tx),
        ingest_task: Some(ingest_task),
        nip11_asked: BTreeSet::new(),
        #[cfg(feature = "metrics")]
        reporter: options.metrics.clone().map(MetricsReporter::new),
        options,
    };
    let task = tokio::spawn(
        driver
            .run(inputs, rx, side_rx)
            .instrument(tracing::info_span!("grasp_sync")),
    );
    Ok(SyncHandle {
        tx,
        task: Arc::new(std::sync::Mutex::new(Some(task))),
    })
}

/// Inputs produced by the driver's own helper tasks (ingestion, purgatory, NIP-11).
enum Side {
    Input(Input),
    Limits(RelayUrl, Nip11Limitation),
}

struct Driver {
    engine: SyncEngine,
    exec: PoolExecutor,
    ports: DriverPorts,
    options: DriverOptions,
    side_tx: mpsc::UnboundedSender<Side>,
    dialer: Dialer,
    /// The last time the relay input channel was seen empty.
    inputs_seen_until: WallTime,
    /// The bounded queue to the ingestion task; `None` once shutdown closed it.
    ingest_tx: Option<mpsc::Sender<(RelayUrl, Box<Event>)>>,
    ingest_task: Option<JoinHandle<()>>,
    nip11_asked: BTreeSet<RelayUrl>,
    #[cfg(feature = "metrics")]
    reporter: Option<MetricsReporter>,
}

/// What a relay said that changes what we do, with its reason, at `info` (a refusal, a
/// rate limit, a fallback from NIP-77) or `debug` (a CLOSED the engine expects):
/// without these an operator sees only a relay's status change.
fn log_relay_words(input: &Input) {
    use crate::classify::{classify_closed, classify_notice, RelaySignal};
    match input {
        Input::Notice { relay, message } => match classify_notice(message) {
            RelaySignal::Other => tracing::debug!(%relay, %message, "NOTICE"),
            signal => tracing::info!(%relay, %message, ?signal, "NOTICE"),
        },
        Input::Closed {
            relay,
            subscription,
            message,
        } => match classify_closed(message) {
            RelaySignal::Other => tracing::debug!(%relay, %subscription, %message, "CLOSED"),
            signal => tracing::info!(%relay, %subscription, %message, ?signal, "CLOSED"),
        },
        Input::NegentropyFailed {
            relay,
            session,
            reason,
        } => tracing::info!(%relay, %session, ?reason, "negentropy session failed; REQ instead"),
        _ => {}
    }
}

/// Hands synced events to the host one at a time, in the engine's order (announcements
/// before what depends on them), and reports each outcome. A port error is `Failed`:
/// not stored, not refused, asked again later.
async fn ingest_in_order(
    ingestion: Arc<dyn Ingestion>,
    mut rx: mpsc::Receiver<(RelayUrl, Box<Event>)>,
    tx: mpsc::UnboundedSender<Side>,
) {
    while let Some((relay, event)) = rx.recv().await {
        let event_id = event.id;
        let call = std::panic::AssertUnwindSafe(ingestion.ingest((*event).clone(), &relay));
        let outcome = match call.catch_unwind().await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                tracing::warn!(%relay, %event_id, error = %e, "ingestion failed; the event will be asked again");
                IngestOutcome::Failed
            }
            Err(_) => {
                tracing::error!(%relay, %event_id, "the host's ingestion panicked; the event will be asked again");
                IngestOutcome::Failed
            }
        };
        // Accepted before the verdict: when the verdict completes a batch, what it
        // brought already waits to be applied, so the relay is not reported done before
        // it is. Every kind: the engine keeps what it needs (Sync+ learns participants
        // from comments too).
        if outcome == IngestOutcome::Accepted {
            let _ = tx.send(Side::Input(Input::Accepted { event }));
        }
        let _ = tx.send(Side::Input(Input::IngestOutcome {
            relay,
            event_id,
            outcome,
        }));
    }
}

impl Driver {
    async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut side: mpsc::UnboundedReceiver<Side>,
    ) {
        loop {
            self.carry_out_commands().await;
            #[cfg(feature = "metrics")]
            if let Some(reporter) = &mut self.reporter {
                let now = self.ports.clock.now();
                reporter.update(
                    now,
                    || (self.engine.status(now), self.exec.wire_bytes()),
                    self.engine.metrics(),
                );
            }
            let now = self.ports.clock.now();
            if inputs.is_empty() {
                // Every relay message that arrived before now has been fed.
                self.inputs_seen_until = now;
            }
            let wake = self.engine.poll_timeout();
            let sleep = Duration::from_millis(wake.0.saturating_sub(now.0));
            tokio::select! {
                Some(input) = inputs.recv() => self.feed(input),
                Some(s) = side.recv() => match s {
                    Side::Input(input) => self.feed(input),
                    Side::Limits(relay, limits) => self.engine.apply_nip11_limits(&relay, &limits),
                },
                msg = control.recv() => match msg {
                    Some(Control::Accepted(event)) => self.feed(Input::Accepted { event }),
                    Some(Control::Status(reply)) => {
                        let _ = reply.send(self.status());
                    }
                    Some(Control::RepoStatus(limit, reply)) => {
                        let _ = reply.send(self.engine.repo_status(limit));
                    }
                    Some(Control::Shutdown(reply)) => {
                        let result = self.stop(&mut side).await;
                        let _ = reply.send(result);
                        return;
                    }
                    None => {
                        // Every handle dropped: stop, keeping the state.
                        let _ = self.stop(&mut side).await;
                        return;
                    }
                },
                _ = tokio::time::sleep(sleep) => {
                    let now = self.ports.clock.now();
                    self.engine.handle_timeout(now);
                }
            }
        }
    }

    fn feed(&mut self, input: Input) {
        let refused = match &input {
            Input::RelayConnectFailed { relay, reason } if reason.contains(REFUSED_BY_POLICY) => {
                tracing::warn!(%relay, %reason, "relay not dialled");
                true
            }
            _ => false,
        };
        log_relay_words(&input);
        #[cfg(feature = "metrics")]
        if let Some(reporter) = &self.reporter {
            reporter.record_connection(&input, refused);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = refused;
        let now = self.ports.clock.now();
        self.engine.handle_input(now, input);
    }

    async fn carry_out_commands(&mut self) {
        while let Some(command) = self.engine.poll_command() {
            match command {
                Command::Ingest { relay, event } => self.hand_over(relay, event).await,
                Command::ReadPurgatoryAnnouncements => {
                    let purgatory = self.ports.purgatory.clone();
                    let tx = self.side_tx.clone();
                    tokio::spawn(async move {
                        let announcements = match purgatory.announcements().await {
                            Ok(a) => a,
                            Err(e) => {
                                tracing::warn!(error = %e, "reading purgatory failed");
                                return;
                            }
                        };
                        let _ =
                            tx.send(Side::Input(Input::PurgatoryAnnouncements { announcements }));
                    });
                }
                Command::PersistState => {
                    if let Err(e) = self.persist().await {
                        tracing::warn!(error = %e, "persisting sync state failed");
                    }
                }
                command => {
                    if let Command::Connect { relay } = &command {
                        self.ask_nip11(relay);
                    }
                    let relay = command.relay().cloned();
                    let span =
                        tracing::debug_span!("relay", url = relay.as_ref().map(RelayUrl::as_str));
                    if let Err(e) = self.exec.execute(command).instrument(span).await {
                        // The inputs tell the engine the truth (a disconnect is on its way).
                        tracing::debug!(error = %e, "command not carried out");
                    }
                }
            }
        }
    }

    /// Asks a relay's NIP-11 document once, the first time it is dialled.
    fn ask_nip11(&mut self, relay: &RelayUrl) {
        if !self.options.fetch_nip11 || !self.nip11_asked.insert(relay.clone()) {
            return;
        }
        let relay = relay.clone();
        let tx = self.side_tx.clone();
        let dialer = self.dialer.clone();
        tokio::spawn(async move {
            match fetch_nip11(&relay, &dialer, Duration::from_secs(5)).await {
                Ok(doc) => {
                    let limits = Nip11Limitation::from_document(&doc);
                    let _ = tx.send(Side::Limits(relay.clone(), limits));
                }
                Err(e) => tracing::debug!(%relay, error = %e, "no NIP-11 limits; using defaults"),
            }
        });
    }

    /// Queues an event for the ingestion task, waiting while the queue is full (the
    /// backpressure that keeps a slow host from buffering without bound).
    async fn hand_over(&mut self, relay: RelayUrl, event: Box<Event>) {
        let event_id = event.id;
        let sent = match &self.ingest_tx {
            Some(tx) => tx.send((relay.clone(), event)).await.is_ok(),
            None => false,
        };
        if !sent {
            // Shutting down, or the ingestion task is gone: not stored, ask again later.
            self.feed(Input::IngestOutcome {
                relay,
                event_id,
                outcome: IngestOutcome::Failed,
            });
        }
    }

    /// Graceful stop: no more intake, drain what was handed over, persist.
    async fn stop(&mut self, side: &mut mpsc::UnboundedReceiver<Side>) -> Result<(), DriverError> {
        self.exec.shutdown().await;
        // Events received before the sockets closed still go to the host, as far as
        // the queue has room: the rest stay unconfirmed and are asked again.
        while let Some(command) = self.engine.poll_command() {
            if let Command::Ingest { relay, event } = command {
                let event_id = event.id;
                let queued = self
                    .ingest_tx
                    .as_ref()
                    .is_some_and(|tx| tx.try_send((relay.clone(), event)).is_ok());
                if !queued {
                    self.feed(Input::IngestOutcome {
                        relay,
                        event_id,
                        outcome: IngestOutcome::Failed,
                    });
                }
            }
        }
        self.ingest_tx = None;
        if let Some(mut task) = self.ingest_task.take() {
            let deadline = match self.options.shutdown_drain {
                Duration::ZERO => DEFAULT_SHUTDOWN_DRAIN,
                d => d,
            };
            let deadline = tokio::time::sleep(deadline);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut task => break,
                    Some(s) = side.recv() => self.feed_outcome(s),
                    _ = &mut deadline => {
                        task.abort();
                        tracing::warn!("shutdown: ingestion did not drain in time; the rest will be asked again after restart");
                        break;
                    }
                }
            }
        }
        while let Ok(s) = side.try_recv() {
            self.feed_outcome(s);
        }
        self.persist().await
    }

    /// During shutdown only the host's verdicts still matter.
    fn feed_outcome(&mut self, side: Side) {
        if let Side::Input(input @ Input::IngestOutcome { .. }) = side {
            self.feed(input);
        }
    }

    /// Saves a snapshot. Its "now" is the last moment the relay input channel was seen
    /// empty: messages still queued there arrived after it, so no cursor may claim
    /// them (under backpressure that moment can be minutes old).
    async fn persist(&mut self) -> Result<(), DriverError> {
        let now = self.ports.clock.now().min(self.inputs_seen_until);
        let snapshot = self.engine.snapshot(now);
        self.ports.state_store.save(&snapshot).await?;
        Ok(())
    }

    fn status(&self) -> DriverStatus {
        DriverStatus {
            relays: self.engine.status(self.ports.clock.now()),
            metrics: self.engine.metrics().clone(),
            repos: self.engine.repo_index().len(),
            lagged_messages: self.exec.lagged_messages(),
            forged_events: self.exec.forged_events(),
            wire: self.exec.wire_bytes(),
        }
    }
}
