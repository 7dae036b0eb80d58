//! Reading builders: a builder Job and its pods become a [`BuilderObservation`] for the planner.
//! Pure functions of the Kubernetes objects (the registry check of a reported digest is done by
//! the caller and passed in as a [`PushCheck`]).

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};

use crate::api::Reason;
use crate::builder::{
    ANNOTATION_COMMIT, ANNOTATION_STOPPED, CONTAINER, LABEL_ATTEMPT, LABEL_BUILD, LABEL_PLATFORM,
};
use crate::plan::{BuilderObservation, BuilderState, Failure, PushCheck};

/// Job conditions that say the Job succeeded.
const COMPLETE: &[&str] = &["Complete", "SuccessCriteriaMet"];
/// Job conditions that say the Job failed.
const FAILED: &[&str] = &["Failed", "FailureTarget"];

fn label<'a>(job: &'a Job, key: &str) -> Option<&'a str> {
    job.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

/// The first condition of `job` among `types` that is true.
fn job_condition<'a>(job: &'a Job, types: &[&str]) -> Option<&'a JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| types.contains(&c.type_.as_str()) && c.status == "True")
}

/// True when the Job completed (its builder exited 0).
pub fn is_complete(job: &Job) -> bool {
    job_condition(job, COMPLETE).is_some()
}

/// The pods of `job`, newest first.
pub fn pods_of<'a>(job: &Job, pods: &'a [Pod]) -> Vec<&'a Pod> {
    let uid = job.metadata.uid.as_deref();
    let mut mine: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            p.metadata
                .owner_references
                .as_ref()
                .is_some_and(|o| o.iter().any(|o| Some(o.uid.as_str()) == uid))
        })
        .collect();
    mine.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)));
    mine
}

fn terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == CONTAINER)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
}

/// The digest BuildKit wrote to its metadata file (the termination message).
pub fn reported_digest(termination_message: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(termination_message.trim()).ok()?;
    v.get("containerimage.digest")?.as_str().map(str::to_string)
}

/// The termination message of the newest pod that succeeded.
pub fn termination_message(job: &Job, pods: &[Pod]) -> Option<String> {
    pods_of(job, pods).into_iter().find_map(|p| {
        terminated(p)
            .filter(|t| t.exit_code == 0)
            .and_then(|t| t.message.clone())
    })
}

fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref()?.node_name.clone()
}

/// Parses `multiarch.dev/stopped: "<Reason>: <message>"`.
fn stopped(job: &Job) -> Option<(Reason, String)> {
    let value = job.metadata.annotations.as_ref()?.get(ANNOTATION_STOPPED)?;
    let (reason, message) = value.split_once(": ")?;
    Some((Reason::parse(reason)?, message.to_string()))
}

/// The value of the `multiarch.dev/stopped` annotation.
pub fn stopped_annotation(reason: Reason, message: &str) -> String {
    format!("{}: {message}", reason.as_str())
}

/// Builds the observation of one builder Job. `push_check` is the result of looking up the
/// digest the builder reported (only consulted for a Job that completed).
pub fn observe(
    job: &Job,
    pods: &[Pod],
    push_check: Option<PushCheck>,
) -> Option<BuilderObservation> {
    let name = job.metadata.name.clone()?;
    let build_id = label(job, LABEL_BUILD)?.to_string();
    let platform = label(job, LABEL_PLATFORM)?.to_string();
    let attempt = label(job, LABEL_ATTEMPT)?.parse().ok()?;
    let created = job
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let stopped = stopped(job);
    let (state, finished_at) = state(job, pods, push_check, stopped.is_some(), created);
    Some(BuilderObservation {
        name,
        build_id,
        platform,
        attempt,
        commit: commit(job),
        created,
        disruptions: disruptions(job, &state),
        stopped,
        finished_at,
        state,
        node_selector: node_selector(job),
        requests: requests(job),
    })
}

fn commit(job: &Job) -> String {
    job.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_COMMIT))
        .cloned()
        .unwrap_or_default()
}

fn node_selector(job: &Job) -> BTreeMap<String, String> {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.node_selector.clone())
        .unwrap_or_default()
}

/// What the builder container asks for, as written in the Job.
fn requests(job: &Job) -> BTreeMap<String, String> {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.iter().find(|c| c.name == CONTAINER))
        .and_then(|c| c.resources.as_ref()?.requests.as_ref())
        .map(|r| r.iter().map(|(k, q)| (k.clone(), q.0.clone())).collect())
        .unwrap_or_default()
}

