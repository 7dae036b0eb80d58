//! Table-driven tests of the planner: every transition of the state machine.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::*;
use crate::api::{BuildStatus, PlatformPhase, SourceStatus};
use crate::builder::platform_label;
use crate::config::BuilderDefaults;
use crate::validate::{tests::object, validate};

pub(super) const COMMIT: &str = "4f1a528c0ffee0000000000000000000000000ab";

pub(super) fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

pub(super) fn desired(spec: serde_json::Value) -> DesiredBuild {
    validate(&object(spec), &BuilderDefaults::default()).unwrap()
}

pub(super) fn builder(
    d: &DesiredBuild,
    platform: &str,
    attempt: u32,
    state: BuilderState,
) -> BuilderObservation {
    let p: Platform = platform.parse().unwrap();
    BuilderObservation {
        name: crate::builder::job_name("apiping", &d.build_id, &p, attempt),
        build_id: d.build_id.clone(),
        platform: platform_label(&p),
        attempt,
        commit: COMMIT.into(),
        created: t(0),
        finished_at: match state {
            BuilderState::Succeeded { .. } | BuilderState::Failed { .. } => Some(t(100)),
            _ => None,
        },
        state,
        disruptions: 0,
        stopped: None,
        node_selector: [
            ("kubernetes.io/arch".to_string(), p.node_arch().to_string()),
            ("kubernetes.io/os".to_string(), p.os.clone()),
        ]
        .into(),
        requests: [
            ("cpu".to_string(), "1".to_string()),
            ("memory".to_string(), "2Gi".to_string()),
        ]
        .into(),
    }
}

pub(super) fn running(node: &str) -> BuilderState {
    BuilderState::Running {
        node: node.into(),
        started: t(10),
    }
}

pub(super) fn built(digest: &str) -> BuilderState {
    BuilderState::Succeeded {
        node: Some("n1".into()),
        pushed: PushCheck::Pushed(digest.into()),
    }
}

pub(super) fn exited(code: i32, msg: &str) -> BuilderState {
    BuilderState::Failed {
        node: Some("n1".into()),
        failure: Failure::Exited(code),
        message: msg.into(),
    }
}

/// A status of the current build, as a previous reconcile would have written it.
pub(super) fn started(d: &DesiredBuild) -> MultiArchImageStatus {
    MultiArchImageStatus {
        observed_generation: Some(1),
        build: Some(BuildStatus {
            id: d.build_id.clone(),
            spec_key: None,
            started_at: Some(Time(t(0))),
        }),
        source: Some(SourceStatus {
            commit: COMMIT.into(),
            short_commit: None,
            revision: Some("main".into()),
        }),
        phase: Some(Phase::Pending),
        ..Default::default()
    }
}

/// A platform's status before its first builder.
pub(super) fn platform_status(platform: &str) -> PlatformStatus {
    PlatformStatus {
        platform: platform.into(),
        phase: PlatformPhase::Pending,
        builder: None,
        node: None,
        attempts: 0,
        disruptions: 0,
        digest: None,
        waiting_since: None,
        reason: None,
        message: None,
    }
}

/// What a reconcile of generation 1 observes, with a one-hour builder time-to-live.
pub(super) fn observed<'a>(
    status: &'a MultiArchImageStatus,
    builders: &'a [BuilderObservation],
    source: Option<SourceResolution>,
) -> Observed<'a> {
    Observed {
        generation: Some(1),
        status,
        builders,
        source,
        revision: "main",
        finished_ttl: Duration::from_secs(3600),
        source_retry: Duration::from_secs(60),
        source_stall_after: Duration::from_secs(300),
        follow: None,
    }
}

fn run(
    d: &DesiredBuild,
    status: &MultiArchImageStatus,
    builders: &[BuilderObservation],
    source: Option<SourceResolution>,
    now: Timestamp,
) -> Plan {
    plan(d, &observed(status, builders, source), now)
}

