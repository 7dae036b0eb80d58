//! The object's phase and kstatus conditions, written in one place: `Ready` always,
//! `Reconciling` while in progress, `Stalled` when failed. A condition keeps its
//! `lastTransitionTime` while its status stays the same.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::{truncate_tail, MAX_MESSAGE_LEN};
use crate::api::{MultiArchImageStatus, Phase, Reason};

/// What the object's status says: its phase, why, and a message for people.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub phase: Phase,
    pub reason: Reason,
    pub message: String,
    /// A failed verdict the operator still retries (an unreachable source past its stall time):
    /// `Stalled` and `Reconciling` both true, `Stalled` listed first so kstatus says Failed.
    pub still_trying: bool,
}

impl Verdict {
    pub fn new(phase: Phase, reason: Reason, message: impl Into<String>) -> Self {
        Verdict {
            phase,
            reason,
            message: message.into(),
            still_trying: false,
        }
    }

    /// This verdict, retried by the operator although failed.
    pub fn still_trying(self) -> Self {
        Verdict {
            still_trying: true,
            ..self
        }
    }
}

/// The condition types a verdict writes.
const KSTATUS_TYPES: [&str; 3] = ["Ready", "Stalled", "Reconciling"];

/// Writes verdicts into a status, keeping the transition times of the previous status.
pub struct Conditions<'a> {
    prev: &'a MultiArchImageStatus,
    now: Timestamp,
    generation: Option<i64>,
}

impl<'a> Conditions<'a> {
    /// Conditions that follow `prev`, observed at `now` for `generation`.
    pub fn new(prev: &'a MultiArchImageStatus, now: Timestamp, generation: Option<i64>) -> Self {
        Conditions {
            prev,
            now,
            generation,
        }
    }

    /// Sets the phase and the kstatus conditions of `status` to say `verdict`; conditions of
    /// other types (`SourceResolved`) are kept after them.
    pub fn apply(&self, status: &mut MultiArchImageStatus, verdict: &Verdict) {
        status.phase = Some(verdict.phase);
        let others: Vec<Condition> = status
            .conditions
            .drain(..)
            .filter(|c| !KSTATUS_TYPES.contains(&c.type_.as_str()))
            .collect();
        status.conditions = self.list(verdict);
        status.conditions.extend(others);
    }

    /// The previous status's conditions, unchanged.
    pub fn previous(&self) -> &'a [Condition] {
        &self.prev.conditions
    }

    fn list(&self, verdict: &Verdict) -> Vec<Condition> {
        let in_progress = matches!(
            verdict.phase,
            Phase::Pending | Phase::Building | Phase::Publishing
        );
        let mut conditions =
            vec![self.condition("Ready", verdict.phase == Phase::Succeeded, verdict)];
        // kstatus reads the first of Reconciling and Stalled that is true: Stalled comes first
        if verdict.phase == Phase::Failed {
            conditions.push(self.condition("Stalled", true, verdict));
        }
        if in_progress || verdict.still_trying {
            conditions.push(self.condition("Reconciling", true, verdict));
        }
        conditions
    }

    fn condition(&self, type_: &str, value: bool, verdict: &Verdict) -> Condition {
        let value = if value { "True" } else { "False" };
        let since = self
            .prev
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == value)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(self.now));
        Condition {
            type_: type_.to_string(),
            status: value.to_string(),
            reason: verdict.reason.as_str().to_string(),
            message: truncate_tail(&verdict.message, MAX_MESSAGE_LEN),
            last_transition_time: since,
            observed_generation: self.generation,
        }
    }
}

/// The reason of a `Stalled=True` condition, if the status has one.
pub fn stalled_reason(status: &MultiArchImageStatus) -> Option<Reason> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled" && c.status == "True")
        .and_then(|c| Reason::parse(&c.reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn types(status: &MultiArchImageStatus) -> Vec<(&str, &str)> {
        status
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str()))
            .collect()
    }

    #[test]
    fn each_phase_sets_the_kstatus_conditions_it_implies() {
        let cases = [
            (
                Phase::Pending,
                vec![("Ready", "False"), ("Reconciling", "True")],
            ),
            (
                Phase::Building,
                vec![("Ready", "False"), ("Reconciling", "True")],
            ),
            (
                Phase::Publishing,
                vec![("Ready", "False"), ("Reconciling", "True")],
            ),
            (Phase::Succeeded, vec![("Ready", "True")]),
            (Phase::Failed, vec![("Ready", "False"), ("Stalled", "True")]),
        ];
        let prev = MultiArchImageStatus::default();
        for (phase, expected) in cases {
            let mut status = prev.clone();
            Conditions::new(&prev, at(0), Some(3))
                .apply(&mut status, &Verdict::new(phase, Reason::Building, "m"));
            assert_eq!(status.phase, Some(phase));
            assert_eq!(types(&status), expected, "{phase:?}");
            assert!(status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(3) && c.reason == "Building"));
        }
    }

    #[test]
    fn transition_time_changes_only_with_the_condition_status() {
        let mut first = MultiArchImageStatus::default();
        let empty = MultiArchImageStatus::default();
        let building = Verdict::new(Phase::Building, Reason::Building, "1 of 2 built");
        Conditions::new(&empty, at(0), Some(1)).apply(&mut first, &building);
        let mut second = first.clone();
        let failed = Verdict::new(Phase::Failed, Reason::BuildFailed, "boom");
        Conditions::new(&first, at(60), Some(1)).apply(&mut second, &failed);
        let time = |s: &MultiArchImageStatus, t: &str| {
            let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
            c.last_transition_time.clone()
        };
        // Ready stays False: its time is kept; Stalled is new
        assert_eq!(time(&second, "Ready"), Time(at(0)));
        assert_eq!(time(&second, "Stalled"), Time(at(60)));
        assert_eq!(stalled_reason(&second), Some(Reason::BuildFailed));
        assert_eq!(stalled_reason(&first), None);
    }
}
