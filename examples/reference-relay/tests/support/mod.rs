//! Helpers shared by the reference relay's process-level tests: git on the command
//! line with a neutral configuration, a source repository, and a `git daemon`.
#![allow(dead_code)] // each test binary uses some of them

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- git fixtures

/// Runs `git` in `dir` with a neutral configuration; panics with git's stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A source repo served as `<base>/repo.git`: `main` with two commits and a `pr-1`
/// branch with one more. Returns (main tip, pr tip).
pub fn source_repo(base: &Path) -> (String, String) {
    let work = base.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q"]);
    for i in 0..2 {
        std::fs::write(work.join("file.txt"), format!("line {i}\n")).unwrap();
        git(&work, &["add", "."]);
        git(&work, &["commit", "-q", "-m", &format!("commit {i}")]);
    }
    let main = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["checkout", "-q", "-b", "pr-1"]);
    std::fs::write(work.join("pr.txt"), "a change\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "pr"]);
    let pr = git(&work, &["rev-parse", "HEAD"]);
    git(base, &["clone", "-q", "--bare", "work", "repo.git"]);
    (main, pr)
}

/// A `git daemon` serving a directory on 127.0.0.1, killed on drop.
pub struct GitDaemon {
    child: Child,
    pub port: u16,
}

impl GitDaemon {
    /// Serves `base` on a free port.
    pub fn start(base: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(base, port)
    }

    /// Serves `base` on a port chosen earlier (a URL that must not change).
    pub fn start_on(base: &Path, port: u16) -> Self {
        // The daemon itself, not the `git` wrapper (which would leave it orphaned).
        let exec_path = git(base, &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args([
                "--export-all",
                &format!("--base-path={}", base.display()),
                &format!("--port={port}"),
                "--listen=127.0.0.1",
                "--reuseaddr",
            ])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, port }
    }

    /// The clone URL of `repo.git`.
    pub fn url(&self) -> String {
        format!("git://127.0.0.1:{}/repo.git", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
