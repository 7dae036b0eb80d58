//! The Helm chart on the real apiserver (every rendering accepted, bad values refused, RBAC
//! exactly what the operator uses, the operator running with the rendered environment, a
//! namespace-scoped release, an upgrade), and the Argo CD health check on objects the operator
//! reconciled.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use multiarch_e2e::cmd::{http_get, kubectl, metric, output, run, run_with_input, try_kubectl};
use multiarch_e2e::operator;
use multiarch_e2e::scenario::condition;
use multiarch_e2e::{env, Access, Scenario};
use serde_json::Value;

use crate::faults::fault;

const RELEASE_NS: &str = "multiarch-system";

fn chart() -> String {
    env()
        .root
        .join("charts/multiarch-operator")
        .display()
        .to_string()
}

/// `helm template` of the chart with `values`, minus kinds whose CRD is not installed here.
fn render(values: &[&str]) -> String {
    let chart = chart();
    let mut args = vec![
        "template",
        "multiarch-operator",
        &chart,
        "-n",
        RELEASE_NS,
        "--kube-version",
        "1.34.4",
    ];
    args.extend_from_slice(values);
    run("helm", &args)
        .split("\n---")
        .filter(|doc| !doc.contains("kind: ServiceMonitor"))
        .collect::<Vec<_>>()
        .join("\n---")
}

/// `kubectl auth can-i` as the chart's ServiceAccount: "yes" or "no".
fn can(args: &[&str]) -> String {
    let mut all = vec![
        "auth",
        "can-i",
        "--as=system:serviceaccount:multiarch-system:multiarch-operator",
    ];
    all.extend_from_slice(args);
    String::from_utf8_lossy(&output("kubectl", &all, None).stdout)
        .trim()
        .to_string()
}

