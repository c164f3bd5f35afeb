//! Bytes on the wire, per relay, as the transport (`dial.rs`) counts them: the TCP
//! payload of each relay's websocket connections (compressed, TLS and handshakes
//! included; NIP-11 fetches and IP/TCP headers not) and what the messages received from
//! it weigh once inflated. The two side by side say whether a
//! relay compresses and what syncing with it costs, in the unit its operator pays in.
//!
//! Counts add up over every connection to a relay, reconnections included, for as long
//! as the transport lives; they are read by the driver for status and metrics.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::model::RelayUrl;

/// One relay's byte counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WireBytes {
    /// Bytes read from the relay's TCP connections.
    pub received: u64,
    /// Bytes written to them.
    pub sent: u64,
    /// Payload bytes of the messages received, inflated: `received` well below this
    /// means the relay compresses.
    pub message_bytes_received: u64,
}

/// One relay's running counts, shared with its connections.
#[derive(Debug, Default)]
pub(crate) struct WireCounts {
    received: AtomicU64,
    sent: AtomicU64,
    message_bytes_received: AtomicU64,
}

impl WireCounts {
    pub(crate) fn add_message(&self, bytes: usize) {
        self.message_bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn read(&self) -> WireBytes {
        WireBytes {
            received: self.received.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            message_bytes_received: self.message_bytes_received.load(Ordering::Relaxed),
        }
    }
}

/// Every relay's counts, by relay.
#[derive(Debug, Clone, Default)]
pub(crate) struct WireTally {
    relays: Arc<Mutex<BTreeMap<RelayUrl, Arc<WireCounts>>>>,
}

impl WireTally {
    /// The counts of `relay` (created on its first connection).
    pub(crate) fn counts(&self, relay: &RelayUrl) -> Arc<WireCounts> {
        Arc::clone(self.lock().entry(relay.clone()).or_default())
    }

    /// Every relay's counts now, in relay order.
    pub(crate) fn snapshot(&self) -> Vec<(RelayUrl, WireBytes)> {
        self.lock()
            .iter()
            .map(|(relay, counts)| (relay.clone(), counts.read()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<RelayUrl, Arc<WireCounts>>> {
        // Counters only: a panic elsewhere leaves nothing half-written that matters.
        self.relays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A connection whose bytes are added to a relay's counts as they pass.
pub(crate) struct Counted<S> {
    pub(crate) inner: S,
    pub(crate) counts: Arc<WireCounts>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        self.counts
            .received
            .fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            self.counts.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // TLS writes its records vectored: passed on, not split into one write each.
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.counts.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