/// The status after every platform was built and a publish ended with `outcome`.
fn after_publish(
    d: &DesiredBuild,
    b: &[BuilderObservation],
    outcome: PublishOutcome,
) -> MultiArchImageStatus {
    let mut status = run(d, &started(d), b, None, t(200)).status;
    record_publish(&mut status, d, &outcome, t(201));
    status
}

fn creates(plan: &Plan) -> Vec<(String, u32)> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateBuilder {
                platform, attempt, ..
            } => Some((platform.to_string(), *attempt)),
            _ => None,
        })
        .collect()
}

fn condition<'a>(s: &'a MultiArchImageStatus, type_: &str) -> Option<&'a Condition> {
    s.conditions.iter().find(|c| c.type_ == type_)
}

#[test]
fn new_object_waits_for_the_source_then_creates_one_builder_per_platform() {
    let d = desired(serde_json::json!({}));
    let empty = MultiArchImageStatus::default();
    assert!(needs_source(&d, &empty, &[]));
    let p = run(&d, &empty, &[], None, t(0));
    assert!(p.actions.is_empty());

    let p = run(
        &d,
        &empty,
        &[],
        Some(SourceResolution::Resolved(COMMIT.into())),
        t(0),
    );
    assert_eq!(
        creates(&p),
        vec![("linux/amd64".into(), 1), ("linux/arm64".into(), 1)]
    );
    assert!(p
        .actions
        .iter()
        .all(|a| !matches!(a, Action::CreateBuilder { commit, .. } if commit != COMMIT)));
    assert_eq!(p.status.source.as_ref().unwrap().commit, COMMIT);
    // the id of the new build includes its commit
    let id = new_build_id(&d.spec_key, COMMIT, None);
    assert_eq!(p.build_id, id);
    assert_eq!(p.status.build.as_ref().unwrap().id, id);
    assert_eq!(p.status.build.as_ref().unwrap().spec_key, Some(d.spec_key));
    assert_eq!(p.status.phase, Some(Phase::Pending));
    assert_eq!(condition(&p.status, "Ready").unwrap().status, "False");
    assert_eq!(condition(&p.status, "Reconciling").unwrap().status, "True");
    assert!(condition(&p.status, "Stalled").is_none());
}

#[test]
fn unavailable_source_stalls_with_source_unavailable() {
    let d = desired(serde_json::json!({}));
    let p = run(
        &d,
        &MultiArchImageStatus::default(),
        &[],
        Some(SourceResolution::Unavailable(
            "revision nope not found".into(),
        )),
        t(0),
    );
    assert!(p.actions.is_empty());
    assert_eq!(p.status.phase, Some(Phase::Failed));
    let stalled = condition(&p.status, "Stalled").unwrap();
    assert_eq!(stalled.reason, "SourceUnavailable");
    assert!(stalled.message.contains("nope"));
    // tried again at the operator's source retry interval, without a change to the object
    assert_eq!(p.requeue_after, Some(Duration::from_secs(60)));
}

#[test]
fn restarted_operator_adopts_existing_builders_and_their_commit() {
    let d = desired(serde_json::json!({}));
    let mut b = builder(&d, "linux/amd64", 1, running("amd-1"));
    b.commit = "1111111111111111111111111111111111111111".into();
    assert!(!needs_source(
        &d,
        &MultiArchImageStatus::default(),
        std::slice::from_ref(&b)
    ));
    let p = run(&d, &MultiArchImageStatus::default(), &[b], None, t(20));
    assert_eq!(
        p.status.source.as_ref().unwrap().commit,
        "1111111111111111111111111111111111111111"
    );
    // only the missing platform's builder is created, never a second amd64 one
    assert_eq!(creates(&p), vec![("linux/arm64".into(), 1)]);
}

