//! The operator-wide guardrails on the real apiserver, both ways a spec meets them: the chart's
//! ValidatingAdmissionPolicy refuses it at admission (every rule, refused and allowed, after a
//! `helm upgrade` with guardrail values), and with the policy's binding deleted the operator,
//! run with the same rules as flags, stalls it with `InvalidSpec` naming the rule and creates no
//! builder. Credentials in a git URL are refused by the CRD's own rule without echoing them.

use kube::api::PostParams;
use kube::ResourceExt;
use multiarch_e2e::cmd::{kubectl, output, run, try_kubectl};
use multiarch_e2e::operator::{self, Options};
use multiarch_e2e::scenario::condition;
use multiarch_e2e::{env, Access, Scenario};
use multiarch_operator::api::MultiArchImage;
use serde_json::{json, Value};

const RELEASE: &str = "multiarch-operator";
const RELEASE_NS: &str = "multiarch-system";
const BINDING: &str = "multiarch-operator-guardrails";

/// The guardrails of the first half: images under a prefix, two ServiceAccounts, tolerations
/// and node selectors allowed with bounded keys, resources bounded.
const OPEN_VALUES: &[&str] = &[
    "--set-json",
    r#"guardrails.allowedBuilderImages=["registry.example.com/buildkit/*"]"#,
    "--set-json",
    r#"guardrails.allowedServiceAccounts=["default","builder"]"#,
    "--set",
    "guardrails.tolerations.allowed=true",
    "--set-json",
    r#"guardrails.tolerations.allowedKeys=["builds"]"#,
    "--set-json",
    r#"guardrails.nodeSelector.allowedKeys=["pool"]"#,
    "--set-json",
    r#"guardrails.resources.max={"cpu":"16","memory":"64Gi"}"#,
];
const OPEN_FLAGS: &[&str] = &[
    "--allowed-builder-images=registry.example.com/buildkit/*",
    "--allowed-builder-service-accounts=default,builder",
    "--allow-builder-tolerations=true",
    "--allowed-toleration-keys=builds",
    "--allowed-node-selector-keys=pool",
    "--max-builder-resources=cpu=16,memory=64Gi",
];

/// The second half: no tolerations, node selectors or resources at all.
const CLOSED_VALUES: &[&str] = &[
    "--set",
    "guardrails.tolerations.allowed=false",
    "--set",
    "guardrails.nodeSelector.allowed=false",
    "--set",
    "guardrails.resources.allowed=false",
];
const CLOSED_FLAGS: &[&str] = &[
    "--allow-builder-tolerations=false",
    "--allow-builder-node-selector=false",
    "--allow-builder-resources=false",
];

/// One rule's case: a spec patch, and the rule its refusal names (`None`: admitted).
type Case = (&'static str, Value, Option<&'static str>);

fn open_cases() -> Vec<Case> {
    let toleration =
        |key: &str| json!([{"key": key, "operator": "Exists", "effect": "NoSchedule"}]);
    vec![
        (
            "image-prefix",
            json!({"builder": {"image": "registry.example.com/buildkit/buildkit:v1"}}),
            None,
        ),
        (
            "image-default",
            json!({"builder": {"image": "moby/buildkit:v0.29.0-rootless"}}),
            None,
        ),
        (
            "image-other",
            json!({"builder": {"image": "ghcr.io/someone/buildkit:v1"}}),
            Some("guardrail allowedBuilderImages"),
        ),
        (
            "scanner-prefix",
            json!({"attestations": {"sbom": true, "sbomScanner": "registry.example.com/buildkit/syft:1"}}),
            None,
        ),
        (
            "scanner-other",
            json!({"attestations": {"sbom": true, "sbomScanner": "ghcr.io/someone/scanner:1"}}),
            Some("guardrail allowedBuilderImages"),
        ),
        (
            "sa-allowed",
            json!({"builder": {"serviceAccountName": "builder"}}),
            None,
        ),
        (
            "sa-other",
            json!({"builder": {"serviceAccountName": "ci-admin"}}),
            Some("guardrail allowedServiceAccounts"),
        ),
        (
            "tol-allowed",
            json!({"builder": {"tolerations": toleration("builds")}}),
            None,
        ),
        (
            "tol-key",
            json!({"platformOverrides": [{"platform": "linux/amd64", "tolerations": toleration("gpu")}]}),
            Some("guardrail tolerations.allowedKeys"),
        ),
        (
            "tol-any",
            json!({"builder": {"tolerations": [{"operator": "Exists"}]}}),
            Some("guardrail tolerations.allowedKeys"),
        ),
        (
            "ns-allowed",
            json!({"builder": {"nodeSelector": {"pool": "builds"}}}),
            None,
        ),
        (
            "ns-key",
            json!({"platformOverrides": [{"platform": "linux/amd64", "nodeSelector": {"team": "a"}}]}),
            Some("guardrail nodeSelector.allowedKeys"),
        ),
        (
            "res-at-max",
            json!({"builder": {"resources": {"requests": {"cpu": "16", "memory": "64Gi"}, "limits": {"cpu": "16000m"}}}}),
            None,
        ),
        (
            "res-over",
            json!({"builder": {"resources": {"limits": {"cpu": "17"}}}}),
            Some("guardrail resources.max"),
        ),
        (
            "res-over-override",
            json!({"platformOverrides": [{"platform": "linux/amd64", "resources": {"requests": {"memory": "65Gi"}}}]}),
            Some("guardrail resources.max"),
        ),
    ]
}

