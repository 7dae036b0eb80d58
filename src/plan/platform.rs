//! Planning one platform of the current build: its status, and the builder to create or stop.
//! [`plan`] picks the platform's latest builder and hands it to one function per builder state.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{
    truncate_tail, Action, BuilderObservation, BuilderState, Failure, PushCheck, MAX_MESSAGE_LEN,
};
use crate::api::{PlatformPhase, PlatformStatus, Reason};
use crate::builder::platform_label;
use crate::config::format_duration;
use crate::platform::Platform;
use crate::validate::DesiredBuild;

/// What one platform is planned from.
pub(super) struct Input<'a> {
    pub desired: &'a DesiredBuild,
    pub platform: &'a Platform,
    /// Every builder of the object (this platform's of this build are picked out).
    pub builders: &'a [BuilderObservation],
    /// The platform's status in the same build, if recorded.
    pub prev: Option<&'a PlatformStatus>,
    /// The commit of the build.
    pub commit: &'a str,
    /// The same build had already failed: nothing new starts.
    pub object_failed_before: bool,
    pub now: Timestamp,
}

/// One platform's status, the builder action it needs, and when to look again.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Step {
    pub status: PlatformStatus,
    pub action: Option<Action>,
    pub deadline: Option<Timestamp>,
}

impl Step {
    fn status(status: PlatformStatus) -> Self {
        Step {
            status,
            action: None,
            deadline: None,
        }
    }
}

/// Plans one platform. See the module doc of `plan` for the state machine.
pub(super) fn plan(input: &Input<'_>) -> Step {
    let jobs = builders_of(input);
    if let Some(kept) = kept_result(input.prev, &jobs) {
        return Step::status(kept.clone());
    }
    let fresh = fresh_status(input, &jobs);
    let Some(latest) = jobs.last() else {
        return without_builder(input, fresh);
    };
    let p = PlatformStatus {
        builder: Some(latest.name.clone()),
        ..fresh
    };
    match &latest.state {
        BuilderState::WaitingForNode { since, message } => {
            waiting_for_node(input, latest, p, *since, message.as_deref())
        }
        BuilderState::WaitingForQuota { message } => waiting_for_quota(input, p, message),
        BuilderState::Starting { node } => starting(p, node),
        BuilderState::Running { node, started } => running(input, latest, p, node, *started),
        BuilderState::Succeeded {
            node,
            pushed: PushCheck::Pushed(digest),
        } => built(p, node, digest),
        BuilderState::Succeeded {
            node,
            pushed: PushCheck::Missing(message),
        } => failed(input, latest, p, node, None, message),
        BuilderState::Succeeded {
            node,
            pushed: PushCheck::Unusable(message),
        } => unusable(p, node, message),
        BuilderState::Failed {
            node,
            failure,
            message,
        } => failed(input, latest, p, node, Some(*failure), message),
    }
}

/// This platform's builders of this build, by attempt.
fn builders_of<'a>(input: &Input<'a>) -> Vec<&'a BuilderObservation> {
    let label = platform_label(input.platform);
    let mut jobs: Vec<&BuilderObservation> = input
        .builders
        .iter()
        .filter(|b| b.build_id == input.desired.build_id && b.platform == label)
        .collect();
    jobs.sort_by_key(|b| b.attempt);
    jobs
}

/// A finished platform whose builder was cleaned up after its time-to-live keeps its result,
/// even when an older (failed, kept for debugging) attempt is still there.
fn kept_result<'a>(
    prev: Option<&'a PlatformStatus>,
    jobs: &[&BuilderObservation],
) -> Option<&'a PlatformStatus> {
    prev.filter(|pp| {
        matches!(pp.phase, PlatformPhase::Built | PlatformPhase::Failed)
            && pp
                .builder
                .as_ref()
                .is_some_and(|b| !jobs.iter().any(|j| &j.name == b))
    })
}