#[test]
fn unschedulable_builder_waits_for_node_with_the_schedulers_reason() {
    let d = desired(serde_json::json!({}));
    let msg = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.";
    let b = [
        builder(&d, "linux/amd64", 1, running("amd-1")),
        builder(
            &d,
            "linux/arm64",
            1,
            BuilderState::WaitingForNode {
                since: t(5),
                message: Some(msg.into()),
            },
        ),
    ];
    let p = run(&d, &started(&d), &b, None, t(60));
    assert!(p.actions.is_empty());
    let arm = &p.status.platforms[1];
    assert_eq!(arm.phase, PlatformPhase::Pending);
    assert_eq!(arm.reason, Some(Reason::WaitingForNode));
    assert_eq!(arm.waiting_since, Some(Time(t(5))));
    assert_eq!(arm.message.as_deref(), Some(msg));
    assert_eq!(
        condition(&p.status, "Ready").unwrap().reason,
        "WaitingForNode"
    );
    // it looks again when the provisioning timeout would expire
    let requeue = p.requeue_after.unwrap();
    assert!(
        requeue <= Duration::from_secs(15 * 60 - 55 + 1),
        "{requeue:?}"
    );
}

#[test]
fn arm64_pending_past_provisioning_timeout_fails_platform() {
    let d = desired(serde_json::json!({"builder": {"provisioningTimeout": "10m"}}));
    let b = [
        builder(&d, "linux/amd64", 1, built("sha256:aa")),
        builder(
            &d,
            "linux/arm64",
            1,
            BuilderState::WaitingForNode {
                since: t(0),
                message: Some("didn't match Pod's node affinity/selector".into()),
            },
        ),
    ];
    let p = run(&d, &started(&d), &b, None, t(600));
    assert!(p.actions.iter().any(|a| matches!(
        a,
        Action::StopBuilder {
            reason: Reason::NoNodeForPlatform,
            ..
        }
    )));
    assert_eq!(p.status.platforms[1].phase, PlatformPhase::Failed);
    assert_eq!(p.status.phase, Some(Phase::Failed));
    let stalled = condition(&p.status, "Stalled").unwrap();
    assert_eq!(stalled.reason, "NoNodeForPlatform");
    assert!(stalled.message.contains("linux/arm64"));
    let message = p.status.platforms[1].message.as_deref().unwrap();
    assert!(
        message.contains("{kubernetes.io/arch=arm64,kubernetes.io/os=linux}"),
        "{message}"
    );
    assert!(
        message.contains("with room for {cpu=1,memory=2Gi}"),
        "names what the builder asked for: {message}"
    );
    assert!(message.contains("didn't match Pod's node affinity/selector"));
    assert!(!p.actions.contains(&Action::Publish));
}

#[test]
fn running_builder_past_timeout_is_stopped_with_build_timeout() {
    let d = desired(serde_json::json!({"builder": {"timeout": "5m"}}));
    let b = [
        builder(&d, "linux/amd64", 1, running("a")),
        builder(&d, "linux/arm64", 1, running("b")),
    ];
    let p = run(&d, &started(&d), &b, None, t(10 + 299));
    assert_eq!(p.status.phase, Some(Phase::Building));
    assert!(p.actions.is_empty());
    let p = run(&d, &started(&d), &b, None, t(10 + 300));
    assert_eq!(
        p.actions
            .iter()
            .filter(|a| matches!(
                a,
                Action::StopBuilder {
                    reason: Reason::BuildTimeout,
                    ..
                }
            ))
            .count(),
        2
    );
    assert_eq!(
        condition(&p.status, "Stalled").unwrap().reason,
        "BuildTimeout"
    );
}

