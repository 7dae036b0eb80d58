//! `status.history`: the last builds, newest first, each with what started it and how it ended.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::build::NewBuild;
use crate::api::{BuildResult, HistoryEntry, MultiArchImageStatus, Phase};

/// The most builds `status.history` keeps.
pub const HISTORY_LIMIT: usize = 10;

/// Records a started build first in the history; a build still running is marked superseded.
pub(super) fn start(status: &mut MultiArchImageStatus, build: &NewBuild, now: Timestamp) {
    for entry in status.history.iter_mut().filter(|e| e.result.is_none()) {
        entry.result = Some(BuildResult::Superseded);
        entry.finished_at = Some(Time(now));
    }
    status.history.insert(
        0,
        HistoryEntry {
            build_id: build.id.clone(),
            commit: build.commit.clone(),
            trigger: build.trigger,
            detail: build.detail.clone(),
            result: None,
            digest: None,
            started_at: Some(Time(now)),
            finished_at: None,
        },
    );
    status.history.truncate(HISTORY_LIMIT);
}

/// Records how the current build ended in its history entry, once: `Succeeded` with the index
/// digest, or `Failed`; nothing while it runs, and nothing after it ended. A build recorded before the history existed gets
/// no entry.
pub fn settle(status: &mut MultiArchImageStatus, now: Timestamp) {
    let result = match status.phase {
        Some(Phase::Succeeded) => BuildResult::Succeeded,
        Some(Phase::Failed) => BuildResult::Failed,
        _ => return,
    };
    let id = status.build.as_ref().map(|b| b.id.clone());
    let digest = status.digest.clone();
    let Some(entry) = status
        .history
        .iter_mut()
        .find(|e| Some(&e.build_id) == id.as_ref())
    else {
        return;
    };
    // a build ends once: a later failure of the object (an invalid spec edit) is not the build's
    if entry.result.is_some() {
        return;
    }
    entry.result = Some(result);
    entry.finished_at = Some(Time(now));
    entry.digest = digest.filter(|_| result == BuildResult::Succeeded);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BuildStatus, Trigger};

    fn build(id: &str) -> NewBuild {
        NewBuild {
            id: id.into(),
            commit: "c".into(),
            trigger: Trigger::NewCommit,
            detail: None,
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn history_keeps_the_last_builds_newest_first_and_settles_each_once() {
        let mut status = MultiArchImageStatus::default();
        start(&mut status, &build("b0"), at(0));
        start(&mut status, &build("b1"), at(1));
        assert_eq!(status.history[1].result, Some(BuildResult::Superseded));
        status.build = Some(BuildStatus {
            id: "b1".into(),
            spec_key: None,
            started_at: None,
        });
        status.phase = Some(Phase::Building);
        settle(&mut status, at(2));
        assert_eq!(status.history[0].result, None);
        status.phase = Some(Phase::Succeeded);
        status.digest = Some("sha256:d".into());
        settle(&mut status, at(3));
        status.phase = Some(Phase::Failed);
        settle(&mut status, at(4));
        let first = &status.history[0];
        assert_eq!(first.result, Some(BuildResult::Succeeded));
        assert_eq!(first.digest.as_deref(), Some("sha256:d"));
        assert_eq!(first.finished_at, Some(Time(at(3))));
        for i in 2..20 {
            start(&mut status, &build(&format!("b{i}")), at(i));
        }
        assert_eq!(status.history.len(), HISTORY_LIMIT);
        assert_eq!(status.history[0].build_id, "b19");
    }
}