/// Pods lost to disruptions: the failed pods, but for the one whose build exited non-zero.
fn disruptions(job: &Job, state: &BuilderState) -> i32 {
    let failed_pods = job.status.as_ref().and_then(|s| s.failed).unwrap_or(0);
    let exited = matches!(
        state,
        BuilderState::Failed {
            failure: Failure::Exited(_),
            ..
        }
    );
    failed_pods - i32::from(exited && failed_pods > 0)
}

/// The builder's state and, once finished, when it finished.
fn state(
    job: &Job,
    pods: &[Pod],
    push_check: Option<PushCheck>,
    stopped: bool,
    created: Timestamp,
) -> (BuilderState, Option<Timestamp>) {
    let mine = pods_of(job, pods);
    if let Some(complete) = job_condition(job, COMPLETE) {
        return completed(job, complete, &mine, pods, push_check);
    }
    let failed = job_condition(job, FAILED);
    if failed.is_some() || stopped {
        let finished_at = failed
            .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
            .or(Some(created));
        return (failed_state(failed, &mine), finished_at);
    }
    (active(mine.first().copied(), created), None)
}

/// A completed Job: built, if the registry has the digest it reported.
fn completed(
    job: &Job,
    complete: &JobCondition,
    mine: &[&Pod],
    pods: &[Pod],
    push_check: Option<PushCheck>,
) -> (BuilderState, Option<Timestamp>) {
    let finished_at = job
        .status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        .map(|t| t.0)
        .or(complete.last_transition_time.as_ref().map(|t| t.0));
    let node = mine
        .iter()
        .find(|p| terminated(p).is_some_and(|t| t.exit_code == 0))
        .and_then(|p| node_of(p));
    let pushed = match push_check {
        Some(check) => check,
        None => match termination_message(job, pods).as_deref().and_then(reported_digest) {
            Some(d) => PushCheck::Pushed(d),
            None => PushCheck::Missing("the builder finished without reporting a digest (BuildKit's metadata file was not its termination message)".into()),
        },
    };
    (BuilderState::Succeeded { node, pushed }, finished_at)
}

/// A failed (or stopped) Job: how it failed, with the exit code and the log tail when the build
/// failed by itself.
fn failed_state(failed: Option<&JobCondition>, mine: &[&Pod]) -> BuilderState {
    let exit = mine
        .iter()
        .find_map(|p| terminated(p).filter(|t| t.exit_code != 0));
    let failure = match (exit, failed.and_then(|c| c.reason.as_deref())) {
        (Some(t), _) => Failure::Exited(t.exit_code),
        (None, Some("DeadlineExceeded")) => Failure::Deadline,
        (None, Some("BackoffLimitExceeded")) => Failure::Disruptions,
        (None, _) => Failure::Exited(-1),
    };
    let message = match exit {
        Some(t) => {
            let text = t.message.clone().unwrap_or_default();
            let reason = t.reason.clone().unwrap_or_default();
            format!("exit code {} {reason}: {}", t.exit_code, text.trim())
        }
        None => failed.and_then(|c| c.message.clone()).unwrap_or_default(),
    };
    BuilderState::Failed {
        node: mine.first().and_then(|p| node_of(p)),
        failure,
        message,
    }
}

