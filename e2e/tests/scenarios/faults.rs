//! Builds that fail, lie about their platform, or are refused: the object says why, nothing is
//! tagged.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use multiarch_e2e::operator::{self, Options};
use multiarch_e2e::registry::tags;
use multiarch_e2e::scenario::condition;
use multiarch_e2e::{kstatus, Access, Scenario};
use multiarch_operator::api::{BuilderSpec, MultiArchImage, Phase, Reason};
use serde_json::json;

#[tokio::test]
async fn a_failing_builder_is_retried_then_stalls_with_its_message_and_nothing_is_tagged() {
    let s = Scenario::start("build_fails", "e2e-fails", Access::Shared).await;
    let mut broken = s.mai("broken", &["linux/amd64", "linux/arm64"]);
    broken.spec.retries = 1;
    broken.metadata.annotations = Some(fault("linux-arm64", "fail"));
    s.apply(&broken).await;
    let o = s.wait_reason("broken", "Stalled", "BuildFailed", 90).await;
    kstatus::assert_status(&s.ns, "broken", "Failed");
    let status = o.status.expect("a status");
    assert_eq!(status.phase, Some(Phase::Failed));
    assert_eq!(status.platforms[1].attempts, 2, "arm64 attempts");
    let message = status.platforms[1].message.clone().unwrap_or_default();
    assert!(
        message.contains("failed on purpose"),
        "builder's message: {message}"
    );
    assert_eq!(
        s.job_names("multiarch.dev/platform=linux-arm64")
            .await
            .len(),
        2,
        "arm64 attempts as Jobs"
    );
    assert_eq!(tags(&format!("{}/broken", s.ns)), Vec::<String>::new());

    let mut flaky = s.mai("flaky", &["linux/amd64", "linux/arm64"]);
    flaky.spec.retries = 1;
    flaky.metadata.annotations = Some(fault("linux-arm64", "fail-once"));
    s.apply(&flaky).await;
    let o = s.wait_ready("flaky", 90).await;
    assert_eq!(
        o.status.expect("a status").platforms[1].attempts,
        1,
        "flaky attempts"
    );
    assert!(condition(&s.get("flaky").await, "Stalled").is_none_or(|c| c.status != "True"));
    kstatus::assert_status(&s.ns, "flaky", "Current");
}

#[tokio::test]
async fn an_image_whose_config_says_another_platform_is_refused_and_nothing_is_tagged() {
    let s = Scenario::start("platform_mismatch", "e2e-mismatch", Access::Shared).await;
    let mut liar = s.mai("liar", &["linux/amd64", "linux/arm64"]);
    liar.metadata.annotations = Some(fault("linux-arm64", "wrong-arch"));
    s.apply(&liar).await;
    let o = s
        .wait_reason("liar", "Stalled", "PlatformMismatch", 90)
        .await;
    kstatus::assert_status(&s.ns, "liar", "Failed");
    let message = condition(&o, "Stalled")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("linux/amd64") && message.contains("linux/arm64"),
        "the message names both platforms: {message}"
    );
    assert_eq!(tags(&format!("{}/liar", s.ns)), Vec::<String>::new());
}

#[tokio::test]
async fn invalid_objects_are_refused_at_admission_or_stall_with_invalid_spec() {
    let s = Scenario::start("invalid", "e2e-invalid", Access::Shared).await;
    let refused = |m: MultiArchImage| {
        let api = s.mais();
        async move {
            match api.create(&PostParams::default(), &m).await {
                Ok(_) => panic!("{} was accepted at admission", m.name_any()),
                Err(e) => e.to_string(),
            }
        }
    };
    let message = refused(s.mai("dup", &["linux/amd64", "linux/amd64"])).await;
    assert!(
        message.contains("Duplicate value"),
        "duplicate platform: {message}"
    );
    let mut tagged = s.mai("tagged", &["linux/amd64"]);
    tagged.spec.image = format!("{}/team/app:1.0", multiarch_e2e::env().registry);
    let message = refused(tagged).await;
    assert!(
        message.contains("image must be a repository without a tag"),
        "image with a tag: {message}"
    );
    let message = refused(s.mai("badplatform", &["linux"])).await;
    assert!(
        message.contains("os/arch[/variant]"),
        "bad platform: {message}"
    );

    // accepted by the schema, refused by the operator: two names of one platform
    s.apply(&s.mai("alias", &["linux/arm64", "linux/arm64/v8"]))
        .await;
    s.wait_reason("alias", "Stalled", "InvalidSpec", 60).await;
    kstatus::assert_status(&s.ns, "alias", "Failed");
    assert_eq!(
        s.job_names("").await,
        Vec::<String>::new(),
        "builders of an invalid object"
    );
}

