//! Integration tests for `http://` (and the `https://` TLS path) clone URLs against a
//! real `git http-backend` on 127.0.0.1.
//!
//! The server is a small CGI wrapper written here (std TCP, one thread per connection):
//! it decodes the request (Content-Length or chunked body), runs `git http-backend` with
//! the CGI environment — including `GIT_PROTOCOL` from the `Git-Protocol` header, which
//! protocol v2 needs and python's `http.server --cgi` does not pass — and turns the CGI
//! output into an HTTP/1.1 response closed by the end of the connection. Nothing leaves
//! 127.0.0.1.
#![cfg(feature = "git")]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use grasp_sync::git::{
    FetchWant, HuntConfig, HuntEvent, HuntRequest, HuntScheduler, Origin, WaitKind, Want,
};
use grasp_sync::{
    BareRepoLocator, CloneUrl, FetchError, GitFetcher, GixFetcher, GixFetcherConfig, Oid, RepoRef,
    UrlPolicy, UrlPolicyError, WallTime,
};
use nostr::EventId;

const PK: &str = "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1";

mod git_support;
use git_support::source_repo;

/// What the server does with a request.
#[derive(Clone)]
enum Mode {
    /// Serve it with `git http-backend`.
    Cgi,
    /// Answer `302 Found` pointing at the same path on another base URL.
    RedirectTo(String),
}

/// `git http-backend` behind a CGI wrapper on 127.0.0.1; stops on drop.
struct HttpGit {
    port: u16,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl HttpGit {
    fn start(root: &Path, mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (root, count, halt) = (root.to_owned(), requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        let (root, mode) = (root.clone(), mode.clone());
                        std::thread::spawn(move || {
                            let _ = serve(stream, &root, &mode);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            port,
            requests,
            stop,
        }
    }

    fn url(&self, name: &str) -> CloneUrl {
        CloneUrl::parse(&format!("http://127.0.0.1:{}/{name}", self.port)).unwrap()
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for HttpGit {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One connection, one request (the response ends with the connection).
fn serve(stream: TcpStream, root: &Path, mode: &Mode) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("/").to_owned(),
    );
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        read_chunked(&mut reader)?
    } else {
        let len = header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut b = vec![0; len];
        reader.read_exact(&mut b)?;
        b
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut out = stream;
    if let Mode::RedirectTo(base) = mode {
        let resp =
            format!("HTTP/1.1 302 Found\r\nLocation: {base}{target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return out.write_all(resp.as_bytes());
    }
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(p) = header("git-protocol") {
        cmd.env("GIT_PROTOCOL", p);
    }
    if let Some(e) = header("content-encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", e);
    }
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let mut cgi = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut cgi)?;
    let _ = writer.join();
    child.wait()?;
    // CGI headers end at the first blank line; `Status:` becomes the status line.
    let split = cgi
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    let split = split.or_else(|| {
        cgi.windows(2)
            .position(|w| w == b"\n\n")
            .map(|i| (i, i + 2))
    });
    let (head_end, body_start) = split.unwrap_or((0, 0));
    let head = String::from_utf8_lossy(&cgi[..head_end]).into_owned();
    let mut status = "200 OK".to_owned();
    let mut resp = String::new();
    for h in head.lines().map(str::trim_end).filter(|h| !h.is_empty()) {
        match h.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_owned(),
            _ => {
                resp.push_str(h);
                resp.push_str("\r\n");
            }
        }
    }
    out.write_all(format!("HTTP/1.1 {status}\r\n{resp}Connection: close\r\n\r\n").as_bytes())?;
    out.write_all(&cgi[body_start..])?;
    out.flush()
}

fn read_chunked(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size)?;
        let n =
            usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        if n == 0 {
            let mut end = String::new();
            r.read_line(&mut end)?; // the final CRLF (no trailers are sent)
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + n, 0);
        r.read_exact(&mut body[start..])?;
        let mut crlf = [0; 2];
        r.read_exact(&mut crlf)?;
    }
}

fn repo(name: &str) -> RepoRef {
    RepoRef::parse(&format!("30617:{PK}:{name}")).unwrap()
}

fn fetcher(local: &Path, policy: UrlPolicy) -> Arc<GixFetcher> {
    let mut cfg = GixFetcherConfig::new(BareRepoLocator::grasp_layout(local)).with_policy(policy);
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.io_timeout = Duration::from_secs(1);
    cfg.op_timeout = Duration::from_secs(10);
    Arc::new(GixFetcher::new(cfg))
}

