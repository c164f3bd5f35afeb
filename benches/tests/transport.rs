//! The driver's websocket transport (`driver::PinnedTransport`) through the pool's
//! transport trait. Against a relay that compresses (the deflating front of
//! `src/front.rs` before a nostr-relay-builder relay) and the same front not
//! compressing: permessage-deflate is agreed only where offered, every event arrives
//! whole either way, the wire carries fewer bytes when compressed, and a message that
//! inflates past the cap ends the connection instead of being delivered. A `wss://` URL
//! goes through TLS to the URL's name, whose certificate is checked; a URL no handshake
//! could carry is an error, not a panic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use grasp_sync::driver::{Dialer, PinnedTransport, SystemResolver};
use grasp_sync::ports::AllowAllRelays;
use grasp_sync_benches::front::{start_front, FrontMode, FrontObserver};
use nostr::{
    ClientMessage, EventBuilder, Filter, JsonUtil, Keys, Kind, RelayMessage, SubscriptionId,
};
use nostr_database::{MemoryDatabase, MemoryDatabaseOptions, NostrDatabase};
use nostr_relay_builder::prelude::{LocalRelay, RelayBuilder};
use nostr_relay_pool::transport::websocket::WebSocketTransport;

#[derive(Default)]
struct Seen {
    deflate: Mutex<Vec<bool>>,
    down: AtomicU64,
}

impl FrontObserver for Seen {
    fn connected(&self, deflate: bool) {
        self.deflate.lock().expect("lock").push(deflate);
    }
    fn wire(&self, down: u64, _up: u64) {
        self.down.fetch_add(down, Ordering::Relaxed);
    }
    fn client_message(&self, _text: &[u8]) {}
    fn relay_message(&self, _text: &[u8]) {}
}

/// A relay holding `events` notes of `content_len` bytes each, by one author.
async fn relay_with(events: usize, content_len: usize) -> (LocalRelay, std::net::SocketAddr) {
    let db = MemoryDatabase::with_opts(MemoryDatabaseOptions {
        events: true,
        max_events: None,
    });
    let keys = Keys::generate();
    for i in 0..events {
        let content = format!("{i:06} {}", "patch line ".repeat(content_len / 11));
        let event = EventBuilder::new(Kind::TextNote, content)
            .sign_with_keys(&keys)
            .expect("sign");
        assert!(db.save_event(&event).await.expect("save").is_success());
    }
    let relay = LocalRelay::new(
        RelayBuilder::default()
            .addr("127.0.0.1".parse().expect("literal"))
            .max_filter_limit(10_000)
            .database(Arc::new(db) as Arc<dyn NostrDatabase>),
    );
    relay.run().await.expect("relay runs");
    let url = relay.url().await.to_string();
    let addr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .expect("socket address");
    (relay, addr)
}

/// Opens the transport on `url`, asks for everything, returns the events read before
/// EOSE, or the error that ended the stream.
async fn fetch_all(url: &str, max_message_bytes: usize) -> Result<usize, String> {
    fetch_with(&transport(max_message_bytes), url).await
}

fn transport(max_message_bytes: usize) -> PinnedTransport {
    PinnedTransport::new(
        Dialer::new(Arc::new(AllowAllRelays), Arc::new(SystemResolver)),
        max_message_bytes,
    )
}

