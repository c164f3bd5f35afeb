//! What a client can make the relay spend, bounded. Every websocket goes through this
//! gate before nostr-relay-builder sees a byte of it: the gate speaks websocket to the
//! client (with a message-size cap), reads each message, enforces the caps below, and
//! passes what is allowed on to the relay over an in-memory websocket. Whatever goes
//! over a cap gets the protocol's answer — `OK false` for an EVENT, `CLOSED` for a REQ,
//! a `NOTICE` otherwise — and the connection stays open, except for an oversized
//! message (the frame cannot be skipped: NOTICE, then close 1009).
//!
//! Connections are counted here too (in total and per IP), before the upgrade, and
//! refused with HTTP 503 / 429 over the cap. Every cap is a [`Caps`] field with a flag
//! and is advertised in NIP-11 `limitation`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use nostr::{ClientMessage, JsonUtil, RelayMessage, SubscriptionId};
use nostr_relay_builder::LocalRelay;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A relay that stops (shutdown, or the relay side ending) says so to the client with a
/// close frame (1001 "going away") and waits a moment for the answer, so peers see a
/// normal close, not a connection reset.
async fn going_away<C>(
    mut from_client: SplitStream<WebSocketStream<C>>,
    mut to_client: SplitSink<WebSocketStream<C>, Message>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let close = Message::Close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "relay shutting down".into(),
    }));
    if to_client.send(close).await.is_ok() {
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(msg)) = from_client.next().await {
                if msg.is_close() {
                    break;
                }
            }
        })
        .await;
    }
}

/// How long a closing relay waits for a client to answer its close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The caps, each with its default (see docs/security.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Largest websocket message from a client, in bytes.
    pub max_message_bytes: usize,
    /// Largest event (its JSON), in bytes.
    pub max_event_bytes: usize,
    /// Most tags on one event.
    pub max_event_tags: usize,
    /// Most filters in one REQ (COUNT and NEG-OPEN carry one each).
    pub max_filters: usize,
    /// Most subscriptions open on one connection.
    pub max_subscriptions: usize,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Events one IP address may publish per minute (over all its connections).
    pub events_per_ip_per_minute: u32,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            max_message_bytes: 512 * 1024,
            max_event_bytes: 256 * 1024,
            max_event_tags: 2_000,
            max_filters: 20,
            max_subscriptions: 100,
            max_connections: 1_024,
            max_connections_per_ip: 32,
            events_per_ip_per_minute: 6_000,
        }
    }
}

/// Shared between connections: who is connected, who published how much.
#[derive(Debug)]
pub struct Gate {
    caps: Caps,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    open: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Per IP, when its recent events were published (last minute).
    published: HashMap<IpAddr, VecDeque<Instant>>,
}

/// A connection slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        st.open = st.open.saturating_sub(1);
        if let Some(n) = st.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Why a connection was refused before the upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached.
    Full(usize),
    /// `max_connections_per_ip` reached for this address.
    TooManyFromIp(usize),
}

impl Gate {
    /// A gate with these caps.
    pub fn new(caps: Caps) -> Arc<Self> {
        Arc::new(Self {
            caps,
            state: Mutex::new(GateState::default()),
        })
    }

