//! The build planner: `plan(desired, observed, now) -> Plan` decides, from what the cluster shows,
//! which builders to create, stop or delete, whether to publish, and what the status says. Pure:
//! no client, no clock (`now` is an input), no randomness.
//!
//! Per platform, within one build (a build id; see `validate::build_id`):
//!
//! ```text
//!              create Job (attempt n)
//!   Pending ──────────────────────────▶ Pending (WaitingForNode) ──── provisioningTimeout ──▶ Failed (NoNodeForPlatform)
//!                                            │ bound to a node
//!                                            ▼
//!                                        Building ─── timeout ──▶ Failed (BuildTimeout)
//!                                         │     │ non-zero exit: attempt n+1 while n <= retries, else
//!                                         │     └──────────────────────────────────────────────────▶ Failed (BuildFailed)
//!                                         ▼ exit 0, digest found in the registry
//!                                       Built
//! ```
//!
//! Pods lost to disruptions are replaced by the Job itself (not counted in `attempts`). Overall:
//! `Pending` until a builder runs, `Building`, `Publishing` once every platform is `Built` (the
//! controller writes it only when publishing lasts over a second),
//! `Succeeded` when the index is published to every tag, `Failed` when a platform fails, the
//! spec is invalid, the source cannot be resolved or the publish is refused. A failed build
//! publishes nothing and waits for a new generation or `multiarch.dev/rebuild` value.
//!
//! [`plan`] runs these steps, each a pure function in its own module:
//!
//! 1. `build`: keep the current build, or start the one the spec asks for (and with which
//!    commit);
//! 2. `cleanup`: delete builders of other builds, and finished builders past their time-to-live;
//! 3. `platform`: each platform's status and the builder to create or stop, one function per
//!    builder state;
//! 4. `summary`: the object's phase and conditions, and whether to publish.
//!
//! The kstatus conditions are written by one type, [`Conditions`], from a [`Verdict`]; `record`
//! folds what the controller did afterwards (a publish, a rejected builder) into the status, and
//! `events` turns the transitions between two statuses into Events.

mod build;
mod cleanup;
mod conditions;
mod events;
mod follow;
mod history;
mod platform;
mod record;
mod summary;

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use crate::api::{MultiArchImageStatus, Phase, PlatformStatus, Reason};
use crate::platform::Platform;
use crate::validate::DesiredBuild;

pub use build::new_build_id;
pub use conditions::{Conditions, Verdict};
pub use events::events_between;
pub use history::settle as settle_history;
pub use record::{
    invalid_spec_status, record_publish, record_quota_wait, record_registry_unreachable,
    record_rejected_builder, PublishOutcome, QUOTA_RETRY, REGISTRY_RETRY,
};

/// The most of a builder's message kept in status.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// What one builder Job (and its pod) shows.
#[derive(Clone, Debug, PartialEq)]
pub struct BuilderObservation {
    pub name: String,
    pub build_id: String,
    /// The `multiarch.dev/platform` label value.
    pub platform: String,
    pub attempt: u32,
    pub commit: String,
    pub created: Timestamp,
    pub state: BuilderState,
    /// Pods of this Job lost to disruptions.
    pub disruptions: i32,
    /// Set when the operator stopped the builder: why.
    pub stopped: Option<(Reason, String)>,
    /// When the Job finished, if it has.
    pub finished_at: Option<Timestamp>,
    /// The node selector of its pods.
    pub node_selector: BTreeMap<String, String>,
    /// The resources its builder container requests (quantities as written).
    pub requests: BTreeMap<String, String>,
}

/// A builder's state.
#[derive(Clone, Debug, PartialEq)]
pub enum BuilderState {
    /// Not bound to a node yet; `message` is the scheduler's reason, if it gave one.
    WaitingForNode {
        since: Timestamp,
        message: Option<String>,
    },
    /// The Job has no pod because the namespace's ResourceQuota has no room for it now (the
    /// quota's message); the Job controller creates it once quota frees up.
    WaitingForQuota { message: String },
    /// Bound to a node, the container has not started yet.
    Starting { node: String },
    /// The container runs since `started`.
    Running { node: String, started: Timestamp },
    /// Exited 0; `pushed` is what the registry says about the digest it reported.
    Succeeded {
        node: Option<String>,
        pushed: PushCheck,
    },
    /// The Job failed.
    Failed {
        node: Option<String>,
        failure: Failure,
        message: String,
    },
}

