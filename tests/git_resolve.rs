//! Revision resolution against a real `git daemon` serving a repository made by the real `git`.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use multiarch_operator::git::{resolve, GitError};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git must be installed (apt-get install git)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // git-daemon forks; end its whole process group
        let _ = Command::new("kill")
            .arg("--")
            .arg(format!("-{}", self.0.id()))
            .status();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn branches_tags_and_head_resolve_to_the_commits_git_reports() {
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("work");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("Dockerfile"), "FROM scratch\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "first"]);
    let first = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["tag", "-a", "v1.0.0", "-m", "release"]);
    std::fs::write(work.join("README"), "x\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "second"]);
    let second = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["branch", "release", &first]);
    git(root.path(), &["clone", "-q", "--bare", "work", "repo.git"]);

    let port = free_port();
    let daemon = Daemon(
        Command::new("git")
            .args([
                "daemon",
                "--export-all",
                "--reuseaddr",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", root.path().display()))
            .arg(root.path())
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "git daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let url = format!("git://127.0.0.1:{port}/repo.git");
    assert_eq!(resolve(&url, "main", None).await.unwrap(), second);
    assert_eq!(resolve(&url, "HEAD", None).await.unwrap(), second);
    assert_eq!(resolve(&url, "release", None).await.unwrap(), first);
    assert_eq!(
        resolve(&url, "v1.0.0", None).await.unwrap(),
        first,
        "annotated tag peeled to its commit"
    );
    match resolve(&url, "no-such-branch", None).await {
        Err(GitError::Unavailable(msg)) => assert!(msg.contains("no-such-branch")),
        other => panic!("{other:?}"),
    }
    match resolve(&format!("git://127.0.0.1:{port}/missing.git"), "main", None).await {
        Err(e) => assert!(!e.is_transient(), "{e}"),
        Ok(c) => panic!("resolved {c} in a missing repository"),
    }
    drop(daemon);
    let nobody = format!("git://127.0.0.1:{}/repo.git", free_port());
    match resolve(&nobody, "main", None).await {
        Err(e) => assert!(
            e.is_transient(),
            "an unreachable server is worth retrying: {e}"
        ),
        Ok(c) => panic!("resolved {c} with no server"),
    }
}