#[test]
fn failed_build_is_retried_within_retries_then_fails() {
    let d = desired(serde_json::json!({"retries": 1}));
    let amd = builder(&d, "linux/amd64", 1, built("sha256:aa"));
    let first = builder(
        &d,
        "linux/arm64",
        1,
        exited(1, "RUN go build: exit status 2"),
    );
    let p = run(
        &d,
        &started(&d),
        &[amd.clone(), first.clone()],
        None,
        t(200),
    );
    assert_eq!(creates(&p), vec![("linux/arm64".into(), 2)]);
    assert_eq!(p.status.platforms[1].attempts, 1);
    assert_eq!(p.status.phase, Some(Phase::Building));

    let second = builder(
        &d,
        "linux/arm64",
        2,
        exited(1, "RUN go build: exit status 2"),
    );
    let p = run(&d, &p.status, &[amd, first, second], None, t(300));
    assert!(creates(&p).is_empty());
    let arm = &p.status.platforms[1];
    assert_eq!(arm.phase, PlatformPhase::Failed);
    assert_eq!(arm.attempts, 2);
    assert!(arm.message.as_deref().unwrap().contains("exit status 2"));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(
        condition(&p.status, "Stalled").unwrap().reason,
        "BuildFailed"
    );
    assert!(!p.actions.contains(&Action::Publish));
}

#[test]
fn new_rebuild_value_after_a_failure_starts_a_fresh_build() {
    let d = desired(serde_json::json!({"retries": 0}));
    let amd = builder(&d, "linux/amd64", 1, built("sha256:aa"));
    let arm = builder(&d, "linux/arm64", 1, exited(1, "boom"));
    let failed = run(&d, &started(&d), &[amd.clone(), arm.clone()], None, t(200));
    assert_eq!(failed.status.phase, Some(Phase::Failed));
    // the same failed build is left alone
    let again = run(
        &d,
        &failed.status,
        &[amd.clone(), arm.clone()],
        None,
        t(900),
    );
    assert!(creates(&again).is_empty());

    let key = crate::validate::build_id(
        &object(serde_json::json!({"retries": 0})).spec,
        Some("fixed-1"),
    );
    let rebuilt = DesiredBuild {
        build_id: key.clone(),
        spec_key: key,
        rebuild: Some("fixed-1".into()),
        ..d.clone()
    };
    assert_ne!(rebuilt.spec_key, d.spec_key);
    let source = Some(SourceResolution::Resolved(COMMIT.into()));
    let p = run(&rebuilt, &failed.status, &[amd, arm], source, t(1000));
    assert_eq!(
        creates(&p),
        vec![("linux/amd64".into(), 1), ("linux/arm64".into(), 1)]
    );
    assert_eq!(p.status.rebuild.as_deref(), Some("fixed-1"));
    assert_ne!(p.status.phase, Some(Phase::Failed));
    assert!(condition(&p.status, "Stalled").is_none());
}

#[test]
fn disruptions_are_not_counted_as_attempts() {
    let d = desired(serde_json::json!({}));
    let mut b = builder(&d, "linux/arm64", 1, running("arm-2"));
    b.disruptions = 1;
    let p = run(
        &d,
        &started(&d),
        &[builder(&d, "linux/amd64", 1, running("a")), b],
        None,
        t(50),
    );
    let arm = &p.status.platforms[1];
    assert_eq!(arm.attempts, 0);
    assert_eq!(arm.disruptions, 1);
    assert_eq!(arm.phase, PlatformPhase::Building);
    assert!(creates(&p).is_empty());
}

#[test]
fn too_many_disruptions_fail_the_platform_without_retry() {
    let d = desired(serde_json::json!({}));
    let mut b = builder(
        &d,
        "linux/arm64",
        1,
        BuilderState::Failed {
            node: None,
            failure: Failure::Disruptions,
            message: "BackoffLimitExceeded".into(),
        },
    );
    b.disruptions = 4;
    let p = run(
        &d,
        &started(&d),
        &[builder(&d, "linux/amd64", 1, built("sha256:aa")), b],
        None,
        t(50),
    );
    assert!(creates(&p).is_empty());
    assert_eq!(p.status.platforms[1].attempts, 0);
    assert!(p.status.platforms[1]
        .message
        .as_deref()
        .unwrap()
        .contains("disruptions"));
    assert_eq!(p.status.phase, Some(Phase::Failed));
}

