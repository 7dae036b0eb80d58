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
//! `Pending` until a builder runs, `Building`, `Publishing` once every platform is `Built`,
//! `Succeeded` when the index is published to every tag, `Failed` when a platform fails, the
//! spec is invalid, the source cannot be resolved or the publish is refused. A failed build
//! publishes nothing and waits for a new generation or `multiarch.dev/rebuild` value.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{
    BuildStatus, MultiArchImageStatus, Phase, PlatformPhase, PlatformStatus, Reason, SourceStatus,
};
use crate::builder::platform_label;
use crate::platform::Platform;
use crate::validate::DesiredBuild;

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
    pub node_selector: std::collections::BTreeMap<String, String>,
}

/// A builder's state.
#[derive(Clone, Debug, PartialEq)]
pub enum BuilderState {
    /// Not bound to a node yet; `message` is the scheduler's reason, if it gave one.
    WaitingForNode {
        since: Timestamp,
        message: Option<String>,
    },
    /// Bound to a node, the container has not started yet.
    Starting { node: String },
    /// The container runs since `started`.
    Running { node: String, started: Timestamp },
    /// Exited 0; `result` is the digest it reported, checked against the registry.
    Succeeded {
        node: Option<String>,
        result: Result<String, String>,
    },
    /// The Job failed.
    Failed {
        node: Option<String>,
        failure: Failure,
        message: String,
    },
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
}

/// The planner's decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub status: MultiArchImageStatus,
    pub actions: Vec<Action>,
    /// When to look again even if nothing changes (the next deadline).
    pub requeue_after: Option<Duration>,
    pub events: Vec<PlannedEvent>,
}

/// True when the current build differs from what the spec asks for and no builder of the new
/// build exists yet, so the source must be resolved.
pub fn needs_source(
    desired: &DesiredBuild,
    status: &MultiArchImageStatus,
    builders: &[BuilderObservation],
) -> bool {
    let current = status.build.as_ref().map(|b| b.id.as_str());
    current != Some(desired.build_id.as_str())
        && !builders.iter().any(|b| b.build_id == desired.build_id)
}

