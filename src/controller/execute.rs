//! The execute step of a reconcile: one function per planned action (create, stop or delete a
//! builder Job; publish), each folding what it learned into the status to report.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::gather::owned_by;
use super::observe::stopped_annotation;
use super::reconcile::write_status;
use super::{publishing, Context, Error, FIELD_MANAGER};
use crate::api::{MultiArchImage, MultiArchImageStatus, Reason};
use crate::builder::{render_job, BuilderInput, ANNOTATION_PLATFORM, ANNOTATION_STOPPED};
use crate::plan::{
    events_between, record_publish, record_quota_wait, record_registry_unreachable,
    record_rejected_builder, Action, Plan, PlannedEvent, QUOTA_RETRY, REGISTRY_RETRY,
};
use crate::platform::Platform;
use crate::validate::DesiredBuild;

/// What creating a builder came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Admission {
    /// Created now.
    Admitted,
    /// This builder existed already (created by an earlier reconcile).
    AlreadyExists,
    /// Refused by admission (Pod Security, a policy, validation), with the apiserver's message:
    /// the builder cannot be created as rendered.
    Rejected(String),
    /// A Job of the builder's name belongs to another object: try again once it is gone.
    RetryLater { name: String },
    /// The namespace's ResourceQuota has no room for the builder now, with its message: try
    /// again once quota frees up.
    WaitingForQuota(String),
}

/// Why the apiserver refused to create an object.
enum Refusal {
    AlreadyExists,
    /// A ResourceQuota of the namespace is used up (for now).
    Quota(String),
    /// Admission or validation refused it, with the apiserver's message.
    Rejected(String),
}

/// Classifies a failed create: a conflict, a used-up ResourceQuota (a 403 saying "exceeded
/// quota", which passes when other pods finish), or a refusal by admission or validation (any
/// other 403 that is not RBAC's "cannot create resource", or a 422). `None` for anything else.
fn refusal(e: &kube::Error) -> Option<Refusal> {
    match e {
        kube::Error::Api(s) if s.code == 409 => Some(Refusal::AlreadyExists),
        kube::Error::Api(s) if s.code == 403 && s.message.contains("exceeded quota") => {
            Some(Refusal::Quota(s.message.clone()))
        }
        kube::Error::Api(s)
            if (s.code == 403 && !s.message.contains("cannot create resource"))
                || s.code == 422 =>
        {
            Some(Refusal::Rejected(s.message.clone()))
        }
        _ => None,
    }
}

/// The status and Events after acting on a plan.
pub(super) struct Executed {
    pub status: MultiArchImageStatus,
    pub events: Vec<PlannedEvent>,
    /// When to try again because of what acting found (a quota without room).
    pub retry_after: Option<Duration>,
}

/// Acts on every planned action in order.
pub(super) async fn execute(
    ctx: &Context,
    obj: &MultiArchImage,
    desired: &DesiredBuild,
    prev: &MultiArchImageStatus,
    plan: &Plan,
    now: Timestamp,
) -> Result<Executed, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let mut done = Executed {
        status: plan.status.clone(),
        events: plan.events.clone(),
        retry_after: None,
    };
    let mut created = false;
    let mut admitted = Vec::new();
    for action in &plan.actions {
        match action {
            Action::CreateBuilder {
                platform,
                attempt,
                commit,
            } => {
                let job = render_job(&BuilderInput {
                    object: obj,
                    desired,
                    platform,
                    commit,
                    attempt: *attempt,
                    defaults: &ctx.settings.defaults,
                });
                let admission = create_builder(ctx, &ns, &job, &mut admitted).await?;
                created |= record_admission(&mut done, prev, platform, &job, admission, now)?;
            }
            Action::StopBuilder {
                name,
                reason,
                message,
            } => stop_builder(ctx, &ns, name, *reason, message).await?,
            Action::DeleteBuilder { name } => delete_builder(ctx, &ns, name).await?,
            Action::Publish => publish(ctx, obj, desired, prev, &mut done).await?,
        }
    }
    if created {
        crate::failpoint::hit(crate::failpoint::AFTER_BUILDERS_CREATED);
    }
    Ok(done)
}

