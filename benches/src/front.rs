//! A relay that compresses, made from one that does not: a websocket front on 127.0.0.1
//! that negotiates permessage-deflate (RFC 7692) with its clients, as strfry does, and
//! passes every text message to and from an uncompressed relay behind it.
//!
//! The loopback relays here (nostr-relay-builder, the e2e's plain relay) are built on
//! tungstenite, which has no deflate. Measuring what our side's deflate saves needs the
//! other end to compress; this front is that end. It counts the bytes on its client's TCP
//! connection (what crosses the wire, compressed) and shows each message, decompressed,
//! to an observer (what the messages were).
//!
//! Requests that are not websocket upgrades (a NIP-11 fetch) are answered 404, as the
//! relays behind publish no NIP-11 document either.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// What the front reports.
pub trait FrontObserver: Send + Sync + 'static {
    /// A client's websocket was accepted; `deflate`: permessage-deflate was agreed.
    fn connected(&self, deflate: bool);
    /// Bytes written to (`down`) or read from (`up`) a client's TCP connection.
    fn wire(&self, down: u64, up: u64);
    /// A text message from the client, decompressed.
    fn client_message(&self, text: &[u8]);
    /// A text message from the relay, as the front sends it (before compression).
    fn relay_message(&self, text: &[u8]);
}

/// Whether the front offers compression: `Deflate` models strfry, `Plain` a relay
/// without it (the same front, so the two differ only in that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontMode {
    /// Negotiate permessage-deflate when the client offers it.
    Deflate,
    /// Never negotiate it.
    Plain,
}

/// Starts a front for the relay at `upstream`; returns its `ws://` URL.
pub async fn start_front(
    upstream: SocketAddr,
    mode: FrontMode,
    observer: Arc<dyn FrontObserver>,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind front");
    let addr = listener.local_addr().expect("front addr");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let _ = client.set_nodelay(true);
            let io = TokioIo::new(Counted {
                inner: client,
                observer: Arc::clone(&observer),
            });
            let observer = Arc::clone(&observer);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let observer = Arc::clone(&observer);
                    async move { Ok::<_, Infallible>(upgrade(req, upstream, mode, observer)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    format!("ws://{addr}")
}

/// Answers one request: a websocket upgrade, piped to `upstream`; anything else 404.
fn upgrade(
    mut req: Request<hyper::body::Incoming>,
    upstream: SocketAddr,
    mode: FrontMode,
    observer: Arc<dyn FrontObserver>,
) -> Response<Empty<Bytes>> {
    let options = match mode {
        // The relay side keeps its context (where the bytes are), like strfry.
        FrontMode::Deflate => yawc::Options::default().with_low_latency_compression(),
        FrontMode::Plain => yawc::Options::default(),
    };
    let Ok((response, upgraded)) = yawc::WebSocket::upgrade_with_options(&mut req, options) else {
        let mut not_found = Response::new(Empty::new());
        *not_found.status_mut() = StatusCode::NOT_FOUND;
        return not_found;
    };
    let deflate = response
        .headers()
        .get("sec-websocket-extensions")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("permessage-deflate"));
    tokio::spawn(async move {
        let Ok(client) = upgraded.await else { return };
        let Ok((relay, _)) = tokio_tungstenite::connect_async(format!("ws://{upstream}")).await
        else {
            return;
        };
        observer.connected(deflate);
        pipe(client, relay, observer).await;
    });
    response
}

/// Text messages both ways until either side ends.
async fn pipe<S>(
    client: yawc::WebSocket<S>,
    relay: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    observer: Arc<dyn FrontObserver>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut client_tx, mut client_rx) = client.split();
    let (mut relay_tx, mut relay_rx) = relay.split();
    let up_observer = Arc::clone(&observer);
    let up = tokio::spawn(async move {
        while let Some(frame) = client_rx.next().await {
            match frame.opcode() {
                yawc::OpCode::Text => {
                    up_observer.client_message(frame.payload());
                    let Ok(text) = std::str::from_utf8(frame.payload()) else {
                        break;
                    };
                    if relay_tx.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                yawc::OpCode::Close => break,
                _ => {}
            }
        }
        let _ = relay_tx.close().await;
    });
    while let Some(Ok(message)) = relay_rx.next().await {
        match message {
            Message::Text(text) => {
                observer.relay_message(text.as_bytes());
                if client_tx
                    .send(yawc::Frame::text(text.as_str().to_owned()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    let _ = client_tx.close().await;
    up.abort();
}

/// A client's TCP connection, its bytes counted as they pass.
struct Counted {
    inner: TcpStream,
    observer: Arc<dyn FrontObserver>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.observer.wire(0, read as u64);
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            self.observer.wire(n as u64, 0);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
