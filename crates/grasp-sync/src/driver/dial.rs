//! Every connection to a relay, checked and pinned. A relay URL comes from a stranger's
//! announcement, and its *name* may resolve to an address inside our own network
//! (`ws://internal.example` → `10.0.0.5`), or answer differently from one lookup to the
//! next (DNS rebinding). So each connection — the websocket and the NIP-11 fetch alike —
//! goes through [`Dialer::dial`]:
//!
//! 1. resolve the name **once** (through a [`Resolver`]: the system's, or a test's);
//! 2. check **every** resolved address with the relay policy — one forbidden address
//!    refuses the relay, since a name answering both public and private addresses is
//!    exactly the rebinding trick;
//! 3. connect to a checked address, never resolving again. TLS server name and the
//!    `Host` header stay the name in the URL.
//!
//! [`PinnedTransport`] plugs this into nostr-relay-pool as its websocket transport
//! (no proxies: a proxy would resolve the name itself), with a cap on message size.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_wsocket::futures_util::{Sink, SinkExt, StreamExt};
use async_wsocket::{ConnectionMode, Message};
use nostr::util::BoxedFuture;
use nostr::Url;
use nostr_relay_pool::transport::error::TransportError;
use nostr_relay_pool::transport::websocket::{WebSocketSink, WebSocketStream, WebSocketTransport};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::ports::RelayUrlPolicy;

/// Largest websocket message accepted from a remote relay (a NIP-34 event with its
/// envelope is far below this). Bigger messages end the connection, which counts
/// against the relay's health.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Resolves host names. A port, so tests need no DNS and can play rebinding tricks.
pub trait Resolver: Send + Sync + fmt::Debug {
    /// Every address `host` resolves to, with `port`.
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxedFuture<'a, std::io::Result<Vec<SocketAddr>>>;
}

/// The operating system's resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxedFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// The words every policy refusal starts with (status, logs and the `refused` metric
/// label key on them).
pub const REFUSED_BY_POLICY: &str = "refused by the URL policy";

/// Why a relay was not dialled, or the dial failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The policy refuses an address the name resolves to (or the literal address).
    #[error("refused by the URL policy: {0}")]
    Refused(String),
    /// The name did not resolve.
    #[error("{host:?} does not resolve: {reason}")]
    Unresolvable {
        /// The name.
        host: String,
        /// The resolver's words.
        reason: String,
    },
    /// Every checked address refused the connection.
    #[error("connect: {0}")]
    Connect(std::io::Error),
}

/// Resolve once, check every address, connect to a checked one.
#[derive(Clone)]
pub struct Dialer {
    resolver: Arc<dyn Resolver>,
    policy: Arc<dyn RelayUrlPolicy>,
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer")
            .field("resolver", &self.resolver)
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// A dialer that checks addresses with `policy`, resolving with `resolver`.
    pub fn new(policy: Arc<dyn RelayUrlPolicy>, resolver: Arc<dyn Resolver>) -> Self {
        Self { resolver, policy }
    }

    /// The addresses `host` may be reached at: its checked resolution.
    pub async fn checked_addresses(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, DialError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs =
            match bare.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => self.resolver.resolve(bare, port).await.map_err(|e| {
                    DialError::Unresolvable {
                        host: bare.to_owned(),
                        reason: e.to_string(),
                    }
                })?,
            };
        if addrs.is_empty() {
            return Err(DialError::Unresolvable {
                host: bare.to_owned(),
                reason: "no addresses".into(),
            });
        }
        for a in &addrs {
            self.policy
                .check_address(bare, a.ip())
                .map_err(DialError::Refused)?;
        }
        Ok(addrs)
    }

    /// A TCP connection to `host:port` through a checked address.
    pub async fn dial(&self, host: &str, port: u16) -> Result<TcpStream, DialError> {
        let addrs = self.checked_addresses(host, port).await?;
        let mut last = None;
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(DialError::Connect(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
        })))
    }
}

/// nostr-relay-pool's websocket transport through a [`Dialer`].
#[derive(Debug, Clone)]
pub struct PinnedTransport {
    dialer: Dialer,
    max_message_bytes: usize,
}

impl PinnedTransport {
    /// Dials through `dialer`; messages larger than `max_message_bytes` end the
    /// connection.
    pub fn new(dialer: Dialer, max_message_bytes: usize) -> Self {
        Self {
            dialer,
            max_message_bytes,
        }
    }

    async fn open(
        &self,
        url: &Url,
    ) -> Result<(WebSocketSink, WebSocketStream), Box<dyn std::error::Error + Send + Sync>> {
        let host = url.host_str().ok_or("relay URL has no host")?;
        let port = url.port_or_known_default().ok_or("relay URL has no port")?;
        let tcp = self.dialer.dial(host, port).await?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.max_message_bytes))
            .max_frame_size(Some(self.max_message_bytes));
        // The handshake (TLS server name, Host header) uses the URL's name, over the
        // connection to the checked address.
        let (ws, _) =
            tokio_tungstenite::client_async_tls_with_config(url.as_str(), tcp, Some(config), None)
                .await?;
        let (tx, rx) = ws.split();
        let sink: WebSocketSink = Box::new(ConvertingSink(tx));
        let stream: WebSocketStream = Box::pin(rx.filter_map(|m| {
            std::future::ready(match m {
                Ok(m) => from_tungstenite(m).map(Ok),
                Err(e) => Some(Err(TransportError::backend(e))),
            })
        }));
        Ok((sink, stream))
    }
}

/// An error from the transport, as the pool reports it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportFailure(String);

impl WebSocketTransport for PinnedTransport {
    fn support_ping(&self) -> bool {
        true
    }

    fn connect<'a>(
        &'a self,
        url: &'a Url,
        mode: &'a ConnectionMode,
        timeout: Duration,
    ) -> BoxedFuture<'a, Result<(WebSocketSink, WebSocketStream), TransportError>> {
        Box::pin(async move {
            if !matches!(mode, ConnectionMode::Direct) {
                // A proxy resolves the name itself, past our checks.
                return Err(TransportError::backend(TransportFailure(
                    "relay connections do not go through proxies".into(),
                )));
            }
            match tokio::time::timeout(timeout, self.open(url)).await {
                Ok(Ok(pair)) => Ok(pair),
                Ok(Err(e)) => Err(TransportError::backend(TransportFailure(e.to_string()))),
                Err(_) => Err(TransportError::backend(TransportFailure(
                    "connect timed out".into(),
                ))),
            }
        })
    }
}

/// tungstenite's message as the pool's; raw frames are not passed on.
fn from_tungstenite(m: WsMessage) -> Option<Message> {
    Some(match m {
        WsMessage::Text(t) => Message::Text(t.to_string()),
        WsMessage::Binary(b) => Message::Binary(b.to_vec()),
        WsMessage::Ping(p) => Message::Ping(p.to_vec()),
        WsMessage::Pong(p) => Message::Pong(p.to_vec()),
        WsMessage::Close(f) => Message::Close(f.map(Into::into)),
        WsMessage::Frame(_) => return None,
    })
}

/// The pool's messages into tungstenite's sink (a plain struct: the pool warns that
/// `sink_map_err` may panic).
struct ConvertingSink<S>(S);

impl<S> Sink<Message> for ConvertingSink<S>
where
    S: Sink<WsMessage, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    type Error = TransportError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready_unpin(cx).map_err(TransportError::backend)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.0
            .start_send_unpin(WsMessage::from(item))
            .map_err(TransportError::backend)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_flush_unpin(cx).map_err(TransportError::backend)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_close_unpin(cx).map_err(TransportError::backend)
    }
}