/// A Job still running: waiting for a node (with the scheduler's reason), starting, or running.
fn active(newest: Option<&Pod>, created: Timestamp) -> BuilderState {
    let Some(pod) = newest else {
        return BuilderState::WaitingForNode {
            since: created,
            message: None,
        };
    };
    let Some(node) = node_of(pod) else {
        let unscheduled = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| {
                c.iter()
                    .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            });
        let since = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
        return BuilderState::WaitingForNode {
            since: since.unwrap_or(created),
            message: unscheduled.and_then(|c| c.message.clone()),
        };
    };
    let started = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == CONTAINER))
        .and_then(|c| c.state.as_ref()?.running.as_ref()?.started_at.as_ref())
        .map(|t| t.0);
    match started {
        Some(started) => BuilderState::Running { node, started },
        None => BuilderState::Starting { node },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: serde_json::Value) -> Job {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "apiping-1a2b3c4d-linux-arm64-1", "uid": "job-uid",
                "creationTimestamp": "2026-11-22T10:00:00Z",
                "labels": {"multiarch.dev/build": "1a2b3c4d", "multiarch.dev/platform": "linux-arm64", "multiarch.dev/attempt": "1"},
                "annotations": {"multiarch.dev/commit": "abc"}
            },
            "status": status,
        }))
        .unwrap()
    }

    fn pod(spec: serde_json::Value, status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "creationTimestamp": "2026-11-22T10:00:01Z", "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "job-uid"}]},
            "spec": spec, "status": status,
        }))
        .unwrap()
    }

    fn containers() -> serde_json::Value {
        serde_json::json!([{"name": "buildkit"}])
    }

    #[test]
    fn unscheduled_pod_waits_with_the_schedulers_message() {
        let p = pod(
            serde_json::json!({"containers": containers()}),
            serde_json::json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."}]}),
        );
        let o = observe(&job(serde_json::json!({"active": 1})), &[p], None).unwrap();
        match o.state {
            BuilderState::WaitingForNode { message, .. } => {
                assert!(message.unwrap().contains("node affinity/selector"))
            }
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn running_pod_reports_node_and_start() {
        let p = pod(
            serde_json::json!({"nodeName": "kwok-arm64-1", "containers": containers()}),
            serde_json::json!({"phase": "Running", "containerStatuses": [{"name": "buildkit", "image": "x", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2026-11-22T10:00:05Z"}}}]}),
        );
        let o = observe(&job(serde_json::json!({"active": 1})), &[p], None).unwrap();
        assert!(
            matches!(o.state, BuilderState::Running { ref node, .. } if node == "kwok-arm64-1")
        );
        assert_eq!(o.attempt, 1);
        assert_eq!(o.commit, "abc");
    }

    #[test]
    fn completed_job_reports_buildkit_digest() {
        let meta = r#"{"containerimage.digest":"sha256:abcd","image.name":"r/app"}"#;
        let p = pod(
            serde_json::json!({"nodeName": "n", "containers": containers()}),
            serde_json::json!({"phase": "Succeeded", "containerStatuses": [{"name": "buildkit", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "message": meta}}}]}),
        );
        let j = job(
            serde_json::json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}], "completionTime": "2026-11-22T10:05:00Z"}),
        );
        let o = observe(&j, &[p], None).unwrap();
        assert_eq!(
            o.state,
            BuilderState::Succeeded {
                node: Some("n".into()),
                pushed: PushCheck::Pushed("sha256:abcd".into())
            }
        );
        assert!(o.finished_at.is_some());
    }

    #[test]
    fn failed_job_carries_exit_code_and_log_tail_and_counts_disruptions_apart() {
        let p = pod(
            serde_json::json!({"nodeName": "n", "containers": containers()}),
            serde_json::json!({"phase": "Failed", "containerStatuses": [{"name": "buildkit", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "process \"go build\" did not complete successfully"}}}]}),
        );
        let j = job(
            serde_json::json!({"failed": 2, "conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}),
        );
        let o = observe(&j, &[p], None).unwrap();
        match &o.state {
            BuilderState::Failed {
                failure: Failure::Exited(1),
                message,
                ..
            } => assert!(message.contains("go build")),
            s => panic!("{s:?}"),
        }
        assert_eq!(o.disruptions, 1);
    }

    #[test]
    fn too_many_disruptions_are_not_an_exit_failure() {
        let j = job(
            serde_json::json!({"failed": 4, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}),
        );
        let o = observe(&j, &[], None).unwrap();
        assert!(matches!(
            o.state,
            BuilderState::Failed {
                failure: Failure::Disruptions,
                ..
            }
        ));
        assert_eq!(o.disruptions, 4);
    }

    #[test]
    fn stopped_annotation_round_trips() {
        let mut j = job(serde_json::json!({}));
        j.metadata.annotations.as_mut().unwrap().insert(
            ANNOTATION_STOPPED.into(),
            stopped_annotation(Reason::NoNodeForPlatform, "no node for linux/arm64"),
        );
        let o = observe(&j, &[], None).unwrap();
        assert_eq!(
            o.stopped,
            Some((Reason::NoNodeForPlatform, "no node for linux/arm64".into()))
        );
        assert!(matches!(o.state, BuilderState::Failed { .. }));
    }
}
