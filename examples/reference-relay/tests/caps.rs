//! The client gate's caps, each driven over a real websocket on 127.0.0.1 against an
//! in-process reference relay with small caps: going over gets the protocol's answer
//! with a reason, the connection stays open where the protocol allows, and other
//! clients are served meanwhile.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use grasp_reference_relay::gate::Caps;
use grasp_reference_relay::{start, RelayConfig, RunningRelay};
use nostr::{EventBuilder, JsonUtil, Keys, Kind, Tag};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const STEP: Duration = Duration::from_secs(10);

fn caps() -> Caps {
    Caps {
        max_message_bytes: 64 * 1024,
        max_event_bytes: 16 * 1024,
        max_event_tags: 50,
        max_filters: 5,
        max_subscriptions: 3,
        max_connections: 8,
        max_connections_per_ip: 4,
        events_per_ip_per_minute: 20,
    }
}

async fn relay() -> (RunningRelay, tempfile::TempDir) {
    grasp_reference_relay::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig::for_tests(dir.path());
    config.caps = caps();
    (start(config).await.expect("relay starts"), dir)
}

async fn client(relay: &RunningRelay) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(relay.url())
        .await
        .expect("websocket");
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next text message as JSON; `None` when the connection closed.
async fn next(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(STEP, ws.next())
            .await
            .expect("an answer in time")
        {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Asserts the connection still serves: a REQ gets its EOSE.
async fn still_serves(ws: &mut Ws, sub: &str) {
    send(ws, json!(["REQ", sub, {"kinds": [1], "limit": 1}])).await;
    loop {
        let m = next(ws).await.expect("connection still open");
        if m[0] == "EOSE" && m[1] == sub {
            break;
        }
    }
    send(ws, json!(["CLOSE", sub])).await;
}

fn note(keys: &Keys, content: &str, tags: usize) -> nostr::Event {
    EventBuilder::new(Kind::TextNote, content)
        .tags((0..tags).map(|i| Tag::hashtag(format!("t{i}"))))
        .sign_with_keys(keys)
        .unwrap()
}

/// Publishes and returns the OK message's (accepted, reason).
async fn publish(ws: &mut Ws, event: &nostr::Event) -> (bool, String) {
    ws.send(Message::text(format!("[\"EVENT\",{}]", event.as_json())))
        .await
        .unwrap();
    loop {
        let m = next(ws).await.expect("an OK");
        if m[0] == "OK" && m[1] == event.id.to_hex() {
            return (
                m[2].as_bool().unwrap(),
                m[3].as_str().unwrap_or("").to_owned(),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_oversized_event_and_too_many_tags_get_ok_false() {
    let (relay, _dir) = relay().await;
    let mut ws = client(&relay).await;
    let keys = Keys::generate();
    let big = note(&keys, &"x".repeat(20 * 1024), 0);
    let (ok, why) = publish(&mut ws, &big).await;
    assert!(
        !ok && why.starts_with("invalid:") && why.contains("max_event_bytes is 16384"),
        "{why}"
    );
    let tagged = note(&keys, "tags", 51);
    let (ok, why) = publish(&mut ws, &tagged).await;
    assert!(
        !ok && why.contains("51 tags") && why.contains("max_event_tags is 50"),
        "{why}"
    );
    // Within the caps the relay's own policy answers (this note tags no repository).
    let (ok, why) = publish(&mut ws, &note(&keys, "small", 50)).await;
    assert!(!ok && why.contains("does not tag a repository"), "{why}");
    still_serves(&mut ws, "after").await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_too_many_filters_and_subscriptions_get_closed() {
    let (relay, _dir) = relay().await;
    let mut ws = client(&relay).await;
    let filters: Vec<Value> = (0..6).map(|i| json!({"kinds": [i]})).collect();
    let mut req = vec![json!("REQ"), json!("wide")];
    req.extend(filters);
    send(&mut ws, Value::Array(req)).await;
    let m = next(&mut ws).await.unwrap();
    assert_eq!(m[0], "CLOSED");
    assert_eq!(m[1], "wide");
    assert!(m[2].as_str().unwrap().contains("max_filters is 5"), "{m}");

    for sub in ["s1", "s2", "s3"] {
        send(&mut ws, json!(["REQ", sub, {"kinds": [1]}])).await;
        assert_eq!(next(&mut ws).await.unwrap(), json!(["EOSE", sub]));
    }
    send(&mut ws, json!(["REQ", "s4", {"kinds": [1]}])).await;
    let m = next(&mut ws).await.unwrap();
    assert_eq!(m[0], "CLOSED");
    assert!(
        m[2].as_str().unwrap().starts_with("blocked:")
            && m[2].as_str().unwrap().contains("max_subscriptions is 3"),
        "{m}"
    );
    // Closing one makes room.
    send(&mut ws, json!(["CLOSE", "s1"])).await;
    send(&mut ws, json!(["REQ", "s4", {"kinds": [1]}])).await;
    assert_eq!(next(&mut ws).await.unwrap(), json!(["EOSE", "s4"]));
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_malformed_message_gets_a_notice_and_the_connection_stays() {
    let (relay, _dir) = relay().await;
    let mut ws = client(&relay).await;
    for junk in ["not json", "[\"EVENT\",{\"id\":1}]", "[\"WHAT\"]", "{}"] {
        ws.send(Message::text(junk)).await.unwrap();
        let m = next(&mut ws).await.expect("still open");
        assert_eq!(m[0], "NOTICE", "{junk}: {m}");
        assert!(m[1].as_str().unwrap().starts_with("invalid:"), "{m}");
    }
    still_serves(&mut ws, "after-junk").await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_oversized_message_gets_a_notice_then_close() {
    let (relay, _dir) = relay().await;
    let mut ws = client(&relay).await;
    ws.send(Message::text(format!(
        "[\"REQ\",\"x\",{{\"search\":\"{}\"}}]",
        "y".repeat(100 * 1024)
    )))
    .await
    .unwrap();
    let m = next(&mut ws).await.expect("a NOTICE before the close");
    assert_eq!(m[0], "NOTICE");
    assert!(
        m[1].as_str()
            .unwrap()
            .contains("max_message_length is 65536"),
        "{m}"
    );
    assert!(next(&mut ws).await.is_none(), "then the connection closes");
    // Others are not affected.
    let mut other = client(&relay).await;
    still_serves(&mut other, "other").await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_connections_per_ip_are_refused_over_the_cap_and_freed_on_close() {
    let (relay, _dir) = relay().await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(client(&relay).await);
    }
    let refused = tokio_tungstenite::connect_async(relay.url()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429)
        }
        other => panic!("a fifth connection from one address: {other:?}"),
    }
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    // The slot is freed once the relay sees the close.
    let mut again = None;
    for _ in 0..50 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(relay.url()).await {
            again = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    still_serves(again.as_mut().expect("a slot freed"), "freed").await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_events_per_ip_per_minute_are_rate_limited_across_connections() {
    let (relay, _dir) = relay().await;
    let keys = Keys::generate();
    let mut a = client(&relay).await;
    let mut b = client(&relay).await;
    for i in 0..20 {
        let ws = if i % 2 == 0 { &mut a } else { &mut b };
        let (_, why) = publish(ws, &note(&keys, &format!("n{i}"), 0)).await;
        assert!(!why.starts_with("rate-limited:"), "event {i}: {why}");
    }
    let (ok, why) = publish(&mut b, &note(&keys, "one too many", 0)).await;
    assert!(!ok && why.starts_with("rate-limited:"), "{why}");
    still_serves(&mut a, "after-limit").await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caps_relay_stays_responsive_while_one_client_hits_every_cap() {
    let (relay, _dir) = relay().await;
    let keys = Keys::generate();
    let mut abuser = client(&relay).await;
    let wide: Vec<Value> = std::iter::once(json!("REQ"))
        .chain(std::iter::once(json!("wide")))
        .chain((0..1_000).map(|i| json!({"kinds": [i], "#t": ["x"]})))
        .collect();
    let wide = Value::Array(wide).to_string();
    let big = format!(
        "[\"EVENT\",{}]",
        note(&keys, &"z".repeat(20 * 1024), 0).as_json()
    );
    let tagged = format!("[\"EVENT\",{}]", note(&keys, "t", 1_000).as_json());
    let flood = tokio::spawn(async move {
        let mut refused = 0;
        for _ in 0..100 {
            for m in [&wide, &big, &tagged] {
                abuser.send(Message::text(m.clone())).await.unwrap();
                let answer = next(&mut abuser)
                    .await
                    .expect("abuser answered, not dropped");
                assert!(
                    matches!(answer[0].as_str(), Some("CLOSED" | "OK")),
                    "{answer}"
                );
                refused += 1;
            }
        }
        refused
    });
    let mut polite = client(&relay).await;
    for i in 0..20 {
        still_serves(&mut polite, &format!("p{i}")).await;
    }
    assert_eq!(
        flood.await.unwrap(),
        300,
        "every abusive message got its refusal"
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_are_advertised_in_nip11() {
    let (relay, _dir) = relay().await;
    let doc = grasp_reference_relay::nip11_document(relay.config());
    let l = &doc["limitation"];
    assert_eq!(l["max_message_length"], 64 * 1024);
    assert_eq!(l["max_event_tags"], 50);
    assert_eq!(l["max_filters"], 5);
    assert_eq!(l["max_subscriptions"], 3);
    assert_eq!(l["max_connections_per_ip"], 4);
    assert_eq!(l["events_per_ip_per_minute"], 20);
    relay.shutdown().await.unwrap();
}

/// A websocket to `relay` from source address `from` (127.0.0.x: loopback, distinct IPs).
async fn client_from(
    relay: &RunningRelay,
    from: &str,
) -> Result<WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(relay.local_addr()).await.unwrap();
    tokio_tungstenite::client_async(relay.url(), tcp)
        .await
        .map(|(ws, _)| ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_connections_in_total_are_refused_over_the_cap() {
    let (relay, _dir) = relay().await;
    let mut open = Vec::new();
    for from in ["127.0.0.1", "127.0.0.2"] {
        for _ in 0..4 {
            open.push(client_from(&relay, from).await.expect("under both caps"));
        }
    }
    match client_from(&relay, "127.0.0.3").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503)
        }
        other => panic!("a ninth connection: {other:?}"),
    }
    relay.shutdown().await.unwrap();
}

/// A relay shutting down closes its websockets with 1001 "going away", not a reset: a
/// peer's sync (nostr-relay-pool) logs a reset as an ERROR.
#[tokio::test]
async fn caps_shutdown_closes_websockets_with_going_away() {
    let (relay, _dir) = relay().await;
    let mut ws = client(&relay).await;
    send(&mut ws, json!(["REQ", "live", {"kinds": [1]}])).await;
    assert_eq!(next(&mut ws).await, Some(json!(["EOSE", "live"])));
    let stopping = tokio::spawn(relay.shutdown());
    let frame = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => break Ok(frame),
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Err(e.to_string()),
                None => break Err("ended without a close frame".into()),
            }
        }
    })
    .await
    .expect("the relay closes within 10 s");
    let frame = frame
        .expect("a close frame, not a reset")
        .expect("with a code");
    assert_eq!(u16::from(frame.code), 1001, "going away: {frame:?}");
    // Answer it, as a client does; the relay then stops cleanly.
    let _ = ws.close(None).await;
    stopping.await.unwrap().expect("clean shutdown");
}
