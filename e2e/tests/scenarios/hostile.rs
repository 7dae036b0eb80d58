//! Servers that any namespace's user can name, answering hostilely: a git server with an endless
//! ref advertisement, and a registry whose answers to the operator's reads are endless, huge,
//! dripping, a redirect loop, another digest or an endless image config. The operator reads at
//! most its caps each time, marks only the objects that name them (saying what the server did),
//! keeps reconciling the others meanwhile, and stays under 128 MiB.

#[path = "../../../tests/support/hostile.rs"]
mod server;

use std::time::{Duration, Instant};

use multiarch_e2e::registry::tags;
use multiarch_e2e::scenario::condition;
use multiarch_e2e::{env, operator, progress};
use multiarch_e2e::{Access, Scenario};
use multiarch_operator::api::MultiArchImage;
use server::{Answer, Hostile};

const LIMIT_KIB: u64 = 128 * 1024;

/// The operator's peak resident memory (`VmHWM`), KiB.
fn operator_peak_kib() -> u64 {
    let pid = operator::running().expect("the operator runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("operator status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

fn endless_advertisement() -> Answer {
    let line = format!("{} refs/heads/branch-of-many\n", "a".repeat(40));
    Answer::Endless {
        headers: vec![(
            "Content-Type".into(),
            "application/x-git-upload-pack-advertisement".into(),
        )],
        piece: format!("{:04x}{line}", line.len() + 4).into_bytes(),
    }
}

#[tokio::test]
async fn an_endless_git_server_marks_only_its_object_and_memory_stays_bounded() {
    let s = Scenario::start("hostile_git", "e2e-hostile", Access::Shared).await;
    let attacker = Hostile::start(|_, _| endless_advertisement());

    let mut attacked = s.mai("attacked", &["linux/amd64"]);
    attacked.spec.source.git.url = format!("http://{}/x.git", attacker.host());
    s.apply(&attacked).await;
    let o = s
        .wait_reason("attacked", "Ready", "SourceUnavailable", 120)
        .await;
    let message = condition(&o, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("over 67108864 bytes"),
        "says what the server did: {message}"
    );

    // while the attack goes on (the source is retried every few seconds), another object of
    // the same namespace is built and published
    let attacks_before = attacker.requests.lock().unwrap().len();
    s.apply(&s.mai("bystander", &["linux/amd64", "linux/arm64"]))
        .await;
    s.wait_ready("bystander", 300).await;
    let attacks = attacker.requests.lock().unwrap().len();
    assert!(
        attacks > attacks_before,
        "the attack went on while the other object was built ({attacks_before} -> {attacks})"
    );
    let o = s.get("attacked").await;
    assert_eq!(
        condition(&o, "Ready").map(|c| c.reason.as_str()),
        Some("SourceUnavailable"),
        "the attacked object stays marked"
    );
    let peak = operator_peak_kib();
    println!(
        "operator peak memory after {attacks} endless answers: {} MiB",
        peak / 1024
    );
    assert!(peak < LIMIT_KIB, "operator peak {peak} KiB");
    s.mais()
        .delete("attacked", &Default::default())
        .await
        .expect("deleting the attacked object");
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// One way a registry answers the operator's reads: the repository it attacks (named after the
/// case), and what the attacked object's `Ready` condition says then.
struct Case {
    repo: &'static str,
    reason: &'static str,
    says: &'static str,
}

const CASES: [Case; 6] = [
    Case {
        repo: "endless",
        reason: "PublishFailed",
        says: "more than 4194304 bytes",
    },
    Case {
        repo: "huge",
        reason: "PublishFailed",
        says: "manifest of 314572800 bytes",
    },
    Case {
        repo: "drip",
        reason: "RegistryUnavailable",
        says: "not done within 20s",
    },
    Case {
        repo: "redirect-loop",
        reason: "PublishFailed",
        says: "redirect loop",
    },
    Case {
        repo: "wrong-digest",
        reason: "PublishFailed",
        says: WRONG_DIGEST,
    },
    Case {
        repo: "endless-config",
        reason: "PublishFailed",
        says: "larger than its descriptor",
    },
];

/// The digest the `wrong-digest` case reports for every manifest: sha256 of "not the image".
const WRONG_DIGEST: &str =
    "sha256:7c8d3dd2e675b10348b9c7a8db5f7aa59778b6ca032ed9ff070da186132add69";

/// A registry front for namespace `ns`: the builders' writes (and every request outside the
/// attacked repositories) pass to the suite's registry, so the images are really pushed; the
/// operator's reads of an attacked repository's manifests and blobs are answered as its case says.
fn registry_front(ns: &str) -> Hostile {
    let upstream = env().registry.parse().expect("the registry's address");
    let prefix = format!("/v2/{ns}/");
    Hostile::in_front_of(upstream, move |method, path| {
        let Some((repo, rest)) = path
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split_once('/'))
        else {
            return Answer::Pass;
        };
        if method != "GET" && method != "HEAD" {
            return Answer::Pass;
        }
        let manifest = rest.starts_with("manifests/");
        let blob = rest.starts_with("blobs/sha256:");
        // a manifest HEAD without Docker-Content-Digest: the operator has to read the manifest
        let no_digest = || Answer::ok(OCI_MANIFEST, Vec::new());
        let headers = || vec![("Content-Type".to_string(), OCI_MANIFEST.to_string())];
        match (repo, method, manifest, blob) {
            ("endless" | "huge" | "drip", "HEAD", true, _) => no_digest(),
            ("endless", "GET", true, _) => Answer::Endless {
                headers: headers(),
                piece: b"{\"a\":1}      ".to_vec(),
            },
            ("huge", "GET", true, _) => Answer::Huge {
                headers: headers(),
                len: 300 * 1024 * 1024,
                piece: b"          ".to_vec(),
            },
            ("drip", "GET", true, _) => Answer::Drip {
                headers: headers(),
                len: 100_000,
                every: Duration::from_millis(500),
                piece: b" ".to_vec(),
            },
            ("redirect-loop", _, true, _) => Answer::Redirect {
                location: path.to_string(),
            },
            ("wrong-digest", "HEAD", true, _) => Answer::Fixed {
                status: 200,
                headers: vec![
                    ("Content-Type".into(), OCI_MANIFEST.into()),
                    ("Docker-Content-Digest".into(), WRONG_DIGEST.into()),
                ],
                body: Vec::new(),
            },
            ("endless-config", "GET", _, true) => Answer::Endless {
                headers: vec![("Content-Type".into(), "application/octet-stream".into())],
                piece: b"{}".to_vec(),
            },
            _ => Answer::Pass,
        }
    })
}

/// The operator's reads the front answered hostilely so far (the builders' pushes and the reads
/// it passed on not counted).
fn attacks(front: &Hostile, ns: &str) -> usize {
    front
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.starts_with("GET ") || r.starts_with("HEAD "))
        .filter(|r| {
            CASES
                .iter()
                .any(|c| r.contains(&format!("/v2/{ns}/{}/", c.repo)))
        })
        .count()
}

#[tokio::test]
async fn a_hostile_registry_marks_only_its_objects_and_memory_stays_bounded() {
    let s = Scenario::start("hostile_registry", "e2e-hostile-registry", Access::Shared).await;
    let front = registry_front(&s.ns);
    let started = Instant::now();
    for case in &CASES {
        let mut attacked = s.mai(case.repo, &["linux/amd64"]);
        attacked.spec.image = format!("{}/{}/{}", front.host(), s.ns, case.repo);
        s.apply(&attacked).await;
    }
    // once the first attack is under way, another object of the same namespace, in the suite's
    // registry, is built and published while the attacks go on
    s.poll("the first hostile answer", 120, || async {
        (attacks(&front, &s.ns) > 0).then_some(())
    })
    .await;
    let attacks_before = attacks(&front, &s.ns);
    s.apply(&s.mai("bystander", &["linux/amd64", "linux/arm64"]))
        .await;
    let bystander = async {
        s.wait_ready("bystander", 300).await;
        (started.elapsed(), attacks(&front, &s.ns))
    };
    let marked = futures::future::join_all(CASES.iter().map(|case| async {
        let what = format!("Ready with reason {} saying {:?}", case.reason, case.says);
        let o = s
            .wait(case.repo, &what, 180, |o| says(o, case.reason, case.says))
            .await;
        (started.elapsed(), o)
    }));
    let ((ready_at, attacks_at_ready), marked) = tokio::join!(bystander, marked);
    progress(format!(
        "    bystander Ready at {:.1} s, {} hostile answers before it was applied, {attacks_at_ready} when it was Ready",
        ready_at.as_secs_f64(),
        attacks_before
    ));
    for (case, (at, o)) in CASES.iter().zip(&marked) {
        let message = condition(o, "Ready").map(|c| c.message.clone());
        progress(format!(
            "    {}: {} at {:.1} s: {}",
            case.repo,
            case.reason,
            at.as_secs_f64(),
            message.unwrap_or_default()
        ));
    }
    assert!(
        attacks_at_ready > attacks_before,
        "the attacks went on while the other object was built ({attacks_before} -> {attacks_at_ready})"
    );
    for case in &CASES {
        let o = s.get(case.repo).await;
        assert!(
            says(&o, case.reason, case.says),
            "{} stays marked: {:?}",
            case.repo,
            condition(&o, "Ready")
        );
        assert_eq!(
            tags(&format!("{}/{}", s.ns, case.repo)),
            Vec::<String>::new(),
            "{}: nothing tagged",
            case.repo
        );
    }
    let peak = operator_peak_kib();
    progress(format!(
        "    operator peak memory after {} hostile answers: {:.1} MiB",
        attacks(&front, &s.ns),
        peak as f64 / 1024.0
    ));
    assert!(peak < LIMIT_KIB, "operator peak {peak} KiB");
    for case in &CASES {
        s.mais()
            .delete(case.repo, &Default::default())
            .await
            .expect("deleting an attacked object");
    }
}

/// Whether `o`'s `Ready` condition has `reason` and its message says `what`.
fn says(o: &MultiArchImage, reason: &str, what: &str) -> bool {
    condition(o, "Ready").is_some_and(|c| c.reason == reason && c.message.contains(what))
}