#[tokio::test]
async fn a_builder_refused_by_pod_security_stalls_with_the_admission_message() {
    let s = Scenario::start("builder_rejected", "e2e-baseline", Access::Shared).await;
    label_namespace(&s, &s.ns, "pod-security.kubernetes.io/enforce", "baseline").await;
    s.apply(&s.mai("app", &["linux/amd64"])).await;
    let o = s.wait_reason("app", "Stalled", "BuilderRejected", 90).await;
    kstatus::assert_status(&s.ns, "app", "Failed");
    let message = o.status.expect("a status").platforms[0]
        .message
        .clone()
        .unwrap_or_default();
    assert!(
        message.contains("PodSecurity"),
        "admission message: {message}"
    );
    assert_eq!(
        s.job_names("").await,
        Vec::<String>::new(),
        "builders created"
    );
}

#[tokio::test]
async fn a_hanging_build_is_stopped_at_its_timeout() {
    let s = Scenario::start("build_timeout", "e2e-timeout", Access::Shared).await;
    let mut app = s.mai("app", &["linux/amd64", "linux/arm64"]);
    app.spec.builder = Some(BuilderSpec {
        timeout: Some("15s".into()),
        ..Default::default()
    });
    app.metadata.annotations = Some(fault("linux-amd64", "hang"));
    s.apply(&app).await;
    let o = s.wait_reason("app", "Stalled", "BuildTimeout", 90).await;
    kstatus::assert_status(&s.ns, "app", "Failed");
    let amd64 = &o.status.as_ref().expect("a status").platforms[0];
    assert_eq!(amd64.reason, Some(Reason::BuildTimeout), "amd64 reason");
    let message = amd64.message.clone().unwrap_or_default();
    assert!(
        message.contains("did not finish within 15s"),
        "message: {message}"
    );
    let job = amd64.builder.clone().expect("the builder's name");
    let suspended = Api::<Job>::namespaced(s.client.clone(), &s.ns)
        .get(&job)
        .await
        .expect("the stuck builder")
        .spec
        .and_then(|spec| spec.suspend);
    assert_eq!(suspended, Some(true), "the stuck builder is suspended");
    s.poll("the stuck builder's pod is gone", 60, || async {
        s.pods("multiarch.dev/platform=linux-amd64")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(tags(&format!("{}/app", s.ns)), Vec::<String>::new());
}

#[tokio::test]
async fn a_failed_build_runs_again_on_a_new_rebuild_value() {
    let s = Scenario::start("rebuild_after_failure", "e2e-rebuild", Access::Shared).await;
    let mut app = s.mai("app", &["linux/amd64", "linux/arm64"]);
    app.spec.retries = 0;
    app.metadata.annotations = Some(fault("linux-arm64", "fail"));
    s.apply(&app).await;
    let o = s.wait_reason("app", "Stalled", "BuildFailed", 90).await;
    let failed_build = build_id(&o);
    s.patch(
        "app",
        json!({"metadata": {"annotations": {
            "e2e.multiarch.dev/fault.linux-arm64": null,
            "multiarch.dev/rebuild": "fixed-1",
        }}}),
    )
    .await;
    let o = s.wait_ready("app", 90).await;
    assert_ne!(build_id(&o), failed_build, "the rebuild has a new build id");
    assert_eq!(
        o.status
            .as_ref()
            .and_then(|st| st.rebuild.clone())
            .as_deref(),
        Some("fixed-1")
    );
    assert_eq!(
        tags(&format!("{}/app", s.ns)),
        ["1.0.0", "1.0.0-amd64", "1.0.0-arm64", "latest"]
    );

    // a builder refused by Pod Security runs once the namespace allows it and the object is rebuilt
    let pns = "e2e-admission-fixed";
    s.fresh_namespace(pns, &[("pod-security.kubernetes.io/enforce", "baseline")])
        .await;
    s.apply(&multiarch_e2e::mai(pns, "app", &["linux/amd64"]))
        .await;
    s.wait_in(pns, "app", "Stalled with reason BuilderRejected", 90, |o| {
        condition(o, "Stalled").is_some_and(|c| c.reason == "BuilderRejected")
    })
    .await;
    label_namespace(&s, pns, "pod-security.kubernetes.io/enforce", "privileged").await;
    s.mais_in(pns)
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"multiarch.dev/rebuild": "psa-fixed"}}}),
            ),
        )
        .await
        .expect("annotating");
    s.wait_in(pns, "app", "Ready", 90, |o| {
        condition(o, "Ready").is_some_and(|c| c.status == "True")
    })
    .await;
}

