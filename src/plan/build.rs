//! Deciding the build: a new build starts when the spec asks for one other than the one in
//! status (with the freshly resolved commit), when the polled branch moved to a new commit, or
//! when a base image's tag moved; a suspended object starts none for a new spec.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::Verdict;
use super::{MovedBase, Observed, SourceResolution};
use crate::api::{
    BuildStatus, MultiArchImageStatus, Phase, Reason, SourceStatus, Trigger, REBUILD_ANNOTATION,
};
use crate::validate::DesiredBuild;

/// What the reconcile does about the build.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Decision {
    /// Go on with the recorded build.
    Keep,
    /// Start a new build on this commit.
    Start(NewBuild),
    /// The spec asks for a new build, but the object is suspended: nothing starts.
    Suspended,
    /// The source cannot be resolved as given: the object stalls until it can.
    SourceUnavailable(String),
    /// The git server could not be asked: in progress, retried, until it has been unreachable for
    /// the stall time.
    SourceUnreachable(String),
    /// The source has not been resolved yet (the caller resolves it, see `needs_source`).
    AwaitSource,
}

/// A build to start: its id, commit, and what started it.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct NewBuild {
    pub id: String,
    pub commit: String,
    pub trigger: Trigger,
    /// The trigger's details (the moved base image, the rebuild value).
    pub detail: Option<String>,
}

