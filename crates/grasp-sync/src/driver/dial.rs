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
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_wsocket::futures_util::{Sink, SinkExt, Stream, StreamExt};
use async_wsocket::message::CloseFrame;
use async_wsocket::{ConnectionMode, Message};
use nostr::util::BoxedFuture;
use nostr::Url;
use nostr_relay_pool::transport::error::TransportError;
use nostr_relay_pool::transport::websocket::{WebSocketSink, WebSocketStream, WebSocketTransport};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use super::wire::{Counted, WireBytes, WireCounts, WireTally};
use crate::model::RelayUrl;
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

/// nostr-relay-pool's websocket transport through a [`Dialer`], offering
/// permessage-deflate (RFC 7692).
///
/// A relay that compresses (strfry does; relays built on tungstenite do not) sends
/// events and negentropy's hex id lists at a fraction of their size. We offer it so the
/// relay compresses what it sends; what we send goes uncompressed, as RFC 7692 allows
/// message by message: our messages are few, and a compressor is ~300 KiB of state per
/// connection, where an inflater is ~40 KiB (built on the first compressed message).
///
/// Clones share their byte counts ([`PinnedTransport::wire_bytes`]).
#[derive(Debug, Clone)]
pub struct PinnedTransport {
    dialer: Dialer,
    max_message_bytes: usize,
    tally: WireTally,
}

impl PinnedTransport {
    /// Dials through `dialer`; a message of `max_message_bytes` or more (counted
    /// decompressed) ends the connection.
    pub fn new(dialer: Dialer, max_message_bytes: usize) -> Self {
        Self {
            dialer,
            max_message_bytes,
            tally: WireTally::default(),
        }
    }

    /// Bytes on the wire per relay so far, over every connection this transport (or a
    /// clone) made.
    pub fn wire_bytes(&self) -> Vec<(RelayUrl, WireBytes)> {
        self.tally.snapshot()
    }

    fn options(&self) -> yawc::Options {
        yawc::Options::default()
            .with_limits(self.max_message_bytes, self.max_message_bytes)
            // Offers permessage-deflate (the level would only matter if we compressed).
            .with_low_latency_compression()
            // Nothing we send reaches the threshold: we never compress.
            .with_compression_threshold(usize::MAX)
    }

    async fn open(
        &self,
        url: &Url,
    ) -> Result<(WebSocketSink, WebSocketStream), Box<dyn std::error::Error + Send + Sync>> {
        // Checked before dialling (`RelayUrl` is not the only way to get here): a
        // websocket scheme, a host, and a length the handshake can carry — yawc panics
        // on a request URI it cannot build (over 64 KiB).
        let relay = RelayUrl::parse(url.as_str())?;
        let secure = relay.is_secure();
        let host = url.host_str().ok_or("relay URL has no host")?;
        let port = url.port_or_known_default().ok_or("relay URL has no port")?;
        let tcp = self.dialer.dial(host, port).await?;
        tcp.set_nodelay(true)?;
        let counts = self.tally.counts(&relay);
        let tcp = Counted {
            inner: tcp,
            counts: Arc::clone(&counts),
        };
        // The handshake (TLS server name, Host header) uses the URL's name, over the
        // connection to the checked address.
        if secure {
            let tls = tls_to(host, tcp).await?;
            let ws = yawc::WebSocket::handshake(url.clone(), tls, self.options()).await?;
            Ok(split(ws, counts))
        } else {
            let ws = yawc::WebSocket::handshake(url.clone(), tcp, self.options()).await?;
            Ok(split(ws, counts))
        }
    }
}

/// A TLS connection to `host` (checked against the webpki roots) over `tcp`, a
/// connection already made to a checked address.
pub(crate) async fn tls_to<S: AsyncRead + AsyncWrite + Unpin>(
    host: &str,
    tcp: S,
) -> Result<tokio_rustls::client::TlsStream<S>, rustls::Error> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, rustls::Error>> = OnceLock::new();
    let config = CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            Ok(Arc::new(
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            ))
        })
        .clone()?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| rustls::Error::General(e.to_string()))
}

