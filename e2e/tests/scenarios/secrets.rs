//! Secrets stay secret: builds that use every kind of secret the operator handles (a push Secret,
//! a git token, git basic auth) and one whose failing build prints its credentials into its log;
//! then every output the operator writes (status, Events, its log, /metrics, the builder Jobs'
//! arguments and environment) is searched for each secret value, raw and in the forms tools
//! print (basic auth headers, a Docker config's `auth`). The builder's own log carries them, and
//! what the operator copies from it into status says `[redacted]` instead.

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::api::{ListParams, PostParams};
use kube::Api;
use multiarch_e2e::cmd::kubectl;
use multiarch_e2e::operator;
use multiarch_e2e::{env, Access, Scenario};
use multiarch_operator::api::{LocalObjectReference, MultiArchImage};
use serde_json::json;

use crate::faults::fault;

const PUSH_USER: &str = "pusher";
const PUSH_PASSWORD: &str = "push-pass-e2e-5f1d0c7a9b";

fn secret(name: &str, type_: Option<&str>, data: serde_json::Value) -> Secret {
    serde_json::from_value(json!({"metadata": {"name": name}, "type": type_, "stringData": data}))
        .expect("a Secret")
}

fn with_secrets(s: &Scenario, name: &str, git_secret: &str) -> MultiArchImage {
    let mut m = s.mai(name, &["linux/amd64"]);
    m.spec.source.git.url = env().git_private_url.clone();
    m.spec.source.git.secret_ref = Some(LocalObjectReference {
        name: git_secret.into(),
    });
    m.spec.push_secret_ref = Some(LocalObjectReference {
        name: "regcred".into(),
    });
    m
}

#[tokio::test]
async fn no_secret_value_reaches_status_events_logs_metrics_or_builder_arguments() {
    let s = Scenario::start("secrets", "e2e-secrets", Access::Shared).await;
    let env = env();
    let b64 = base64::engine::general_purpose::STANDARD;
    let push_auth = b64.encode(format!("{PUSH_USER}:{PUSH_PASSWORD}"));
    let git_basic = b64.encode(format!("{}:{}", env.git_user, env.git_password));
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    let config = json!({"auths": {env.registry.clone(): {"username": PUSH_USER, "password": PUSH_PASSWORD, "auth": push_auth}}});
    for sec in [
        secret(
            "regcred",
            Some("kubernetes.io/dockerconfigjson"),
            json!({".dockerconfigjson": config.to_string()}),
        ),
        secret("git-token", None, json!({"token": env.git_password})),
        secret(
            "git-basic",
            None,
            json!({"username": env.git_user, "password": env.git_password}),
        ),
    ] {
        secrets
            .create(&PostParams::default(), &sec)
            .await
            .expect("creating a Secret");
    }

    // a git token and a push Secret; git basic auth and a push Secret: both published
    s.apply(&with_secrets(&s, "token", "git-token")).await;
    s.apply(&with_secrets(&s, "basic", "git-basic")).await;
    // a build whose log prints its git token (raw and as a basic auth header) and registry auth
    let mut leak = with_secrets(&s, "leak", "git-token");
    leak.spec.retries = 0;
    leak.metadata.annotations = Some(fault("linux-amd64", "leak-secrets"));
    s.apply(&leak).await;
    s.wait_ready("token", 120).await;
    s.wait_ready("basic", 120).await;
    let o = s.wait_reason("leak", "Stalled", "BuildFailed", 120).await;

    // the builder's own log has them; what status copies from it does not
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let builder_log = serde_json::to_string(
        &pods
            .list(&ListParams::default().labels("multiarch.dev/image=leak"))
            .await
            .expect("listing pods"),
    )
    .unwrap_or_default();
    assert!(
        builder_log.contains(&env.git_password) && builder_log.contains(&push_auth),
        "the leaking builder printed its credentials (else this scenario proves nothing)"
    );
    let message = o.status.as_ref().expect("a status").platforms[0]
        .message
        .clone()
        .unwrap_or_default();
    assert!(
        message.contains("build failed on purpose") && message.contains("[redacted]"),
        "the log tail in status, scrubbed: {message}"
    );
    assert!(
        message.contains("x-access-token:[redacted]@git.internal"),
        "the token inside a URL is scrubbed and the rest kept: {message}"
    );

    // every output the operator writes, searched for every form of every secret
    let mut outputs = vec![
        (
            "status",
            serde_json::to_string(&s.mais().list(&ListParams::default()).await.expect("list"))
                .unwrap_or_default(),
        ),
        (
            "Events",
            serde_json::to_string(
                &Api::<Event>::namespaced(s.client.clone(), &s.ns)
                    .list(&ListParams::default())
                    .await
                    .expect("events"),
            )
            .unwrap_or_default(),
        ),
        ("operator log", operator::log_since(0)),
        ("metrics", operator::metrics()),
        (
            "builder Jobs (arguments, environment)",
            kubectl(&["get", "jobs", "-n", &s.ns, "-o", "json"]),
        ),
    ];
    outputs.push((
        "builder pod specs",
        serde_json::to_string(
            &pods
                .list(&ListParams::default())
                .await
                .expect("pods")
                .items
                .iter()
                .map(|p| &p.spec)
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default(),
    ));
    let values = [
        ("the git token", env.git_password.clone()),
        ("git basic auth", git_basic),
        ("the push password", PUSH_PASSWORD.to_string()),
        ("the push auth", push_auth.clone()),
    ];
    assert!(
        outputs[0].1.contains("\"phase\":\"Failed\"") && outputs[1].1.contains("BuildFailed"),
        "the outputs searched are the real ones"
    );
    for (what, text) in &outputs {
        for (name, value) in &values {
            assert!(!text.contains(value.as_str()), "{name} appears in {what}");
        }
    }
}
