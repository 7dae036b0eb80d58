//! Following the inputs of a published build: what a poll of the branch says in the
//! `SourceResolved` condition (a condition of its own, so that a git outage never turns `Ready`
//! of a published build false), and the Event that names what started a new build.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::build::NewBuild;
use super::{truncate_tail, Observed, PlannedEvent, SourceResolution, MAX_MESSAGE_LEN};
use crate::api::{MultiArchImageStatus, Reason, Trigger};

/// The condition a poll of the branch writes.
pub const SOURCE_RESOLVED: &str = "SourceResolved";

/// Sets `SourceResolved` from a poll of the branch: `False` (reason `SourceUnavailable`) with
/// the error when the revision could not be resolved, the published build kept; `True` again
/// when it can. Written and told (one Event) only when it changes; absent until a poll fails.
pub(super) fn source_condition(
    status: &mut MultiArchImageStatus,
    observed: &Observed<'_>,
    now: Timestamp,
) -> Vec<PlannedEvent> {
    let Some(polled) = observed.follow.as_ref().and_then(|f| f.source.as_ref()) else {
        return Vec::new();
    };
    let was = status
        .conditions
        .iter()
        .find(|c| c.type_ == SOURCE_RESOLVED)
        .map(|c| c.status.clone());
    let kept = status
        .source
        .as_ref()
        .map_or_else(String::new, |s| s.commit.clone());
    let (value, reason, message) = match polled {
        SourceResolution::Resolved(commit) => {
            if was.is_none() {
                return Vec::new();
            }
            let message = format!("{} resolves to {commit}", observed.revision);
            ("True", Reason::SourceResolved, message)
        }
        SourceResolution::Unavailable(e) | SourceResolution::Unreachable(e) => {
            let message = format!(
                "cannot resolve {}: {e}; the build of commit {kept} stays published",
                observed.revision
            );
            ("False", Reason::SourceUnavailable, message)
        }
    };
    if was.as_deref() == Some(value) {
        return Vec::new();
    }
    status.conditions.retain(|c| c.type_ != SOURCE_RESOLVED);
    status.conditions.push(Condition {
        type_: SOURCE_RESOLVED.into(),
        status: value.into(),
        reason: reason.as_str().into(),
        message: truncate_tail(&message, MAX_MESSAGE_LEN),
        last_transition_time: Time(now),
        observed_generation: observed.generation,
    });
    vec![PlannedEvent {
        warning: value == "False",
        reason,
        note: message,
        action: "Poll",
        builder: None,
    }]
}

/// The Event of a build started by something other than the spec: a new commit or a moved base
/// image, with the names and digests.
pub(super) fn trigger_event(build: &NewBuild) -> Option<PlannedEvent> {
    let reason = match build.trigger {
        Trigger::NewCommit => Reason::NewCommit,
        Trigger::BaseImage => Reason::BaseImageMoved,
        Trigger::SpecChange | Trigger::RebuildAnnotation => return None,
    };
    let detail = build.detail.clone().unwrap_or_default();
    Some(PlannedEvent {
        warning: false,
        reason,
        note: format!("{detail}: building {} as build {}", build.commit, build.id),
        action: "Rebuild",
        builder: None,
    })
}
