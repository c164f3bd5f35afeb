//! NIP-11 relay information: one HTTP GET with `Accept: application/nostr+json`, so the
//! engine can learn a relay's limits (filters per REQ, subscriptions, message size)
//! instead of guessing them.
//!
//! rust-nostr 0.44 has no HTTP client of its own (its NIP-11 fetch needs reqwest, which
//! this crate links only under feature `git`, for gix's http transport), so the `tokio`
//! driver carries a minimal HTTP/1.1 client on a tokio `TcpStream`, dialled through the
//! same pinned-address check as the websockets: `Connection: close`, `Content-Length` or
//! chunked bodies, no redirects, a size cap. `wss://` relays are fetched over
//! `https://` with the websockets' own TLS set-up (`dial::tls_to`: tokio-rustls with the
//! *ring* provider chosen explicitly — never the process default, so no clash with a
//! binary that also links aws-lc-rs — and the webpki root store).
//!
//! Any failure is an error value; the caller then uses default limits.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::dial::{DialError, Dialer};
use crate::model::RelayUrl;

/// Largest NIP-11 response we accept (headers included). Real documents are a few KiB.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Why a NIP-11 document could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Nip11Error {
    /// The relay URL did not give a usable HTTP URL.
    #[error("cannot derive an HTTP URL from {0}")]
    Url(String),
    /// Refused by the relay policy, unresolvable, or the connect failed.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// Write or read failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The whole fetch took longer than the timeout.
    #[error("timed out")]
    Timeout,
    /// TLS setup or handshake failed.
    #[error("tls: {0}")]
    Tls(String),
    /// The server answered with a status other than 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The response was not valid HTTP/1.x as we read it.
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
    /// The response exceeded the size cap (256 KiB).
    #[error("response larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// The body was not JSON.
    #[error("body is not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Fetches `relay`'s NIP-11 document, all within `timeout`, connecting through `dialer`
/// (the relay policy checks every address the name resolves to, as for the websocket).
pub async fn fetch_nip11(
    relay: &RelayUrl,
    dialer: &Dialer,
    timeout: Duration,
) -> Result<serde_json::Value, Nip11Error> {
    tokio::time::timeout(timeout, fetch(relay, dialer))
        .await
        .map_err(|_| Nip11Error::Timeout)?
}

async fn fetch(relay: &RelayUrl, dialer: &Dialer) -> Result<serde_json::Value, Nip11Error> {
    let http_url = relay.nip11_http_url();
    let url = nostr::Url::parse(&http_url).map_err(|_| Nip11Error::Url(http_url.clone()))?;
    let host = url
        .host_str()
        .ok_or_else(|| Nip11Error::Url(http_url.clone()))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| Nip11Error::Url(http_url.clone()))?;
    let mut target = url.path().to_owned();
    if target.is_empty() {
        target.push('/');
    }
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    // Host header: as in the URL (IPv6 keeps its brackets), port only if not default.
    let host_header = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {host_header}\r\nAccept: application/nostr+json\r\n\
         User-Agent: grasp-sync\r\nConnection: close\r\n\r\n"
    );
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = dialer.dial(bare_host, port).await?;
    let raw = if url.scheme() == "https" {
        let stream = super::dial::tls_to(bare_host, tcp)
            .await
            .map_err(|e| Nip11Error::Tls(e.to_string()))?;
        exchange(stream, request.as_bytes()).await?
    } else {
        exchange(tcp, request.as_bytes()).await?
    };
    let body = parse_response(&raw)?;
    Ok(serde_json::from_slice(&body)?)
}

/// Writes the request, reads until the server closes (or the cap).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> Result<Vec<u8>, Nip11Error> {
    stream.write_all(request).await?;
    stream.flush().await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(n) => n,
            // Many TLS servers close without close_notify; what we have is complete
            // if the framing below says so.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > MAX_RESPONSE_BYTES {
            return Err(Nip11Error::TooLarge);
        }
    }
    Ok(out)
}