/// The release Lease's holder ("" when released); a Lease that cannot be read fails the test.
fn lease_holder() -> String {
    try_kubectl(
        &[
            "get",
            "lease",
            "-n",
            RELEASE_NS,
            "multiarch-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    )
    .unwrap_or_else(|e| panic!("cannot read the Lease {RELEASE_NS}/multiarch-operator: {e}"))
}

#[tokio::test]
async fn the_chart_renders_installs_and_grants_exactly_what_the_operator_uses() {
    let s = Scenario::start("chart", "e2e-chart", Access::Exclusive).await;
    let ns = s.ns.clone();
    let chart = chart();
    run("helm", &["lint", &chart]);

    // every rendering is accepted by the apiserver's server-side dry run
    let watch = format!("watchNamespace={ns}");
    let value_sets: Vec<Vec<&str>> = vec![
        vec![],
        vec!["--set", &watch],
        vec!["--set", "crds.install=false"],
        vec!["--set", "replicaCount=2"],
        vec![
            "--set",
            "leaderElection.enabled=false",
            "--set",
            "metrics.enabled=false",
        ],
        vec![
            "--set",
            "registry.caConfigMap=registry-ca",
            "--set",
            "builder.nodeSelector.pool=builds",
        ],
        vec![
            "--set-json",
            r#"builder.tolerations=[{"key":"builds","operator":"Exists","effect":"NoSchedule"}]"#,
        ],
    ];
    for values in &value_sets {
        let manifests = render(values);
        if let Err(e) = try_kubectl(
            &["apply", "--dry-run=server", "-f", "-"],
            Some(manifests.as_bytes()),
        ) {
            panic!("rendering with {values:?} rejected by the apiserver: {e}");
        }
    }
    // values the chart refuses, with a message naming the value
    for (bad, want) in [
        (vec!["--set", "concurrency=four"], "/concurrency"),
        (vec!["--set", "logFormat=xml"], "/logFormat"),
        (vec!["--set", "builder.finishedTTl=1h"], "finishedTTl"),
        (
            vec![
                "--set",
                "replicaCount=2",
                "--set",
                "leaderElection.enabled=false",
            ],
            "needs leaderElection.enabled",
        ),
        (
            vec![
                "--set",
                "registry.caConfigMap=a",
                "--set",
                "registry.caSecret=b",
            ],
            "exclusive",
        ),
    ] {
        let mut args = vec!["template", "t", &chart, "--kube-version", "1.34.4"];
        args.extend_from_slice(&bad);
        let out = output("helm", &args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "helm template accepted {bad:?}");
        assert!(stderr.contains(want), "helm template {bad:?}: {stderr}");
    }
    let monitor = run(
        "helm",
        &[
            "template",
            "t",
            &chart,
            "--kube-version",
            "1.34.4",
            "--set",
            "metrics.serviceMonitor.enabled=true",
        ],
    );
    assert!(
        monitor.contains("kind: ServiceMonitor"),
        "a ServiceMonitor when enabled"
    );
    let scoped = run(
        "helm",
        &[
            "template",
            "t",
            &chart,
            "--kube-version",
            "1.34.4",
            "--set",
            &watch,
        ],
    );
    // (the other Role, for the Lease, is in the release namespace)
    let roles: Vec<&str> = scoped
        .split("\n---")
        .filter(|d| d.contains("\nkind: Role\n"))
        .collect();
    assert!(
        roles
            .iter()
            .any(|r| r.contains(&format!("\n  namespace: {ns}\n"))),
        "a single watched namespace gets a Role there: {roles:?}"
    );
    let crds = env().root.join("crds").display().to_string();
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=e2e-dry-run",
        "--dry-run=server",
        "-f",
        &crds,
    ]);
    let mut examples = String::new();
    for f in ["examples/apiping.yaml", "examples/self-build.yaml"] {
        let text = std::fs::read_to_string(env().root.join(f)).expect("an example");
        examples.push_str(&text.replace("namespace: builds", &format!("namespace: {ns}")));
        examples.push_str("\n---\n");
    }
    run_with_input(
        "kubectl",
        &["apply", "--dry-run=server", "-f", "-"],
        Some(examples.as_bytes()),
    );

    // the release's pod was admitted under "restricted" and runs (as KWOK reports it)
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), RELEASE_NS);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=multiarch-operator"))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let ready = list.iter().any(|p| {
            p.status
                .as_ref()
                .and_then(|st| st.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        if ready {
            break;
        }
        if Instant::now() > deadline {
            // why not: admission refusals of the ReplicaSet's pods are FailedCreate events
            let refusals = try_kubectl(
                &[
                    "get",
                    "events",
                    "-n",
                    RELEASE_NS,
                    "--field-selector",
                    "reason=FailedCreate",
                    "-o",
                    "jsonpath={.items[*].message}",
                ],
                None,
            )
            .unwrap_or_else(|e| e);
            panic!(
                "the chart's operator pod is not Ready within 60 s ({} pods); FailedCreate: {refusals}",
                list.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let enforce = kubectl(&[
        "get",
        "namespace",
        RELEASE_NS,
        "-o",
        r"jsonpath={.metadata.labels.pod-security\.kubernetes\.io/enforce}",
    ]);
    assert_eq!(enforce, "restricted", "release namespace enforcement");
    let keep = kubectl(&[
        "get",
        "crd",
        "multiarchimages.multiarch.dev",
        "-o",
        r"jsonpath={.metadata.annotations.helm\.sh/resource-policy}",
    ]);
    assert_eq!(keep, "keep", "CRD kept on uninstall");

    // RBAC: what the operator uses, and nothing more
    for (verb, resource, want) in [
        ("list", "multiarchimages.multiarch.dev", "yes"),
        ("watch", "multiarchimages.multiarch.dev", "yes"),
        ("update", "multiarchimages.multiarch.dev", "no"),
        ("patch", "multiarchimages.multiarch.dev", "no"),
        ("delete", "multiarchimages.multiarch.dev", "no"),
        ("create", "jobs.batch", "yes"),
        ("delete", "jobs.batch", "yes"),
        ("create", "pods", "yes"),
        ("delete", "pods", "no"),
        ("get", "secrets", "yes"),
        ("list", "secrets", "no"),
        ("create", "events.events.k8s.io", "yes"),
        ("get", "leases.coordination.k8s.io", "no"),
        ("create", "deployments.apps", "no"),
    ] {
        assert_eq!(
            can(&[verb, resource, "-n", &ns]),
            want,
            "can-i {verb} {resource}"
        );
    }
    assert_eq!(
        can(&[
            "patch",
            "multiarchimages.multiarch.dev",
            "--subresource=status",
            "-n",
            &ns
        ]),
        "yes",
        "can-i patch status"
    );
    assert_eq!(
        can(&["update", "leases.coordination.k8s.io", "-n", RELEASE_NS]),
        "yes",
        "the Lease in the release namespace"
    );

    operator_with_rendered_environment(&s).await;

    // a second release scoped to one namespace: a Role there, no cluster-wide reads
    run(
        "helm",
        &[
            "install",
            "scoped",
            &chart,
            "-n",
            &ns,
            "--set",
            &watch,
            "--set",
            "crds.install=false",
            "--set",
            "leaderElection.enabled=false",
        ],
    );
    let sa = format!("--as=system:serviceaccount:{ns}:scoped-multiarch-operator");
    let can_scoped = |args: &[&str]| {
        let mut all = vec!["auth", "can-i", sa.as_str()];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&output("kubectl", &all, None).stdout)
            .trim()
            .to_string()
    };
    assert_eq!(
        can_scoped(&["list", "multiarchimages.multiarch.dev", "-n", &ns]),
        "yes",
        "scoped: its namespace"
    );
    assert_eq!(
        can_scoped(&["create", "jobs.batch", "-n", &ns]),
        "yes",
        "scoped: builders in its namespace"
    );
    assert_eq!(
        can_scoped(&["list", "multiarchimages.multiarch.dev", "-n", "default"]),
        "no",
        "scoped: another namespace"
    );
    assert_eq!(
        can_scoped(&["list", "multiarchimages.multiarch.dev", "--all-namespaces"]),
        "no",
        "scoped: all namespaces"
    );
    let cluster_roles = kubectl(&[
        "get",
        "clusterrole",
        "-l",
        "app.kubernetes.io/instance=scoped",
        "-o",
        "name",
    ]);
    assert_eq!(cluster_roles.trim(), "", "scoped: no ClusterRole");
    run("helm", &["uninstall", "scoped", "-n", &ns]);
    kubectl(&["get", "crd", "multiarchimages.multiarch.dev"]);

    // an upgrade with the same values keeps the release working (later scenarios use it)
    run(
        "helm",
        &[
            "upgrade",
            "multiarch-operator",
            &chart,
            "-n",
            RELEASE_NS,
            "--reuse-values",
        ],
    );
    let status: Value = serde_json::from_str(&run(
        "helm",
        &[
            "status",
            "multiarch-operator",
            "-n",
            RELEASE_NS,
            "-o",
            "json",
        ],
    ))
    .expect("helm status JSON");
    assert_eq!(status["info"]["status"], "deployed", "release status");
}

/// The operator binary started with exactly the environment the Deployment renders (only the
/// listen addresses move off the suite's ports): it leads, is ready, logs JSON, and on SIGTERM
/// exits 0 and hands the Lease back.
async fn operator_with_rendered_environment(s: &Scenario) {
    let deployment = run(
        "helm",
        &[
            "template",
            "multiarch-operator",
            &chart(),
            "-n",
            RELEASE_NS,
            "--kube-version",
            "1.34.4",
            "--set",
            &format!("watchNamespace={}", s.ns),
            "--set",
            "leaderElection.leaseDuration=6s",
            "--show-only",
            "templates/deployment.yaml",
        ],
    );
    let json = run_with_input(
        "kubectl",
        &["create", "--dry-run=client", "-o", "json", "-f", "-"],
        Some(deployment.as_bytes()),
    );
    let rendered: Value = serde_json::from_str(&json).expect("the Deployment as JSON");
    let mut vars: Vec<(String, String)> = rendered["spec"]["template"]["spec"]["containers"][0]
        ["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                e["value"].as_str()?.to_string(),
            ))
        })
        .filter(|(k, _)| k != "MULTIARCH_HEALTH_ADDR" && k != "MULTIARCH_METRICS_ADDR")
        .collect();
    assert!(
        vars.iter()
            .any(|(k, v)| k == "MULTIARCH_LEADER_ELECT" && v == "true"),
        "rendered environment: {vars:?}"
    );
    vars.extend([
        (
            "KUBECONFIG".to_string(),
            env().operator_kubeconfig.display().to_string(),
        ),
        ("POD_NAME".to_string(), "chart-env".to_string()),
        ("POD_NAMESPACE".to_string(), RELEASE_NS.to_string()),
        (
            "MULTIARCH_HEALTH_ADDR".to_string(),
            "127.0.0.1:18084".to_string(),
        ),
        (
            "MULTIARCH_METRICS_ADDR".to_string(),
            "127.0.0.1:18094".to_string(),
        ),
    ]);
    let log = env().state.join("chart-env.log");
    let _ = std::fs::remove_file(&log);
    let pid = operator::spawn_clean(&["run".to_string()], &vars, &log);
    let guard = Kill(pid);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = http_get("127.0.0.1:18094", "/metrics")
            .map(|r| r.1)
            .unwrap_or_default();
        if metric(&metrics, "multiarch_leader") == Some(1.0) {
            break;
        }
        assert!(
            operator::alive(pid),
            "the operator exited with the rendered environment: {}",
            read(&log)
        );
        assert!(
            Instant::now() < deadline,
            "the operator with the rendered environment never led: {}",
            read(&log)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // ready once its watches have synced, which may come just after it took the Lease
    s.poll("ready while leading", 30, || async {
        (http_get("127.0.0.1:18084", "/readyz").map(|r| r.0) == Some(200)).then_some(())
    })
    .await;
    let holder = lease_holder();
    assert!(
        holder.starts_with("chart-env_"),
        "Lease holder: the pod name and a suffix of its process: {holder}"
    );
    tokio::task::spawn_blocking(move || operator::stop_pid(pid, "TERM"))
        .await
        .expect("stopping");
    std::mem::forget(guard);
    assert_eq!(
        operator::exit_code(pid),
        Some(0),
        "exit status after SIGTERM"
    );
    assert_eq!(lease_holder(), "", "Lease released on SIGTERM");
    let text = read(&log);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for l in lines {
        assert!(
            serde_json::from_str::<Value>(l).is_ok(),
            "logFormat=json: a log line is not JSON: {l}"
        );
    }
}

