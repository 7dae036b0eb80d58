//! Cleanup: builders of other builds that still run are deleted at once; finished builders are
//! deleted once their time-to-live has passed, except the most recent failed one (kept for
//! debugging until the next build) and those of the current build while it is in progress.

use jiff::Timestamp;

use super::{Action, BuilderObservation, BuilderState, Observed};
use crate::api::Phase;

/// The builders to delete now, and when the next one expires.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Cleanup {
    pub actions: Vec<Action>,
    pub next_expiry: Option<Timestamp>,
}

/// Plans the cleanup of `observed.builders`, the current build being `build_id` and the object's
/// phase before this reconcile `phase`.
pub(super) fn plan(
    build_id: &str,
    observed: &Observed<'_>,
    phase: Option<Phase>,
    now: Timestamp,
) -> Cleanup {
    let kept = latest_failed(observed.builders);
    let current_in_progress = !matches!(phase, Some(Phase::Succeeded) | Some(Phase::Failed));
    let mut cleanup = Cleanup::default();
    for b in observed.builders {
        let delete = || Action::DeleteBuilder {
            name: b.name.clone(),
        };
        if b.build_id != build_id && !b.is_finished() {
            cleanup.actions.push(delete());
            continue;
        }
        let Some(done) = b.finished_at else {
            continue;
        };
        if Some(&b.name) == kept || (b.build_id == build_id && current_in_progress) {
            continue;
        }
        let expires = done + observed.finished_ttl;
        if now >= expires {
            cleanup.actions.push(delete());
        } else {
            cleanup.next_expiry = Some(cleanup.next_expiry.map_or(expires, |t| t.min(expires)));
        }
    }
    cleanup
}

/// The builder that failed last (kept for debugging).
fn latest_failed(builders: &[BuilderObservation]) -> Option<&String> {
    builders
        .iter()
        .filter(|b| matches!(b.state, BuilderState::Failed { .. }))
        .max_by_key(|b| b.finished_at.unwrap_or(b.created))
        .map(|b| &b.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MultiArchImageStatus;
    use crate::plan::tests::{builder, built, desired, exited, observed, running, t};

    fn run(build_id: &str, builders: &[BuilderObservation], phase: Phase, now: i64) -> Cleanup {
        let status = MultiArchImageStatus::default();
        let observed = observed(&status, builders, None);
        plan(build_id, &observed, Some(phase), t(now))
    }

    fn deleted(c: &Cleanup) -> Vec<&str> {
        c.actions
            .iter()
            .filter_map(|a| match a {
                Action::DeleteBuilder { name } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn running_builders_of_another_build_are_deleted_at_once() {
        let old = desired(serde_json::json!({}));
        let new = desired(serde_json::json!({"target": "x"}));
        let b = builder(&old, "linux/amd64", 1, running("n"));
        let c = run(&new.build_id, std::slice::from_ref(&b), Phase::Building, 0);
        assert_eq!(deleted(&c), vec![b.name.as_str()]);
    }

    #[test]
    fn builders_of_the_build_in_progress_are_kept_past_their_ttl() {
        let d = desired(serde_json::json!({}));
        let b = [builder(&d, "linux/amd64", 1, built("sha256:aa"))];
        assert!(run(&d.build_id, &b, Phase::Building, 100_000)
            .actions
            .is_empty());
        let done = run(&d.build_id, &b, Phase::Succeeded, 100 + 3600);
        assert_eq!(deleted(&done), vec![b[0].name.as_str()]);
    }

    #[test]
    fn finished_builders_expire_after_the_ttl_and_the_latest_failure_stays() {
        let d = desired(serde_json::json!({}));
        let b = [
            builder(&d, "linux/amd64", 1, built("sha256:aa")),
            builder(&d, "linux/arm64", 1, exited(1, "boom")),
        ];
        let before = run(&d.build_id, &b, Phase::Failed, 100 + 3599);
        assert!(before.actions.is_empty());
        assert_eq!(before.next_expiry, Some(t(100 + 3600)));
        let after = run(&d.build_id, &b, Phase::Failed, 100 + 3600);
        assert_eq!(deleted(&after), vec![b[0].name.as_str()]);
    }
}