/// What the registry says about the image a builder that exited 0 reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushCheck {
    /// The registry has it: its digest.
    Pushed(String),
    /// It is not there, or the builder reported no usable digest: the build failed by itself
    /// (tried again like a non-zero exit). Why.
    Missing(String),
    /// The registry's answer about it cannot be used (larger than its cap, another digest, a
    /// redirect loop, credentials refused): not the build's fault, so it is not built again; the
    /// platform fails with `PublishFailed`. What the registry did.
    Unusable(String),
}

/// How a Job failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The build failed by itself (non-zero exit).
    Exited(i32),
    /// The Job's deadline passed (the operator's backstop for a stuck attempt).
    Deadline,
    /// More pods were lost to disruptions than the operator-wide cap.
    Disruptions,
}

impl BuilderObservation {
    fn is_finished(&self) -> bool {
        matches!(
            self.state,
            BuilderState::Succeeded { .. } | BuilderState::Failed { .. }
        )
    }
}

/// The resolved source of a new build.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceResolution {
    Resolved(String),
    /// The revision or repository cannot be reached as given (not found, access denied).
    Unavailable(String),
    /// The git server could not be asked now (refused, timed out, failed): worth retrying.
    Unreachable(String),
}

/// What a poll of a published (or failed) build found: the branch's commit now, and the base
/// images whose tags moved.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FollowCheck {
    /// The polled revision's commit, or why it could not be resolved; `None` when the branch is
    /// not polled (only base images are).
    pub source: Option<SourceResolution>,
    /// Base images whose tag points to a new digest.
    pub moved: Vec<MovedBase>,
}

/// A base image whose tag moved.
#[derive(Clone, Debug, PartialEq)]
pub struct MovedBase {
    /// `registry/repo:tag`.
    pub name: String,
    pub from: String,
    pub to: String,
}

impl MovedBase {
    /// `name moved from sha256:... to sha256:...`.
    pub fn describe(&self) -> String {
        format!("{} moved from {} to {}", self.name, self.from, self.to)
    }
}

/// Everything the planner reads.
pub struct Observed<'a> {
    pub generation: Option<i64>,
    pub status: &'a MultiArchImageStatus,
    pub builders: &'a [BuilderObservation],
    /// The commit of a new build; only needed when [`needs_source`] says so.
    pub source: Option<SourceResolution>,
    /// The revision as written in the spec (recorded with the commit).
    pub revision: &'a str,
    /// How long finished builders are kept.
    pub finished_ttl: Duration,
    /// When an unavailable source is tried again.
    pub source_retry: Duration,
    /// How long an unreachable git server keeps a new build in progress before it stalls.
    pub source_stall_after: Duration,
    /// What a poll found, when one was due (see `FollowCheck`).
    pub follow: Option<FollowCheck>,
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    CreateBuilder {
        platform: Platform,
        attempt: u32,
        commit: String,
    },
    /// Stop a running builder and record why on it.
    StopBuilder {
        name: String,
        reason: Reason,
        message: String,
    },
    DeleteBuilder {
        name: String,
    },
    /// Verify every platform's image and publish the index.
    Publish,
}

/// An Event to record on the object.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedEvent {
    pub warning: bool,
    pub reason: Reason,
    pub note: String,
    /// What the operator did or saw (the Event's `action`): Events of one object with the same
    /// reason, action and builder are one series, so each transition has an action of its own.
    pub action: &'static str,
    /// The builder Job the Event is about (its `related` object), if any.
    pub builder: Option<String>,
}

/// The planner's decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The build the actions are about (builders are named and labelled with it).
    pub build_id: String,
    pub status: MultiArchImageStatus,
    pub actions: Vec<Action>,
    /// When to look again even if nothing changes (the next deadline).
    pub requeue_after: Option<Duration>,
    pub events: Vec<PlannedEvent>,
}

/// The id of the build a status records, if any.
pub fn build_id(status: &MultiArchImageStatus) -> Option<&str> {
    status.build.as_ref().map(|b| b.id.as_str())
}

/// True when `status` records the build `id` (the build the spec asks for, usually).
pub fn same_build(status: &MultiArchImageStatus, id: &str) -> bool {
    build_id(status) == Some(id)
}

/// True when the recorded build was started for the spec key `key` (a build recorded without a
/// spec key, by a release before commits entered build ids, was named by it).
pub fn same_spec(status: &MultiArchImageStatus, key: &str) -> bool {
    status
        .build
        .as_ref()
        .is_some_and(|b| b.spec_key.as_deref().unwrap_or(&b.id) == key)
}

/// True when the spec asks for a build other than the recorded one and no builder named by its
/// spec key exists (see `build::decide`), so the source must be resolved.
pub fn needs_source(
    desired: &DesiredBuild,
    status: &MultiArchImageStatus,
    builders: &[BuilderObservation],
) -> bool {
    !same_spec(status, &desired.spec_key)
        && !desired.follow.suspend
        && !builders.iter().any(|b| b.build_id == desired.spec_key)
}