/// Records a builder's admission in the status; true when the builder exists now.
fn record_admission(
    done: &mut Executed,
    prev: &MultiArchImageStatus,
    platform: &Platform,
    job: &Job,
    admission: Admission,
    now: Timestamp,
) -> Result<bool, Error> {
    match admission {
        Admission::Admitted | Admission::AlreadyExists => {
            let recorded = done
                .status
                .platforms
                .iter_mut()
                .find(|p| p.platform == platform.to_string());
            Ok(recorded
                .map(|p| p.builder = job.metadata.name.clone())
                .is_some())
        }
        Admission::Rejected(message) => {
            warn!(platform = %platform, "builder rejected: {message}");
            let events = record_rejected_builder(&mut done.status, platform, &message, now);
            done.events.extend(events);
            Ok(false)
        }
        Admission::WaitingForQuota(message) => {
            info!(platform = %platform, "builder waits for quota: {message}");
            record_quota_wait(&mut done.status, platform, &message, now);
            // told once: the Events are those between the status this reconcile read (which
            // may already wait for quota) and the one it writes
            done.events = events_between(prev, &done.status);
            done.retry_after = Some(QUOTA_RETRY);
            Ok(false)
        }
        // the name frees up when the garbage collector removes the other object's Job
        Admission::RetryLater { name } => Err(Error::BuilderNameTaken(name)),
    }
}

/// Creates a builder Job: two writes, the Job itself and, before it, a `dryRun` create of its pod,
/// so that Pod Security admission (or any policy, or the quota) that would refuse the Job's pods
/// answers now, with its message, instead of leaving a Job without pods. The dry run is skipped
/// when a builder of this reconcile with the same [`admission_key`] was just admitted.
async fn create_builder(
    ctx: &Context,
    ns: &str,
    job: &Job,
    admitted: &mut Vec<serde_json::Value>,
) -> Result<Admission, Error> {
    let name = job.name_any();
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), ns);
    if let Some(existing) = get_job(&jobs, &name).await? {
        return Ok(adopt(job, &existing));
    }
    let key = admission_key(job);
    if !admitted.contains(&key) {
        if let Some(refused) = dry_run_pod(ctx, ns, job).await? {
            return Ok(refused);
        }
        admitted.push(key);
    }
    let pp = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    let source = match jobs.create(&pp, job).await {
        Ok(_) => {
            let platform = job.annotations().get(ANNOTATION_PLATFORM);
            let platform = platform.map(String::as_str).unwrap_or_default();
            info!(platform, builder = name, "created builder");
            return Ok(Admission::Admitted);
        }
        Err(source) => source,
    };
    match refusal(&source) {
        Some(Refusal::AlreadyExists) => match get_job(&jobs, &name).await? {
            Some(existing) => Ok(adopt(job, &existing)),
            None => Ok(Admission::RetryLater { name }),
        },
        Some(Refusal::Rejected(message)) => Ok(Admission::Rejected(message)),
        Some(Refusal::Quota(message)) => Ok(Admission::WaitingForQuota(message)),
        None => Err(Error::CreateJob { name, source }),
    }
}

/// What admission sees of a builder's pod, less what differs between the platforms of one build:
/// its pod template without labels and annotations (the platform, the attempt), without the
/// builder's arguments (the platform, its cache) and without the platform's own
/// `kubernetes.io/arch` and `kubernetes.io/os` selector. Builders whose keys are equal get the
/// same answer from Pod Security admission and from policies on their security context,
/// resources, tolerations, volumes and account, so one dry run answers for all of them; a
/// platform override (resources, tolerations, node selector) makes its key differ.
fn admission_key(job: &Job) -> serde_json::Value {
    let template = job.spec.as_ref().map(|s| s.template.clone());
    let mut key = serde_json::to_value(template.and_then(|t| t.spec)).unwrap_or_default();
    if let Some(selector) = key.get_mut("nodeSelector").and_then(|s| s.as_object_mut()) {
        selector.remove("kubernetes.io/arch");
        selector.remove("kubernetes.io/os");
    }
    let containers = key.get_mut("containers").and_then(|c| c.as_array_mut());
    for container in containers.into_iter().flatten() {
        if let Some(container) = container.as_object_mut() {
            container.remove("args");
        }
    }
    key
}

async fn get_job(jobs: &Api<Job>, name: &str) -> Result<Option<Job>, Error> {
    jobs.get_opt(name).await.map_err(|source| Error::GetJob {
        name: name.to_string(),
        source,
    })
}