/// The id of a build: the spec key, the commit, and for a base-image rebuild the new base
/// digests (`token`). Eight hex digits, like the spec key.
pub fn new_build_id(spec_key: &str, commit: &str, token: Option<&str>) -> String {
    use sha2::Digest as _;
    let inputs = serde_json::json!({"spec": spec_key, "commit": commit, "token": token});
    let hash = sha2::Sha256::digest(inputs.to_string().as_bytes());
    hash.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// Decides the build: the recorded one, a new one (for a new spec, a new commit of a polled
/// branch or a moved base image), or why none can start.
pub(super) fn decide(desired: &DesiredBuild, observed: &Observed<'_>) -> Decision {
    if super::same_spec(observed.status, &desired.spec_key) {
        return follow_up(desired, observed);
    }
    if desired.follow.suspend {
        return Decision::Suspended;
    }
    // builders of the build that a release before commits entered the id started (named by the
    // spec key) are adopted with their commit
    let adopted = observed
        .builders
        .iter()
        .find(|b| b.build_id == desired.spec_key)
        .map(|b| b.commit.clone());
    let (trigger, detail) = spec_trigger(desired, observed.status);
    let start = |id: String, commit: String| {
        Decision::Start(NewBuild {
            id,
            commit,
            trigger,
            detail: detail.clone(),
        })
    };
    match (adopted, &observed.source) {
        (Some(commit), _) => start(desired.spec_key.clone(), commit),
        (None, Some(SourceResolution::Resolved(c))) => {
            start(new_build_id(&desired.spec_key, c, None), c.clone())
        }
        (None, Some(SourceResolution::Unavailable(msg))) => {
            Decision::SourceUnavailable(msg.clone())
        }
        (None, Some(SourceResolution::Unreachable(msg))) => {
            Decision::SourceUnreachable(msg.clone())
        }
        (None, None) => Decision::AwaitSource,
    }
}

/// Why a new spec key builds: the rebuild annotation when only it changed, else the spec.
fn spec_trigger(desired: &DesiredBuild, prev: &MultiArchImageStatus) -> (Trigger, Option<String>) {
    match (&prev.build, &desired.rebuild) {
        (Some(_), Some(value)) if prev.rebuild.as_ref() != Some(value) => (
            Trigger::RebuildAnnotation,
            Some(format!("{REBUILD_ANNOTATION}={value}")),
        ),
        _ => (Trigger::SpecChange, None),
    }
}

/// For the recorded spec: a new build when the polled branch moved or a base image moved.
fn follow_up(desired: &DesiredBuild, observed: &Observed<'_>) -> Decision {
    let Some(check) = &observed.follow else {
        return Decision::Keep;
    };
    let current = observed
        .status
        .source
        .as_ref()
        .map(|s| s.commit.as_str())
        .unwrap_or_default();
    let polled = match &check.source {
        Some(SourceResolution::Resolved(c)) => Some(c.as_str()),
        _ => None,
    };
    if let Some(commit) = polled.filter(|c| *c != current) {
        return Decision::Start(NewBuild {
            id: new_build_id(&desired.spec_key, commit, None),
            commit: commit.to_string(),
            trigger: Trigger::NewCommit,
            detail: Some(format!(
                "{} moved from {current} to {commit}",
                observed.revision
            )),
        });
    }
    if check.moved.is_empty() {
        return Decision::Keep;
    }
    let token: Vec<&str> = check.moved.iter().map(|m| m.to.as_str()).collect();
    let detail: Vec<String> = check.moved.iter().map(MovedBase::describe).collect();
    Decision::Start(NewBuild {
        id: new_build_id(&desired.spec_key, current, Some(&token.join(","))),
        commit: current.to_string(),
        trigger: Trigger::BaseImage,
        detail: Some(detail.join("; ")),
    })
}

/// How soon an unreachable git server is asked again while the build is in progress (after the
/// stall time, the operator's source retry interval applies).
pub const UNREACHABLE_RETRY: std::time::Duration = std::time::Duration::from_secs(15);

/// Says in `status` that the git server of the build could not be reached, at once: `Ready=False`
/// and `Reconciling=True` with `SourceUnavailable`, the error and the next try; once it has been
/// unreachable for the stall time, `Stalled` too (still retried, slower). Returns when to try again.
pub(super) fn unreachable(
    status: &mut MultiArchImageStatus,
    observed: &Observed<'_>,
    error: &str,
    now: Timestamp,
) -> std::time::Duration {
    let since = observed
        .status
        .source_unreachable_since
        .as_ref()
        .map_or(now, |t| t.0);
    status.source_unreachable_since = Some(Time(since));
    let stalled = now.duration_since(since)
        >= jiff::SignedDuration::try_from(observed.source_stall_after).unwrap_or_default();
    let retry = if stalled {
        observed.source_retry.max(UNREACHABLE_RETRY)
    } else {
        UNREACHABLE_RETRY
    };
    let next = now + jiff::SignedDuration::try_from(retry).unwrap_or_default();
    let next = next.round(jiff::Unit::Second).unwrap_or(next);
    let message = format!(
        "the git server cannot be reached: {error}; unreachable since {}, next try at {next}",
        since.round(jiff::Unit::Second).unwrap_or(since)
    );
    let verdict = if stalled {
        Verdict::new(Phase::Failed, Reason::SourceUnavailable, message).still_trying()
    } else {
        Verdict::new(Phase::Pending, Reason::SourceUnavailable, message)
    };
    super::Conditions::new(observed.status, now, observed.generation).apply(status, &verdict);
    retry
}

/// Records a new build in `status`: its id, commit and revision, a history entry, no platforms
/// or base images yet, `Pending`.
pub(super) fn start(
    status: &mut MultiArchImageStatus,
    desired: &DesiredBuild,
    build: &NewBuild,
    revision: &str,
    now: Timestamp,
) {
    status.build = Some(BuildStatus {
        id: build.id.clone(),
        spec_key: Some(desired.spec_key.clone()),
        started_at: Some(Time(now)),
    });
    status.source = Some(SourceStatus {
        short_commit: Some(build.commit.chars().take(12).collect()),
        commit: build.commit.clone(),
        revision: Some(revision.to_string()),
    });
    status.rebuild = desired.rebuild.clone();
    status.source_unreachable_since = None;
    status.platforms = Vec::new();
    status.base_images = Vec::new();
    status.phase = Some(Phase::Pending);
    super::history::start(status, build, now);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{builder, desired, observed, running, t, COMMIT};

    #[test]
    fn an_existing_builder_of_the_build_wins_over_a_fresh_resolution() {
        let d = desired(serde_json::json!({}));
        let mut b = builder(&d, "linux/amd64", 1, running("n"));
        b.commit = "1111".into();
        let status = MultiArchImageStatus::default();
        let source = Some(SourceResolution::Resolved(COMMIT.into()));
        let decision = decide(&d, &observed(&status, &[b], source));
        assert_eq!(
            decision,
            Decision::Start(NewBuild {
                id: d.spec_key.clone(),
                commit: "1111".into(),
                trigger: Trigger::SpecChange,
                detail: None,
            })
        );
    }

    #[test]
    fn without_builders_the_source_decides() {
        let d = desired(serde_json::json!({}));
        let status = MultiArchImageStatus::default();
        let cases = [
            (None, Decision::AwaitSource),
            (
                Some(SourceResolution::Resolved(COMMIT.into())),
                Decision::Start(NewBuild {
                    id: new_build_id(&d.spec_key, COMMIT, None),
                    commit: COMMIT.into(),
                    trigger: Trigger::SpecChange,
                    detail: None,
                }),
            ),
            (
                Some(SourceResolution::Unavailable("denied".into())),
                Decision::SourceUnavailable("denied".into()),
            ),
        ];
        for (source, expected) in cases {
            assert_eq!(decide(&d, &observed(&status, &[], source)), expected);
        }
    }

    fn condition(status: &MultiArchImageStatus, t: &str) -> Option<(String, String)> {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.reason.clone()))
    }

    #[test]
    fn an_unreachable_git_server_is_said_at_once_and_stalls_after_the_stall_time() {
        let d = desired(serde_json::json!({}));
        let fresh = MultiArchImageStatus::default();
        let refused = Some(SourceResolution::Unreachable(
            "connecting to git.example.com: connection refused".into(),
        ));
        // the first failed try: in progress, with the error and the next try
        let plan = crate::plan::plan(&d, &observed(&fresh, &[], refused.clone()), t(0));
        let first = plan.status;
        assert_eq!(first.phase, Some(Phase::Pending));
        let sourced = Some(("False".to_string(), "SourceUnavailable".to_string()));
        assert_eq!(condition(&first, "Ready"), sourced);
        assert_eq!(
            condition(&first, "Reconciling"),
            Some(("True".into(), "SourceUnavailable".into()))
        );
        assert_eq!(condition(&first, "Stalled"), None);
        let ready = first
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert!(
            ready.message.contains("connection refused"),
            "{}",
            ready.message
        );
        assert!(ready.message.contains("next try at"), "{}", ready.message);
        assert_eq!(plan.requeue_after, Some(UNREACHABLE_RETRY));
        assert_eq!(first.source_unreachable_since, Some(Time(t(0))));
        assert!(plan.actions.is_empty());

        // still unreachable, before the stall time: the same since, still in progress
        let again = crate::plan::plan(&d, &observed(&first, &[], refused.clone()), t(120)).status;
        assert_eq!(again.source_unreachable_since, Some(Time(t(0))));
        assert_eq!(again.phase, Some(Phase::Pending));

        // at the stall time: Stalled listed before Reconciling (kstatus: Failed), retried slowly
        let plan = crate::plan::plan(&d, &observed(&again, &[], refused), t(300));
        let stalled = plan.status;
        assert_eq!(stalled.phase, Some(Phase::Failed));
        let types: Vec<(&str, &str)> = stalled
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str()))
            .collect();
        assert_eq!(
            types,
            [
                ("Ready", "False"),
                ("Stalled", "True"),
                ("Reconciling", "True")
            ]
        );
        assert_eq!(plan.requeue_after, Some(std::time::Duration::from_secs(60)));

        // reachable again: the build starts and the since is gone
        let source = Some(SourceResolution::Resolved(COMMIT.into()));
        let resolved = crate::plan::plan(&d, &observed(&stalled, &[], source), t(400));
        assert_eq!(resolved.status.source_unreachable_since, None);
        assert_eq!(resolved.status.source.as_ref().unwrap().commit, COMMIT);
        assert!(!resolved.actions.is_empty(), "builders are created");
        assert_eq!(condition(&resolved.status, "Stalled"), None);
    }

    #[test]
    fn a_started_build_forgets_the_previous_platforms() {
        let d = desired(serde_json::json!({}));
        let mut status = MultiArchImageStatus {
            phase: Some(Phase::Failed),
            platforms: vec![crate::plan::tests::platform_status("linux/amd64")],
            ..Default::default()
        };
        let build = NewBuild {
            id: "b1".into(),
            commit: COMMIT.into(),
            trigger: Trigger::SpecChange,
            detail: None,
        };
        start(&mut status, &d, &build, "main", t(5));
        assert_eq!(status.build.as_ref().unwrap().id, "b1");
        assert_eq!(status.history[0].build_id, "b1");
        assert_eq!(status.source.as_ref().unwrap().commit, COMMIT);
        assert!(status.platforms.is_empty());
        assert_eq!(status.phase, Some(Phase::Pending));
    }
}