/// One connection as the pool's sink and stream.
fn split<S>(ws: yawc::WebSocket<S>, counts: Arc<WireCounts>) -> (WebSocketSink, WebSocketStream)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (tx, rx) = Frames {
        ws,
        counts,
        ended: false,
    }
    .split();
    let sink: WebSocketSink = Box::new(ConvertingSink(tx));
    let stream: WebSocketStream = Box::pin(rx.filter_map(|f| {
        std::future::ready(match f {
            Ok(f) => from_frame(f).transpose(),
            Err(e) => Some(Err(TransportError::backend(e))),
        })
    }));
    (sink, stream)
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

/// yawc's connection with its errors kept: yawc's own `Stream` ends silently on an
/// error, and the pool should log why a relay went away. Ends after the first error
/// (the connection is unusable then).
struct Frames<S> {
    ws: yawc::WebSocket<S>,
    /// Inflated message bytes are counted here.
    counts: Arc<WireCounts>,
    ended: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for Frames<S> {
    type Item = Result<yawc::Frame, yawc::WebSocketError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.ws.poll_next_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(frame)) => {
                if !frame.opcode().is_control() {
                    self.counts.add_message(frame.payload().len());
                }
                if frame.opcode() == yawc::OpCode::Ping {
                    // yawc queued the pong; send it now, not with our next message.
                    let _ = self.ws.poll_ready_unpin(cx);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Err(yawc::WebSocketError::ConnectionClosed)) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                self.ended = true;
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<yawc::Frame> for Frames<S> {
    type Error = yawc::WebSocketError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.ws.poll_ready_unpin(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: yawc::Frame) -> Result<(), Self::Error> {
        self.ws.start_send_unpin(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.ws.poll_flush_unpin(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A close yawc queued after an error (1009 for a message over the cap) goes out
        // first, so the relay learns why.
        let _ = ready!(self.ws.poll_ready_unpin(cx));
        self.ws.poll_close_unpin(cx)
    }
}

/// A frame as the pool's message (yawc hands over whole messages, decompressed; a
/// continuation never reaches here). Text that is not UTF-8 is an error, as the
/// protocol says.
fn from_frame(frame: yawc::Frame) -> Result<Option<Message>, TransportError> {
    if frame.opcode() == yawc::OpCode::Close {
        let close = frame.close_code().map(|code| CloseFrame {
            code: code.into(),
            reason: frame.close_reason().ok().flatten().unwrap_or("").to_owned(),
        });
        return Ok(Some(Message::Close(close)));
    }
    let (opcode, _, payload) = frame.into_parts();
    Ok(match opcode {
        yawc::OpCode::Text => Some(Message::Text(
            String::from_utf8(Vec::from(payload)).map_err(|_| {
                TransportError::backend(TransportFailure("text message is not UTF-8".into()))
            })?,
        )),
        yawc::OpCode::Binary => Some(Message::Binary(Vec::from(payload))),
        yawc::OpCode::Ping => Some(Message::Ping(payload.to_vec())),
        yawc::OpCode::Pong => Some(Message::Pong(payload.to_vec())),
        yawc::OpCode::Close | yawc::OpCode::Continuation => None,
    })
}

/// The pool's message as a frame.
fn to_frame(m: Message) -> yawc::Frame {
    match m {
        Message::Text(t) => yawc::Frame::text(t),
        Message::Binary(b) => yawc::Frame::binary(b),
        Message::Ping(p) => yawc::Frame::ping(p),
        Message::Pong(p) => yawc::Frame::pong(p),
        Message::Close(None) => yawc::Frame::close(yawc::close::CloseCode::Normal, b""),
        Message::Close(Some(f)) => yawc::Frame::close(f.code.into(), f.reason.as_bytes()),
    }
}

/// The pool's messages into the connection's sink (a plain struct: the pool warns that
/// `sink_map_err` may panic).
struct ConvertingSink<S>(S);

impl<S> Sink<Message> for ConvertingSink<S>
where
    S: Sink<yawc::Frame, Error = yawc::WebSocketError> + Unpin,
{
    type Error = TransportError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready_unpin(cx).map_err(TransportError::backend)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.0
            .start_send_unpin(to_frame(item))
            .map_err(TransportError::backend)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_flush_unpin(cx).map_err(TransportError::backend)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_close_unpin(cx).map_err(TransportError::backend)
    }
}
