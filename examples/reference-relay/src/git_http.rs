//! GRASP-01's git side, read only: the bare repositories this relay fills are served
//! over git's smart HTTP protocol at `/<npub>/<identifier>.git/...` on the relay's own
//! port, so clients — and other GRASP relays hunting for git data — can clone and
//! fetch from it with no other server. A repository is served once its announcement is
//! accepted here.
//!
//! git's own `git http-backend` does the protocol, run as a CGI child per request (as
//! other GRASP servers do): this module only routes, checks the repository, passes the
//! request body in and streams the CGI answer back. Pushes (`git-receive-pack`) are
//! refused with a clear 403: this relay takes git data by hunting, not by push. Every
//! answer carries `Access-Control-Allow-Origin: *` so web clients can fetch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use grasp_sync::RepoRef;
use nostr::{FromBech32, ToBech32};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::host::Host;

/// Largest request body taken (the wants and haves of a fetch negotiation).
const MAX_REQUEST_BODY: usize = 16 * 1024 * 1024;
/// How long reading a request body may take.
const MAX_BODY_TIME: Duration = Duration::from_secs(30);
/// How long one git request may run (a large clone included).
const MAX_REQUEST_TIME: Duration = Duration::from_secs(600);
/// Longest chunk-size line of a chunked body.
const MAX_CHUNK_LINE: u64 = 64;
/// git children running at once; more requests wait their turn.
const MAX_GIT_CHILDREN: usize = 8;

/// Bounds the git children: a client starting and dropping clones in a loop cannot pile
/// them up.
static GIT_CHILDREN: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_GIT_CHILDREN);

/// What `git http-backend` runs with: nothing in a served repository may change, and
/// the refs the fetcher keeps for itself (`refs/grasp-sync/*`: what other servers
/// advertised, not what the maintainer's state lists) are not shown.
const GIT_CONFIG: &str = "'http.receivepack'='false' 'uploadpack.hiderefs'='refs/grasp-sync'";

/// What a git request asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct GitRoute {
    repo: RepoRef,
    /// `/<npub>/<identifier>.git/<service path>`, as `git http-backend` wants it.
    path_info: String,
    push: bool,
}

/// Reads a git smart-HTTP path: `/<npub>/<identifier>.git/info/refs` (with the service
/// in the query), `/<npub>/<identifier>.git/git-upload-pack` or `.../git-receive-pack`.
/// `None` for anything else (not a git path, an npub that does not decode, an
/// identifier no repository can have).
pub fn route(path: &str, query: &str) -> Option<GitRoute> {
    let rest = path.strip_prefix('/')?;
    let (npub, rest) = rest.split_once('/')?;
    let (identifier, service) = rest.split_once(".git/")?;
    let push = match service {
        "info/refs" => query.split('&').any(|kv| kv == "service=git-receive-pack"),
        "git-upload-pack" => false,
        "git-receive-pack" => true,
        _ => return None,
    };
    if identifier.is_empty()
        || identifier.starts_with('.')
        || identifier.contains(['/', '\\', '\0', '%'])
    {
        return None;
    }
    let pubkey = nostr::PublicKey::from_bech32(npub).ok()?;
    let repo = RepoRef::new(&pubkey, identifier).ok()?;
    // The directory is named by the canonical (lowercase) npub, whatever the spelling.
    let npub = pubkey.to_bech32().ok()?;
    Some(GitRoute {
        repo,
        path_info: format!("/{npub}/{identifier}.git/{service}"),
        push,
    })
}

/// Answers one git request on `reader` (its head already read).
pub async fn serve(
    mut reader: BufReader<TcpStream>,
    addr: SocketAddr,
    method: &str,
    query: &str,
    headers: &HashMap<String, String>,
    route: GitRoute,
    host: &Host,
) -> std::io::Result<()> {
    if route.push {
        return plain(
            reader.get_mut(),
            403,
            "pushes are not accepted here: this GRASP relay serves git read only and takes git data from the repository's other clone URLs\n",
        )
        .await;
    }
    let repo_dir = host.locator.locate(&route.repo);
    if !host.repo_accepted(&route.repo) || !repo_dir.as_deref().is_some_and(Path::exists) {
        return plain(reader.get_mut(), 404, "no such repository here\n").await;
    }
    if method != "GET" && method != "POST" {
        return plain(reader.get_mut(), 405, "method not allowed\n").await;
    }
    let body = match tokio::time::timeout(MAX_BODY_TIME, read_body(&mut reader, headers)).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return plain(reader.get_mut(), 400, &format!("{e}\n")).await,
        Err(_) => return plain(reader.get_mut(), 408, "request body timed out\n").await,
    };
    let Ok(_child_slot) = GIT_CHILDREN.acquire().await else {
        return plain(reader.get_mut(), 503, "shutting down\n").await;
    };
    let run = cgi(&host.git_root, addr, method, query, headers, &route, body);
    match tokio::time::timeout(MAX_REQUEST_TIME, run_into(run, reader.get_mut())).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::other("git request timed out")),
    }
}