fn closed_cases() -> Vec<Case> {
    vec![
        ("plain", json!({}), None),
        (
            "tol",
            json!({"builder": {"tolerations": [{"key": "builds", "operator": "Exists"}]}}),
            Some("guardrail tolerations.allowed ("),
        ),
        (
            "ns",
            json!({"platformOverrides": [{"platform": "linux/amd64", "nodeSelector": {"pool": "builds"}}]}),
            Some("guardrail nodeSelector.allowed ("),
        ),
        (
            "res",
            json!({"builder": {"resources": {"requests": {"cpu": "1"}}}}),
            Some("guardrail resources.allowed ("),
        ),
    ]
}

/// The scenario's sample object `name` with `patch` merged into its spec.
fn object(s: &Scenario, name: &str, patch: &Value) -> MultiArchImage {
    let mut v = serde_json::to_value(s.mai(name, &["linux/amd64"])).expect("an object as JSON");
    if let (Some(spec), Some(p)) = (v["spec"].as_object_mut(), patch.as_object()) {
        for (k, val) in p {
            spec.insert(k.clone(), val.clone());
        }
    }
    serde_json::from_value(v).expect("a MultiArchImage")
}

/// Whether the apiserver admits `m` (a server-side dry run: nothing is stored).
async fn admission(s: &Scenario, m: &MultiArchImage) -> Result<(), String> {
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    s.mais()
        .create(&params, m)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn helm_upgrade(values: &[&str]) {
    let chart = env()
        .root
        .join("charts/multiarch-operator")
        .display()
        .to_string();
    let mut args = vec![
        "upgrade",
        RELEASE,
        &chart,
        "-n",
        RELEASE_NS,
        "--reuse-values",
    ];
    args.extend_from_slice(values);
    run("helm", &args);
}

fn revision() -> String {
    let status: Value = serde_json::from_str(&run(
        "helm",
        &["status", RELEASE, "-n", RELEASE_NS, "-o", "json"],
    ))
    .expect("helm status JSON");
    status["version"].to_string()
}

/// Puts the release back at `revision` (re-creating the binding) and stops the operator run
/// with guardrail flags (the scenario's end then starts the default one), also when the
/// scenario failed.
struct Restore(String);

impl Restore {
    fn restore(&self) -> Result<String, String> {
        let out = output(
            "helm",
            &["rollback", RELEASE, &self.0, "-n", RELEASE_NS],
            None,
        );
        operator::stop("TERM");
        if out.status.success() {
            try_kubectl(
                &[
                    "get",
                    "validatingadmissionpolicybinding",
                    BINDING,
                    "-o",
                    "name",
                ],
                None,
            )
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.restore();
        }
    }
}

/// Waits until the policy's answer to `probe` is `admitted` (a policy change reaches the
/// apiserver's admission a moment after it is written).
async fn until_policy(s: &Scenario, what: &str, probe: &MultiArchImage, admitted: bool) {
    s.poll(what, 60, || async {
        (admission(s, probe).await.is_ok() == admitted).then_some(())
    })
    .await;
}

async fn admission_cases(s: &Scenario, cases: &[Case]) {
    for (name, patch, rule) in cases {
        let got = admission(s, &object(s, name, patch)).await;
        match rule {
            None => assert!(
                got.is_ok(),
                "{name} ({patch}) refused at admission: {got:?}"
            ),
            Some(rule) => {
                let err = got.expect_err(&format!("{name} ({patch}) admitted"));
                assert!(
                    err.contains("ValidatingAdmissionPolicy") && err.contains(rule),
                    "{name}: the policy's refusal names {rule}: {err}"
                );
            }
        }
    }
}

/// With the binding gone: every refused case is stored, and the operator (run with `flags`)
/// stalls it with `InvalidSpec` naming the same rule, without a builder.
async fn operator_cases(s: &Scenario, flags: &[&str], cases: &[Case]) {
    let args = flags.iter().map(|f| f.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        operator::stop("TERM");
        operator::start(&Options {
            args,
            ..Default::default()
        });
    })
    .await
    .expect("starting the operator with guardrail flags");
    for (name, patch, rule) in cases {
        let Some(rule) = rule else { continue };
        let m = object(s, name, patch);
        s.mais()
            .create(&PostParams::default(), &m)
            .await
            .unwrap_or_else(|e| panic!("{name}: created without the policy: {e}"));
        let o = s
            .wait_reason(&m.name_any(), "Stalled", "InvalidSpec", 60)
            .await;
        let message = condition(&o, "Stalled")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        assert!(
            message.contains(rule),
            "{name}: the operator's refusal names {rule}: {message}"
        );
        let ready = condition(&o, "Ready").map(|c| (c.status.clone(), c.reason.clone()));
        assert_eq!(
            ready,
            Some(("False".into(), "InvalidSpec".into())),
            "{name}: Ready"
        );
    }
    assert_eq!(
        s.job_names("").await,
        Vec::<String>::new(),
        "builders of refused objects"
    );
}