/// The annotation that makes the builder double fail the way `kind` says for `platform`
/// (`os-arch[-variant]`).
pub fn fault(platform: &str, kind: &str) -> BTreeMap<String, String> {
    [(
        format!("e2e.multiarch.dev/fault.{platform}"),
        kind.to_string(),
    )]
    .into()
}

/// The build id in `o`'s status.
pub fn build_id(o: &MultiArchImage) -> String {
    o.status
        .as_ref()
        .and_then(|s| s.build.as_ref())
        .map(|b| b.id.clone())
        .unwrap_or_else(|| panic!("{} has no build in its status", o.name_any()))
}

/// Sets label `key=value` on namespace `ns`.
pub async fn label_namespace(s: &Scenario, ns: &str, key: &str, value: &str) {
    Api::<Namespace>::all(s.client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {key: value}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("labelling namespace {ns}: {e}"));
}

/// Stops (SIGSTOP) the registry process until dropped.
struct FrozenRegistry(String);

impl FrozenRegistry {
    fn freeze() -> FrozenRegistry {
        let pid = std::fs::read_to_string(multiarch_e2e::env().state.join("registry.pid"))
            .expect("the registry's pid file")
            .trim()
            .to_string();
        multiarch_e2e::cmd::run("kill", &["-STOP", &pid]);
        FrozenRegistry(pid)
    }
}

impl Drop for FrozenRegistry {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0])
            .status();
    }
}

/// A registry that stops answering while the operator publishes (its process stopped during the
/// operator's fail-point pause before publishing, once the status says `Publishing`, which a
/// publish that lasts over a second shows): the status says so within the
/// registry client's deadline, in progress (`Reconciling`/`Ready=False` with
/// `RegistryUnavailable`, the error and the next try; kstatus InProgress), never `Stalled`; once
/// the registry answers again the index is published.
#[tokio::test]
async fn a_registry_that_stops_answering_while_publishing_is_said_and_the_index_follows() {
    let s = Scenario::start("registry_outage", "e2e-registry-outage", Access::Exclusive).await;
    tokio::task::spawn_blocking(|| {
        operator::stop("TERM");
        operator::start(&Options {
            failpoint: Some("pause-before-publish".into()),
            ..Default::default()
        });
    })
    .await
    .expect("the operator with a pause before publishing");
    s.apply(&s.mai("app", &["linux/amd64", "linux/arm64"]))
        .await;
    s.wait("app", "Publishing", 90, |o| {
        o.status.as_ref().and_then(|st| st.phase) == Some(Phase::Publishing)
    })
    .await;
    let frozen = FrozenRegistry::freeze();
    let o = s
        .wait_reason("app", "Reconciling", "RegistryUnavailable", 60)
        .await;
    let ready = condition(&o, "Ready").expect("Ready").clone();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "RegistryUnavailable")
    );
    assert!(
        ready.message.contains("registry cannot be reached")
            && ready.message.contains("next try at"),
        "the error and the next try: {}",
        ready.message
    );
    assert_eq!(
        o.status.as_ref().and_then(|st| st.phase),
        Some(Phase::Publishing)
    );
    assert!(condition(&o, "Stalled").is_none(), "not a failure");
    kstatus::assert_status(&s.ns, "app", "InProgress");
    drop(frozen);
    s.wait_ready("app", 90).await;
    kstatus::assert_status(&s.ns, "app", "Current");
    assert_eq!(
        tags(&format!("{}/app", s.ns)),
        ["1.0.0", "1.0.0-amd64", "1.0.0-arm64", "latest"],
        "published"
    );
    tokio::task::spawn_blocking(|| {
        operator::stop("TERM");
        operator::ensure_default();
    })
    .await
    .expect("the default operator again");
}
