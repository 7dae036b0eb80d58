//! Two replicas with leader election on a Lease: exactly one reconciles and writes; killing it
//! hands over to the other within the lease; a graceful stop releases the Lease.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use multiarch_e2e::cmd::{http_get, metric, try_kubectl};
use multiarch_e2e::operator;
use multiarch_e2e::{env, progress, Access, Scenario};

use crate::release::Kill;

const LEASE_NS: &str = "multiarch-system";
const LEASE_SECONDS: u64 = 6;

struct Replica {
    name: &'static str,
    pid: u32,
    metrics: String,
    log: std::path::PathBuf,
    _kill: Kill,
}

fn start_replica(name: &'static str, health: u16, metrics: u16) -> Replica {
    let log = env().state.join(format!("replica-{name}.log"));
    let _ = std::fs::remove_file(&log);
    let args: Vec<String> = [
        "run",
        "--registry-plain-http",
        "--health-addr",
        &format!("127.0.0.1:{health}"),
        "--metrics-addr",
        &format!("127.0.0.1:{metrics}"),
        "--leader-elect",
        "--leader-election-namespace",
        LEASE_NS,
        "--lease-duration",
        &format!("{LEASE_SECONDS}s"),
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(operator::static_node_args())
    .collect();
    let vars = [
        ("POD_NAME".to_string(), format!("replica-{name}")),
        (
            "KUBECONFIG".to_string(),
            env().operator_kubeconfig.display().to_string(),
        ),
    ];
    let pid = operator::spawn(&args, &vars, &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(&format!("127.0.0.1:{health}"), "/readyz").map(|r| r.0) != Some(200) {
        assert!(
            operator::alive(pid),
            "replica {name} exited: {}",
            tail(&log)
        );
        assert!(
            Instant::now() < deadline,
            "replica {name} not ready within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Replica {
        name,
        pid,
        metrics: format!("127.0.0.1:{metrics}"),
        log,
        _kill: Kill(pid),
    }
}

impl Drop for Replica {
    /// On a failure, the replica's last log lines (then its `Kill` field kills it).
    fn drop(&mut self) {
        if std::thread::panicking() {
            progress(format!(
                "    replica-{} log:\n{}",
                self.name,
                tail(&self.log)
            ));
        }
    }
}

impl Replica {
    fn scrape(&self) -> String {
        http_get(&self.metrics, "/metrics")
            .map(|r| r.1)
            .unwrap_or_default()
    }
}

fn tail(log: &std::path::Path) -> String {
    operator::tail(&std::fs::read_to_string(log).unwrap_or_default(), 10)
}

/// The Lease's holder, `None` while it cannot be read (not created yet, API error).
fn try_holder() -> Option<String> {
    try_kubectl(
        &[
            "get",
            "lease",
            "-n",
            LEASE_NS,
            "multiarch-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    )
    .ok()
}

/// The Lease's holder ("" when released); a Lease that cannot be read fails the test, so that
/// "no holder" is never concluded from a failed read.
fn holder() -> String {
    try_holder().unwrap_or_else(|| panic!("cannot read the Lease {LEASE_NS}/multiarch-operator"))
}

/// The samples of metric `name` in a Prometheus text exposition: each sample's labels and value
/// (`name 1` has no labels; `name{a="x",b="y"} 2` has two).
fn samples(exposition: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let (labels, value) = r.split_once('}')?;
                    (parse_labels(labels)?, value)
                }
                None if rest.starts_with(' ') => (BTreeMap::new(), rest),
                None => return None, // another metric whose name starts with `name`
            };
            let value = value.split_whitespace().next()?.parse().ok()?;
            Some((labels, value))
        })
        .collect()
}

/// `a="x",b="y"` as a map (values are the operator's own: no escaped quotes or commas).
fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=')?;
            let v = v.trim().strip_prefix('"')?.strip_suffix('"')?;
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

/// The API requests that write (create, patch, update, delete) in an exposition, summed.
fn writes(exposition: &str) -> f64 {
    samples(exposition, "multiarch_kube_api_requests_total")
        .iter()
        .filter(|(labels, _)| {
            labels
                .get("verb")
                .is_some_and(|v| ["create", "patch", "update", "delete"].contains(&v.as_str()))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn one_replica_leads_and_a_killed_leader_hands_over_within_the_lease() {
    let s = Scenario::start("leader_election", "e2e-leader", Access::Exclusive).await;
    tokio::task::spawn_blocking(|| operator::stop("TERM"))
        .await
        .expect("stopping the default operator");
    let _ = try_kubectl(
        &[
            "delete",
            "lease",
            "-n",
            LEASE_NS,
            "multiarch-operator",
            "--ignore-not-found",
        ],
        None,
    );

    let a = tokio::task::spawn_blocking(|| start_replica("a", 18082, 18092))
        .await
        .expect("replica a");
    s.poll("replica-a holds the Lease", 30, || async {
        (try_holder()? == "replica-a").then_some(())
    })
    .await;
    let b = tokio::task::spawn_blocking(|| start_replica("b", 18083, 18093))
        .await
        .expect("replica b");
    // while both run, the holder never changes (watched over more than two renewals)
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(5) {
        assert_eq!(holder(), "replica-a", "holder while both run");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        metric(&a.scrape(), "multiarch_leader"),
        Some(1.0),
        "replica-a's leader gauge"
    );
    assert_eq!(
        metric(&b.scrape(), "multiarch_leader"),
        Some(0.0),
        "replica-b's leader gauge"
    );
    s.apply(&s.mai("one", &["linux/amd64", "linux/arm64"]))
        .await;
    s.wait_ready("one", 90).await;
    let standby = b.scrape();
    assert_eq!(
        metric(&standby, "multiarch_reconciles_total"),
        Some(0.0),
        "reconciles by the standby"
    );
    assert_eq!(
        writes(&standby),
        0.0,
        "API writes by the standby: {standby}"
    );
    assert!(
        writes(&a.scrape()) > 0.0,
        "the leader's writes are counted (the check above can fail)"
    );

    let killed = Instant::now();
    let a_pid = a.pid;
    tokio::task::spawn_blocking(move || operator::stop_pid(a_pid, "KILL"))
        .await
        .expect("killing a");
    s.poll("replica-b takes the Lease", LEASE_SECONDS * 3, || async {
        (try_holder()? == "replica-b").then_some(())
    })
    .await;
    let handover = killed.elapsed();
    progress(format!(
        "    handover after the leader was killed: {:.1} s (lease {LEASE_SECONDS} s)",
        handover.as_secs_f64()
    ));
    assert!(
        handover <= Duration::from_secs(LEASE_SECONDS + 4),
        "handover took {handover:?}"
    );
    s.apply(&s.mai("two", &["linux/amd64", "linux/arm64"]))
        .await;
    s.wait_ready("two", 90).await;
    assert_eq!(
        metric(&b.scrape(), "multiarch_leader"),
        Some(1.0),
        "replica-b's leader gauge"
    );

    let b_pid = b.pid;
    tokio::task::spawn_blocking(move || operator::stop_pid(b_pid, "TERM"))
        .await
        .expect("stopping b");
    assert_eq!(holder(), "", "holder after a graceful stop (released)");
    let log = std::fs::read_to_string(&b.log).unwrap_or_default();
    assert!(
        log.contains("released the lease"),
        "replica-{} did not log the release: {}",
        b.name,
        tail(&b.log)
    );
    drop(a);
}

#[test]
fn samples_are_parsed_with_their_labels() {
    let text = "# HELP multiarch_kube_api_requests Requests\n\
                multiarch_kube_api_requests_total{verb=\"watch\"} 4\n\
                multiarch_kube_api_requests_total{resource=\"jobs\",verb=\"create\"} 2\n\
                multiarch_kube_api_requests_total{verb=\"patch\"} 0.5\n\
                multiarch_kube_api_requests_total_other{verb=\"delete\"} 9\n\
                multiarch_leader 1\n";
    assert_eq!(samples(text, "multiarch_kube_api_requests_total").len(), 3);
    assert_eq!(writes(text), 2.5);
    assert_eq!(
        samples(text, "multiarch_leader"),
        vec![(BTreeMap::new(), 1.0)]
    );
    assert_eq!(
        writes("multiarch_kube_api_requests_total{verb=\"get\"} 3\n"),
        0.0
    );
}
