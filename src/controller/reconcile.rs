//! One reconcile of one `MultiArchImage`: dereference (builders from the stores, the source,
//! registry checks), validate, plan, act (create/stop/delete builders, publish), then patch the
//! status if it changed and record Events for transitions.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, instrument, warn};

use super::observe::{observe, reported_digest, stopped_annotation, termination_message};
use super::publishing;
use super::{reset_backoff, Context, Error, FIELD_MANAGER};
use crate::api::{MultiArchImage, MultiArchImageStatus, PlatformPhase};
use crate::builder::{
    render_job, BuilderInput, ANNOTATION_STOPPED, LABEL_BUILD, LABEL_IMAGE, LABEL_PLATFORM,
};
use crate::git::{self, GitCredentials, GitError};
use crate::plan::{
    self, invalid_spec_status, needs_source, record_publish, record_rejected_builder, Action,
    BuilderObservation, Observed, PlannedEvent, SourceResolution,
};
use crate::validate::{validate, DesiredBuild};

/// How often an object in progress is looked at even when nothing changes.
const IN_PROGRESS_RESYNC: Duration = Duration::from_secs(300);

#[instrument(skip_all, fields(namespace = obj.metadata.namespace.as_deref().unwrap_or_default(), object = obj.metadata.name.as_deref().unwrap_or_default(), generation = obj.metadata.generation.unwrap_or_default()))]
pub async fn reconcile(obj: Arc<MultiArchImage>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let _in_flight = ctx
        .metrics
        .reconcile_started(&ObjectRef::from(obj.as_ref()));
    let ns = obj
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingMetadata)?;
    let name = obj.metadata.name.clone().ok_or(Error::MissingMetadata)?;
    if obj.metadata.deletion_timestamp.is_some() {
        // builders are owned by the object: the garbage collector stops them; the registry is
        // never touched
        return Ok(Requeue::await_change());
    }
    let now = Timestamp::now();
    let prev = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;

    let desired = match validate(&obj, &ctx.settings.defaults) {
        Ok(d) => d,
        Err(invalid) => {
            let status = invalid_spec_status(&prev, &invalid.0, generation, now);
            let events = plan::events_between(&prev, &status);
            write_status(&ctx, &obj, &prev, &status).await?;
            emit(&ctx, &obj, &events).await;
            reset_backoff(&ctx, &obj);
            return Ok(Requeue::await_change());
        }
    };

    // decide only on complete caches: an empty store right after a restart is not "no builders"
    // (checked without waiting: blocking here would hold a reconcile slot the stores need)
    if !super::ready_now(&ctx.jobs) || !super::ready_now(&ctx.pods) {
        return Ok(Requeue::requeue(Duration::from_secs(1)));
    }
    let uid = obj.metadata.uid.clone().ok_or(Error::MissingMetadata)?;
    let (jobs, pods) = builders_of(&ctx, &ns, &name, &uid);
    let builders = observe_builders(&ctx, &obj, &desired, &prev, &jobs, &pods).await?;

    let source = if needs_source(&desired, &prev, &builders) {
        Some(resolve_source(&ctx, &obj).await?)
    } else {
        None
    };

    let plan = plan::plan(
        &desired,
        &Observed {
            generation,
            status: &prev,
            builders: &builders,
            source,
            revision: &obj.spec.source.git.revision,
            finished_ttl: ctx.settings.defaults.finished_ttl,
            source_retry: ctx.settings.source_retry,
        },
        now,
    );
    let mut status = plan.status;
    let mut events = plan.events;
    let mut created = false;
    for action in &plan.actions {
        match action {
            Action::CreateBuilder {
                platform,
                attempt,
                commit,
            } => {
                let job = render_job(&BuilderInput {
                    object: &obj,
                    desired: &desired,
                    platform,
                    commit,
                    attempt: *attempt,
                    defaults: &ctx.settings.defaults,
                });
                if let Err(rejection) = create_builder(&ctx, &ns, &job).await? {
                    warn!(platform = %platform, "builder rejected: {rejection}");
                    events.extend(record_rejected_builder(
                        &mut status,
                        platform,
                        &rejection,
                        now,
                    ));
                } else if let Some(p) = status
                    .platforms
                    .iter_mut()
                    .find(|p| p.platform == platform.to_string())
                {
                    created = true;
                    p.builder = job.metadata.name.clone();
                }
            }
            Action::StopBuilder {
                name: job,
                reason,
                message,
            } => {
                let patch = serde_json::json!({
                    "metadata": {"annotations": {ANNOTATION_STOPPED: stopped_annotation(*reason, message)}},
                    "spec": {"suspend": true},
                });
                Api::<Job>::namespaced(ctx.client.clone(), &ns)
                    .patch(job, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                info!(
                    builder = job,
                    reason = reason.as_str(),
                    "stopped builder: {message}"
                );
            }
            Action::DeleteBuilder { name: job } => {
                let dp = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..Default::default()
                };
                match Api::<Job>::namespaced(ctx.client.clone(), &ns)
                    .delete(job, &dp)
                    .await
                {
                    Ok(_) => info!(builder = job, "deleted builder"),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Action::Publish => {
                // the status says Publishing before anything is written to the registry
                write_status(&ctx, &obj, &prev, &status).await?;
                let started = std::time::Instant::now();
                let outcome = publishing::publish(&ctx, &obj, &desired, &status).await?;
                crate::failpoint::hit(crate::failpoint::AFTER_INDEX_PUSHED);
                ctx.metrics.published(
                    match &outcome {
                        plan::PublishOutcome::Published { .. } => "published",
                        plan::PublishOutcome::PlatformMismatch(_) => {
                            crate::api::Reason::PlatformMismatch.as_str()
                        }
                        plan::PublishOutcome::Refused(_) => {
                            crate::api::Reason::PublishFailed.as_str()
                        }
                    },
                    started.elapsed(),
                );
                events.extend(record_publish(
                    &mut status,
                    &desired,
                    &outcome,
                    Timestamp::now(),
                ));
            }
        }
    }

    if created {
        crate::failpoint::hit(crate::failpoint::AFTER_BUILDERS_CREATED);
    }
    write_status(&ctx, &obj, &prev, &status).await?;
    emit(&ctx, &obj, &events).await;
    count_finished_builds(&ctx, &prev, &status, &builders);
    reset_backoff(&ctx, &obj);
    let in_progress = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Reconciling" && c.status == "True");
    Ok(match plan.requeue_after {
        Some(d) => Requeue::requeue(if in_progress {
            d.min(IN_PROGRESS_RESYNC)
        } else {
            d
        }),
        None if in_progress => Requeue::requeue(IN_PROGRESS_RESYNC),
        None => Requeue::await_change(),
    })
}

/// Counts the platforms whose build ended in this reconcile (a phase change to `Built` or
/// `Failed` of the same build), with the successful builder's duration.
fn count_finished_builds(
    ctx: &Context,
    prev: &MultiArchImageStatus,
    status: &MultiArchImageStatus,
    builders: &[BuilderObservation],
) {
    let same_build = prev.build.as_ref().map(|b| &b.id) == status.build.as_ref().map(|b| &b.id);
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

/// The builder Jobs and Pods of one object, from the reflector stores: Jobs whose owner
/// reference carries the object's uid (a Job left by an earlier object of the same name is not
/// adopted), and the Pods of those Jobs.
fn builders_of(ctx: &Context, ns: &str, name: &str, uid: &str) -> (Vec<Job>, Vec<Pod>) {
    let selector = crate::builder::object_selector(name);
    let wanted = selector.get(LABEL_IMAGE).cloned().unwrap_or_default();
    let labelled = |meta: &kube::api::ObjectMeta| {
        meta.namespace.as_deref() == Some(ns)
            && meta.labels.as_ref().and_then(|l| l.get(LABEL_IMAGE)) == Some(&wanted)
    };
    let jobs: Vec<Job> = ctx
        .jobs
        .state()
        .iter()
        .filter(|j| labelled(&j.metadata) && owned_by(&j.metadata, uid))
        .map(|j| (**j).clone())
        .collect();
    let job_uids: Vec<&str> = jobs
        .iter()
        .filter_map(|j| j.metadata.uid.as_deref())
        .collect();
    let pods = ctx
        .pods
        .state()
        .iter()
        .filter(|p| labelled(&p.metadata) && job_uids.iter().any(|job| owned_by(&p.metadata, job)))
        .map(|p| (**p).clone())
        .collect();
    (jobs, pods)
}

/// Whether an owner reference of `meta` carries `uid`.
fn owned_by(meta: &kube::api::ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.uid == uid))
}