#[tokio::test]
async fn guardrails_refuse_at_admission_and_in_the_operator_naming_the_rule() {
    let s = Scenario::start("guardrails", "e2e-guardrails", Access::Exclusive).await;
    let _restore = Restore(revision());
    tokio::task::spawn_blocking(|| operator::stop("TERM"))
        .await
        .expect("stopping the operator");

    // the chart's default policy: only the default builder image, only the `default` account
    let probe = object(
        &s,
        "probe",
        &json!({"builder": {"image": "ghcr.io/someone/buildkit:v1"}}),
    );
    let err = admission(&s, &probe)
        .await
        .expect_err("another builder image with the chart's defaults");
    assert!(
        err.contains("guardrail allowedBuilderImages")
            && err.contains("allowed: moby/buildkit:v0.29.0-rootless"),
        "{err}"
    );
    let sa = object(
        &s,
        "sa",
        &json!({"builder": {"serviceAccountName": "builder"}}),
    );
    let err = admission(&s, &sa)
        .await
        .expect_err("another ServiceAccount with the chart's defaults");
    assert!(err.contains("guardrail allowedServiceAccounts"), "{err}");
    admission(&s, &object(&s, "plain", &json!({})))
        .await
        .expect("a spec using the defaults");

    // open, with bounds: each rule refused and allowed at admission
    helm_upgrade(OPEN_VALUES);
    until_policy(
        &s,
        "the open policy admits a prefixed image",
        &object(
            &s,
            "probe",
            &json!({"builder": {"image": "registry.example.com/buildkit/b:1"}}),
        ),
        true,
    )
    .await;
    admission_cases(&s, &open_cases()).await;

    // closed: no tolerations, node selectors or resources
    helm_upgrade(CLOSED_VALUES);
    until_policy(
        &s,
        "the closed policy refuses a node selector",
        &object(&s, "probe", &closed_cases()[2].1),
        false,
    )
    .await;
    admission_cases(&s, &closed_cases()).await;

    // credentials in a git URL: the CRD's own rule, not echoing them
    let token = "tok-e2e-0123456789abcdef";
    for url in [
        format!("http://x-access-token:{token}@127.0.0.1:1/private/sample.git"),
        format!("https://{token}@git.example.com/a.git"),
    ] {
        let err = admission(
            &s,
            &object(&s, "userinfo", &json!({"source": {"git": {"url": url}}})),
        )
        .await
        .expect_err("a URL with credentials");
        assert!(err.contains("url must not carry credentials"), "{err}");
        assert!(!err.contains(token), "the refusal echoes the token: {err}");
    }

    // the policy off: the operator refuses the same specs by itself
    kubectl(&["delete", "validatingadmissionpolicybinding", BINDING]);
    until_policy(
        &s,
        "without the binding a node selector is admitted",
        &object(&s, "probe", &closed_cases()[2].1),
        true,
    )
    .await;
    operator_cases(&s, CLOSED_FLAGS, &closed_cases()).await;
    // (the open rules would admit the closed cases: they go first)
    kubectl(&["delete", "multiarchimages", "--all", "-n", &s.ns, "--wait"]);
    operator_cases(&s, OPEN_FLAGS, &open_cases()).await;

    let restore = _restore;
    let restored = tokio::task::spawn_blocking(move || restore.restore())
        .await
        .expect("restoring");
    assert_eq!(
        restored.as_deref().map(str::trim),
        Ok(
            format!("validatingadmissionpolicybinding.admissionregistration.k8s.io/{BINDING}")
                .as_str()
        ),
        "a rollback re-creates the binding"
    );
}