fn read(path: &std::path::Path) -> String {
    operator::tail(&std::fs::read_to_string(path).unwrap_or_default(), 10)
}

/// Kills a process when dropped (a failed assertion must not leave it running).
pub struct Kill(pub u32);

impl Drop for Kill {
    fn drop(&mut self) {
        if operator::alive(self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &self.0.to_string()])
                .status();
        }
    }
}

#[tokio::test]
async fn the_argocd_health_check_reads_reconciled_objects_as_healthy_degraded_and_progressing() {
    let s = Scenario::start("argocd_health", "e2e-argocd", Access::Shared).await;
    let script = env().root.join("deploy/argocd/test.sh");
    let unit = output(script.to_str().expect("a UTF-8 path"), &[], None);
    assert!(
        unit.status.success(),
        "deploy/argocd/test.sh: {}{}",
        String::from_utf8_lossy(&unit.stdout),
        String::from_utf8_lossy(&unit.stderr)
    );
    s.apply(&s.mai("good", &["linux/amd64", "linux/arm64"]))
        .await;
    let mut bad = s.mai("bad", &["linux/amd64"]);
    bad.spec.retries = 0;
    bad.metadata.annotations = Some(fault("linux-amd64", "fail"));
    s.apply(&bad).await;
    s.apply(&s.mai("waiting", &["linux/amd64", "linux/s390x"]))
        .await;
    s.wait_ready("good", 90).await;
    s.wait_reason("bad", "Stalled", "BuildFailed", 90).await;
    s.wait(
        "waiting",
        "Reconciling with reason WaitingForNode",
        90,
        |o| condition(o, "Reconciling").is_some_and(|c| c.reason == "WaitingForNode"),
    )
    .await;
    let items = s
        .mais()
        .list(&ListParams::default())
        .await
        .expect("listing")
        .items;
    let cases: Vec<Value> = items
        .iter()
        .map(|o| {
            let name = o.metadata.name.clone().unwrap_or_default();
            let want = match name.as_str() {
                "good" => "Healthy",
                "bad" => "Degraded",
                _ => "Progressing",
            };
            serde_json::json!({"path": name, "obj": o, "want": {"status": want, "message": null}})
        })
        .collect();
    assert_eq!(cases.len(), 3, "three objects");
    let dir = env().root.join("deploy/argocd");
    let runner = dir.join("run_tests.lua");
    let mut c = multiarch_e2e::cmd::command("lua5.1");
    c.env("ARGOCD_STATUS_ONLY", "1").arg(&runner).arg(&dir);
    let out = feed(c, serde_json::to_string(&cases).expect("JSON").as_bytes());
    assert!(
        out.status.success(),
        "health.lua on real objects: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn feed(mut c: std::process::Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lua5.1");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("writing the cases");
    child.wait_with_output().expect("lua5.1 output")
}