#[test]
fn all_platforms_built_publishes_once() {
    let d = desired(serde_json::json!({}));
    let b = [
        builder(&d, "linux/amd64", 1, built("sha256:aa")),
        builder(&d, "linux/arm64", 1, built("sha256:bb")),
    ];
    let p = run(&d, &started(&d), &b, None, t(200));
    assert_eq!(p.actions, vec![Action::Publish]);
    assert_eq!(p.status.phase, Some(Phase::Publishing));
    assert_eq!(p.status.platforms[1].digest.as_deref(), Some("sha256:bb"));

    let mut status = p.status.clone();
    let events = record_publish(
        &mut status,
        &d,
        &PublishOutcome::Published {
            digest: "sha256:ii".into(),
            image_ref: "registry.example.com/team/apiping@sha256:ii".into(),
            base_images: Vec::new(),
            signature: None,
            sboms: Vec::new(),
        },
        t(201),
    );
    assert!(events.iter().any(|e| e.reason == Reason::Published));
    assert_eq!(condition(&status, "Ready").unwrap().status, "True");
    assert!(condition(&status, "Reconciling").is_none());

    // running again changes nothing: no second publish, no new status
    let again = run(&d, &status, &b, None, t(300));
    assert!(again.actions.is_empty());
    assert_eq!(again.status, status);
    assert!(again.events.is_empty());
}

#[test]
fn tags_only_change_republishes_without_new_builders() {
    let d = desired(serde_json::json!({}));
    let b = [
        builder(&d, "linux/amd64", 1, built("sha256:aa")),
        builder(&d, "linux/arm64", 1, built("sha256:bb")),
    ];
    let status = after_publish(
        &d,
        &b,
        PublishOutcome::Published {
            digest: "sha256:ii".into(),
            image_ref: "x@sha256:ii".into(),
            base_images: Vec::new(),
            signature: None,
            sboms: Vec::new(),
        },
    );

    let d2 = desired(serde_json::json!({"tags": ["1.0.1", "latest"]}));
    assert_eq!(d.build_id, d2.build_id);
    let p = run(&d2, &status, &b, None, t(300));
    assert_eq!(p.actions, vec![Action::Publish]);
}

#[test]
fn signing_added_to_a_published_object_signs_without_building_and_then_rests() {
    let d = desired(serde_json::json!({}));
    let b = [
        builder(&d, "linux/amd64", 1, built("sha256:aa")),
        builder(&d, "linux/arm64", 1, built("sha256:bb")),
    ];
    let published = |signature| PublishOutcome::Published {
        digest: "sha256:ii".into(),
        image_ref: "x@sha256:ii".into(),
        base_images: Vec::new(),
        signature,
        sboms: Vec::new(),
    };
    let status = after_publish(&d, &b, published(None));
    let signed = desired(serde_json::json!({"signing": {"keySecretRef": {"name": "cosign"}}}));
    assert_eq!(d.build_id, signed.build_id);
    let p = run(&signed, &status, &b, None, t(300));
    assert_eq!(p.actions, vec![Action::Publish]);

    let signature = crate::api::SignatureStatus {
        tag: "x:sha256-ii.sig".into(),
        digest: "sha256:ss".into(),
        key: "sha256:kk".into(),
    };
    let status = after_publish(&signed, &b, published(Some(signature.clone())));
    assert_eq!(status.signature, Some(signature));
    assert!(run(&signed, &status, &b, None, t(400)).actions.is_empty());
}

#[test]
fn build_input_change_retires_old_builders_and_starts_a_new_build() {
    let old = desired(serde_json::json!({}));
    let new = desired(serde_json::json!({"buildArgs": [{"name": "V", "value": "2"}]}));
    let b = [
        builder(&old, "linux/amd64", 1, running("a")),
        builder(&old, "linux/arm64", 1, built("sha256:bb")),
    ];
    assert!(needs_source(&new, &started(&old), &b));
    let p = run(
        &new,
        &started(&old),
        &b,
        Some(SourceResolution::Resolved(COMMIT.into())),
        t(50),
    );
    assert!(p.actions.contains(&Action::DeleteBuilder {
        name: b[0].name.clone()
    }));
    assert_eq!(creates(&p).len(), 2);
    let id = new_build_id(&new.spec_key, COMMIT, None);
    assert_eq!(p.status.build.as_ref().unwrap().id, id);
    assert!(p.status.platforms.iter().all(|p| p.digest.is_none()));
}