/// A `Pending` status counting the attempts that failed by themselves and the disruptions.
fn fresh_status(input: &Input<'_>, jobs: &[&BuilderObservation]) -> PlatformStatus {
    let failed_attempts = jobs
        .iter()
        .filter(|b| {
            matches!(
                b.state,
                BuilderState::Failed {
                    failure: Failure::Exited(_),
                    ..
                } | BuilderState::Succeeded {
                    pushed: PushCheck::Missing(_),
                    ..
                }
            )
        })
        .count() as i32;
    PlatformStatus {
        platform: input.platform.to_string(),
        phase: PlatformPhase::Pending,
        builder: None,
        node: None,
        attempts: failed_attempts.max(input.prev.map_or(0, |p| p.attempts)),
        disruptions: jobs.iter().map(|b| b.disruptions).sum(),
        digest: None,
        waiting_since: None,
        reason: None,
        message: None,
    }
}

/// No builder of this build: finished platforms (cleaned up, or rejected at admission) and the
/// platforms of a failed build stay as they are; the others get their first builder.
fn without_builder(input: &Input<'_>, fresh: PlatformStatus) -> Step {
    match input.prev {
        Some(pp) if matches!(pp.phase, PlatformPhase::Built | PlatformPhase::Failed) => {
            Step::status(pp.clone())
        }
        _ if input.object_failed_before => Step::status(input.prev.cloned().unwrap_or(fresh)),
        _ => Step {
            status: PlatformStatus {
                message: Some("creating the builder".into()),
                ..fresh
            },
            action: Some(create(
                input,
                input.prev.map_or(1, |pp| pp.attempts as u32 + 1),
            )),
            deadline: None,
        },
    }
}

fn create(input: &Input<'_>, attempt: u32) -> Action {
    Action::CreateBuilder {
        platform: input.platform.clone(),
        attempt,
        commit: input.commit.to_string(),
    }
}

/// Fails the platform and stops its builder, recording why on the builder.
fn stop(mut p: PlatformStatus, latest: &BuilderObservation, reason: Reason, msg: String) -> Step {
    p.phase = PlatformPhase::Failed;
    p.reason = Some(reason);
    p.message = Some(msg.clone());
    Step {
        status: p,
        action: Some(Action::StopBuilder {
            name: latest.name.clone(),
            reason,
            message: msg,
        }),
        deadline: None,
    }
}

/// Waiting for the namespace's quota: no deadline (a quota is a queue, not a verdict); looked at
/// again every [`QUOTA_RETRY`](super::QUOTA_RETRY).
fn waiting_for_quota(input: &Input<'_>, mut p: PlatformStatus, message: &str) -> Step {
    p.reason = Some(Reason::WaitingForQuota);
    p.message = Some(truncate_tail(message, MAX_MESSAGE_LEN));
    Step {
        status: p,
        action: None,
        deadline: Some(input.now + super::QUOTA_RETRY),
    }
}

/// Waiting for a node: fine until the provisioning timeout, then `NoNodeForPlatform`.
fn waiting_for_node(
    input: &Input<'_>,
    latest: &BuilderObservation,
    mut p: PlatformStatus,
    since: Timestamp,
    message: Option<&str>,
) -> Step {
    let expires = since + input.desired.provisioning_timeout;
    if input.now < expires {
        p.waiting_since = Some(Time(since));
        p.reason = Some(Reason::WaitingForNode);
        p.message = message.map(str::to_string);
        return Step {
            status: p,
            action: None,
            deadline: Some(expires),
        };
    }
    let pairs = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let (selector, requests) = (pairs(&latest.node_selector), pairs(&latest.requests));
    let msg = format!(
        "no node with room for {{{requests}}} matching the node selector {{{selector}}} became \
         available for {} within {}: {}",
        input.platform,
        format_duration(input.desired.provisioning_timeout),
        message.unwrap_or("the builder was never scheduled")
    );
    stop(p, latest, Reason::NoNodeForPlatform, msg)
}

/// Bound to a node, the container not started yet.
fn starting(mut p: PlatformStatus, node: &str) -> Step {
    p.phase = PlatformPhase::Building;
    p.node = Some(node.to_string());
    p.reason = Some(Reason::Building);
    Step::status(p)
}

