//! A git server that any namespace's user can name, answering with an endless ref
//! advertisement: the operator reads at most its cap each time, marks only the object that names
//! it (saying what the server did), keeps reconciling the others meanwhile, and stays under
//! 128 MiB.

#[path = "../../../tests/support/hostile.rs"]
mod server;

use multiarch_e2e::operator;
use multiarch_e2e::scenario::condition;
use multiarch_e2e::{Access, Scenario};
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