#[test]
fn platform_mismatch_stays_failed_until_a_new_generation() {
    let d = desired(serde_json::json!({}));
    let b = [
        builder(&d, "linux/amd64", 1, built("sha256:aa")),
        builder(&d, "linux/arm64", 1, built("sha256:bb")),
    ];
    let status = after_publish(
        &d,
        &b,
        PublishOutcome::PlatformMismatch("linux/arm64 image is linux/amd64".into()),
    );
    assert_eq!(
        condition(&status, "Stalled").unwrap().reason,
        "PlatformMismatch"
    );
    let p = run(&d, &status, &b, None, t(300));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.status.phase, Some(Phase::Failed));
}

#[test]
fn builder_rejected_at_admission_is_not_recreated() {
    let d = desired(serde_json::json!({}));
    let mut status = started(&d);
    status.phase = Some(Phase::Failed);
    status.platforms = vec![PlatformStatus {
        phase: PlatformPhase::Failed,
        reason: Some(Reason::BuilderRejected),
        message: Some("violates PodSecurity \"baseline:latest\"".into()),
        ..platform_status("linux/amd64")
    }];
    let p = run(&d, &status, &[], None, t(10));
    assert!(creates(&p).is_empty(), "{:?}", p.actions);
    assert_eq!(
        condition(&p.status, "Stalled").unwrap().reason,
        "BuilderRejected"
    );
}

#[test]
fn finished_builders_are_deleted_after_ttl_keeping_the_latest_failed_one() {
    let old = desired(serde_json::json!({}));
    let d = desired(serde_json::json!({"target": "x"}));
    let failed_old = builder(&old, "linux/amd64", 1, exited(1, "boom"));
    let ok_old = builder(&old, "linux/arm64", 1, built("sha256:bb"));
    let mut status = started(&d);
    status.phase = Some(Phase::Building);
    let p = run(
        &d,
        &status,
        &[failed_old.clone(), ok_old.clone()],
        None,
        t(100 + 3599),
    );
    assert!(!p
        .actions
        .iter()
        .any(|a| matches!(a, Action::DeleteBuilder { .. })));
    let p = run(
        &d,
        &status,
        &[failed_old, ok_old.clone()],
        None,
        t(100 + 3600),
    );
    assert!(p
        .actions
        .contains(&Action::DeleteBuilder { name: ok_old.name }));
    assert_eq!(
        p.actions
            .iter()
            .filter(|a| matches!(a, Action::DeleteBuilder { .. }))
            .count(),
        1
    );
}

#[test]
fn built_platform_whose_builder_was_cleaned_up_is_not_rebuilt_from_a_kept_failure() {
    // amd64 failed once (kept for debugging), attempt 2 built; after the TTL attempt 2 is gone
    let d = desired(serde_json::json!({"retries": 1}));
    let failed = builder(&d, "linux/amd64", 1, exited(1, "boom"));
    let b = [
        failed.clone(),
        builder(&d, "linux/amd64", 2, built("sha256:aa")),
        builder(&d, "linux/arm64", 1, built("sha256:bb")),
    ];
    let published = after_publish(
        &d,
        &b,
        PublishOutcome::Published {
            digest: "sha256:ii".into(),
            image_ref: "r@sha256:ii".into(),
            base_images: Vec::new(),
            signature: None,
            sboms: Vec::new(),
        },
    );
    assert_eq!(published.phase, Some(Phase::Succeeded));
    let p = run(&d, &published, &[failed], None, t(5000));
    assert_eq!(creates(&p), vec![]);
    assert!(!p.actions.contains(&Action::Publish));
    assert_eq!(p.status.phase, Some(Phase::Succeeded));
    assert_eq!(p.status.platforms[0].phase, PlatformPhase::Built);
    assert_eq!(p.status.platforms[0].digest.as_deref(), Some("sha256:aa"));
    assert_eq!(p.status.platforms[0].attempts, 1);
}

