//! One port for everything: each TCP connection's HTTP request head is read here; a
//! websocket upgrade is answered (101) and handed to nostr-relay-builder with
//! `LocalRelay::take_connection` through the client gate (`gate.rs`: connection, message
//! and subscription caps); anything else is plain HTTP: the NIP-11 document
//! (`Accept: application/nostr+json`), `/metrics` (Prometheus text), `/status` (JSON),
//! the operator's page `/status.html` (also `/` for browsers), the accepted repositories
//! over git smart HTTP at `/<npub>/<identifier>.git/...` (`git_http.rs`), and a short
//! text page at `/` for everyone else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grasp_sync::git::HuntMetrics;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::gate::{Gate, Refusal};
use crate::git_http;
use crate::host::Host;
use crate::status_page;

/// What the HTTP side needs.
pub struct HttpCtx {
    /// The host.
    pub host: Arc<Host>,
    /// Metrics registry.
    pub registry: Registry,
    /// NIP-11 document.
    pub nip11: serde_json::Value,
    /// Git hunt counters, updated by the hunter.
    pub hunt: Arc<Mutex<HuntMetrics>>,
    /// Start time.
    pub started: Instant,
    /// Connection and message caps (every websocket goes through it).
    pub gate: Arc<Gate>,
    /// Flips at shutdown: open websockets close with 1001 "going away".
    pub stop: watch::Receiver<bool>,
}