/// Building: fine until the build timeout, then `BuildTimeout`.
fn running(
    input: &Input<'_>,
    latest: &BuilderObservation,
    mut p: PlatformStatus,
    node: &str,
    started: Timestamp,
) -> Step {
    p.node = Some(node.to_string());
    let expires = started + input.desired.timeout;
    if input.now >= expires {
        let timeout = format_duration(input.desired.timeout);
        let msg = format!("the build did not finish within {timeout}");
        return stop(p, latest, Reason::BuildTimeout, msg);
    }
    p.phase = PlatformPhase::Building;
    p.reason = Some(Reason::Building);
    Step {
        status: p,
        action: None,
        deadline: Some(expires),
    }
}

/// Built, with the digest the registry confirmed.
fn built(mut p: PlatformStatus, node: &Option<String>, digest: &str) -> Step {
    p.node = node.clone();
    p.phase = PlatformPhase::Built;
    p.digest = Some(digest.to_string());
    Step::status(p)
}

/// A failed attempt (`failure` is `None` for a builder that exited 0 but whose image is not in the
/// registry): retried while within `retries` if it failed by itself, else the platform fails.
fn failed(
    input: &Input<'_>,
    latest: &BuilderObservation,
    mut p: PlatformStatus,
    node: &Option<String>,
    failure: Option<Failure>,
    message: &str,
) -> Step {
    p.node = node.clone();
    let (reason, text) = failure_reason(latest, failure, message);
    let text = truncate_tail(&text, MAX_MESSAGE_LEN);
    let by_itself = matches!(failure, None | Some(Failure::Exited(_))) && latest.stopped.is_none();
    let retries = input.desired.retries;
    if by_itself && (p.attempts as u32) <= retries && !input.object_failed_before {
        p.message = Some(format!(
            "attempt {} failed, retrying ({} of {retries} retries): {text}",
            latest.attempt, p.attempts
        ));
        let action = Some(create(input, latest.attempt + 1));
        return Step {
            action,
            ..Step::status(p)
        };
    }
    p.phase = PlatformPhase::Failed;
    p.reason = Some(reason);
    p.message = Some(if by_itself {
        format!("failed after {} attempts: {text}", p.attempts)
    } else {
        text
    });
    Step::status(p)
}

/// Built, but the registry's answer about the image cannot be used: `PublishFailed` with what the
/// registry did, the build neither counted as a failed attempt nor tried again (building again
/// would ask the same registry the same question).
fn unusable(mut p: PlatformStatus, node: &Option<String>, message: &str) -> Step {
    p.node = node.clone();
    p.phase = PlatformPhase::Failed;
    p.reason = Some(Reason::PublishFailed);
    p.message = Some(truncate_tail(message, MAX_MESSAGE_LEN));
    Step::status(p)
}