/// The request body: by `Content-Length`, or chunked; at most [`MAX_REQUEST_BODY`].
async fn read_body(
    reader: &mut BufReader<TcpStream>,
    headers: &HashMap<String, String>,
) -> Result<Vec<u8>, String> {
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if !chunked {
        let len: usize = match headers.get("content-length") {
            Some(v) => v.parse().map_err(|_| "bad Content-Length".to_owned())?,
            None => 0,
        };
        if len > MAX_REQUEST_BODY {
            return Err("request body too large".into());
        }
        let mut body = vec![0; len];
        reader
            .read_exact(&mut body)
            .await
            .map_err(|e| format!("request body: {e}"))?;
        return Ok(body);
    }
    let mut body = Vec::new();
    loop {
        let line = bounded_line(reader).await?;
        let size = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size, 16).map_err(|_| "bad chunk size".to_owned())?;
        let end = body
            .len()
            .checked_add(size)
            .filter(|end| *end <= MAX_REQUEST_BODY)
            .ok_or_else(|| "request body too large".to_owned())?;
        let start = body.len();
        body.resize(end, 0);
        reader
            .read_exact(&mut body[start..])
            .await
            .map_err(|e| format!("chunk: {e}"))?;
        bounded_line(reader).await?;
        if size == 0 {
            return Ok(body);
        }
    }
}

/// One line of a chunked body, at most [`MAX_CHUNK_LINE`] bytes.
async fn bounded_line(reader: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = String::new();
    (&mut *reader)
        .take(MAX_CHUNK_LINE)
        .read_line(&mut line)
        .await
        .map_err(|e| format!("chunked body: {e}"))?;
    if !line.ends_with('\n') {
        return Err("bad chunked body".into());
    }
    Ok(line)
}

/// `git http-backend` for this request, ready to run.
fn cgi(
    git_root: &Path,
    addr: SocketAddr,
    method: &str,
    query: &str,
    headers: &HashMap<String, String>,
    route: &GitRoute,
    body: Vec<u8>,
) -> (Command, Vec<u8>) {
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", git_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", &route.path_info)
        .env("REQUEST_METHOD", method)
        .env("QUERY_STRING", query)
        .env("REMOTE_ADDR", addr.ip().to_string())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("GIT_CONFIG_PARAMETERS", GIT_CONFIG)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (header, var) in [
        ("content-type", "CONTENT_TYPE"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ] {
        if let Some(v) = headers.get(header) {
            cmd.env(var, v);
        }
    }
    (cmd, body)
}

/// Runs the CGI child and streams its answer to `stream` as an HTTP response.
async fn run_into(
    (mut cmd, body): (Command, Vec<u8>),
    stream: &mut TcpStream,
) -> std::io::Result<()> {
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!(error = %e, "cannot run git http-backend");
            return plain(stream, 500, "git is not available on this server\n").await;
        }
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut stderr = child.stderr.take().expect("piped stderr");
    let feed = async move {
        let _ = stdin.write_all(&body).await;
        drop(stdin);
    };
    let answer = async {
        // CGI head: `Status:` and headers until a blank line.
        let mut status = "200 OK".to_owned();
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).await? == 0 {
                // git ended before its answer began.
                return plain(stream, 502, "git failed to answer\n").await;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            match line.split_once(':') {
                Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_owned(),
                Some(_) => {
                    head.push_str(line);
                    head.push_str("\r\n");
                }
                None => {}
            }
        }
        let response = format!(
            "HTTP/1.1 {status}\r\n{head}Access-Control-Allow-Origin: *\r\nAccess-Control-Allow-Headers: *\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(response.as_bytes()).await?;
        tokio::io::copy(&mut stdout, stream).await?;
        stream.flush().await?;
        let _ = stream.shutdown().await;
        std::io::Result::Ok(())
    };
    let errors = tokio::spawn(async move {
        let mut errors = Vec::new();
        let _ = stderr.read_to_end(&mut errors).await;
        errors
    });
    let (_, answered) = tokio::join!(feed, answer);
    if answered.is_err() {
        // The client went away: git would block on a full pipe until the timeout.
        let _ = child.start_kill();
    }
    let exit = child.wait().await;
    let errors = errors.await.unwrap_or_default();
    if !errors.is_empty() || !exit.as_ref().is_ok_and(|s| s.success()) {
        tracing::debug!(exit = ?exit, stderr = %String::from_utf8_lossy(&errors), "git http-backend");
    }
    answered
}

/// A short text answer.
async fn plain(stream: &mut TcpStream, code: u16, text: &str) -> std::io::Result<()> {
    crate::http::respond(stream, code, "text/plain; charset=utf-8", text.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr::{Keys, ToBech32};

    #[test]
    fn routes_only_smart_http_paths_of_valid_repositories() {
        let keys = Keys::generate();
        let npub = keys.public_key().to_bech32().unwrap();
        let fetch = route(
            &format!("/{npub}/my-repo.git/info/refs"),
            "service=git-upload-pack",
        )
        .expect("a fetch");
        assert!(!fetch.push);
        assert_eq!(
            fetch.repo,
            RepoRef::new(&keys.public_key(), "my-repo").unwrap()
        );
        assert_eq!(fetch.path_info, format!("/{npub}/my-repo.git/info/refs"));
        assert!(route(&format!("/{npub}/r.git/git-upload-pack"), "").is_some_and(|r| !r.push));
        assert!(route(&format!("/{npub}/r.git/git-receive-pack"), "").is_some_and(|r| r.push));
        assert!(route(
            &format!("/{npub}/r.git/info/refs"),
            "service=git-receive-pack"
        )
        .is_some_and(|r| r.push));
        for bad in [
            format!("/{npub}/r.git/objects/info/packs"),
            format!("/{npub}/.hidden.git/info/refs"),
            format!("/{npub}/a%2F..%2Fb.git/info/refs"),
            "/npub1nope/r.git/info/refs".to_owned(),
            "/status".to_owned(),
            format!("/{npub}/r/info/refs"),
        ] {
            assert!(route(&bad, "").is_none(), "{bad}");
        }
    }
}