/// [`fetch_all`] through `transport`.
async fn fetch_with(transport: &PinnedTransport, url: &str) -> Result<usize, String> {
    let url = nostr::Url::parse(url).expect("url");
    let (mut tx, mut rx) = transport
        .connect(
            &url,
            &async_wsocket::ConnectionMode::Direct,
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| e.to_string())?;
    let sub = SubscriptionId::new("all");
    // Over a kilobyte (ids nobody has, beside the filter that matches everything): what
    // we send goes out uncompressed and must still reach the relay whole.
    let unknown = (0..20u8).map(|i| nostr::EventId::from_byte_array([i; 32]));
    let req = ClientMessage::req(
        sub.clone(),
        vec![Filter::new().limit(10_000), Filter::new().ids(unknown)],
    );
    tx.send(async_wsocket::Message::Text(req.as_json()))
        .await
        .map_err(|e| e.to_string())?;
    let mut events = 0;
    let read = async {
        while let Some(message) = rx.next().await {
            let async_wsocket::Message::Text(text) = message.map_err(|e| e.to_string())? else {
                continue;
            };
            match RelayMessage::from_json(&text).map_err(|e| e.to_string())? {
                RelayMessage::Event { event, .. } => {
                    event.verify().map_err(|e| e.to_string())?;
                    events += 1;
                }
                RelayMessage::EndOfStoredEvents(_) => return Ok(events),
                _ => {}
            }
        }
        Err(format!("stream ended after {events} events"))
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| "timed out".to_string())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deflate_agreed_where_offered_and_fewer_bytes_on_the_wire() {
    grasp_sync::install_default_crypto_provider();
    let (_relay, addr) = relay_with(300, 400).await;
    let compressed = Arc::new(Seen::default());
    let plain = Arc::new(Seen::default());
    let deflate_url = start_front(addr, FrontMode::Deflate, compressed.clone()).await;
    let plain_url = start_front(addr, FrontMode::Plain, plain.clone()).await;

    let (to_deflate, to_plain) = (transport(1 << 20), transport(1 << 20));
    assert_eq!(fetch_with(&to_deflate, &deflate_url).await, Ok(300));
    assert_eq!(fetch_with(&to_plain, &plain_url).await, Ok(300));

    assert_eq!(*compressed.deflate.lock().expect("lock"), vec![true]);
    assert_eq!(*plain.deflate.lock().expect("lock"), vec![false]);
    let (down_deflate, down_plain) = (
        compressed.down.load(Ordering::Relaxed),
        plain.down.load(Ordering::Relaxed),
    );
    println!("wire bytes down: deflate {down_deflate}, plain {down_plain}");
    assert!(
        down_deflate * 2 < down_plain,
        "compressed {down_deflate} B is not under half of plain {down_plain} B"
    );
    // The transport's own counts agree with the front's: the wire bytes it read (all the
    // front wrote, or nearly: a last frame may still be in flight), and the messages
    // inflated to more than twice that where compressed, to less without.
    let wire = |t: &PinnedTransport| match t.wire_bytes().as_slice() {
        [(_, bytes)] => *bytes,
        other => panic!("one relay's counts expected: {other:?}"),
    };
    let (compressed_counts, plain_counts) = (wire(&to_deflate), wire(&to_plain));
    println!("transport counts: deflate {compressed_counts:?}, plain {plain_counts:?}");
    for (counts, front_down) in [
        (compressed_counts, down_deflate),
        (plain_counts, down_plain),
    ] {
        assert!(
            counts.received <= front_down && counts.received * 100 >= front_down * 95,
            "{counts:?} against {front_down} written by the front"
        );
    }
    assert!(compressed_counts.received * 2 < compressed_counts.message_bytes_received);
    assert!(plain_counts.received > plain_counts.message_bytes_received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deflate_message_inflating_past_the_cap_ends_the_connection() {
    grasp_sync::install_default_crypto_provider();
    // One event of ~200 KB that compresses to a few KB, read with a 64 KiB cap.
    let (_relay, addr) = relay_with(1, 200_000).await;
    let seen = Arc::new(Seen::default());
    let url = start_front(addr, FrontMode::Deflate, seen.clone()).await;

    let outcome = fetch_all(&url, 64 * 1024).await;
    assert!(
        outcome.is_err(),
        "an over-cap message was delivered: {outcome:?}"
    );
    assert_eq!(*seen.deflate.lock().expect("lock"), vec![true]);
    assert!(
        seen.down.load(Ordering::Relaxed) < 64 * 1024,
        "the message crossed the wire uncompressed"
    );
    // The same event within the cap arrives.
    assert_eq!(fetch_all(&url, 1 << 20).await, Ok(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_url_too_long_for_a_request_is_an_error_not_a_panic() {
    grasp_sync::install_default_crypto_provider();
    let (_relay, addr) = relay_with(1, 10).await;
    let path = "a".repeat(70_000);
    let outcome = fetch_all(&format!("ws://{addr}/{path}"), 1 << 20).await;
    assert!(
        outcome.as_ref().is_err_and(|e| e.contains("cap")),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_wss_speaks_tls_to_the_name_and_checks_its_certificate() {
    use tokio_rustls::rustls;
    grasp_sync::install_default_crypto_provider();
    // A TLS listener whose self-signed certificate no public root vouches for; it
    // records the server name each client asks for.
    let cert = rustls::pki_types::CertificateDer::from(
        include_bytes!("fixtures/localhost.cert.der").to_vec(),
    );
    let key = rustls::pki_types::PrivateKeyDer::try_from(
        include_bytes!("fixtures/localhost.key.der").to_vec(),
    )
    .expect("PKCS#8 key");
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("certificate"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let names = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&names);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
            if let Ok(start) = acceptor.await {
                seen.lock()
                    .expect("lock")
                    .push(start.client_hello().server_name().map(str::to_owned));
                let _ = start.into_stream(Arc::clone(&config)).await;
            }
        }
    });

    let outcome = fetch_all(&format!("wss://localhost:{port}"), 1 << 20).await;
    assert!(
        outcome
            .as_ref()
            .is_err_and(|e| e.to_ascii_lowercase().contains("certificate")),
        "{outcome:?}"
    );
    assert_eq!(
        *names.lock().expect("lock"),
        vec![Some("localhost".to_owned())]
    );
}