/// Decides what to do. See the module doc for the state machine.
pub fn plan(desired: &DesiredBuild, observed: &Observed<'_>, now: Timestamp) -> Plan {
    let prev = observed.status;
    let mut status = prev.clone();
    status.observed_generation = observed.generation;
    let mut actions = Vec::new();
    let mut deadlines: Vec<Timestamp> = Vec::new();

    // --- the build: keep it, or start a new one ---
    let same_build = prev
        .build
        .as_ref()
        .is_some_and(|b| b.id == desired.build_id);
    if !same_build {
        let adopted = observed
            .builders
            .iter()
            .find(|b| b.build_id == desired.build_id)
            .map(|b| b.commit.clone());
        let commit = match (adopted, &observed.source) {
            (Some(c), _) => c,
            (None, Some(SourceResolution::Resolved(c))) => c.clone(),
            (None, Some(SourceResolution::Unavailable(msg))) => {
                status.phase = Some(Phase::Failed);
                set_conditions(
                    &mut status,
                    prev,
                    Phase::Failed,
                    Reason::SourceUnavailable,
                    msg,
                    now,
                    observed.generation,
                );
                return finish(prev, status, actions, Some(observed.source_retry));
            }
            (None, None) => {
                // the caller resolves the source first (see needs_source); nothing to decide yet
                return finish(prev, status, actions, None);
            }
        };
        status.build = Some(BuildStatus {
            id: desired.build_id.clone(),
            started_at: Some(Time(now)),
        });
        status.source = Some(SourceStatus {
            commit,
            revision: Some(observed.revision.to_string()),
        });
        status.rebuild = desired.rebuild.clone();
        status.platforms = Vec::new();
        status.phase = Some(Phase::Pending);
    }
    let commit = status
        .source
        .as_ref()
        .map(|s| s.commit.clone())
        .unwrap_or_default();
    let prev_platforms = if same_build {
        prev.platforms.clone()
    } else {
        Vec::new()
    };
    let object_failed_before = same_build && prev.phase == Some(Phase::Failed);

    // --- retire builders of other builds, clean up finished ones ---
    let latest_failed = observed
        .builders
        .iter()
        .filter(|b| matches!(b.state, BuilderState::Failed { .. }))
        .max_by_key(|b| b.finished_at.unwrap_or(b.created))
        .map(|b| b.name.clone());
    for b in observed.builders {
        if b.build_id != desired.build_id && !b.is_finished() {
            actions.push(Action::DeleteBuilder {
                name: b.name.clone(),
            });
        } else if let Some(done) = b.finished_at {
            let current_build_running = b.build_id == desired.build_id
                && !matches!(prev.phase, Some(Phase::Succeeded) | Some(Phase::Failed));
            let expires = done + observed.finished_ttl;
            if Some(&b.name) != latest_failed.as_ref() && !current_build_running {
                if now >= expires {
                    actions.push(Action::DeleteBuilder {
                        name: b.name.clone(),
                    });
                } else {
                    deadlines.push(expires);
                }
            }
        }
    }

    // --- each platform ---
    let mut platforms = Vec::with_capacity(desired.platforms.len());
    for platform in &desired.platforms {
        let label = platform_label(platform);
        let mut jobs: Vec<&BuilderObservation> = observed
            .builders
            .iter()
            .filter(|b| b.build_id == desired.build_id && b.platform == label)
            .collect();
        jobs.sort_by_key(|b| b.attempt);
        let prev_p = prev_platforms
            .iter()
            .find(|p| p.platform == platform.to_string());
        let failed_attempts = jobs
            .iter()
            .filter(|b| {
                matches!(
                    b.state,
                    BuilderState::Failed {
                        failure: Failure::Exited(_),
                        ..
                    } | BuilderState::Succeeded { result: Err(_), .. }
                )
            })
            .count() as i32;
        let attempts = failed_attempts.max(prev_p.map_or(0, |p| p.attempts));
        let mut p = PlatformStatus {
            platform: platform.to_string(),
            phase: PlatformPhase::Pending,
            builder: None,
            node: None,
            attempts,
            disruptions: jobs.iter().map(|b| b.disruptions).sum(),
            digest: None,
            waiting_since: None,
            reason: None,
            message: None,
        };
        // a finished platform whose builder was cleaned up after its time-to-live keeps its
        // result, even when an older (failed, kept for debugging) attempt is still there
        if let Some(pp) = prev_p.filter(|pp| {
            matches!(pp.phase, PlatformPhase::Built | PlatformPhase::Failed)
                && pp
                    .builder
                    .as_ref()
                    .is_some_and(|b| !jobs.iter().any(|j| &j.name == b))
        }) {
            platforms.push(pp.clone());
            continue;
        }
        let Some(latest) = jobs.last() else {
            match prev_p {
                // finished platforms whose builders were cleaned up, or rejected at admission
                Some(pp) if matches!(pp.phase, PlatformPhase::Built | PlatformPhase::Failed) => {
                    platforms.push(pp.clone());
                }
                _ if object_failed_before => platforms.push(prev_p.cloned().unwrap_or(p)),
                _ => {
                    let attempt = prev_p.map_or(1, |pp| pp.attempts as u32 + 1);
                    actions.push(Action::CreateBuilder {
                        platform: platform.clone(),
                        attempt,
                        commit: commit.clone(),
                    });
                    p.message = Some("creating the builder".into());
                    platforms.push(p);
                }
            }
            continue;
        };
        p.builder = Some(latest.name.clone());
        match &latest.state {
            BuilderState::WaitingForNode { since, message } => {
                let expires = *since + desired.provisioning_timeout;
                if now >= expires {
                    let selector = latest
                        .node_selector
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",");
                    let msg = format!(
                        "no node matching the node selector {{{selector}}} became available for \
                         {platform} within {}: {}",
                        crate::config::format_duration(desired.provisioning_timeout),
                        message
                            .as_deref()
                            .unwrap_or("the builder was never scheduled")
                    );
                    actions.push(Action::StopBuilder {
                        name: latest.name.clone(),
                        reason: Reason::NoNodeForPlatform,
                        message: msg.clone(),
                    });
                    p.phase = PlatformPhase::Failed;
                    p.reason = Some(Reason::NoNodeForPlatform);
                    p.message = Some(msg);
                } else {
                    deadlines.push(expires);
                    p.waiting_since = Some(Time(*since));
                    p.reason = Some(Reason::WaitingForNode);
                    p.message = message.clone();
                }
            }
            BuilderState::Starting { node } => {
                p.phase = PlatformPhase::Building;
                p.node = Some(node.clone());
                p.reason = Some(Reason::Building);
            }
            BuilderState::Running { node, started } => {
                p.node = Some(node.clone());
                let expires = *started + desired.timeout;
                if now >= expires {
                    let msg = format!(
                        "the build did not finish within {}",
                        crate::config::format_duration(desired.timeout)
                    );
                    actions.push(Action::StopBuilder {
                        name: latest.name.clone(),
                        reason: Reason::BuildTimeout,
                        message: msg.clone(),
                    });
                    p.phase = PlatformPhase::Failed;
                    p.reason = Some(Reason::BuildTimeout);
                    p.message = Some(msg);
                } else {
                    deadlines.push(expires);
                    p.phase = PlatformPhase::Building;
                    p.reason = Some(Reason::Building);
                }
            }
            BuilderState::Succeeded {
                node,
                result: Ok(digest),
            } => {
                p.node = node.clone();
                p.phase = PlatformPhase::Built;
                p.digest = Some(digest.clone());
            }
            BuilderState::Succeeded {
                node,
                result: Err(message),
            }
            | BuilderState::Failed { node, message, .. } => {
                p.node = node.clone();
                let failure = match &latest.state {
                    BuilderState::Failed { failure, .. } => Some(*failure),
                    _ => None,
                };
                let counted = matches!(failure, None | Some(Failure::Exited(_)));
                let stopped = latest.stopped.clone();
                let (reason, text) = match (stopped, failure) {
                    (Some((reason, msg)), _) => (reason, msg),
                    (None, Some(Failure::Deadline)) => (
                        Reason::BuildTimeout,
                        format!("the builder exceeded its deadline: {message}"),
                    ),
                    (None, Some(Failure::Disruptions)) => (
                        Reason::BuildFailed,
                        format!(
                            "lost {} builder pods to disruptions: {message}",
                            latest.disruptions
                        ),
                    ),
                    (None, _) => (Reason::BuildFailed, message.clone()),
                };
                let text = truncate_tail(&text, MAX_MESSAGE_LEN);
                if counted
                    && latest.stopped.is_none()
                    && (p.attempts as u32) <= desired.retries
                    && !object_failed_before
                {
                    actions.push(Action::CreateBuilder {
                        platform: platform.clone(),
                        attempt: latest.attempt + 1,
                        commit: commit.clone(),
                    });
                    p.message = Some(format!(
                        "attempt {} failed, retrying ({} of {} retries): {text}",
                        latest.attempt, p.attempts, desired.retries
                    ));
                } else {
                    p.phase = PlatformPhase::Failed;
                    p.reason = Some(reason);
                    p.message = Some(if counted && latest.stopped.is_none() {
                        format!("failed after {} attempts: {text}", p.attempts)
                    } else {
                        text
                    });
                }
            }
        }
        platforms.push(p);
    }
    status.platforms = platforms;

    // --- the object ---
    let failed = status
        .platforms
        .iter()
        .find(|p| p.phase == PlatformPhase::Failed)
        .cloned();
    let all_built = status
        .platforms
        .iter()
        .all(|p| p.phase == PlatformPhase::Built);
    let wanted_tags = desired.published_tags();
    let new_generation = prev.observed_generation != observed.generation;
    if let Some(f) = failed {
        // nothing new is started once a platform has failed; nothing is published
        actions.retain(|a| !matches!(a, Action::CreateBuilder { .. }));
        let reason = f.reason.unwrap_or(Reason::BuildFailed);
        let msg = format!("{}: {}", f.platform, f.message.clone().unwrap_or_default());
        status.phase = Some(Phase::Failed);
        set_conditions(
            &mut status,
            prev,
            Phase::Failed,
            reason,
            &msg,
            now,
            observed.generation,
        );
    } else if all_built {
        let published = same_build
            && prev.phase == Some(Phase::Succeeded)
            && prev.published_tags == wanted_tags
            && prev.digest.is_some();
        let refused = same_build
            && prev.phase == Some(Phase::Failed)
            && !new_generation
            && matches!(
                stalled_reason(prev),
                Some(Reason::PlatformMismatch | Reason::PublishFailed)
            );
        if published {
            status.phase = Some(Phase::Succeeded);
            let msg = format!("published {}", prev.image_ref.clone().unwrap_or_default());
            set_conditions(
                &mut status,
                prev,
                Phase::Succeeded,
                Reason::Published,
                &msg,
                now,
                observed.generation,
            );
        } else if refused {
            status.phase = Some(Phase::Failed);
            status.conditions = prev.conditions.clone();
        } else {
            actions.push(Action::Publish);
            status.phase = Some(Phase::Publishing);
            set_conditions(
                &mut status,
                prev,
                Phase::Publishing,
                Reason::Publishing,
                "verifying platform images and publishing the index",
                now,
                observed.generation,
            );
        }
    } else {
        let waiting = status
            .platforms
            .iter()
            .find(|p| p.reason == Some(Reason::WaitingForNode));
        let building = status
            .platforms
            .iter()
            .any(|p| matches!(p.phase, PlatformPhase::Building | PlatformPhase::Built));
        let phase = if building {
            Phase::Building
        } else {
            Phase::Pending
        };
        status.phase = Some(phase);
        let (reason, msg) = match waiting {
            Some(w) => (
                Reason::WaitingForNode,
                format!(
                    "{} waits for a node: {}",
                    w.platform,
                    w.message
                        .clone()
                        .unwrap_or_else(|| "not scheduled yet".into())
                ),
            ),
            None => (Reason::Building, building_message(&status.platforms)),
        };
        set_conditions(
            &mut status,
            prev,
            phase,
            reason,
            &msg,
            now,
            observed.generation,
        );
    }

    let requeue = deadlines.into_iter().min().map(|t| {
        Duration::try_from(t.duration_since(now)).unwrap_or_default() + Duration::from_secs(1)
    });
    finish(prev, status, actions, requeue)
}

