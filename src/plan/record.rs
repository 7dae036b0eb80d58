//! Statuses that do not come from [`plan`](super::plan): an invalid spec, and what the controller
//! learned while acting on a plan (a builder refused at admission, a publish outcome).

use jiff::Timestamp;

use super::{events_between, truncate_tail, Conditions, PlannedEvent, Verdict, MAX_MESSAGE_LEN};
use crate::api::{MultiArchImageStatus, Phase, PlatformPhase, Reason};
use crate::platform::Platform;
use crate::validate::DesiredBuild;

/// The status of an object whose spec cannot succeed: `Failed`, `Stalled` with `InvalidSpec`.
pub fn invalid_spec_status(
    prev: &MultiArchImageStatus,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> MultiArchImageStatus {
    let mut status = prev.clone();
    status.observed_generation = generation;
    let verdict = Verdict::new(Phase::Failed, Reason::InvalidSpec, message);
    Conditions::new(prev, now, generation).apply(&mut status, &verdict);
    status
}

/// Marks a platform whose builder was refused at admission (`BuilderRejected`), which fails the
/// object: the builder is not created again for this build.
pub fn record_rejected_builder(
    status: &mut MultiArchImageStatus,
    platform: &Platform,
    message: &str,
    now: Timestamp,
) -> Vec<PlannedEvent> {
    let marked = (PlatformPhase::Failed, Reason::BuilderRejected);
    record_platform(status, platform, marked, message, now, |_, text| {
        let msg = format!("{platform}: the builder was rejected: {text}");
        Verdict::new(Phase::Failed, Reason::BuilderRejected, msg)
    })
}

/// Marks `platform` (left without a builder) with a phase, a reason and the message, then the
/// object with the verdict `object` gives; returns the Events of the change.
fn record_platform(
    status: &mut MultiArchImageStatus,
    platform: &Platform,
    (phase, reason): (PlatformPhase, Reason),
    message: &str,
    now: Timestamp,
    object: impl FnOnce(&MultiArchImageStatus, &str) -> Verdict,
) -> Vec<PlannedEvent> {
    let text = truncate_tail(message, MAX_MESSAGE_LEN);
    transition(status, now, |status| {
        mark_platform(status, platform, phase, reason, &text);
        object(status, &text)
    })
}

/// Sets a platform without a builder to `phase`, with `reason` and `message`.
fn mark_platform(
    status: &mut MultiArchImageStatus,
    platform: &Platform,
    phase: PlatformPhase,
    reason: Reason,
    message: &str,
) {
    let name = platform.to_string();
    if let Some(p) = status.platforms.iter_mut().find(|p| p.platform == name) {
        p.phase = phase;
        p.reason = Some(reason);
        p.message = Some(message.to_string());
        p.builder = None;
    }
}

/// How soon a builder refused by the namespace's ResourceQuota is tried again.
pub const QUOTA_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Marks a platform whose builder the namespace's ResourceQuota refused for now
/// (`WaitingForQuota`): the platform stays `Pending` with the quota's message and the object stays
/// in progress (`Reconciling`), so the builder is created once quota frees up (tried again every
/// [`QUOTA_RETRY`]). Nothing fails: a quota is a queue, not a verdict.
pub fn record_quota_wait(
    status: &mut MultiArchImageStatus,
    platform: &Platform,
    message: &str,
    now: Timestamp,
) -> Vec<PlannedEvent> {
    let marked = (PlatformPhase::Pending, Reason::WaitingForQuota);
    record_platform(status, platform, marked, message, now, |status, text| {
        let phase = match status.phase {
            Some(Phase::Building) => Phase::Building,
            _ => Phase::Pending,
        };
        let msg = format!("{platform} waits for quota: {text}");
        Verdict::new(phase, Reason::WaitingForQuota, msg)
    })
}

/// How soon a publish that could not reach the registry is tried again.
pub const REGISTRY_RETRY: std::time::Duration = std::time::Duration::from_secs(15);

/// Says in `status` that the registry could not be reached (refused, timed out, failing) while
/// checking a finished builder's image or publishing: still in progress (`Building`, or
/// `Publishing`), `Ready=False` and `Reconciling=True` with `RegistryUnavailable`, the error and
/// the next try. Nothing was tagged (every check comes before any write, and a write that failed
/// half way is repeated whole: the index is deterministic).
pub fn record_registry_unreachable(
    status: &mut MultiArchImageStatus,
    error: &str,
    now: Timestamp,
) -> Vec<PlannedEvent> {
    let next = now + jiff::SignedDuration::try_from(REGISTRY_RETRY).unwrap_or_default();
    let next = next.round(jiff::Unit::Second).unwrap_or(next);
    let msg = format!("the registry cannot be reached: {error}; next try at {next}");
    transition(status, now, |status| {
        let phase = match status.phase {
            Some(Phase::Publishing) => Phase::Publishing,
            Some(Phase::Pending) => Phase::Pending,
            _ => Phase::Building,
        };
        Verdict::new(phase, Reason::RegistryUnavailable, msg)
    })
}

/// Changes `status` with `change`, which says the verdict, and returns the Events of the change.
fn transition(
    status: &mut MultiArchImageStatus,
    now: Timestamp,
    change: impl FnOnce(&mut MultiArchImageStatus) -> Verdict,
) -> Vec<PlannedEvent> {
    let prev = status.clone();
    let verdict = change(status);
    Conditions::new(&prev, now, status.observed_generation).apply(status, &verdict);
    events_between(&prev, status)
}

/// What a publish attempt ended with.
#[derive(Clone, Debug, PartialEq)]
pub enum PublishOutcome {
    Published {
        digest: String,
        image_ref: String,
        /// The base images read from the build's provenance.
        base_images: Vec<crate::api::BaseImage>,
        /// The index's signature, when it was signed.
        signature: Option<crate::api::SignatureStatus>,
        /// The SBOM of each platform, when the builders attached one.
        sboms: Vec<crate::api::SbomStatus>,
    },
    /// An image's config disagrees with the platform it was built for.
    PlatformMismatch(String),
    /// The publish cannot succeed as things are (for example access denied).
    Refused(String),
}

impl PublishOutcome {
    /// The metrics label of the outcome: `published`, or the failure reason.
    pub fn result(&self) -> &'static str {
        match self {
            PublishOutcome::Published { .. } => "published",
            PublishOutcome::PlatformMismatch(_) => Reason::PlatformMismatch.as_str(),
            PublishOutcome::Refused(_) => Reason::PublishFailed.as_str(),
        }
    }
}