/// Asks admission (and the namespace's quota) about the builder's pod with a dry-run create;
/// `Some` when refused, for now or for good.
pub(super) async fn dry_run_pod(
    ctx: &Context,
    ns: &str,
    job: &Job,
) -> Result<Option<Admission>, Error> {
    let name = job.name_any();
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(format!(
                "{}-admission",
                name.chars().take(53).collect::<String>()
            )),
            namespace: Some(ns.to_string()),
            labels: meta.labels,
            annotations: meta.annotations,
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    };
    let dry = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    let Err(source) = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .create(&dry, &pod)
        .await
    else {
        return Ok(None);
    };
    match (refusal(&source), &source) {
        (Some(Refusal::Rejected(message)), _) => Ok(Some(Admission::Rejected(message))),
        (Some(Refusal::Quota(message)), _) => Ok(Some(Admission::WaitingForQuota(message))),
        // a pod the apiserver cannot take as sent is refused too
        (_, kube::Error::Api(s)) if s.code == 400 => {
            Ok(Some(Admission::Rejected(s.message.clone())))
        }
        _ => Err(Error::DryRunPod { name, source }),
    }
}

/// An existing Job of a builder's name is this builder only when its owner reference carries
/// the same object uid as the Job we would create; otherwise the name is taken.
fn adopt(wanted: &Job, existing: &Job) -> Admission {
    let owner = wanted
        .metadata
        .owner_references
        .as_ref()
        .and_then(|refs| refs.first())
        .map(|r| r.uid.as_str())
        .unwrap_or_default();
    if !owner.is_empty() && owned_by(&existing.metadata, owner) {
        Admission::AlreadyExists
    } else {
        Admission::RetryLater {
            name: existing.name_any(),
        }
    }
}

/// Suspends a builder Job and records on it why it was stopped.
async fn stop_builder(
    ctx: &Context,
    ns: &str,
    name: &str,
    reason: Reason,
    message: &str,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "metadata": {"annotations": {ANNOTATION_STOPPED: stopped_annotation(reason, message)}},
        "spec": {"suspend": true},
    });
    Api::<Job>::namespaced(ctx.client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::StopJob {
            name: name.to_string(),
            source,
        })?;
    info!(
        builder = name,
        reason = reason.as_str(),
        "stopped builder: {message}"
    );
    Ok(())
}