fn building_message(platforms: &[PlatformStatus]) -> String {
    let built = platforms
        .iter()
        .filter(|p| p.phase == PlatformPhase::Built)
        .count();
    format!("{built} of {} platforms built", platforms.len())
}

fn stalled_reason(status: &MultiArchImageStatus) -> Option<Reason> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled" && c.status == "True")
        .and_then(|c| serde_json::from_value(serde_json::Value::String(c.reason.clone())).ok())
}

/// The status of an object whose spec cannot succeed: `Failed`, `Stalled` with `InvalidSpec`.
pub fn invalid_spec_status(
    prev: &MultiArchImageStatus,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> MultiArchImageStatus {
    let mut status = prev.clone();
    status.observed_generation = generation;
    status.phase = Some(Phase::Failed);
    set_conditions(
        &mut status,
        prev,
        Phase::Failed,
        Reason::InvalidSpec,
        message,
        now,
        generation,
    );
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
    let prev = status.clone();
    let text = truncate_tail(message, MAX_MESSAGE_LEN);
    if let Some(p) = status
        .platforms
        .iter_mut()
        .find(|p| p.platform == platform.to_string())
    {
        p.phase = PlatformPhase::Failed;
        p.reason = Some(Reason::BuilderRejected);
        p.message = Some(text.clone());
        p.builder = None;
    }
    status.phase = Some(Phase::Failed);
    let generation = status.observed_generation;
    let msg = format!("{platform}: the builder was rejected: {text}");
    set_conditions(
        status,
        &prev,
        Phase::Failed,
        Reason::BuilderRejected,
        &msg,
        now,
        generation,
    );
    events_between(&prev, status)
}

/// What a publish attempt ended with.
#[derive(Clone, Debug, PartialEq)]
pub enum PublishOutcome {
    Published {
        digest: String,
        image_ref: String,
    },
    /// An image's config disagrees with the platform it was built for.
    PlatformMismatch(String),
    /// The publish cannot succeed as things are (for example access denied).
    Refused(String),
}

/// Records a publish outcome in the status the planner returned.
pub fn record_publish(
    status: &mut MultiArchImageStatus,
    desired: &DesiredBuild,
    outcome: &PublishOutcome,
    now: Timestamp,
) -> Vec<PlannedEvent> {
    let prev = status.clone();
    let generation = status.observed_generation;
    match outcome {
        PublishOutcome::Published { digest, image_ref } => {
            status.phase = Some(Phase::Succeeded);
            status.digest = Some(digest.clone());
            status.image_ref = Some(image_ref.clone());
            status.published_tags = desired.published_tags();
            let msg = format!("published {image_ref}");
            set_conditions(
                status,
                &prev,
                Phase::Succeeded,
                Reason::Published,
                &msg,
                now,
                generation,
            );
        }
        PublishOutcome::PlatformMismatch(msg) => {
            status.phase = Some(Phase::Failed);
            set_conditions(
                status,
                &prev,
                Phase::Failed,
                Reason::PlatformMismatch,
                msg,
                now,
                generation,
            );
        }
        PublishOutcome::Refused(msg) => {
            status.phase = Some(Phase::Failed);
            set_conditions(
                status,
                &prev,
                Phase::Failed,
                Reason::PublishFailed,
                msg,
                now,
                generation,
            );
        }
    }
    events_between(&prev, status)
}

fn finish(
    prev: &MultiArchImageStatus,
    status: MultiArchImageStatus,
    actions: Vec<Action>,
    requeue_after: Option<Duration>,
) -> Plan {
    let events = events_between(prev, &status);
    Plan {
        status,
        actions,
        requeue_after,
        events,
    }
}

/// Events for the transitions between two statuses: the object's phase and each platform's.
pub fn events_between(
    prev: &MultiArchImageStatus,
    next: &MultiArchImageStatus,
) -> Vec<PlannedEvent> {
    let mut events = Vec::new();
    for p in &next.platforms {
        let before = prev.platforms.iter().find(|q| q.platform == p.platform);
        let changed = before.map(|b| (b.phase, b.reason)) != Some((p.phase, p.reason));
        if !changed {
            continue;
        }
        let (warning, reason, note) = match (p.phase, p.reason) {
            (PlatformPhase::Failed, r) => (
                true,
                r.unwrap_or(Reason::BuildFailed),
                format!(
                    "{} failed: {}",
                    p.platform,
                    p.message.clone().unwrap_or_default()
                ),
            ),
            (PlatformPhase::Built, _) => (
                false,
                Reason::Building,
                format!(
                    "{} built: {}",
                    p.platform,
                    p.digest.clone().unwrap_or_default()
                ),
            ),
            (_, Some(Reason::WaitingForNode)) => (
                false,
                Reason::WaitingForNode,
                format!(
                    "{} waits for a node: {}",
                    p.platform,
                    p.message.clone().unwrap_or_default()
                ),
            ),
            (PlatformPhase::Building, _) => (
                false,
                Reason::Building,
                format!(
                    "{} building on {}",
                    p.platform,
                    p.node.clone().unwrap_or_default()
                ),
            ),
            _ => continue,
        };
        events.push(PlannedEvent {
            warning,
            reason,
            note,
        });
    }
    if prev.phase != next.phase {
        if let Some(ready) = next.conditions.iter().find(|c| c.type_ == "Ready") {
            let reason = serde_json::from_value(serde_json::Value::String(ready.reason.clone()))
                .unwrap_or(Reason::Building);
            if matches!(next.phase, Some(Phase::Succeeded) | Some(Phase::Failed)) {
                events.push(PlannedEvent {
                    warning: next.phase == Some(Phase::Failed),
                    reason,
                    note: ready.message.clone(),
                });
            }
        }
    }
    events
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

/// Sets kstatus conditions: `Ready` always, `Reconciling` while in progress, `Stalled` when
/// failed. A condition keeps its `lastTransitionTime` while its status stays the same.
fn set_conditions(
    status: &mut MultiArchImageStatus,
    prev: &MultiArchImageStatus,
    phase: Phase,
    reason: Reason,
    message: &str,
    now: Timestamp,
    generation: Option<i64>,
) {
    let in_progress = matches!(phase, Phase::Pending | Phase::Building | Phase::Publishing);
    let ready = phase == Phase::Succeeded;
    let mut conditions = vec![condition(
        prev, "Ready", ready, reason, message, now, generation,
    )];
    if in_progress {
        conditions.push(condition(
            prev,
            "Reconciling",
            true,
            reason,
            message,
            now,
            generation,
        ));
    }
    if phase == Phase::Failed {
        conditions.push(condition(
            prev, "Stalled", true, reason, message, now, generation,
        ));
    }
    status.conditions = conditions;
}

fn condition(
    prev: &MultiArchImageStatus,
    type_: &str,
    value: bool,
    reason: Reason,
    message: &str,
    now: Timestamp,
    generation: Option<i64>,
) -> Condition {
    let value = if value { "True" } else { "False" };
    let since = prev
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == value)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status: value.to_string(),
        reason: reason.as_str().to_string(),
        message: truncate_tail(message, MAX_MESSAGE_LEN),
        last_transition_time: since,
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests;