#[test]
fn conditions_keep_their_transition_time_while_unchanged() {
    let d = desired(serde_json::json!({}));
    let b = [
        builder(&d, "linux/amd64", 1, running("a")),
        builder(&d, "linux/arm64", 1, running("b")),
    ];
    let first = run(&d, &started(&d), &b, None, t(20)).status;
    let second = run(&d, &first, &b, None, t(40)).status;
    assert_eq!(
        condition(&first, "Ready").unwrap().last_transition_time,
        condition(&second, "Ready").unwrap().last_transition_time
    );
    assert_eq!(first, second);
}

#[test]
fn long_messages_keep_their_tail() {
    let s = format!("{}END", "x".repeat(5000));
    let t = truncate_tail(&s, 100);
    assert!(t.ends_with("END"));
    assert!(t.len() <= 104);
}

/// A published build of `d` and the plan of a reconcile whose poll found `check`.
fn poll(d: &DesiredBuild, check: FollowCheck, now: i64) -> (MultiArchImageStatus, Plan) {
    let b = [
        builder(d, "linux/amd64", 1, built("sha256:aa")),
        builder(d, "linux/arm64", 1, built("sha256:bb")),
    ];
    let published = after_publish(
        d,
        &b,
        PublishOutcome::Published {
            digest: "sha256:ii".into(),
            image_ref: "registry.example.com/team/apiping@sha256:ii".into(),
            base_images: Vec::new(),
            signature: None,
            sboms: Vec::new(),
        },
    );
    let mut observed = observed(&published, &b, None);
    observed.follow = Some(check);
    let plan = plan(d, &observed, t(now));
    (published, plan)
}

const NEXT: &str = "9999999999999999999999999999999999999999";

#[test]
fn a_new_commit_of_the_polled_branch_starts_a_build_of_it_and_says_so() {
    let d = desired(serde_json::json!({}));
    let unchanged = FollowCheck {
        source: Some(SourceResolution::Resolved(COMMIT.into())),
        moved: Vec::new(),
    };
    let (published, p) = poll(&d, unchanged, 300);
    assert_eq!(p.status, published, "nothing moved: nothing to write");
    assert!(p.actions.is_empty() && p.events.is_empty());

    let moved = FollowCheck {
        source: Some(SourceResolution::Resolved(NEXT.into())),
        moved: Vec::new(),
    };
    let (published, p) = poll(&d, moved, 300);
    let id = new_build_id(&d.spec_key, NEXT, None);
    assert_eq!(p.build_id, id);
    assert_eq!(p.status.source.as_ref().unwrap().commit, NEXT);
    assert_eq!(
        creates(&p),
        vec![("linux/amd64".into(), 1), ("linux/arm64".into(), 1)]
    );
    assert!(p
        .actions
        .iter()
        .all(|a| !matches!(a, Action::CreateBuilder { commit, .. } if commit != NEXT)));
    assert_eq!(p.events[0].reason, Reason::NewCommit);
    assert!(p.events[0].note.contains(NEXT), "{}", p.events[0].note);
    let entry = &p.status.history[0];
    assert_eq!(
        (entry.trigger, entry.commit.as_str(), entry.result),
        (crate::api::Trigger::NewCommit, NEXT, None)
    );
    // the published index stays in status until the new build publishes
    assert_eq!(p.status.digest, published.digest);
}

