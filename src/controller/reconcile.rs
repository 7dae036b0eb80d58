//! One reconcile of one `MultiArchImage`, as a pipeline: validate the spec, observe the cluster
//! (`gather`), plan (`crate::plan`, pure), execute the plan's actions (`execute`), then report:
//! patch the status if it changed, record Events for transitions, count finished builds, and say
//! when to look again.
//!
//! The writes a two-platform build makes, and why each is needed (`e2e/bench.sh` counts them:
//! 9.5 per build with the synthetic builders):
//! - one dry-run Pod create, before the first builder Job: admission (Pod Security, policies, the
//!   quota) answers with its message now instead of leaving a Job without pods; platforms whose
//!   pods differ only by platform share it (`execute::admission_key`);
//! - one Job per platform: the builders;
//! - one status patch per reconcile that changed what a user sees (builders created, a builder
//!   running on its node, built, published); changes within the controller's debounce share one,
//!   and an unchanged status is not written (0 writes when nothing changed);
//! - one Event per transition (`plan::events_between`): a platform started, waited, finished or
//!   failed, and the object published or failed; never one per loop.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use tracing::{instrument, warn};

use super::execute::{execute, Executed};
use super::gather::{observe_object, Observation};
use super::{reset_backoff, Context, Error, FIELD_MANAGER};
use crate::api::{MultiArchImage, MultiArchImageStatus, PlatformPhase};
use crate::plan::{self, invalid_spec_status, BuilderObservation, Observed, PlannedEvent};
use crate::validate::validate;

/// How often an object in progress is looked at even when nothing changes.
const IN_PROGRESS_RESYNC: Duration = Duration::from_secs(300);

#[instrument(skip_all, fields(namespace = obj.metadata.namespace.as_deref().unwrap_or_default(), object = obj.metadata.name.as_deref().unwrap_or_default(), generation = obj.metadata.generation.unwrap_or_default()))]
pub async fn reconcile(obj: Arc<MultiArchImage>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let _in_flight = ctx
        .metrics
        .reconcile_started(&ObjectRef::from(obj.as_ref()));
    if obj.metadata.namespace.is_none() || obj.metadata.name.is_none() {
        return Err(Error::MissingMetadata);
    }
    if obj.metadata.deletion_timestamp.is_some() {
        // builders are owned by the object: the garbage collector stops them; the registry is
        // never touched
        ctx.polls.forget(&obj.uid().unwrap_or_default());
        ctx.written.forget(&obj.uid().unwrap_or_default());
        return Ok(Requeue::await_change());
    }
    let now = Timestamp::now();
    // the status last written, when the cache does not show it yet (see `written`)
    let cached = obj.status.clone().unwrap_or_default();
    let prev = ctx.written.current(&obj.uid().unwrap_or_default(), cached);

    let mut desired = match validate(&obj, &ctx.settings.defaults) {
        Ok(d) => d,
        Err(invalid) => {
            let status = invalid_spec_status(&prev, &invalid.0, obj.metadata.generation, now);
            let events = plan::events_between(&prev, &status);
            let invalid = Executed {
                status,
                events,
                retry_after: None,
            };
            return report(&ctx, &obj, &prev, invalid, &[], None).await;
        }
    };
    if plan::same_spec(&prev, &desired.spec_key) {
        desired.build_id = plan::build_id(&prev).unwrap_or_default().to_string();
    }
    let (builders, source, follow) = match observe_object(&ctx, &obj, &desired, &prev).await {
        Ok(Observation::Seen {
            builders,
            source,
            follow,
        }) => (builders, source, follow),
        Ok(Observation::CachesNotReady) => return Ok(Requeue::requeue(Duration::from_secs(1))),
        // a finished builder's image could not be checked: said at once, and retried
        Err(e @ Error::CheckPushed { .. }) => {
            return registry_unreachable(&ctx, &obj, &prev, &e, now).await
        }
        Err(e) => return Err(e),
    };
    let observed = Observed {
        generation: obj.metadata.generation,
        status: &prev,
        builders: &builders,
        source,
        revision: &obj.spec.source.git.revision,
        finished_ttl: ctx.settings.defaults.finished_ttl,
        source_retry: ctx.settings.source_retry,
        source_stall_after: ctx.settings.source_stall_after,
        follow,
    };
    let plan = plan::plan(&desired, &observed, now);
    desired.build_id = plan.build_id.clone();
    let done = execute(&ctx, &obj, &desired, &prev, &plan, now).await?;
    let next_poll = super::follow::interval(&ctx, &desired)
        .and_then(|_| ctx.polls.next_in(&obj.uid().unwrap_or_default()));
    let requeue_after = [plan.requeue_after, done.retry_after, next_poll]
        .into_iter()
        .flatten()
        .min();
    report(&ctx, &obj, &prev, done, &builders, requeue_after).await
}

/// Says in the status that the registry could not be reached to check a finished builder's
/// image, and looks again after [`plan::REGISTRY_RETRY`].
async fn registry_unreachable(
    ctx: &Context,
    obj: &MultiArchImage,
    prev: &MultiArchImageStatus,
    error: &Error,
    now: Timestamp,
) -> Result<Requeue, Error> {
    warn!("the registry cannot be reached: {error}");
    let mut status = prev.clone();
    status.observed_generation = obj.metadata.generation;
    let events = plan::record_registry_unreachable(&mut status, &error.to_string(), now);
    let unreachable = Executed {
        status,
        events,
        retry_after: Some(plan::REGISTRY_RETRY),
    };
    let retry = Some(plan::REGISTRY_RETRY);
    report(ctx, obj, prev, unreachable, &[], retry).await
}