/// Observes every builder; a builder of the current build that completed has its reported digest
/// checked in the registry (once: a platform already `Built` with that digest is not checked
/// again).
async fn observe_builders(
    ctx: &Context,
    obj: &MultiArchImage,
    desired: &DesiredBuild,
    prev: &MultiArchImageStatus,
    jobs: &[Job],
    pods: &[Pod],
) -> Result<Vec<BuilderObservation>, Error> {
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        let completed = job
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter().any(|c| {
                    matches!(c.type_.as_str(), "Complete" | "SuccessCriteriaMet")
                        && c.status == "True"
                })
            });
        let current = job.labels().get(LABEL_BUILD) == Some(&desired.build_id);
        // a platform recorded Built by this very builder keeps its verified digest
        let recorded = prev
            .platforms
            .iter()
            .find(|p| {
                p.phase == PlatformPhase::Built
                    && p.builder.as_deref() == job.metadata.name.as_deref()
            })
            .and_then(|p| p.digest.clone())
            .filter(|_| {
                prev.build
                    .as_ref()
                    .is_some_and(|b| b.id == desired.build_id)
            });
        let check = if let (true, Some(digest)) = (completed && current, recorded) {
            Some(Ok(digest))
        } else if completed && current {
            let reported = termination_message(job, pods)
                .as_deref()
                .and_then(reported_digest);
            match reported {
                None => None,
                Some(digest) => {
                    let platform = job
                        .labels()
                        .get(LABEL_PLATFORM)
                        .cloned()
                        .unwrap_or_default();
                    let known = prev
                        .build
                        .as_ref()
                        .is_some_and(|b| b.id == desired.build_id)
                        && prev.platforms.iter().any(|p| {
                            p.phase == PlatformPhase::Built
                                && p.digest.as_deref() == Some(digest.as_str())
                                && p.platform
                                    .parse()
                                    .map(|q| crate::builder::platform_label(&q))
                                    == Ok(platform.clone())
                        });
                    if known {
                        Some(Ok(digest))
                    } else {
                        Some(publishing::verify_pushed(ctx, obj, desired, &digest).await?)
                    }
                }
            }
        } else {
            None
        };
        if let Some(o) = observe(job, pods, check) {
            out.push(o);
        }
    }
    Ok(out)
}

