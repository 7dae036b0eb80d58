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
    start_replica_with(name, health, metrics, &env().operator_kubeconfig)
}

fn start_replica_with(
    name: &'static str,
    health: u16,
    metrics: u16,
    kubeconfig: &std::path::Path,
) -> Replica {
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
        ("KUBECONFIG".to_string(), kubeconfig.display().to_string()),
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

/// Stops the suite's default operator and deletes the Lease, so that the scenario's replicas
/// start the election afresh.
async fn without_default_operator_or_lease() {
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
}

#[tokio::test]
async fn one_replica_leads_and_a_killed_leader_hands_over_within_the_lease() {
    let s = Scenario::start("leader_election", "e2e-leader", Access::Exclusive).await;
    without_default_operator_or_lease().await;

    let a = tokio::task::spawn_blocking(|| start_replica("a", 18082, 18092))
        .await
        .expect("replica a");
    s.poll("replica-a holds the Lease", 30, || async {
        try_holder()?.starts_with("replica-a_").then_some(())
    })
    .await;
    let b = tokio::task::spawn_blocking(|| start_replica("b", 18083, 18093))
        .await
        .expect("replica b");
    // while both run, the holder never changes (watched over more than two renewals)
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(5) {
        let held_by = holder();
        assert!(
            held_by.starts_with("replica-a_"),
            "holder while both run: {held_by}"
        );
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
        try_holder()?.starts_with("replica-b_").then_some(())
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

/// The leader's proxy: `e2e/apiproxy/proxy.py` between replica-a and the apiserver, logging every
/// request, holding Lease writes while `hold` exists.
struct ApiProxy {
    log: std::path::PathBuf,
    hold: std::path::PathBuf,
    kubeconfig: std::path::PathBuf,
    child: std::process::Child,
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request the proxy passed on, with the apiserver's answer.
#[derive(serde::Deserialize, Debug)]
struct Passed {
    method: String,
    path: String,
    answered: f64,
    status: u16,
}

impl ApiProxy {
    fn start(port: u16) -> ApiProxy {
        let state = &env().state;
        let (log, hold) = (state.join("apiproxy.jsonl"), state.join("apiproxy.hold"));
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(&hold);
        // the operator's kubeconfig (one line names the cluster), pointed at the proxy
        let original = std::fs::read_to_string(&env().operator_kubeconfig).expect("kubeconfig");
        let cluster = original
            .lines()
            .find(|l| l.contains("server:"))
            .expect("a server line");
        let quoted = |key: &str| {
            let rest = &cluster[cluster.find(key).expect(key) + key.len()..];
            rest.split('"').nth(1).expect("a quoted value").to_string()
        };
        let upstream = quoted("server:").trim_start_matches("https://").to_string();
        let ca = quoted("certificate-authority:");
        let proxied = format!("  cluster: {{server: \"http://127.0.0.1:{port}\"}}");
        let kubeconfig = state.join("proxied.kubeconfig");
        std::fs::write(&kubeconfig, original.replace(cluster, &proxied)).expect("writing");
        let script = env().root.join("e2e/apiproxy/proxy.py");
        let child = std::process::Command::new("python3")
            .arg(script)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--upstream",
                &upstream,
            ])
            .args(["--ca", &ca])
            .arg("--log")
            .arg(&log)
            .arg("--hold-file")
            .arg(&hold)
            .spawn()
            .expect("starting the proxy");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the proxy did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        ApiProxy {
            log,
            hold,
            kubeconfig,
            child,
        }
    }

    fn passed(&self) -> Vec<Passed> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a proxy log line"))
            .collect()
    }
}

fn is_write(p: &Passed) -> bool {
    ["POST", "PUT", "PATCH", "DELETE"].contains(&p.method.as_str())
}

/// The Lease's `acquireTime` and holder.
async fn lease_acquired(s: &Scenario) -> (String, f64) {
    let lease = kube::Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        s.client.clone(),
        LEASE_NS,
    )
    .get("multiarch-operator")
    .await
    .expect("reading the Lease");
    let spec = lease.spec.expect("a Lease spec");
    let at = spec.acquire_time.expect("an acquire time").0;
    (
        spec.holder_identity.unwrap_or_default(),
        at.as_millisecond() as f64 / 1000.0,
    )
}

