//! `multiarch-operator publish` against a registry of the test's own on loopback that misbehaves
//! (an endless manifest, a huge one, one dripping a byte a second, a redirect loop, content that
//! is not the digest asked for, an image config larger than its descriptor). Each case runs the
//! real binary as a process and checks what a user relies on: exit 1 with an error saying what
//! the server did, within 30 s, under 128 MiB of memory, and no write request of any kind. Each
//! case prints its time and memory. A check of a manifest by digest that the registry answers
//! with another digest is a digest mismatch, not a missing manifest.
//!
//! Memory is the child's own peak resident set (`VmHWM` of `/proc/PID/status`, which exec resets),
//! read every 5 ms while it runs: `wait4`'s `ru_maxrss` would also count the test process it was
//! forked from.
//!
//! `HOSTILE_PUBLISH_BIN` runs another build of the binary (to measure an older release).

#[path = "support/hostile.rs"]
mod hostile;

use std::io::Read;
use std::time::{Duration, Instant};

use hostile::{Answer, Hostile};
use multiarch_operator::publish::registry::RegistryApi as _;
use sha2::{Digest as _, Sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const LIMIT_SECS: u64 = 30;
const LIMIT_KIB: i64 = 128 * 1024;

struct Run {
    code: i32,
    stderr: String,
    elapsed: Duration,
    peak_kib: i64,
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// Runs `publish` with `args`, killed after twice the time limit; its peak memory from `wait4`.
fn publish(args: &[String]) -> Run {
    let bin = std::env::var("HOSTILE_PUBLISH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_multiarch-operator").to_string());
    let config = tempfile::tempdir().unwrap();
    std::fs::write(config.path().join("config.json"), "{}").unwrap();
    let mut stderr = tempfile::tempfile().unwrap();
    let start = Instant::now();
    let child = std::process::Command::new(bin)
        .arg("publish")
        .args(args)
        .env("DOCKER_CONFIG", config.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(stderr.try_clone().unwrap())
        .spawn()
        .expect("run multiarch-operator");
    let pid = child.id() as libc::pid_t;
    let watchdog = std::thread::spawn(move || {
        let deadline = start + Duration::from_secs(2 * LIMIT_SECS);
        let mut peak = 0;
        // VmHWM disappears when the child exits (a zombie has no memory left)
        while let Some(hwm) = vm_hwm_kib(pid) {
            peak = peak.max(hwm);
            if Instant::now() > deadline {
                // SAFETY: the child is ours and not reaped yet (waitpid below reaps it)
                unsafe { libc::kill(pid, libc::SIGKILL) };
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        peak
    });
    let mut status = 0;
    // SAFETY: waits for our own child and fills `status`
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid");
    let elapsed = start.elapsed();
    std::mem::forget(child); // reaped by waitpid above
    let peak_kib = watchdog.join().expect("watchdog");
    let mut text = String::new();
    use std::io::Seek;
    stderr.rewind().unwrap();
    stderr.read_to_string(&mut text).unwrap();
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    };
    Run {
        code,
        stderr: text,
        elapsed,
        peak_kib,
    }
}

/// The peak resident set of `pid` so far, KiB; `None` once it has exited.
fn vm_hwm_kib(pid: libc::pid_t) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Publishes `HOST/app:src` (or `source`) as `HOST/app:v1` from `server`, and checks the limits.
fn attack(case: &str, server: &Hostile, source: &str, says: &[&str]) {
    let host = server.host();
    let args = vec![
        "--plain-http".to_string(),
        "--tag".into(),
        format!("{host}/app:v1"),
        format!("{host}/{source}"),
    ];
    let run = publish(&args);
    println!(
        "hostile case {case}: exit {} in {:.1} s, peak {} MiB",
        run.code,
        run.elapsed.as_secs_f64(),
        run.peak_kib / 1024
    );
    assert_eq!(run.code, 1, "{case}: exit code; stderr:\n{}", run.stderr);
    assert!(
        run.elapsed < Duration::from_secs(LIMIT_SECS),
        "{case}: took {:?}",
        run.elapsed
    );
    assert!(
        run.peak_kib < LIMIT_KIB,
        "{case}: peak memory {} KiB",
        run.peak_kib
    );
    let lower = run.stderr.to_lowercase();
    assert!(
        says.iter().any(|s| lower.contains(s)),
        "{case}: the error should say one of {says:?}:\n{}",
        run.stderr
    );
    assert_eq!(
        server.writes(),
        Vec::<String>::new(),
        "{case}: nothing written"
    );
}

fn manifest_headers() -> Vec<(String, String)> {
    vec![("Content-Type".into(), OCI_MANIFEST.into())]
}

/// A registry whose `/v2/` answers normally and whose manifests of `app` are `manifest`.
fn registry(manifest: impl Fn() -> Answer + Send + Sync + 'static) -> Hostile {
    Hostile::start(move |method, path| match path {
        "/v2/" => Answer::ok("application/json", "{}"),
        p if p.starts_with("/v2/app/manifests/") && method == "GET" => manifest(),
        _ => Answer::status(404),
    })
}

#[test]
fn an_endless_manifest_is_cut_at_its_size_cap() {
    let server = registry(|| Answer::Endless {
        headers: manifest_headers(),
        piece: b"{\"a\":1}      ".to_vec(),
    });
    attack("endless manifest", &server, "app:src", &["at most 4194304"]);
}

#[test]
fn a_huge_manifest_is_refused_before_it_is_read() {
    let server = registry(|| Answer::Huge {
        headers: manifest_headers(),
        len: 300 * 1024 * 1024,
        piece: b"          ".to_vec(),
    });
    attack("300 MiB manifest", &server, "app:src", &["314572800 bytes"]);
}

#[test]
fn a_dripping_manifest_ends_at_the_deadline() {
    let server = registry(|| Answer::Drip {
        headers: manifest_headers(),
        len: 100_000,
        every: Duration::from_millis(500),
        piece: b" ".to_vec(),
    });
    attack("slow drip", &server, "app:src", &["not done within"]);
}

#[test]
fn a_redirect_loop_is_named() {
    let server = Hostile::start(|_, path| match path {
        "/v2/" => Answer::ok("application/json", "{}"),
        p => Answer::Redirect {
            location: p.to_string(),
        },
    });
    attack("redirect loop", &server, "app:src", &["redirect"]);
}

#[test]
fn content_that_is_not_the_digest_asked_for_is_refused() {
    let claimed = sha256(b"what was asked for");
    let server = registry(|| Answer::ok(OCI_MANIFEST, r#"{"schemaVersion":2}"#));
    attack(
        "wrong digest",
        &server,
        &format!("app@{claimed}"),
        &["asked for"],
    );
}

#[test]
fn a_config_larger_than_its_descriptor_is_refused() {
    let config_digest = sha256(b"{}");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": 2
        },
        "layers": []
    })
    .to_string();
    let server = Hostile::start(move |method, path| match path {
        "/v2/" => Answer::ok("application/json", "{}"),
        p if p.starts_with("/v2/app/manifests/") && method == "GET" => {
            Answer::ok(OCI_MANIFEST, manifest.clone())
        }
        p if p.starts_with("/v2/app/blobs/") => Answer::Endless {
            headers: Vec::new(),
            piece: b"{}".to_vec(),
        },
        _ => Answer::status(404),
    });
    attack(
        "endless config blob",
        &server,
        "app:src",
        &["larger than its descriptor"],
    );
}

#[tokio::test]
async fn a_manifest_check_answered_with_another_digest_names_both() {
    use multiarch_operator::publish::registry::RegistryErrorKind;
    use multiarch_operator::publish::{DockerConfig, Registry, RegistryConfig};
    use multiarch_operator::reference::{Digest, Repository};

    multiarch_operator::install_crypto_provider();
    let asked: Digest = sha256(b"what was pushed").parse().unwrap();
    let answered = sha256(b"what the registry says");
    let header = answered.clone();
    let server = Hostile::start(move |_, _| Answer::Fixed {
        status: 200,
        headers: vec![
            ("Content-Type".into(), OCI_MANIFEST.into()),
            ("Docker-Content-Digest".into(), header.clone()),
        ],
        body: Vec::new(),
    });
    let config = RegistryConfig {
        plain_http: true,
        ..RegistryConfig::default()
    };
    let registry = Registry::new(config, DockerConfig::empty()).unwrap();
    let repo: Repository = format!("{}/app", server.host()).parse().unwrap();
    let err = registry
        .manifest_digest_exists(&repo, &asked)
        .await
        .unwrap_err();
    assert_eq!(err.kind, RegistryErrorKind::DigestMismatch, "{err}");
    assert!(
        err.detail.contains(asked.as_str()) && err.detail.contains(&answered),
        "{err}"
    );
    assert_eq!(server.writes(), Vec::<String>::new());
}
