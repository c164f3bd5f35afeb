//! Helpers shared by the git tests: a `git` CLI wrapper that ignores the user's and the
//! system's configuration, and source repositories with known commits.

use std::path::Path;
use std::process::Command;

use grasp_sync::Oid;

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
            "-c",
            "commit.gpgsign=false",
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

/// The `git-daemon` program itself. `git daemon` runs it as a *child* of the `git`
/// wrapper, so killing the wrapper would orphan a listening daemon: tests spawn the
/// daemon directly, and killing it on drop leaves nothing behind.
#[allow(dead_code)] // not every test binary starts a daemon
pub fn git_daemon_program() -> std::path::PathBuf {
    let out = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("git runs");
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("git-daemon")
}

/// Creates `<base>/<name>` with `commits` commits on `main`, returns their ids.
pub fn source_repo(base: &Path, name: &str, commits: usize) -> Vec<Oid> {
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "-q"]);
    (0..commits)
        .map(|i| {
            std::fs::write(dir.join("f.txt"), format!("{} {i}\n", dir.display())).unwrap();
            git(&dir, &["add", "f.txt"]);
            git(&dir, &["commit", "-q", "-m", &format!("c{i}")]);
            Oid::from_hex(&git(&dir, &["rev-parse", "HEAD"])).unwrap()
        })
        .collect()
}
