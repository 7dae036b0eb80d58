//! Sources over smart HTTP (`git http-backend`), public and private: the revision is resolved
//! with the ref advertisement, the builder fetches the commit with the token from
//! `source.git.secretRef`, a wrong token says so without naming any secret, and a fixed Secret is
//! noticed without a new generation (the operator retries an unavailable source every
//! `--source-retry-interval`; the suite runs it with 5 s).

use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use multiarch_e2e::cmd::kubectl;
use multiarch_e2e::operator;
use multiarch_e2e::registry::{digest, raw};
use multiarch_e2e::scenario::condition;
use multiarch_e2e::{env, kstatus, Access, Scenario};
use multiarch_operator::api::{LocalObjectReference, Phase};
use serde_json::json;

use crate::build::{commit_of, ls_remote_main, real_build_checks, REAL};
use crate::faults::label_namespace;

fn token_secret(token: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": "git-auth"},
        "stringData": {"token": token},
    }))
    .expect("a Secret")
}

#[tokio::test]
async fn builds_from_public_and_private_smart_http_and_a_fixed_token_is_noticed() {
    let s = Scenario::start("git_http", "e2e-git-http", Access::Shared).await;
    label_namespace(&s, &s.ns, REAL.0, REAL.1).await;
    let env = env();

    // public, over smart HTTP, built by real BuildKit
    let mut public = s.mai("public", &["linux/amd64"]);
    public.spec.source.git.url = env.git_http_url.clone();
    s.apply(&public).await;
    let o = s.wait_ready("public", 600).await;
    assert_eq!(commit_of(&o), ls_remote_main(&env.git_http_url));
    let index = raw(&format!("{}/public:1.0.0", s.ns));
    assert_eq!(
        Some(digest(&index)),
        o.status.as_ref().and_then(|st| st.digest.clone())
    );
    real_build_checks(&s, &o, &serde_json::from_slice(&index).expect("index JSON")).await;

    // private, with a wrong token first
    let wrong = "wrong-token-0123456789abcdef";
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    secrets
        .create(&PostParams::default(), &token_secret(wrong))
        .await
        .expect("creating the Secret");
    let mut private = s.mai("private", &["linux/amd64"]);
    private.spec.source.git.url = env.git_private_url.clone();
    private.spec.source.git.secret_ref = Some(LocalObjectReference {
        name: "git-auth".into(),
    });
    s.apply(&private).await;
    let o = s
        .wait_reason("private", "Ready", "SourceUnavailable", 60)
        .await;
    kstatus::assert_status(&s.ns, "private", "Failed");
    let message = condition(&o, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("denied"),
        "says access was denied: {message}"
    );
    assert!(
        !message.contains(wrong),
        "the message names the token: {message}"
    );
    assert_eq!(
        o.status.as_ref().and_then(|st| st.phase),
        Some(Phase::Failed)
    );
    assert!(
        s.job_names("multiarch.dev/image=private").await.is_empty(),
        "no builder for an unavailable source"
    );
    let generation = o.metadata.generation;

    // the fixed Secret is noticed without a new generation
    secrets
        .patch(
            "git-auth",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"token": env.git_password}})),
        )
        .await
        .expect("fixing the Secret");
    s.wait("private", "the private source resolved", 60, |o| {
        o.status.as_ref().is_some_and(|st| st.source.is_some())
    })
    .await;
    let o = s.wait_ready("private", 600).await;
    assert_eq!(
        o.metadata.generation, generation,
        "no new generation was needed"
    );
    assert_eq!(commit_of(&o), ls_remote_main(&env.git_url));
    let index = raw(&format!("{}/private:1.0.0", s.ns));
    real_build_checks(&s, &o, &serde_json::from_slice(&index).expect("index JSON")).await;

    // neither token appears in status, Events, Jobs or the operator's log
    let mut seen = serde_json::to_string(
        &s.mais()
            .list(&ListParams::default())
            .await
            .expect("listing"),
    )
    .unwrap_or_default();
    let events: Api<Event> = Api::namespaced(s.client.clone(), &s.ns);
    seen += &serde_json::to_string(&events.list(&ListParams::default()).await.expect("events"))
        .unwrap_or_default();
    seen += &kubectl(&["get", "jobs,pods", "-n", &s.ns, "-o", "json"]);
    seen += &operator::log_since(0);
    for token in [wrong, env.git_password.as_str()] {
        assert!(
            !seen.contains(token),
            "a git token appears in status, Events, builders or the operator log"
        );
    }
}

/// A git server that cannot be reached (connection refused) is said in the status at once:
/// `Ready=False` and `Reconciling=True` with `SourceUnavailable`, the error and the next try
/// (kstatus: InProgress); after the stall time (`--source-stall-after`, 20 s in the suite) it is
/// `Stalled` too, listed first (kstatus: Failed), and still retried: once the server answers, the
/// build runs and is published.
#[tokio::test]
async fn an_unreachable_git_server_is_said_at_once_stalls_later_and_builds_when_it_is_back() {
    let s = Scenario::start("git_unreachable", "e2e-unreachable", Access::Shared).await;
    // a port nothing listens on (for now)
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let upstream = env()
        .git_http_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("the git server's address")
        .to_string();
    let mut app = s.mai("app", &["linux/amd64"]);
    app.spec.source.git.url = format!("http://127.0.0.1:{port}/public/sample.git");
    s.apply(&app).await;

    let o = s
        .wait_reason("app", "Reconciling", "SourceUnavailable", 30)
        .await;
    let ready = condition(&o, "Ready").expect("Ready").clone();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "SourceUnavailable")
    );
    assert!(
        ready.message.contains("cannot be reached") && ready.message.contains("next try at"),
        "the error and the next try: {}",
        ready.message
    );
    assert!(condition(&o, "Stalled").is_none(), "not stalled yet");
    assert_eq!(
        o.status.as_ref().and_then(|st| st.phase),
        Some(Phase::Pending)
    );
    kstatus::assert_status(&s.ns, "app", "InProgress");

    let o = s
        .wait_reason("app", "Stalled", "SourceUnavailable", 60)
        .await;
    let types: Vec<(String, String)> = o
        .status
        .as_ref()
        .expect("a status")
        .conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone()))
        .collect();
    let expected = [
        ("Ready", "False"),
        ("Stalled", "True"),
        ("Reconciling", "True"),
    ];
    assert_eq!(
        types,
        expected.map(|(a, b)| (a.to_string(), b.to_string())),
        "Stalled before Reconciling"
    );
    kstatus::assert_status(&s.ns, "app", "Failed");
    assert!(
        s.job_names("").await.is_empty(),
        "no builder without a commit"
    );

    // the server comes back on that port
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the port again");
    let forward = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    let o = s.wait_ready("app", 120).await;
    assert_eq!(
        o.status
            .as_ref()
            .and_then(|st| st.source_unreachable_since.clone()),
        None,
        "sourceUnreachableSince cleared"
    );
    kstatus::assert_status(&s.ns, "app", "Current");
    forward.abort();
}