#[test]
fn a_moved_base_image_rebuilds_the_same_commit_and_names_both_digests() {
    let d = desired(serde_json::json!({"rebuildOn": {"baseImages": true}}));
    let moved = MovedBase {
        name: "127.0.0.1:15001/base/busybox:latest".into(),
        from: "sha256:old".into(),
        to: "sha256:new".into(),
    };
    let check = FollowCheck {
        source: None,
        moved: vec![moved],
    };
    let (_, p) = poll(&d, check, 300);
    assert_eq!(p.status.source.as_ref().unwrap().commit, COMMIT);
    assert_eq!(
        p.build_id,
        new_build_id(&d.spec_key, COMMIT, Some("sha256:new"))
    );
    assert_eq!(creates(&p).len(), 2);
    assert_eq!(p.events[0].reason, Reason::BaseImageMoved);
    let detail = p.status.history[0].detail.clone().unwrap();
    assert!(
        detail.contains("busybox:latest moved from sha256:old to sha256:new"),
        "{detail}"
    );
}

#[test]
fn a_branch_that_cannot_be_resolved_keeps_the_published_build_ready() {
    let d = desired(serde_json::json!({}));
    let failing = FollowCheck {
        source: Some(SourceResolution::Unreachable("connection refused".into())),
        moved: Vec::new(),
    };
    let (published, p) = poll(&d, failing.clone(), 300);
    assert!(p.actions.is_empty());
    assert_eq!(
        condition(&p.status, "Ready"),
        condition(&published, "Ready")
    );
    let c = condition(&p.status, "SourceResolved").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "SourceUnavailable")
    );
    assert!(c.message.contains("connection refused") && c.message.contains(COMMIT));
    assert_eq!(p.events.len(), 1);
    assert!(p.events[0].warning);

    // failing again: no new write, no new Event
    let mut observed = observed(&p.status, &[], None);
    observed.follow = Some(failing);
    let again = plan(&d, &observed, t(400));
    assert_eq!(again.status, p.status);
    assert!(again.events.is_empty());

    // resolved again: True, once
    observed.status = &again.status;
    observed.follow = Some(FollowCheck {
        source: Some(SourceResolution::Resolved(COMMIT.into())),
        moved: Vec::new(),
    });
    let back = plan(&d, &observed, t(500));
    let c = condition(&back.status, "SourceResolved").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "SourceResolved")
    );
    assert_eq!(condition(&back.status, "Ready").unwrap().status, "True");
    assert_eq!(back.events.len(), 1);
}

#[test]
fn a_suspended_object_starts_no_build_for_a_new_spec() {
    let old = desired(serde_json::json!({}));
    let new = desired(serde_json::json!({
        "buildArgs": [{"name": "V", "value": "2"}],
        "suspend": true,
    }));
    assert!(!needs_source(&new, &started(&old), &[]));
    let source = Some(SourceResolution::Resolved(COMMIT.into()));
    let p = run(&new, &started(&old), &[], source, t(50));
    assert!(p.actions.is_empty());
    assert_eq!(
        p.status,
        started(&old),
        "the status still describes the old build"
    );
}

#[test]
fn a_build_recorded_by_the_previous_release_is_kept_after_an_upgrade() {
    // the previous release recorded the spec key as the build id, and no specKey
    let d = desired(serde_json::json!({"source": {"git": {
        "url": "https://git.example.com/team/apiping.git", "revision": "main", "pollInterval": "5m"}}}));
    let b = [
        builder(&d, "linux/amd64", 1, built("sha256:aa")),
        builder(&d, "linux/arm64", 1, built("sha256:bb")),
    ];
    let mut before = started(&d);
    before.build.as_mut().unwrap().id = d.spec_key.clone();
    assert!(before.build.as_ref().unwrap().spec_key.is_none());
    assert!(same_spec(&before, &d.spec_key));
    assert!(!needs_source(&d, &before, &b));
    let p = run(&d, &before, &b, None, t(200));
    assert_eq!(p.build_id, d.spec_key);
    assert!(creates(&p).is_empty(), "nothing is rebuilt");
    assert_eq!(p.actions, vec![Action::Publish]);
}