/// Accepts connections until `stop` flips; then gives the open ones [`CLOSE_GRACE`] to
/// close (websockets send their close frame) and aborts the rest.
pub async fn serve(listener: TcpListener, ctx: Arc<HttpCtx>, mut stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let ctx = ctx.clone();
                    conns.spawn(async move {
                        if let Err(e) = handle(stream, addr, ctx).await {
                            tracing::debug!(%addr, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.shutdown().await;
}

/// How long shutdown waits for open connections to close cleanly.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

async fn read_head(
    reader: &mut BufReader<TcpStream>,
) -> std::io::Result<(String, String, HashMap<String, String>)> {
    let mut first = String::new();
    reader.read_line(&mut first).await?;
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("/").to_owned();
    let mut headers = HashMap::new();
    let mut total = first.len();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).await?;
        total += n;
        if n == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if total > 16 * 1024 || headers.len() > 100 {
            return Err(std::io::Error::other("request head too large"));
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    Ok((method, path, headers))
}

async fn handle(stream: TcpStream, addr: SocketAddr, ctx: Arc<HttpCtx>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let (method, path, headers) =
        tokio::time::timeout(Duration::from_secs(10), read_head(&mut reader))
            .await
            .map_err(|_| std::io::Error::other("request head timed out"))??;
    let upgrade = headers
        .get("upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if upgrade {
        let slot = match ctx.gate.admit(addr.ip()) {
            Ok(slot) => slot,
            Err(Refusal::Full(max)) => {
                let body = format!("the relay is full ({max} connections); try again later");
                return respond(reader.get_mut(), 503, "text/plain", body.as_bytes()).await;
            }
            Err(Refusal::TooManyFromIp(max)) => {
                let body = format!("too many connections from your address (max {max})");
                return respond(reader.get_mut(), 429, "text/plain", body.as_bytes()).await;
            }
        };
        let Some(key) = headers.get("sec-websocket-key") else {
            return respond(
                reader.get_mut(),
                400,
                "text/plain",
                b"missing Sec-WebSocket-Key",
            )
            .await;
        };
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        reader.get_mut().write_all(response.as_bytes()).await?;
        let Some(relay) = ctx.host.relay.get().cloned() else {
            return Ok(());
        };
        return ctx
            .gate
            .clone()
            .serve(reader, addr, relay, slot, ctx.stop.clone())
            .await;
    }
    let (route, query) = path.split_once('?').unwrap_or((&path, ""));
    if method == "OPTIONS" {
        // CORS preflight: every answer here allows any origin and header.
        return respond(reader.get_mut(), 204, "text/plain", b"").await;
    }
    if let Some(git) = git_http::route(route, query) {
        return git_http::serve(reader, addr, &method, query, &headers, git, &ctx.host).await;
    }
    if method != "GET" && method != "HEAD" {
        return respond(reader.get_mut(), 405, "text/plain", b"method not allowed").await;
    }
    let accept = headers.get("accept").map(String::as_str).unwrap_or("");
    let wants_nip11 = accept.contains("application/nostr+json");
    let wants_html = accept.contains("text/html");
    let stream = reader.get_mut();
    match route {
        "/" if wants_nip11 => {
            let body = serde_json::to_vec_pretty(&ctx.nip11).unwrap_or_default();
            respond(stream, 200, "application/nostr+json", &body).await
        }
        "/metrics" => {
            let mut text = String::new();
            if prometheus_client::encoding::text::encode(&mut text, &ctx.registry).is_err() {
                return respond(stream, 500, "text/plain", b"metrics encoding failed").await;
            }
            respond(
                stream,
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text.as_bytes(),
            )
            .await
        }
        "/status" => {
            let body = serde_json::to_vec_pretty(&status_json(&ctx).await).unwrap_or_default();
            respond(stream, 200, "application/json", &body).await
        }
        "/status.html" | "/" if route != "/" || wants_html => {
            let page = status_page(&ctx).await;
            respond(stream, 200, "text/html; charset=utf-8", page.as_bytes()).await
        }
        "/" => {
            let text = format!(
                "grasp-reference-relay: a Nostr git relay with GRASP-02 sync.\n\nwebsocket: {}\nNIP-11:    curl -H 'Accept: application/nostr+json' http://{addr}/\nstatus:    http://{addr}/status (JSON), http://{addr}/status.html (page)\nmetrics:   http://{addr}/metrics\n",
                ctx.host
                    .public_urls
                    .first()
                    .map(|u| u.as_str().to_owned())
                    .unwrap_or_default(),
                addr = headers.get("host").cloned().unwrap_or_default(),
            );
            respond(stream, 200, "text/plain; charset=utf-8", text.as_bytes()).await
        }
        _ => respond(stream, 404, "text/plain", b"not found").await,
    }
}

/// A complete response with a body, CORS open, and the connection closed after it.
pub(crate) async fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nAccess-Control-Allow-Origin: *\r\nAccess-Control-Allow-Headers: *\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    let _ = stream.shutdown().await;
    Ok(())
}

/// The operator's page (`status_page.rs`), from the same sources as `/status`.
async fn status_page(ctx: &HttpCtx) -> String {
    let now = grasp_sync::ports::Clock::now(&grasp_sync::ports::SystemClock);
    let (sync, repos) = match ctx.host.sync.get() {
        Some(handle) => match (
            handle.status().await,
            handle.repo_status(status_page::REPOS_LISTED).await,
        ) {
            (Ok(s), Ok(r)) => (Ok(s), r),
            (Err(e), _) | (_, Err(e)) => (Err(format!("stopped: {e}")), Vec::new()),
        },
        None => (Err("starting".to_owned()), Vec::new()),
    };
    status_page::render(&status_page::PageData {
        public_urls: ctx.host.public_urls.iter().map(|u| u.to_string()).collect(),
        uptime_secs: ctx.started.elapsed().as_secs(),
        sync,
        repos: &repos,
        held: &ctx.host.held_events(),
        waiting: &ctx.host.waiting(),
        hunt: *ctx.hunt.lock().unwrap_or_else(|p| p.into_inner()),
        now,
    })
}

/// The `/status` document.
pub async fn status_json(ctx: &HttpCtx) -> serde_json::Value {
    let now_ms = grasp_sync::ports::Clock::now(&grasp_sync::ports::SystemClock).0;
    let held: Vec<serde_json::Value> = ctx
        .host
        .held_events()
        .into_iter()
        .map(|h| {
            serde_json::json!({
                "id": h.event.id.to_hex(),
                "kind": h.event.kind.as_u16(),
                "from_user": h.from_user,
                "waiting_secs": now_ms.saturating_sub(h.received_at_ms) / 1000,
            })
        })
        .collect();
    let hunt = *ctx.hunt.lock().unwrap_or_else(|p| p.into_inner());
    let (health, sync) = match ctx.host.sync.get() {
        Some(handle) => match handle.status().await {
            Ok(s) => ("ok", serde_json::to_value(&s).unwrap_or_default()),
            Err(e) => (
                "sync stopped",
                serde_json::json!({ "error": e.to_string() }),
            ),
        },
        None => ("starting", serde_json::Value::Null),
    };
    serde_json::json!({
        "health": health,
        "uptime_secs": ctx.started.elapsed().as_secs(),
        "public_urls": ctx.host.public_urls.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
        "sync": sync,
        "purgatory": { "waiting": held.len(), "events": held },
        "git_hunt": {
            "repos_waiting": hunt.repos_waiting,
            "events_waiting": hunt.events_waiting,
            "jobs_in_flight": hunt.jobs_in_flight,
            "complete": hunt.hunts_complete,
            "partial": hunt.hunts_partial,
            "empty": hunt.hunts_empty,
            "failed": hunt.hunts_failed,
            "refused": hunt.hunts_refused,
            "bytes_fetched": hunt.bytes_fetched,
        },
    })
}
