//! Events on transitions: one for each platform whose phase or reason changed, and one when the
//! object reaches `Succeeded` or `Failed`. Never one per loop.

use super::PlannedEvent;
use crate::api::{MultiArchImageStatus, Phase, PlatformPhase, PlatformStatus, Reason};

/// Events for the transitions between two statuses: the object's phase and each platform's.
pub fn events_between(
    prev: &MultiArchImageStatus,
    next: &MultiArchImageStatus,
) -> Vec<PlannedEvent> {
    let mut events: Vec<PlannedEvent> = next
        .platforms
        .iter()
        .filter(|p| {
            let before = prev.platforms.iter().find(|q| q.platform == p.platform);
            before.map(|b| (b.phase, b.reason)) != Some((p.phase, p.reason))
        })
        .filter_map(platform_event)
        .collect();
    events.extend(object_event(prev, next));
    events
}

/// The Event of a platform that reached its phase (or reason) now.
fn platform_event(p: &PlatformStatus) -> Option<PlannedEvent> {
    let text = |field: &Option<String>| field.clone().unwrap_or_default();
    let (warning, reason, action, note) = match (p.phase, p.reason) {
        (PlatformPhase::Failed, r) => (
            true,
            r.unwrap_or(Reason::BuildFailed),
            "Fail",
            format!("{} failed: {}", p.platform, text(&p.message)),
        ),
        (PlatformPhase::Built, _) => (
            false,
            Reason::Building,
            "Finish",
            format!("{} built: {}", p.platform, text(&p.digest)),
        ),
        (_, Some(Reason::WaitingForNode)) => (
            false,
            Reason::WaitingForNode,
            "Schedule",
            format!("{} waits for a node: {}", p.platform, text(&p.message)),
        ),
        (_, Some(Reason::WaitingForQuota)) => (
            false,
            Reason::WaitingForQuota,
            "Schedule",
            format!("{} waits for quota: {}", p.platform, text(&p.message)),
        ),
        (PlatformPhase::Building, _) => (
            false,
            Reason::Building,
            "Start",
            format!("{} building on {}", p.platform, text(&p.node)),
        ),
        _ => return None,
    };
    Some(PlannedEvent {
        warning,
        reason,
        note,
        action,
        builder: p.builder.clone(),
    })
}

/// The Event of an object that reached `Succeeded` or `Failed` now, with its `Ready` reason.
fn object_event(prev: &MultiArchImageStatus, next: &MultiArchImageStatus) -> Option<PlannedEvent> {
    if prev.phase == next.phase || !matches!(next.phase, Some(Phase::Succeeded | Phase::Failed)) {
        return None;
    }
    let ready = next.conditions.iter().find(|c| c.type_ == "Ready")?;
    let failed = next.phase == Some(Phase::Failed);
    Some(PlannedEvent {
        warning: failed,
        reason: Reason::parse(&ready.reason).unwrap_or(Reason::Building),
        note: ready.message.clone(),
        action: if failed { "Fail" } else { "Publish" },
        builder: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::platform_status;

    fn status(phase: PlatformPhase, reason: Option<Reason>) -> MultiArchImageStatus {
        MultiArchImageStatus {
            platforms: vec![PlatformStatus {
                phase,
                reason,
                node: Some("n1".into()),
                ..platform_status("linux/arm64")
            }],
            ..Default::default()
        }
    }

    #[test]
    fn each_platform_transition_has_one_event_and_repeats_have_none() {
        let cases = [
            (
                PlatformPhase::Building,
                Some(Reason::Building),
                false,
                "linux/arm64 building on n1",
            ),
            (
                PlatformPhase::Pending,
                Some(Reason::WaitingForNode),
                false,
                "linux/arm64 waits for a node: ",
            ),
            (
                PlatformPhase::Failed,
                Some(Reason::BuildTimeout),
                true,
                "linux/arm64 failed: ",
            ),
            (PlatformPhase::Built, None, false, "linux/arm64 built: "),
        ];
        let before = status(PlatformPhase::Pending, None);
        for (phase, reason, warning, note) in cases {
            let after = status(phase, reason);
            let events = events_between(&before, &after);
            assert_eq!(events.len(), 1, "{phase:?}");
            assert_eq!(
                (events[0].warning, events[0].note.as_str()),
                (warning, note)
            );
            assert!(events_between(&after, &after).is_empty());
        }
        assert!(events_between(&before, &before).is_empty());
    }

    #[test]
    fn each_transition_of_a_builder_is_an_event_series_of_its_own() {
        // Events with the same reason, action and related object are counted as one series
        // ("Building (x4)"), keeping the first note: each transition needs its own key
        let key = |phase, reason| {
            let mut after = status(phase, reason);
            after.platforms[0].builder = Some("app-1a2b3c4d-linux-arm64-1".into());
            let e = events_between(&MultiArchImageStatus::default(), &after).remove(0);
            (e.reason, e.action, e.builder)
        };
        let keys = [
            key(PlatformPhase::Pending, Some(Reason::WaitingForNode)),
            key(PlatformPhase::Building, Some(Reason::Building)),
            key(PlatformPhase::Built, None),
            key(PlatformPhase::Failed, Some(Reason::BuildFailed)),
        ];
        for (i, a) in keys.iter().enumerate() {
            assert_eq!(a.2.as_deref(), Some("app-1a2b3c4d-linux-arm64-1"));
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