/// Deletes a builder Job (and its pods); one already gone is fine.
async fn delete_builder(ctx: &Context, ns: &str, name: &str) -> Result<(), Error> {
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    match Api::<Job>::namespaced(ctx.client.clone(), ns)
        .delete(name, &dp)
        .await
    {
        Ok(_) => info!(builder = name, "deleted builder"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(source) => {
            let name = name.to_string();
            return Err(Error::DeleteJob { name, source });
        }
    }
    Ok(())
}

/// How long publishing may take before the status says `Publishing`. A publish is a few
/// registry requests (2N+T); one that ends sooner goes straight from `Building` to its outcome
/// in one status write, and a slow one (a registry that hangs) is said while it lasts.
const PUBLISHING_SHOWN_AFTER: Duration = Duration::from_secs(1);

/// Publishes the index. The status says `Publishing` once publishing has taken
/// [`PUBLISHING_SHOWN_AFTER`]; a restart in between publishes again (the index is deterministic,
/// so the same digest), so that write is for users, not for recovery.
async fn publish(
    ctx: &Context,
    obj: &MultiArchImage,
    desired: &DesiredBuild,
    prev: &MultiArchImageStatus,
    done: &mut Executed,
) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let result = {
        let status = &done.status;
        let publishing = async {
            crate::failpoint::pause(crate::failpoint::PAUSE_BEFORE_PUBLISH).await;
            publishing::publish(ctx, obj, desired, status).await
        };
        tokio::pin!(publishing);
        tokio::select! {
            result = &mut publishing => result,
            () = tokio::time::sleep(PUBLISHING_SHOWN_AFTER) => {
                write_status(ctx, obj, prev, status).await?;
                publishing.await
            }
        }
    };
    let outcome = match result {
        Ok(outcome) => outcome,
        // said in the status at once, and retried; not an error of the reconcile
        Err(
            e @ (Error::VerifyImages { .. } | Error::TagImage { .. } | Error::PushIndex { .. }),
        ) => {
            warn!("the registry cannot be reached: {e}");
            let now = Timestamp::now();
            let events = record_registry_unreachable(&mut done.status, &e.to_string(), now);
            done.events.extend(events);
            done.retry_after = Some(REGISTRY_RETRY);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    crate::failpoint::hit(crate::failpoint::AFTER_INDEX_PUSHED);
    ctx.metrics.published(outcome.result(), started.elapsed());
    let events = record_publish(&mut done.status, desired, &outcome, Timestamp::now());
    done.events.extend(events);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, "r")
                .with_code(code)
                .boxed(),
        )
    }

    fn job(name: &str, owner_uid: Option<&str>) -> Job {
        let owners = owner_uid.map(|uid| {
            serde_json::json!([{"apiVersion": "multiarch.dev/v1alpha1", "kind": "MultiArchImage", "name": "o", "uid": uid}])
        });
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "ownerReferences": owners},
        }))
        .unwrap()
    }

    #[test]
    fn admission_refusals_are_told_apart_from_rbac_and_outages() {
        let rejected = |e: &kube::Error| match refusal(e) {
            Some(Refusal::Rejected(m)) => Some(m),
            _ => None,
        };
        let pss = "pods \"b\" is forbidden: violates PodSecurity \"baseline:latest\"";
        assert_eq!(rejected(&api(403, pss)).as_deref(), Some(pss));
        assert!(rejected(&api(422, "invalid")).is_some());
        let rbac = "jobs.batch is forbidden: User \"x\" cannot create resource \"jobs\"";
        assert!(refusal(&api(403, rbac)).is_none());
        assert!(refusal(&api(500, "etcd")).is_none());
        assert!(matches!(
            refusal(&api(409, "exists")),
            Some(Refusal::AlreadyExists)
        ));
        let quota = "pods \"b\" is forbidden: exceeded quota: builders, requested: pods=1, \
                     used: pods=1, limited: pods=1";
        assert!(matches!(refusal(&api(403, quota)), Some(Refusal::Quota(m)) if m == quota));
        // a quota that needs limits the pod lacks is not waited for
        let limits = "pods \"b\" is forbidden: failed quota: q: must specify limits.cpu";
        assert!(rejected(&api(403, limits)).is_some());
    }

    fn rendered(spec: serde_json::Value, platform: &str) -> Job {
        let obj = crate::validate::tests::object(spec);
        let mut defaults = crate::config::BuilderDefaults::default();
        defaults.guardrails.allow_tolerations = true;
        let desired = crate::validate::validate(&obj, &defaults).unwrap();
        render_job(&BuilderInput {
            object: &obj,
            desired: &desired,
            platform: &platform.parse().unwrap(),
            commit: "4f1a528c0ffee0000000000000000000000000ab",
            attempt: 1,
            defaults: &defaults,
        })
    }

    #[test]
    fn one_dry_run_answers_for_the_platforms_whose_pods_differ_only_by_platform() {
        let plain = serde_json::json!({});
        let amd64 = rendered(plain.clone(), "linux/amd64");
        let arm64 = rendered(plain.clone(), "linux/arm64");
        assert_ne!(amd64, arm64);
        assert_eq!(admission_key(&amd64), admission_key(&arm64));
        // what admission judges besides the platform keeps keys apart: an override's resources,
        // tolerations or node selector
        for value in [
            serde_json::json!({"resources": {"requests": {"cpu": "8"}}}),
            serde_json::json!({"tolerations": [{"key": "arm", "operator": "Exists"}]}),
            serde_json::json!({"nodeSelector": {"karpenter.sh/capacity-type": "on-demand"}}),
        ] {
            let mut override_ = value.as_object().unwrap().clone();
            override_.insert("platform".into(), "linux/arm64".into());
            let spec = serde_json::json!({"platformOverrides": [override_]});
            let arm64 = rendered(spec.clone(), "linux/arm64");
            assert_ne!(admission_key(&amd64), admission_key(&arm64), "{value}");
            let amd64_too = rendered(spec, "linux/amd64");
            assert_eq!(admission_key(&amd64), admission_key(&amd64_too), "{value}");
        }
    }

    #[test]
    fn an_existing_job_is_adopted_only_with_the_same_owner() {
        let wanted = job("b-1", Some("uid-1"));
        assert_eq!(
            adopt(&wanted, &job("b-1", Some("uid-1"))),
            Admission::AlreadyExists
        );
        assert_eq!(
            adopt(&wanted, &job("b-1", Some("uid-0"))),
            Admission::RetryLater { name: "b-1".into() }
        );
        assert_eq!(
            adopt(&job("b-1", None), &job("b-1", None)),
            Admission::RetryLater { name: "b-1".into() }
        );
    }
}