fn want(oids: &[Oid]) -> FetchWant {
    FetchWant {
        oids: oids.iter().copied().collect(),
        any_data: false,
    }
}

/// A repo root with `r.git` (3 commits) and `other.git` (unrelated, 1 commit).
fn fixture() -> (tempfile::TempDir, PathBuf, PathBuf, Vec<Oid>) {
    let tmp = tempfile::tempdir().unwrap();
    let (root, local) = (tmp.path().join("srv"), tmp.path().join("local"));
    let commits = source_repo(&root, "r.git", 3);
    source_repo(&root, "other.git", 1);
    (tmp, root, local, commits)
}

#[test]
fn state_event_whose_commits_live_on_an_http_url_is_satisfied() {
    let (_tmp, root, local, commits) = fixture();
    let server = HttpGit::start(&root, Mode::Cgi);
    let f = fetcher(&local, UrlPolicy::allow_private());
    let start = Instant::now();
    let clock = || WallTime(1_000_000 + start.elapsed().as_millis() as u64);
    let mut s = HuntScheduler::new(HuntConfig {
        first_delay_sync: Duration::from_millis(10),
        ..HuntConfig::default()
    });
    let t0 = clock();
    // The first URL serves an unrelated repo; the commits live on the second.
    let wanted: BTreeSet<Oid> = commits[1..].iter().copied().collect();
    s.add(
        HuntRequest {
            event_id: EventId::from_byte_array([1; 32]),
            repo: repo("r"),
            kind: WaitKind::State,
            want: Want::Objects(wanted.clone()),
            clone_urls: vec![server.url("other.git"), server.url("r.git")],
            origin: Origin::Sync,
            expires_at: t0 + Duration::from_secs(1800),
        },
        t0,
    );
    // A minimal driver: jobs on threads, completions fed back.
    let (tx, rx) = mpsc::channel();
    let mut satisfied = None;
    let mut results = Vec::new();
    while satisfied.is_none() && start.elapsed() < Duration::from_secs(15) {
        for job in s.poll_jobs(clock()) {
            let (f, tx) = (f.clone(), tx.clone());
            std::thread::spawn(move || {
                let r = f.fetch(&job.repo, &job.url, &job.want);
                let _ = tx.send((job, r));
            });
        }
        while let Some(e) = s.poll_event() {
            if let HuntEvent::Satisfied { events, .. } = e {
                satisfied = Some(events);
            }
        }
        if let Ok((job, r)) = rx.recv_timeout(Duration::from_millis(50)) {
            results.push((job.url.clone(), r.clone()));
            s.on_job_done(job.id, r, clock());
        }
    }
    let events = satisfied.unwrap_or_else(|| panic!("not satisfied; results: {results:?}"));
    assert_eq!(events, vec![EventId::from_byte_array([1; 32])]);
    eprintln!("MEASURE http: satisfied after {:?}", start.elapsed());
    assert!(s.metrics().bytes_fetched > 0);
    assert!(server.requests() >= 2, "both URLs were asked");
}

#[test]
fn http_loopback_is_refused_by_default_policy_and_allowed_by_test_policy() {
    let (_tmp, root, local, commits) = fixture();
    let server = HttpGit::start(&root, Mode::Cgi);
    let w = want(&commits);
    let strict = fetcher(&local, UrlPolicy::default());
    let r = strict.fetch(&repo("r"), &server.url("r.git"), &w);
    assert!(
        matches!(
            r,
            Err(FetchError::Refused(UrlPolicyError::ForbiddenAddress {
                range: "loopback",
                ..
            }))
        ),
        "{r:?}"
    );
    let by_name = CloneUrl::parse(&format!("http://localhost:{}/r.git", server.port)).unwrap();
    assert!(matches!(
        strict.fetch(&repo("r"), &by_name, &w),
        Err(FetchError::Refused(_))
    ));
    let https = CloneUrl::parse(&format!("https://127.0.0.1:{}/r.git", server.port)).unwrap();
    assert!(matches!(
        strict.list_refs(&https),
        Err(FetchError::Refused(_))
    ));
    assert_eq!(server.requests(), 0, "a refused URL is never contacted");
    // Nor does a refused URL create the local repository.
    assert!(!local.exists());

    let open = fetcher(&local, UrlPolicy::allow_private());
    let r = open.fetch(&repo("r"), &server.url("r.git"), &w).unwrap();
    assert_eq!(r.present, w.oids);
    assert!(r.bytes > 0);
    // A name (pinned to the addresses the policy checked) works too.
    let r = open.fetch(&repo("r2"), &by_name, &w).unwrap();
    assert_eq!(r.present, w.oids);
}