/// Records a publish outcome in the status the planner returned.
pub fn record_publish(
    status: &mut MultiArchImageStatus,
    desired: &DesiredBuild,
    outcome: &PublishOutcome,
    now: Timestamp,
) -> Vec<PlannedEvent> {
    transition(status, now, |status| match outcome {
        PublishOutcome::Published {
            digest,
            image_ref,
            base_images,
            signature,
            sboms,
        } => {
            status.digest = Some(digest.clone());
            status.base_images = base_images.clone();
            status.signature = signature.clone();
            status.sboms = sboms.clone();
            status.image_ref = Some(image_ref.clone());
            status.published_tags = desired.published_tags();
            let msg = format!("published {image_ref}");
            Verdict::new(Phase::Succeeded, Reason::Published, msg)
        }
        PublishOutcome::PlatformMismatch(msg) => {
            Verdict::new(Phase::Failed, Reason::PlatformMismatch, msg.clone())
        }
        PublishOutcome::Refused(msg) => {
            Verdict::new(Phase::Failed, Reason::PublishFailed, msg.clone())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{desired, platform_status, t};

    #[test]
    fn an_invalid_spec_stalls_with_invalid_spec() {
        let status = invalid_spec_status(
            &MultiArchImageStatus::default(),
            "tags: empty",
            Some(4),
            t(0),
        );
        assert_eq!(status.phase, Some(Phase::Failed));
        assert_eq!(status.observed_generation, Some(4));
        let stalled = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled")
            .unwrap();
        assert_eq!(
            (stalled.reason.as_str(), stalled.message.as_str()),
            ("InvalidSpec", "tags: empty")
        );
    }

    #[test]
    fn a_rejected_builder_fails_its_platform_and_the_object_with_one_warning_each() {
        let mut status = MultiArchImageStatus {
            platforms: vec![platform_status("linux/arm64")],
            ..Default::default()
        };
        let platform: Platform = "linux/arm64".parse().unwrap();
        let events = record_rejected_builder(&mut status, &platform, "violates PodSecurity", t(0));
        assert_eq!(status.platforms[0].reason, Some(Reason::BuilderRejected));
        assert_eq!(status.phase, Some(Phase::Failed));
        assert_eq!(events.len(), 2);
        assert!(events
            .iter()
            .all(|e| e.warning && e.reason == Reason::BuilderRejected));
    }

    #[test]
    fn a_quota_refusal_waits_in_progress_and_is_told_once() {
        let prev = MultiArchImageStatus {
            platforms: vec![platform_status("linux/arm64")],
            ..Default::default()
        };
        let platform: Platform = "linux/arm64".parse().unwrap();
        let quota = "exceeded quota: builders, requested: pods=1, used: pods=1, limited: pods=1";
        let mut status = prev.clone();
        let events = record_quota_wait(&mut status, &platform, quota, t(0));
        let p = &status.platforms[0];
        assert_eq!(
            (p.phase, p.reason, p.message.as_deref()),
            (
                PlatformPhase::Pending,
                Some(Reason::WaitingForQuota),
                Some(quota)
            )
        );
        assert_eq!(status.phase, Some(Phase::Pending));
        let condition = |s: &MultiArchImageStatus, t: &str| {
            let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
            (c.status.clone(), c.reason.clone())
        };
        assert_eq!(
            condition(&status, "Reconciling"),
            ("True".into(), "WaitingForQuota".into())
        );
        assert_eq!(
            condition(&status, "Ready"),
            ("False".into(), "WaitingForQuota".into())
        );
        assert!(!status
            .conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "True"));
        assert_eq!(events.len(), 1);
        assert!(!events[0].warning);
        assert!(events[0].note.contains("pods=1"), "{}", events[0].note);
        // the next reconcile plans the builder again and is refused again: the same status (no
        // write) and, from the status it read, no Event
        let mut next = status.clone();
        next.platforms[0].reason = None;
        next.platforms[0].message = Some("creating the builder".into());
        record_quota_wait(&mut next, &platform, quota, t(10));
        assert_eq!(next, status);
        assert!(crate::plan::events_between(&status, &next).is_empty());
    }

    #[test]
    fn a_registry_that_cannot_be_reached_keeps_publishing_in_progress_and_says_why() {
        let mut building = MultiArchImageStatus {
            phase: Some(Phase::Building),
            ..Default::default()
        };
        record_registry_unreachable(&mut building, "checking sha256:aa: refused", t(0));
        assert_eq!(building.phase, Some(Phase::Building));
        let mut status = MultiArchImageStatus {
            phase: Some(Phase::Publishing),
            ..Default::default()
        };
        let events = record_registry_unreachable(&mut status, "pushing the index: timed out", t(0));
        assert_eq!(status.phase, Some(Phase::Publishing));
        let types: Vec<(&str, &str, &str)> = status
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            types,
            [
                ("Ready", "False", "RegistryUnavailable"),
                ("Reconciling", "True", "RegistryUnavailable")
            ]
        );
        let message = &status.conditions[0].message;
        assert!(
            message.contains("timed out") && message.contains("next try at"),
            "{message}"
        );
        assert!(events.is_empty(), "no Event for a retry");
    }

    #[test]
    fn a_publish_records_digest_and_tags() {
        let d = desired(serde_json::json!({}));
        let mut status = MultiArchImageStatus::default();
        let outcome = PublishOutcome::Published {
            digest: "sha256:ii".into(),
            image_ref: "r@sha256:ii".into(),
            base_images: Vec::new(),
            signature: None,
            sboms: Vec::new(),
        };
        record_publish(&mut status, &d, &outcome, t(0));
        assert_eq!(status.phase, Some(Phase::Succeeded));
        assert_eq!(status.published_tags, d.published_tags());
        assert_eq!(outcome.result(), "published");
        assert_eq!(
            PublishOutcome::Refused("x".into()).result(),
            "PublishFailed"
        );
    }
}