/// The report step: the status (when it changed), the Events, the build metrics, and when to look
/// again.
async fn report(
    ctx: &Context,
    obj: &MultiArchImage,
    prev: &MultiArchImageStatus,
    done: Executed,
    builders: &[BuilderObservation],
    requeue_after: Option<Duration>,
) -> Result<Requeue, Error> {
    let mut done = done;
    plan::settle_history(&mut done.status, Timestamp::now());
    write_status(ctx, obj, prev, &done.status).await?;
    emit(ctx, obj, &done.events).await;
    count_finished_builds(ctx, prev, &done.status, builders);
    reset_backoff(ctx, obj);
    Ok(next_look(&done.status, requeue_after))
}

/// When to look again: at the plan's next deadline, and at least every [`IN_PROGRESS_RESYNC`]
/// while in progress; otherwise on the next change.
fn next_look(status: &MultiArchImageStatus, requeue_after: Option<Duration>) -> Requeue {
    let in_progress = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Reconciling" && c.status == "True");
    match requeue_after {
        Some(d) if in_progress => Requeue::requeue(d.min(IN_PROGRESS_RESYNC)),
        Some(d) => Requeue::requeue(d),
        None if in_progress => Requeue::requeue(IN_PROGRESS_RESYNC),
        None => Requeue::await_change(),
    }
}

/// Counts the platforms whose build ended in this reconcile (a phase change to `Built` or
/// `Failed` of the same build), with the successful builder's duration.
fn count_finished_builds(
    ctx: &Context,
    prev: &MultiArchImageStatus,
    status: &MultiArchImageStatus,
    builders: &[BuilderObservation],
) {
    let same_build = plan::build_id(prev) == plan::build_id(status);
    for p in &status.platforms {
        let before = prev
            .platforms
            .iter()
            .find(|q| q.platform == p.platform)
            .map(|q| q.phase)
            .filter(|_| same_build);
        if before == Some(p.phase) {
            continue;
        }
        match p.phase {
            PlatformPhase::Built => {
                let duration = builders
                    .iter()
                    .find(|b| Some(&b.name) == p.builder.as_ref())
                    .and_then(|b| Some(b.finished_at?.duration_since(b.created)))
                    .and_then(|d| d.try_into().ok());
                ctx.metrics
                    .build_finished(&p.platform, "succeeded", duration);
            }
            PlatformPhase::Failed => {
                let reason = p.reason.map_or("BuildFailed", |r| r.as_str());
                ctx.metrics.build_finished(&p.platform, reason, None);
            }
            _ => {}
        }
    }
}

/// Server-side applies the status when it changed.
pub(super) async fn write_status(
    ctx: &Context,
    obj: &MultiArchImage,
    prev: &MultiArchImageStatus,
    status: &MultiArchImageStatus,
) -> Result<(), Error> {
    if prev == status {
        return Ok(());
    }
    let api: Api<MultiArchImage> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "multiarch.dev/v1alpha1",
        "kind": "MultiArchImage",
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::PatchStatus { source })?;
    ctx.written
        .record(&obj.uid().unwrap_or_default(), prev, status);
    Ok(())
}

/// Records the planned Events on the object; a failure to record one is logged, not retried.
async fn emit(ctx: &Context, obj: &MultiArchImage, events: &[PlannedEvent]) {
    let reference = obj.object_ref(&());
    for e in events {
        let event = Event {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.as_str().to_string(),
            note: Some(plan::truncate_tail(&e.note, 1000)),
            action: e.action.into(),
            secondary: e.builder.as_ref().map(|name| ObjectReference {
                api_version: Some("batch/v1".into()),
                kind: Some("Job".into()),
                name: Some(name.clone()),
                namespace: obj.namespace(),
                ..Default::default()
            }),
        };
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            warn!("cannot record event: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Phase, Reason};
    use crate::plan::{Conditions, Verdict};

    fn status(phase: Phase) -> MultiArchImageStatus {
        let prev = MultiArchImageStatus::default();
        let mut status = prev.clone();
        let now = jiff::Timestamp::UNIX_EPOCH;
        let verdict = Verdict::new(phase, Reason::Building, "m");
        Conditions::new(&prev, now, Some(1)).apply(&mut status, &verdict);
        status
    }

    #[test]
    fn objects_in_progress_are_looked_at_again_at_least_every_resync() {
        let building = status(Phase::Building);
        let soon = Duration::from_secs(30);
        let late = Duration::from_secs(3600);
        assert_eq!(next_look(&building, Some(soon)), Requeue::requeue(soon));
        assert_eq!(
            next_look(&building, Some(late)),
            Requeue::requeue(IN_PROGRESS_RESYNC)
        );
        assert_eq!(
            next_look(&building, None),
            Requeue::requeue(IN_PROGRESS_RESYNC)
        );
        let done = status(Phase::Succeeded);
        assert_eq!(next_look(&done, Some(late)), Requeue::requeue(late));
        assert_eq!(next_look(&done, None), Requeue::await_change());
    }
}