    /// The caps in force.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a connection slot for `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let mut st = self.lock();
        if st.open >= self.caps.max_connections {
            return Err(Refusal::Full(self.caps.max_connections));
        }
        let n = st.per_ip.entry(ip).or_default();
        if *n >= self.caps.max_connections_per_ip {
            return Err(Refusal::TooManyFromIp(self.caps.max_connections_per_ip));
        }
        *n += 1;
        st.open += 1;
        Ok(Slot {
            gate: self.clone(),
            ip,
        })
    }

    /// Counts one event from `ip`; false when over its per-minute budget.
    fn may_publish(&self, ip: IpAddr, now: Instant) -> bool {
        let mut st = self.lock();
        let recent = st.published.entry(ip).or_default();
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            recent.pop_front();
        }
        if recent.len() >= self.caps.events_per_ip_per_minute as usize {
            return false;
        }
        recent.push_back(now);
        true
    }

    /// Serves one upgraded websocket (`stream` after the 101 answer): the client on
    /// one side, `relay` on the other, the caps in between.
    pub async fn serve<S>(
        self: Arc<Self>,
        stream: S,
        addr: SocketAddr,
        relay: LocalRelay,
        _slot: Slot,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.caps.max_message_bytes))
            .max_frame_size(Some(self.caps.max_message_bytes));
        let client = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;
        let (inner_client_end, inner_relay_end) = tokio::io::duplex(1 << 20);
        let relay_task = tokio::spawn(async move {
            let _ = relay.take_connection(inner_relay_end, addr).await;
        });
        let inner = WebSocketStream::from_raw_socket(inner_client_end, Role::Client, None).await;
        let result = self.pump(client, inner, addr.ip(), stop).await;
        relay_task.abort();
        result
    }

    async fn pump<C, R>(
        &self,
        client: WebSocketStream<C>,
        inner: WebSocketStream<R>,
        ip: IpAddr,
        mut stop: watch::Receiver<bool>,
    ) -> std::io::Result<()>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        R: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut to_client, mut from_client) = client.split();
        let (mut to_relay, mut from_relay) = inner.split();
        let mut subs: HashSet<SubscriptionId> = HashSet::new();
        let io = |e: tokio_tungstenite::tungstenite::Error| std::io::Error::other(e.to_string());
        if *stop.borrow() {
            going_away(from_client, to_client).await;
            return Ok(());
        }
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    let _ = to_relay.send(Message::Close(None)).await;
                    going_away(from_client, to_client).await;
                    return Ok(());
                }
                msg = from_client.next() => {
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_))) | None => return Ok(()),
                        Some(Ok(Message::Binary(_))) => {
                            let notice = RelayMessage::notice("invalid: binary messages are not accepted");
                            to_client.send(Message::text(notice.as_json())).await.map_err(io)?;
                            continue;
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(e))) => {
                            let notice = RelayMessage::notice(format!(
                                "invalid: message too large ({e}; max_message_length is {})",
                                self.caps.max_message_bytes
                            ));
                            let _ = to_client.send(Message::text(notice.as_json())).await;
                            let _ = to_client.send(Message::Close(Some(
                                tokio_tungstenite::tungstenite::protocol::CloseFrame {
                                    code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Size,
                                    reason: "message too large".into(),
                                },
                            ))).await;
                            return Ok(());
                        }
                        Some(Err(e)) => return Err(io(e)),
                    };
                    match self.check(&text, ip, &mut subs) {
                        Verdict::Forward => to_relay.send(Message::Text(text)).await.map_err(io)?,
                        Verdict::Answer(answer) => {
                            to_client.send(Message::text(answer.as_json())).await.map_err(io)?
                        }
                    }
                }
                msg = from_relay.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if let Some(id) = closed_subscription(&t) {
                            subs.remove(&id);
                        }
                        let t = match single_prefix(&t) {
                            Some(fixed) => fixed.into(),
                            None => t,
                        };
                        to_client.send(Message::Text(t)).await.map_err(io)?;
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        going_away(from_client, to_client).await;
                        return Ok(());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        going_away(from_client, to_client).await;
                        return Err(io(e));
                    }
                },
            }
        }
    }

    /// One client message against the caps.
    fn check(&self, text: &str, ip: IpAddr, subs: &mut HashSet<SubscriptionId>) -> Verdict {
        let caps = &self.caps;
        let msg = match ClientMessage::from_json(text) {
            Ok(m) => m,
            Err(e) => {
                return Verdict::Answer(Box::new(RelayMessage::notice(format!(
                    "invalid: could not parse the message ({e})"
                ))))
            }
        };
        match msg {
            ClientMessage::Event(event) => {
                let refuse =
                    |why: String| Verdict::Answer(Box::new(RelayMessage::ok(event.id, false, why)));
                let size = event.as_json().len();
                if size > caps.max_event_bytes {
                    return refuse(format!(
                        "invalid: event is {size} bytes; max_event_bytes is {}",
                        caps.max_event_bytes
                    ));
                }
                if event.tags.len() > caps.max_event_tags {
                    return refuse(format!(
                        "invalid: event has {} tags; max_event_tags is {}",
                        event.tags.len(),
                        caps.max_event_tags
                    ));
                }
                if !self.may_publish(ip, Instant::now()) {
                    return refuse(format!(
                        "rate-limited: more than {} events per minute from your address",
                        caps.events_per_ip_per_minute
                    ));
                }
                Verdict::Forward
            }
            ClientMessage::Req {
                subscription_id,
                filters,
            } => {
                let id = subscription_id.into_owned();
                if filters.len() > caps.max_filters {
                    return Verdict::Answer(Box::new(RelayMessage::closed(
                        id,
                        format!(
                            "invalid: {} filters; max_filters is {}",
                            filters.len(),
                            caps.max_filters
                        ),
                    )));
                }
                if !subs.contains(&id) && subs.len() >= caps.max_subscriptions {
                    return Verdict::Answer(Box::new(RelayMessage::closed(
                        id,
                        format!(
                            "blocked: {} subscriptions open; max_subscriptions is {}",
                            subs.len(),
                            caps.max_subscriptions
                        ),
                    )));
                }
                subs.insert(id);
                Verdict::Forward
            }
            ClientMessage::Close(id) => {
                subs.remove(&*id);
                Verdict::Forward
            }
            _ => Verdict::Forward,
        }
    }
}

/// What to do with one client message.
enum Verdict {
    /// Pass it to the relay.
    Forward,
    /// Answer the client ourselves; the relay never sees it.
    Answer(Box<RelayMessage<'static>>),
}

/// The subscription a relay's `CLOSED` ends (cheap prefix test first).
fn closed_subscription(text: &str) -> Option<SubscriptionId> {
    if !text.trim_start().starts_with("[\"CLOSED\"") {
        return None;
    }
    match RelayMessage::from_json(text) {
        Ok(RelayMessage::Closed {
            subscription_id, ..
        }) => Some(subscription_id.into_owned()),
        _ => None,
    }
}

/// nostr-relay-builder puts `blocked: ` before every write-policy refusal, and ours
/// already start with their own NIP-01 prefix (`restricted:`, `invalid:`, ...): an `OK`
/// that reads `blocked: restricted: …` goes out as `restricted: …`.
fn single_prefix(text: &str) -> Option<String> {
    if !text.trim_start().starts_with("[\"OK\"") {
        return None;
    }
    let Ok(RelayMessage::Ok {
        event_id,
        status,
        message,
    }) = RelayMessage::from_json(text)
    else {
        return None;
    };
    let rest = message.strip_prefix("blocked: ")?;
    const PREFIXES: [&str; 8] = [
        "blocked:",
        "restricted:",
        "invalid:",
        "error:",
        "rate-limited:",
        "duplicate:",
        "pow:",
        "auth-required:",
    ];
    if !PREFIXES.iter().any(|p| rest.starts_with(p)) {
        return None;
    }
    Some(RelayMessage::ok(event_id, status, rest.to_owned()).as_json())
}