/// Why an attempt failed: the operator's own reason when it stopped the builder, else what the
/// Job shows.
fn failure_reason(
    latest: &BuilderObservation,
    failure: Option<Failure>,
    message: &str,
) -> (Reason, String) {
    match (latest.stopped.clone(), failure) {
        (Some((reason, msg)), _) => (reason, msg),
        (None, Some(Failure::Deadline)) => (
            Reason::BuildTimeout,
            format!("the builder exceeded its deadline: {message}"),
        ),
        (None, Some(Failure::Disruptions)) => (
            Reason::BuildFailed,
            format!(
                "lost {} builder pods to disruptions: {message}",
                latest.disruptions
            ),
        ),
        (None, _) => (Reason::BuildFailed, message.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{
        builder, built as built_state, desired, exited, running as running_state, t, COMMIT,
    };

    fn step(d: &DesiredBuild, platform: &str, builders: &[BuilderObservation], now: i64) -> Step {
        let platform: Platform = platform.parse().unwrap();
        plan(&Input {
            desired: d,
            platform: &platform,
            builders,
            prev: None,
            commit: COMMIT,
            object_failed_before: false,
            now: t(now),
        })
    }

    /// The platform failed for `reason` with `message`, and nothing is retried.
    fn assert_failed(s: &Step, reason: Reason, message: &str) {
        assert_eq!(s.status.phase, PlatformPhase::Failed);
        assert_eq!(s.status.reason, Some(reason));
        assert_eq!(s.status.message.as_deref(), Some(message));
        assert_eq!(s.action, None);
    }

    #[test]
    fn a_platform_without_builder_gets_its_first_attempt() {
        let d = desired(serde_json::json!({}));
        let s = step(&d, "linux/arm64", &[], 0);
        assert!(matches!(
            s.action,
            Some(Action::CreateBuilder { attempt: 1, .. })
        ));
        assert_eq!(s.status.phase, PlatformPhase::Pending);
    }

    #[test]
    fn only_this_platforms_latest_attempt_counts() {
        let d = desired(serde_json::json!({"retries": 3}));
        let b = [
            builder(&d, "linux/arm64", 2, running_state("n2")),
            builder(&d, "linux/arm64", 1, exited(1, "boom")),
            builder(&d, "linux/amd64", 1, built_state("sha256:aa")),
        ];
        let s = step(&d, "linux/arm64", &b, 20);
        assert_eq!(s.status.builder.as_deref(), Some(b[0].name.as_str()));
        assert_eq!(s.status.phase, PlatformPhase::Building);
        assert_eq!(s.status.attempts, 1);
        assert_eq!(s.deadline, Some(t(10) + d.timeout));
    }

    #[test]
    fn a_starting_builder_is_building_on_its_node() {
        let d = desired(serde_json::json!({}));
        let b = [builder(
            &d,
            "linux/amd64",
            1,
            BuilderState::Starting { node: "n".into() },
        )];
        let s = step(&d, "linux/amd64", &b, 5);
        assert_eq!(
            (s.status.phase, s.status.node.as_deref()),
            (PlatformPhase::Building, Some("n"))
        );
        assert_eq!(s.action, None);
    }

    #[test]
    fn an_image_missing_from_the_registry_counts_as_a_failed_attempt() {
        let d = desired(serde_json::json!({"retries": 0}));
        let state = BuilderState::Succeeded {
            node: None,
            pushed: PushCheck::Missing("no such manifest".into()),
        };
        let s = step(
            &d,
            "linux/amd64",
            &[builder(&d, "linux/amd64", 1, state)],
            200,
        );
        let message = "failed after 1 attempts: no such manifest";
        assert_failed(&s, Reason::BuildFailed, message);
    }

    #[test]
    fn an_image_the_registry_answers_unusably_about_fails_publishing_without_a_retry() {
        let d = desired(serde_json::json!({"retries": 2}));
        let why = "cannot check sha256:aa: the registry sent a manifest of more than 4194304 bytes";
        let state = BuilderState::Succeeded {
            node: Some("n".into()),
            pushed: PushCheck::Unusable(why.into()),
        };
        let s = step(
            &d,
            "linux/amd64",
            &[builder(&d, "linux/amd64", 1, state)],
            200,
        );
        assert_failed(&s, Reason::PublishFailed, why);
        assert_eq!(s.status.attempts, 0, "not a failed attempt of the build");
        assert_eq!(s.status.node.as_deref(), Some("n"));
    }

    #[test]
    fn a_builder_the_operator_stopped_fails_with_the_recorded_reason_and_no_retry() {
        let d = desired(serde_json::json!({"retries": 5}));
        let mut b = builder(&d, "linux/amd64", 1, exited(137, "killed"));
        b.stopped = Some((
            Reason::BuildTimeout,
            "the build did not finish within 5m".into(),
        ));
        let s = step(&d, "linux/amd64", &[b], 200);
        assert_failed(
            &s,
            Reason::BuildTimeout,
            "the build did not finish within 5m",
        );
    }

    #[test]
    fn a_job_past_its_deadline_is_a_build_timeout() {
        let d = desired(serde_json::json!({}));
        let state = BuilderState::Failed {
            node: None,
            failure: Failure::Deadline,
            message: "Job was active longer than specified deadline".into(),
        };
        let s = step(
            &d,
            "linux/amd64",
            &[builder(&d, "linux/amd64", 1, state)],
            200,
        );
        assert_eq!(s.status.reason, Some(Reason::BuildTimeout));
        assert!(s
            .status
            .message
            .unwrap()
            .starts_with("the builder exceeded its deadline"));
    }
}