#[test]
fn http_list_refs_any_data_and_missing_objects() {
    let (_tmp, root, local, commits) = fixture();
    let server = HttpGit::start(&root, Mode::Cgi);
    let f = fetcher(&local, UrlPolicy::allow_private());
    let refs = f.list_refs(&server.url("r.git")).unwrap();
    assert!(
        refs.iter()
            .any(|r| r.name == "refs/heads/main" && r.target == commits[2]),
        "{refs:?}"
    );
    let r = f
        .fetch(
            &repo("r"),
            &server.url("r.git"),
            &FetchWant {
                oids: BTreeSet::new(),
                any_data: true,
            },
        )
        .unwrap();
    assert!(r.any_data);
    assert_eq!(r.tips.len(), 1);
    // One object the server lacks ("not our ref") does not hide the one it has.
    let missing = Oid::from_hex("1234567890123456789012345678901234567890").unwrap();
    let r = f
        .fetch(
            &repo("s"),
            &server.url("r.git"),
            &want(&[commits[0], missing]),
        )
        .unwrap();
    assert_eq!(r.present, [commits[0]].into_iter().collect());
    // A path the server does not have gives nothing (an error for a listing), not a hang.
    assert!(f.list_refs(&server.url("nope.git")).is_err());
    let r = f.fetch(&repo("t"), &server.url("nope.git"), &want(&[commits[0]]));
    assert!(r.as_ref().map_or(true, |r| r.present.is_empty()), "{r:?}");
}

#[test]
fn http_redirects_are_not_followed() {
    let (_tmp, root, local, commits) = fixture();
    let real = HttpGit::start(&root, Mode::Cgi);
    let redirector = HttpGit::start(&root, Mode::RedirectTo(real.base()));
    let f = fetcher(&local, UrlPolicy::allow_private());
    let listing = f.list_refs(&redirector.url("r.git"));
    assert!(listing.is_err(), "{listing:?}");
    // The per-object fallback swallows per-object failures: nothing arrives.
    let r = f.fetch(&repo("r"), &redirector.url("r.git"), &want(&commits));
    assert!(r.as_ref().map_or(true, |r| r.present.is_empty()), "{r:?}");
    assert!(redirector.requests() >= 1);
    assert_eq!(
        real.requests(),
        0,
        "the redirect target must not be contacted"
    );
}

#[test]
fn http_silent_server_times_out_and_closed_port_is_unreachable() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fetcher(tmp.path(), UrlPolicy::allow_private());
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = CloneUrl::parse(&format!("http://{}/r.git", silent.local_addr().unwrap())).unwrap();
    let start = Instant::now();
    let r = f.list_refs(&url);
    assert!(matches!(r, Err(FetchError::Timeout(_))), "{r:?}");
    // io_timeout is 1 s; allow scheduling slack, far below the 10 s op timeout.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    drop(silent);

    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = CloneUrl::parse(&format!("http://{closed}/r.git")).unwrap();
    let r = f.list_refs(&url);
    assert!(matches!(r, Err(FetchError::Unreachable(_))), "{r:?}");
}

#[test]
fn https_goes_through_rustls_without_a_provider_panic() {
    // No provider is installed by this test binary: the fetcher must install one itself
    // (reqwest is built with `rustls-no-provider` and would panic otherwise). The server
    // speaks plain HTTP, so the TLS handshake fails — with an error, not a panic.
    let (_tmp, root, local, commits) = fixture();
    let server = HttpGit::start(&root, Mode::Cgi);
    let f = fetcher(&local, UrlPolicy::allow_private());
    let url = CloneUrl::parse(&format!("https://127.0.0.1:{}/r.git", server.port)).unwrap();
    let r = f.fetch(&repo("r"), &url, &want(&commits));
    assert!(r.is_err(), "{r:?}");
    assert!(!matches!(r, Err(FetchError::Unsupported(_))), "{r:?}");
    eprintln!("https against a plain-http server: {r:?}");
    // Installed now; a second call is a no-op.
    assert!(!grasp_sync::install_default_crypto_provider());
}