/// Objects created under a CRD without the status default (`e2e/upgrade/`: today's v1alpha1 schema
/// with the status default taken out; the operator the suite runs writes today's status fields,
/// which an older schema would refuse, so the fixture keeps them) keep working after
/// `helm upgrade`: one published before the upgrade stays published with the same build and
/// builders, and is Current to kstatus; one created (and never seen by the operator) before the
/// upgrade reads `status: {observedGeneration: 0}` once the upgraded CRD is served, InProgress to
/// kstatus, and is then built and published.
#[tokio::test]
async fn objects_of_the_previous_crd_keep_working_after_helm_upgrade() {
    let s = Scenario::start("upgrade", "e2e-upgrade", Access::Exclusive).await;
    let crd = "crd/multiarchimages.multiarch.dev";
    let previous = env()
        .root
        .join("e2e/upgrade/crd-v1alpha1-before-status-default.yaml");
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &previous.display().to_string(),
    ]);
    kubectl(&[
        "wait",
        "--for",
        "condition=established",
        crd,
        "--timeout=60s",
    ]);
    let default = || {
        kubectl(&[
            "get",
            crd,
            "-o",
            "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.status.default}",
        ])
    };
    assert_eq!(default(), "", "the previous CRD has no status default");
    // an operator running while its CRD is replaced under it is not this scenario's subject:
    // the previous release's operator starts against the previous CRD
    tokio::task::spawn_blocking(|| {
        operator::stop("TERM");
        operator::ensure_default();
    })
    .await
    .expect("restarting the operator");

    // published under the previous CRD
    s.apply(&s.mai("published", &["linux/amd64", "linux/arm64"]))
        .await;
    let before = s.wait_ready("published", 90).await;
    let jobs_before = s.job_names("").await;
    // created under the previous CRD, never seen by the operator
    tokio::task::spawn_blocking(|| operator::stop("TERM"))
        .await
        .expect("stopping the operator");
    s.apply(&s.mai("unseen", &["linux/amd64"])).await;
    let unseen = s.get("unseen").await;
    assert_eq!(unseen.status, None, "no status under the previous CRD");

    let chart = env().root.join("charts/multiarch-operator");
    run(
        "helm",
        &[
            "upgrade",
            "multiarch-operator",
            &chart.display().to_string(),
            "-n",
            "multiarch-system",
            "--reuse-values",
            "--wait",
        ],
    );
    assert_eq!(
        default(),
        r#"{"observedGeneration":0}"#,
        "helm upgrade installed this release's CRD"
    );
    let unseen = s.get("unseen").await;
    assert_eq!(
        unseen.status.as_ref().and_then(|st| st.observed_generation),
        Some(0),
        "the status default applies to an object stored without a status"
    );
    multiarch_e2e::kstatus::assert_status(&s.ns, "unseen", "InProgress");
    multiarch_e2e::kstatus::assert_status(&s.ns, "published", "Current");

    tokio::task::spawn_blocking(operator::ensure_default)
        .await
        .expect("starting the operator");
    s.wait_ready("unseen", 90).await;
    multiarch_e2e::kstatus::assert_status(&s.ns, "unseen", "Current");
    let after = s.wait_ready("published", 30).await;
    let status = |o: &multiarch_operator::api::MultiArchImage| {
        let st = o.status.clone().expect("a status");
        (st.build.map(|b| b.id), st.digest)
    };
    assert_eq!(status(&after), status(&before), "the same build and index");
    let jobs_after: Vec<String> = s
        .job_names("")
        .await
        .into_iter()
        .filter(|j| !j.starts_with("unseen-"))
        .collect();
    assert_eq!(
        jobs_after, jobs_before,
        "no new builders for the published object"
    );
    multiarch_e2e::kstatus::assert_status(&s.ns, "published", "Current");
}