/// Splits an HTTP/1.x response into status, headers and body; returns the body of a
/// 200 response, de-chunked when needed.
fn parse_response(raw: &[u8]) -> Result<Vec<u8>, Nip11Error> {
    let head_end = find(raw, b"\r\n\r\n").ok_or(Nip11Error::Malformed("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..head_end])
        .map_err(|_| Nip11Error::Malformed("headers not UTF-8"))?;
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines
        .next()
        .ok_or(Nip11Error::Malformed("no status line"))?;
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(Nip11Error::Malformed("not HTTP/1.x"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(Nip11Error::Malformed("bad status code"))?;
    if status != 200 {
        return Err(Nip11Error::Status(status));
    }
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok();
        }
    }
    if chunked {
        return dechunk(body);
    }
    match length {
        Some(n) if body.len() >= n => Ok(body[..n].to_vec()),
        Some(_) => Err(Nip11Error::Malformed("body shorter than Content-Length")),
        None => Ok(body.to_vec()),
    }
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, Nip11Error> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n").ok_or(Nip11Error::Malformed("bad chunk header"))?;
        let size_text = std::str::from_utf8(&body[..line_end])
            .map_err(|_| Nip11Error::Malformed("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| Nip11Error::Malformed("bad chunk size"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            return Err(Nip11Error::Malformed("truncated chunk"));
        }
        out.extend_from_slice(&body[..size]);
        body = body
            .get(size + 2..)
            .ok_or(Nip11Error::Malformed("truncated chunk"))?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Serves one canned HTTP response and returns the request it received.
    async fn serve_once(response: &'static [u8]) -> (RelayUrl, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut req = Vec::new();
            while find(&req, b"\r\n\r\n").is_none() {
                let n = sock.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            sock.write_all(response).await.unwrap();
            sock.shutdown().await.unwrap();
            String::from_utf8(req).unwrap()
        });
        (
            RelayUrl::parse(&format!("ws://127.0.0.1:{port}")).unwrap(),
            handle,
        )
    }

    fn test_dialer() -> Dialer {
        Dialer::new(
            std::sync::Arc::new(crate::ports::AllowAllRelays),
            std::sync::Arc::new(crate::driver::dial::SystemResolver),
        )
    }

    #[tokio::test]
    async fn fetches_document_with_content_length() {
        let (url, server) = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/nostr+json\r\nContent-Length: 44\r\n\r\n{\"name\":\"t\",\"limitation\":{\"max_filters\":10}}",
        )
        .await;
        let doc = fetch_nip11(&url, &test_dialer(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(doc["limitation"]["max_filters"], 10);
        let req = server.await.unwrap();
        assert!(req.starts_with("GET / HTTP/1.1\r\n"));
        assert!(req.contains("Accept: application/nostr+json\r\n"));
    }

    #[tokio::test]
    async fn fetches_chunked_document() {
        let (url, _server) = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n",
        )
        .await;
        let doc = fetch_nip11(&url, &test_dialer(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(doc["a"], 1);
    }

    #[tokio::test]
    async fn non_200_and_junk_are_errors() {
        let (url, _s) = serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
        assert!(matches!(
            fetch_nip11(&url, &test_dialer(), Duration::from_secs(5)).await,
            Err(Nip11Error::Status(404))
        ));
        let (url, _s) = serve_once(b"HTTP/1.1 200 OK\r\n\r\n<html>").await;
        assert!(matches!(
            fetch_nip11(&url, &test_dialer(), Duration::from_secs(5)).await,
            Err(Nip11Error::Json(_))
        ));
    }

    #[tokio::test]
    async fn closed_port_fails_fast() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url = RelayUrl::parse(&format!("ws://127.0.0.1:{port}")).unwrap();
        assert!(matches!(
            fetch_nip11(&url, &test_dialer(), Duration::from_secs(5)).await,
            Err(Nip11Error::Dial(DialError::Connect(_)))
        ));
    }
}
