//! Resolving a revision against git servers of the test's own on loopback that misbehave: an
//! endless ref advertisement of valid pkt-lines, a huge one, one dripping a byte at a time, a
//! redirect loop, garbage, and a `git://` server that never stops advertising. Each must end in a
//! clear error within the resolver's deadline, and the whole process must stay under 128 MiB (its
//! peak resident set, `VmHWM`; this file holds one test so that nothing else shares the process).

#[path = "support/hostile.rs"]
mod hostile;

use std::time::{Duration, Instant};

use hostile::{Answer, Hostile};
use multiarch_operator::git;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT_KIB: u64 = 128 * 1024;

fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

fn pkt(s: &str) -> Vec<u8> {
    format!("{:04x}{s}", s.len() + 4).into_bytes()
}

fn ref_line() -> Vec<u8> {
    pkt(&format!("{} refs/heads/branch-of-many\n", "a".repeat(40)))
}

fn advertising() -> Vec<(String, String)> {
    vec![(
        "Content-Type".into(),
        "application/x-git-upload-pack-advertisement".into(),
    )]
}

/// Resolves `main` at `url`; what is wrong with the outcome, if anything.
async fn expect_error(case: &str, url: &str, says: &str, within: Duration) -> Vec<String> {
    let start = Instant::now();
    let result = git::resolve(url, "main", None).await;
    let elapsed = start.elapsed();
    println!(
        "hostile git case {case}: {:.1} s, process peak {} MiB: {result:?}",
        elapsed.as_secs_f64(),
        peak_kib() / 1024
    );
    let mut wrong = Vec::new();
    match result {
        Ok(commit) => wrong.push(format!("{case}: resolved to {commit}")),
        Err(e) => {
            let err = e.to_string();
            if !err.contains(says) {
                wrong.push(format!("{case}: {err:?} should say {says:?}"));
            }
            if err.contains("secret-token") {
                wrong.push(format!("{case}: the error shows the credentials: {err}"));
            }
        }
    }
    if elapsed >= within {
        wrong.push(format!("{case}: took {elapsed:?}"));
    }
    wrong
}

/// A `git://` server advertising refs for ever.
async fn endless_git_daemon() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 512];
                let _ = stream.read(&mut request).await;
                let lines = ref_line().repeat(1000);
                while stream.write_all(&lines).await.is_ok() {}
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_git_servers_end_in_errors_with_bounded_memory() {
    multiarch_operator::install_crypto_provider();
    let server = Hostile::start(|_, path| {
        let repo = path.trim_start_matches('/').split('/').next().unwrap_or("");
        match repo {
            "endless" => Answer::Endless {
                headers: advertising(),
                piece: ref_line(),
            },
            "huge" => Answer::Huge {
                headers: advertising(),
                len: 300 * 1024 * 1024,
                piece: ref_line(),
            },
            "drip" => Answer::Drip {
                headers: advertising(),
                len: 10_000,
                every: Duration::from_millis(100),
                piece: ref_line(),
            },
            "loop" => Answer::Redirect {
                location: path.to_string(),
            },
            "garbage" => Answer::ok("text/html", "<html>hello</html>".repeat(100)),
            _ => Answer::status(404),
        }
    });
    let base = format!("http://x-access-token:secret-token@{}", server.host());
    let before = peak_kib();
    println!("process peak before: {} MiB", before / 1024);
    let deadline = Duration::from_secs(35);
    let quick = Duration::from_secs(5);
    let cases = [
        (
            "endless advertisement",
            "endless",
            "over 67108864 bytes",
            deadline,
        ),
        (
            "300 MiB advertisement",
            "huge",
            "over 67108864 bytes",
            deadline,
        ),
        ("slow drip", "drip", "within 30s", deadline),
        ("redirect loop", "loop", "redirect loop", quick),
        ("garbage", "garbage", "not a git repository", quick),
    ];
    let mut wrong = Vec::new();
    for (case, repo, says, within) in cases {
        wrong.extend(expect_error(case, &format!("{base}/{repo}/x.git"), says, within).await);
    }
    let daemon = endless_git_daemon().await;
    wrong.extend(
        expect_error(
            "endless git:// advertisement",
            &format!("git://{daemon}/x.git"),
            "over 67108864 bytes",
            deadline,
        )
        .await,
    );
    let peak = peak_kib();
    if peak >= LIMIT_KIB {
        wrong.push(format!(
            "process peak {peak} KiB (before the attacks: {before} KiB)"
        ));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
