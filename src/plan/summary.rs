//! Summarizing the object: from its platforms, the phase and conditions of the whole build, and
//! whether the index is published now.

use super::conditions::stalled_reason;
use super::{Action, Conditions, Verdict};
use crate::api::{MultiArchImageStatus, Phase, PlatformPhase, PlatformStatus, Reason};

/// What the summary is made from.
pub(super) struct Input<'a> {
    /// The status before this reconcile.
    pub prev: &'a MultiArchImageStatus,
    /// The platforms as planned now.
    pub platforms: &'a [PlatformStatus],
    /// `prev` records the build the spec asks for.
    pub same_build: bool,
    /// Every tag a publish writes.
    pub wanted_tags: Vec<String>,
    /// The index must be signed (`spec.signing`).
    pub wants_signature: bool,
    /// The spec changed since `prev` was written.
    pub new_generation: bool,
}

/// Where the object stands.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Summary {
    /// A platform failed: nothing new starts, nothing is published.
    Failed(Verdict),
    /// Every platform is built and the index is published to the wanted tags.
    Published(Verdict),
    /// The publish of this build was refused and nothing changed since: the status stays as
    /// recorded (see `record_publish`).
    StillRefused,
    /// Every platform is built: verify and publish.
    Publish(Verdict),
    /// Builders wait or run.
    InProgress(Verdict),
}

/// Summarizes the platforms.
pub(super) fn summarize(input: &Input<'_>) -> Summary {
    if let Some(f) = input
        .platforms
        .iter()
        .find(|p| p.phase == PlatformPhase::Failed)
    {
        let reason = f.reason.unwrap_or(Reason::BuildFailed);
        let msg = format!("{}: {}", f.platform, f.message.clone().unwrap_or_default());
        return Summary::Failed(Verdict::new(Phase::Failed, reason, msg));
    }
    if input
        .platforms
        .iter()
        .all(|p| p.phase == PlatformPhase::Built)
    {
        return all_built(input);
    }
    Summary::InProgress(in_progress(input.platforms))
}

/// Every platform built: published already, refused already, or to publish.
fn all_built(input: &Input<'_>) -> Summary {
    let prev = input.prev;
    let published = input.same_build
        && prev.phase == Some(Phase::Succeeded)
        && prev.published_tags == input.wanted_tags
        && (prev.signature.is_some() || !input.wants_signature)
        && prev.digest.is_some();
    let refused = input.same_build
        && prev.phase == Some(Phase::Failed)
        && !input.new_generation
        && matches!(
            stalled_reason(prev),
            Some(Reason::PlatformMismatch | Reason::PublishFailed)
        );
    if published {
        let msg = format!("published {}", prev.image_ref.clone().unwrap_or_default());
        Summary::Published(Verdict::new(Phase::Succeeded, Reason::Published, msg))
    } else if refused {
        Summary::StillRefused
    } else {
        Summary::Publish(Verdict::new(
            Phase::Publishing,
            Reason::Publishing,
            "verifying platform images and publishing the index",
        ))
    }
}

/// `Building` once a builder runs, else `Pending`; the reason names a platform waiting for a
/// node, if one does.
fn in_progress(platforms: &[PlatformStatus]) -> Verdict {
    let building = platforms
        .iter()
        .any(|p| matches!(p.phase, PlatformPhase::Building | PlatformPhase::Built));
    let phase = if building {
        Phase::Building
    } else {
        Phase::Pending
    };
    let waiting = platforms.iter().find_map(|p| match p.reason {
        Some(Reason::WaitingForNode) => Some((p, Reason::WaitingForNode, "a node")),
        Some(Reason::WaitingForQuota) => Some((p, Reason::WaitingForQuota, "quota")),
        _ => None,
    });
    match waiting {
        Some((w, reason, what)) => {
            let why = w.message.as_deref().unwrap_or("not scheduled yet");
            let msg = format!("{} waits for {what}: {why}", w.platform);
            Verdict::new(phase, reason, msg)
        }
        None => {
            let built = platforms
                .iter()
                .filter(|p| p.phase == PlatformPhase::Built)
                .count();
            let msg = format!("{built} of {} platforms built", platforms.len());
            Verdict::new(phase, Reason::Building, msg)
        }
    }
}

impl Summary {
    /// Writes the summary into `status` and `actions`.
    pub(super) fn apply(
        self,
        status: &mut MultiArchImageStatus,
        actions: &mut Vec<Action>,
        conditions: &Conditions<'_>,
    ) {
        match self {
            Summary::Failed(verdict) => {
                actions.retain(|a| !matches!(a, Action::CreateBuilder { .. }));
                conditions.apply(status, &verdict);
            }
            Summary::Published(verdict) | Summary::InProgress(verdict) => {
                conditions.apply(status, &verdict)
            }
            Summary::StillRefused => {
                status.phase = Some(Phase::Failed);
                status.conditions = conditions.previous().to_vec();
            }
            Summary::Publish(verdict) => {
                actions.push(Action::Publish);
                conditions.apply(status, &verdict);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::platform_status;

    fn with(phase: PlatformPhase, reason: Option<Reason>, message: &str) -> PlatformStatus {
        PlatformStatus {
            phase,
            reason,
            message: Some(message.into()),
            ..platform_status("linux/arm64")
        }
    }

    fn summary(prev: &MultiArchImageStatus, platforms: &[PlatformStatus]) -> Summary {
        summarize(&Input {
            prev,
            platforms,
            same_build: true,
            wanted_tags: vec!["1.0.0".into()],
            wants_signature: false,
            new_generation: false,
        })
    }

    #[test]
    fn a_failed_platform_fails_the_object_with_its_reason() {
        let platforms = [
            with(PlatformPhase::Building, Some(Reason::Building), ""),
            with(
                PlatformPhase::Failed,
                Some(Reason::BuildTimeout),
                "too slow",
            ),
        ];
        let s = summary(&MultiArchImageStatus::default(), &platforms);
        let expected = Verdict::new(Phase::Failed, Reason::BuildTimeout, "linux/arm64: too slow");
        assert_eq!(s, Summary::Failed(expected));
    }

    #[test]
    fn a_waiting_platform_names_the_wait() {
        let platforms = [
            with(
                PlatformPhase::Pending,
                Some(Reason::WaitingForNode),
                "no arm64 node",
            ),
            with(PlatformPhase::Built, None, ""),
        ];
        let s = summary(&MultiArchImageStatus::default(), &platforms);
        let msg = "linux/arm64 waits for a node: no arm64 node";
        let expected = Verdict::new(Phase::Building, Reason::WaitingForNode, msg);
        assert_eq!(s, Summary::InProgress(expected));
    }

    #[test]
    fn all_built_publishes_unless_published_to_the_same_tags() {
        let built = [with(PlatformPhase::Built, None, "")];
        assert!(matches!(
            summary(&MultiArchImageStatus::default(), &built),
            Summary::Publish(_)
        ));
        let prev = MultiArchImageStatus {
            phase: Some(Phase::Succeeded),
            published_tags: vec!["1.0.0".into()],
            digest: Some("sha256:ii".into()),
            image_ref: Some("r@sha256:ii".into()),
            ..Default::default()
        };
        let expected = Verdict::new(Phase::Succeeded, Reason::Published, "published r@sha256:ii");
        assert_eq!(summary(&prev, &built), Summary::Published(expected));
    }
}