/// A leader whose Lease renewals are held on the way (by a proxy between it and the apiserver,
/// while its other requests pass) fences itself: it sends no write after its last renewal plus
/// the renew deadline, drops its reconciles in flight and exits; the standby takes the Lease only
/// after that, and finishes the work. Measured on the proxy's log against the Lease's
/// `acquireTime`: no write of the old leader is answered after the standby acquired the Lease.
#[tokio::test]
async fn a_leader_whose_renewals_are_held_stops_writing_before_the_standby_takes_over() {
    let s = Scenario::start("leader_fencing", "e2e-fencing", Access::Exclusive).await;
    without_default_operator_or_lease().await;
    let proxy = tokio::task::spawn_blocking(|| ApiProxy::start(18100))
        .await
        .expect("the proxy");
    let kubeconfig = proxy.kubeconfig.clone();
    let a = tokio::task::spawn_blocking(move || start_replica_with("a", 18084, 18094, &kubeconfig))
        .await
        .expect("replica a");
    s.poll("replica-a holds the Lease", 30, || async {
        try_holder()?.starts_with("replica-a_").then_some(())
    })
    .await;
    let b = tokio::task::spawn_blocking(|| start_replica("b", 18085, 18095))
        .await
        .expect("replica b");

    // objects keep arriving, so the leader always has something to write
    let names: Vec<String> = (0..12).map(|i| format!("w{i}")).collect();
    let writer = {
        let (mais, ns, names) = (s.mais(), s.ns.clone(), names.clone());
        tokio::spawn(async move {
            for name in names {
                let m = multiarch_e2e::mai(&ns, &name, &["linux/amd64"]);
                let pp = kube::api::PatchParams::apply("e2e").force();
                mais.patch(&name, &pp, &kube::api::Patch::Apply(&m))
                    .await
                    .expect("applying");
                tokio::time::sleep(Duration::from_millis(750)).await;
            }
        })
    };
    s.poll("replica-a writing through the proxy", 30, || async {
        proxy
            .passed()
            .iter()
            .any(|p| is_write(p) && !p.path.contains("/leases/") && p.status < 300)
            .then_some(())
    })
    .await;

    std::fs::write(&proxy.hold, b"").expect("holding the renewals");
    let held_at = Instant::now();
    s.poll("replica-b takes the Lease", LEASE_SECONDS * 4, || async {
        try_holder()?.starts_with("replica-b_").then_some(())
    })
    .await;
    progress(format!(
        "    standby took the Lease {:.1} s after the renewals were held (lease {LEASE_SECONDS} s)",
        held_at.elapsed().as_secs_f64()
    ));
    let a_pid = a.pid;
    let exit = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while operator::alive(a_pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        operator::exit_code(a_pid)
    })
    .await
    .expect("waiting for replica a");
    // the held renewals go on now, late: the Lease moved on, so they must not land
    std::fs::remove_file(&proxy.hold).expect("releasing the renewals");
    writer.await.expect("the writer");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (holder, acquired) = lease_acquired(&s).await;
    assert!(holder.starts_with("replica-b_"), "holder {holder}");
    let passed = proxy.passed();
    let writes: Vec<&Passed> = passed
        .iter()
        .filter(|p| is_write(p) && p.status < 300)
        .collect();
    let last = writes.iter().map(|p| p.answered).fold(f64::MIN, f64::max);
    assert!(writes.len() > 3, "the old leader wrote: {writes:?}");
    progress(format!(
        "    old leader's last write answered {:.2} s before the standby acquired the Lease \
         ({} writes through the proxy)",
        acquired - last,
        writes.len()
    ));
    assert!(
        last < acquired,
        "a write of the old leader landed {:.2} s after the standby acquired the Lease: {:?}",
        last - acquired,
        writes
            .iter()
            .filter(|p| p.answered >= acquired)
            .collect::<Vec<_>>()
    );

    let a_log = std::fs::read_to_string(&a.log).unwrap_or_default();
    assert!(
        a_log.contains("lost the leader lease"),
        "replica-a says why it stopped: {}",
        tail(&a.log)
    );
    assert!(
        matches!(exit, Some(code) if code != 0),
        "replica-a exited with an error by itself: {exit:?}"
    );

    // the standby finishes the work
    for name in &names {
        s.wait_ready(name, 120).await;
    }
    assert_eq!(
        metric(&b.scrape(), "multiarch_leader"),
        Some(1.0),
        "replica-b leads"
    );
    drop(b);
    drop(a);
}