/// Resolves the revision; a network failure is an error (retried with backoff), a missing
/// revision or denied access becomes `SourceUnavailable`.
async fn resolve_source(ctx: &Context, obj: &MultiArchImage) -> Result<SourceResolution, Error> {
    let git = &obj.spec.source.git;
    let credentials = match &git.secret_ref {
        None => None,
        Some(r) => {
            let ns = obj.namespace().unwrap_or_default();
            match Api::<Secret>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&r.name)
                .await?
            {
                None => {
                    return Ok(SourceResolution::Unavailable(format!(
                        "source.git.secretRef: Secret {ns}/{} not found",
                        r.name
                    )))
                }
                Some(secret) => Some(git_credentials(&secret)),
            }
        }
    };
    match git::resolve(&git.url, &git.revision, credentials.as_ref()).await {
        Ok(commit) => {
            info!(revision = git.revision, commit, "resolved source");
            Ok(SourceResolution::Resolved(commit))
        }
        Err(GitError::Unavailable(msg)) => Ok(SourceResolution::Unavailable(msg)),
        Err(e @ GitError::Transient(_)) => Err(Error::Source(e.to_string())),
    }
}

fn git_credentials(secret: &Secret) -> GitCredentials {
    let get = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
    };
    match get("token") {
        Some(token) => GitCredentials {
            username: get("username").unwrap_or_else(|| "x-access-token".into()),
            password: token,
        },
        None => GitCredentials {
            username: get("username").unwrap_or_default(),
            password: get("password").unwrap_or_default(),
        },
    }
}

/// Creates a builder Job. First its pod is created with `dryRun`, so that Pod Security
/// admission (or any policy) that would refuse the Job's pods answers now, with its message,
/// instead of leaving the Job without pods. Returns `Ok(Err(message))` for a rejection.
async fn create_builder(ctx: &Context, ns: &str, job: &Job) -> Result<Result<(), String>, Error> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), ns);
    if let Some(existing) = jobs.get_opt(&name).await? {
        return adopt(job, &existing).map(Ok);
    }
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(format!(
                "{}-admission",
                name.chars().take(53).collect::<String>()
            )),
            namespace: Some(ns.to_string()),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.clone()),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    };
    let dry = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    match Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .create(&dry, &pod)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e))
            if (e.code == 403 && !e.message.contains("cannot create resource"))
                || e.code == 422
                || e.code == 400 =>
        {
            return Ok(Err(e.message));
        }
        Err(e) => return Err(e.into()),
    }
    let pp = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    match jobs.create(&pp, job).await {
        Ok(_) => {
            let platform = job
                .annotations()
                .get(crate::builder::ANNOTATION_PLATFORM)
                .map(String::as_str)
                .unwrap_or_default();
            info!(platform, builder = name, "created builder");
            Ok(Ok(()))
        }
        Err(kube::Error::Api(e)) if e.code == 409 => match jobs.get_opt(&name).await? {
            Some(existing) => adopt(job, &existing).map(Ok),
            None => Err(Error::BuilderNameTaken(name)),
        },
        Err(kube::Error::Api(e))
            if (e.code == 403 && !e.message.contains("cannot create resource"))
                || e.code == 422 =>
        {
            Ok(Err(e.message))
        }
        Err(e) => Err(e.into()),
    }
}

/// An existing Job of a builder's name is this builder only when its owner reference carries
/// the same object uid as the Job we would create; otherwise the name is taken.
fn adopt(wanted: &Job, existing: &Job) -> Result<(), Error> {
    let owner = wanted
        .metadata
        .owner_references
        .as_ref()
        .and_then(|refs| refs.first())
        .map(|r| r.uid.as_str())
        .unwrap_or_default();
    if !owner.is_empty() && owned_by(&existing.metadata, owner) {
        Ok(())
    } else {
        Err(Error::BuilderNameTaken(
            existing.metadata.name.clone().unwrap_or_default(),
        ))
    }
}

/// Server-side applies the status when it changed.
async fn write_status(
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
    .await?;
    Ok(())
}

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
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            warn!("cannot record event: {err}");
        }
    }
}
