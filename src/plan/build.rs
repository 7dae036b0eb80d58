//! Deciding the build: when the spec asks for a build other than the one in status, a new build
//! starts, with the commit its existing builders carry (an operator restarted mid-build adopts
//! them) or else the freshly resolved one.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{Observed, SourceResolution};
use crate::api::{BuildStatus, MultiArchImageStatus, Phase, SourceStatus};
use crate::validate::DesiredBuild;

/// How a build other than the recorded one starts.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Decision {
    /// Start it on this commit.
    Start { commit: String },
    /// The source cannot be resolved as given: the object stalls until it can.
    SourceUnavailable(String),
    /// The source has not been resolved yet (the caller resolves it, see `needs_source`).
    AwaitSource,
}

/// Which commit the desired build starts with, if it can start.
pub(super) fn decide(desired: &DesiredBuild, observed: &Observed<'_>) -> Decision {
    let adopted = observed
        .builders
        .iter()
        .find(|b| b.build_id == desired.build_id)
        .map(|b| b.commit.clone());
    match (adopted, &observed.source) {
        (Some(commit), _) => Decision::Start { commit },
        (None, Some(SourceResolution::Resolved(c))) => Decision::Start { commit: c.clone() },
        (None, Some(SourceResolution::Unavailable(msg))) => {
            Decision::SourceUnavailable(msg.clone())
        }
        (None, None) => Decision::AwaitSource,
    }
}

/// Records a new build in `status`: its id, commit and revision, no platforms yet, `Pending`.
pub(super) fn start(
    status: &mut MultiArchImageStatus,
    desired: &DesiredBuild,
    commit: String,
    revision: &str,
    now: Timestamp,
) {
    status.build = Some(BuildStatus {
        id: desired.build_id.clone(),
        started_at: Some(Time(now)),
    });
    status.source = Some(SourceStatus {
        commit,
        revision: Some(revision.to_string()),
    });
    status.rebuild = desired.rebuild.clone();
    status.platforms = Vec::new();
    status.phase = Some(Phase::Pending);
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
            Decision::Start {
                commit: "1111".into()
            }
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
                Decision::Start {
                    commit: COMMIT.into(),
                },
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

    #[test]
    fn a_started_build_forgets_the_previous_platforms() {
        let d = desired(serde_json::json!({}));
        let mut status = MultiArchImageStatus {
            phase: Some(Phase::Failed),
            platforms: vec![crate::plan::tests::platform_status("linux/amd64")],
            ..Default::default()
        };
        start(&mut status, &d, COMMIT.into(), "main", t(5));
        assert_eq!(status.build.as_ref().unwrap().id, d.build_id);
        assert_eq!(status.source.as_ref().unwrap().commit, COMMIT);
        assert!(status.platforms.is_empty());
        assert_eq!(status.phase, Some(Phase::Pending));
    }
}