/// Decides what to do. See the module doc for the state machine and the steps.
pub fn plan(desired: &DesiredBuild, observed: &Observed<'_>, now: Timestamp) -> Plan {
    let prev = observed.status;
    let mut status = prev.clone();
    status.observed_generation = observed.generation;
    let conditions = Conditions::new(prev, now, observed.generation);
    let mut events = follow::source_condition(&mut status, observed, now);
    let mut desired = desired.clone();
    let started = match build::decide(&desired, observed) {
        build::Decision::Keep => {
            desired.build_id = build_id(prev).unwrap_or_default().to_string();
            false
        }
        build::Decision::Start(new) => {
            build::start(&mut status, &desired, &new, observed.revision, now);
            events.extend(follow::trigger_event(&new));
            desired.build_id = new.id;
            true
        }
        build::Decision::Suspended => {
            // nothing is decided for the new spec: the status still describes the old one
            return finish(&desired, prev, prev.clone(), Vec::new(), None);
        }
        build::Decision::SourceUnavailable(message) => {
            let verdict = Verdict::new(Phase::Failed, Reason::SourceUnavailable, message);
            status.source_unreachable_since = None;
            conditions.apply(&mut status, &verdict);
            let retry = Some(observed.source_retry);
            return finish(&desired, prev, status, Vec::new(), retry);
        }
        build::Decision::SourceUnreachable(message) => {
            let retry = build::unreachable(&mut status, observed, &message, now);
            return finish(&desired, prev, status, Vec::new(), Some(retry));
        }
        // the caller resolves the source first (see needs_source); nothing to decide yet
        build::Decision::AwaitSource => return finish(&desired, prev, status, Vec::new(), None),
    };
    let mut plan = plan_build(&desired, observed, status, !started, now);
    plan.events.splice(0..0, events);
    plan
}

/// Plans the decided build: cleanup, each platform, then the summary. `same` is true when the
/// build is the one `observed.status` records (its platforms are carried on).
fn plan_build(
    desired: &DesiredBuild,
    observed: &Observed<'_>,
    mut status: MultiArchImageStatus,
    same: bool,
    now: Timestamp,
) -> Plan {
    let prev = observed.status;
    let conditions = Conditions::new(prev, now, observed.generation);
    let cleanup = cleanup::plan(&desired.build_id, observed, prev.phase, now);
    let mut actions = cleanup.actions;
    let mut deadlines: Vec<Timestamp> = cleanup.next_expiry.into_iter().collect();
    let commit = status
        .source
        .as_ref()
        .map(|s| s.commit.clone())
        .unwrap_or_default();
    let prev_platforms: &[PlatformStatus] = if same { &prev.platforms } else { &[] };
    status.platforms = desired
        .platforms
        .iter()
        .map(|platform| {
            let step = platform::plan(&platform::Input {
                desired,
                platform,
                builders: observed.builders,
                prev: prev_platforms
                    .iter()
                    .find(|p| p.platform == platform.to_string()),
                commit: &commit,
                object_failed_before: same && prev.phase == Some(Phase::Failed),
                now,
            });
            actions.extend(step.action);
            deadlines.extend(step.deadline);
            step.status
        })
        .collect();
    let step = summary::summarize(&summary::Input {
        prev,
        platforms: &status.platforms,
        same_build: same,
        wanted_tags: desired.published_tags(),
        wants_signature: desired.signing_secret.is_some(),
        new_generation: prev.observed_generation != observed.generation,
    });
    step.apply(&mut status, &mut actions, &conditions);
    finish(
        desired,
        prev,
        status,
        actions,
        requeue_after(deadlines, now),
    )
}

/// Looks again just after the earliest deadline.
fn requeue_after(deadlines: Vec<Timestamp>, now: Timestamp) -> Option<Duration> {
    deadlines.into_iter().min().map(|t| {
        Duration::try_from(t.duration_since(now)).unwrap_or_default() + Duration::from_secs(1)
    })
}

fn finish(
    desired: &DesiredBuild,
    prev: &MultiArchImageStatus,
    status: MultiArchImageStatus,
    actions: Vec<Action>,
    requeue_after: Option<Duration>,
) -> Plan {
    let events = events_between(prev, &status);
    Plan {
        build_id: desired.build_id.clone(),
        status,
        actions,
        requeue_after,
        events,
    }
}

/// Keeps the last `max` bytes of a message (the end of a build log says why it failed).
pub fn truncate_tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

#[cfg(test)]
mod tests;
