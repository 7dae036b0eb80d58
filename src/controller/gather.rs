//! The observe step of a reconcile: what the planner reads, gathered from the reflector stores
//! (the object's builder Jobs and Pods), the registry (is a finished builder's image there) and
//! the git server (the commit of a new build), and, when a poll is due, the inputs a published
//! build follows (`follow`).

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ObjectMeta;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::execute::{dry_run_pod, Admission};
use super::observe::{is_complete, observe, reported_digest, termination_message};
use super::{publishing, Context, Error};
use crate::api::{MultiArchImage, MultiArchImageStatus, PlatformPhase};
use crate::builder::{platform_label, LABEL_BUILD, LABEL_IMAGE, LABEL_PLATFORM};
use crate::git::{self, GitCredentials, GitError};
use crate::plan::{
    needs_source, same_build, BuilderObservation, BuilderState, FollowCheck, PushCheck,
    SourceResolution,
};
use crate::validate::DesiredBuild;

/// What the cluster and the source show for one object.
pub(super) enum Observation {
    /// The builders, and the commit of a new build when one starts.
    Seen {
        builders: Vec<BuilderObservation>,
        source: Option<SourceResolution>,
        /// What a poll of the inputs found, when one was due.
        follow: Option<FollowCheck>,
    },
    /// The stores have not seen their first complete list yet: an empty store right after a
    /// restart is not "no builders".
    CachesNotReady,
}

/// Observes the object's builders (checking a finished builder's image in the registry) and,
/// when a new build starts, resolves its source.
pub(super) async fn observe_object(
    ctx: &Context,
    obj: &MultiArchImage,
    desired: &DesiredBuild,
    prev: &MultiArchImageStatus,
) -> Result<Observation, Error> {
    // checked without waiting: blocking here would hold a reconcile slot the stores need
    if !super::ready_now(&ctx.jobs) || !super::ready_now(&ctx.pods) {
        return Ok(Observation::CachesNotReady);
    }
    let uid = obj.metadata.uid.as_deref().ok_or(Error::MissingMetadata)?;
    let (jobs, pods) = builders_of(ctx, obj, uid);
    let mut builders = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let check = push_check(ctx, obj, desired, prev, job, &pods).await?;
        builders.extend(observe(job, &pods, check));
    }
    super::redact::scrub_failures(ctx, obj, &mut builders).await?;
    quota_waits(ctx, &jobs, &pods, &mut builders).await?;
    let source = if needs_source(desired, prev, &builders) {
        Some(resolve_source(ctx, obj).await?)
    } else {
        None
    };
    let follow = super::follow::poll_if_due(ctx, obj, desired, prev).await?;
    Ok(Observation::Seen {
        builders,
        source,
        follow,
    })
}

/// How long a Job may be without a pod before the operator asks why (the Job controller
/// creates one within milliseconds when it can).
const PODLESS_GRACE: jiff::SignedDuration = jiff::SignedDuration::from_secs(3);

/// Builders the Job controller could not give a pod: when the namespace's ResourceQuota is what
/// refuses it (asked with a dry-run create of the Job's pod), the builder waits for quota, not
/// for a node. This happens when two builders pass the quota check at once before either pod
/// exists; the Job controller retries the pod with its own backoff (at most a minute apart).
async fn quota_waits(
    ctx: &Context,
    jobs: &[Job],
    pods: &[Pod],
    builders: &mut [BuilderObservation],
) -> Result<(), Error> {
    let now = jiff::Timestamp::now();
    for b in builders.iter_mut() {
        let podless = matches!(b.state, BuilderState::WaitingForNode { message: None, .. })
            && now.duration_since(b.created) >= PODLESS_GRACE;
        if !podless {
            continue;
        }
        let Some(job) = jobs.iter().find(|j| j.name_any() == b.name) else {
            continue;
        };
        let uid = job.metadata.uid.as_deref().unwrap_or_default();
        if pods.iter().any(|p| owned_by(&p.metadata, uid)) {
            continue;
        }
        let ns = job.namespace().unwrap_or_default();
        if let Some(Admission::WaitingForQuota(message)) = dry_run_pod(ctx, &ns, job).await? {
            b.state = BuilderState::WaitingForQuota { message };
        }
    }
    Ok(())
}

/// The builder Jobs and Pods of one object, from the reflector stores: Jobs whose owner
/// reference carries the object's uid (a Job left by an earlier object of the same name is not
/// adopted), and the Pods of those Jobs.
fn builders_of(ctx: &Context, obj: &MultiArchImage, uid: &str) -> (Vec<Job>, Vec<Pod>) {
    let ns = obj.namespace();
    let selector = crate::builder::object_selector(&obj.name_any());
    let wanted = selector.get(LABEL_IMAGE).cloned().unwrap_or_default();
    let labelled = |meta: &ObjectMeta| {
        meta.namespace == ns
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
pub(super) fn owned_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.uid == uid))
}

/// For a builder of the current build that completed: whether the registry has the digest it
/// reported. Checked once: a platform already `Built` with that digest is not checked again.
async fn push_check(
    ctx: &Context,
    obj: &MultiArchImage,
    desired: &DesiredBuild,
    prev: &MultiArchImageStatus,
    job: &Job,
    pods: &[Pod],
) -> Result<Option<PushCheck>, Error> {
    if !is_complete(job) || job.labels().get(LABEL_BUILD) != Some(&desired.build_id) {
        return Ok(None);
    }
    let same = same_build(prev, &desired.build_id);
    // a platform recorded Built by this very builder keeps its verified digest
    if let Some(digest) = recorded_digest(prev, job).filter(|_| same) {
        return Ok(Some(PushCheck::Pushed(digest)));
    }
    let Some(digest) = termination_message(job, pods)
        .as_deref()
        .and_then(reported_digest)
    else {
        return Ok(None);
    };
    if same && already_built(prev, job, &digest) {
        return Ok(Some(PushCheck::Pushed(digest)));
    }
    publishing::verify_pushed(ctx, obj, desired, &digest)
        .await
        .map(Some)
}

/// The digest of the platform recorded `Built` by `job`.
fn recorded_digest(prev: &MultiArchImageStatus, job: &Job) -> Option<String> {
    prev.platforms
        .iter()
        .find(|p| {
            p.phase == PlatformPhase::Built && p.builder.as_deref() == job.metadata.name.as_deref()
        })
        .and_then(|p| p.digest.clone())
}

/// True when `job`'s platform is recorded `Built` with `digest`.
fn already_built(prev: &MultiArchImageStatus, job: &Job, digest: &str) -> bool {
    let platform = job
        .labels()
        .get(LABEL_PLATFORM)
        .cloned()
        .unwrap_or_default();
    prev.platforms.iter().any(|p| {
        p.phase == PlatformPhase::Built
            && p.digest.as_deref() == Some(digest)
            && p.platform.parse().map(|q| platform_label(&q)) == Ok(platform.clone())
    })
}

/// Reads a Secret; `None` when it does not exist.
pub(super) async fn get_secret(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Option<Secret>, Error> {
    Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|source| Error::GetSecret {
            name: format!("{ns}/{name}"),
            source,
        })
}

/// Resolves the revision: a missing revision, denied access or a missing Secret is
/// `Unavailable`, a server that cannot be reached `Unreachable` (both said in the status).
pub(super) async fn resolve_source(
    ctx: &Context,
    obj: &MultiArchImage,
) -> Result<SourceResolution, Error> {
    let git = &obj.spec.source.git;
    let credentials = match &git.secret_ref {
        None => None,
        Some(r) => {
            let ns = obj.namespace().unwrap_or_default();
            let Some(secret) = get_secret(ctx, &ns, &r.name).await? else {
                let why = format!("source.git.secretRef: Secret {ns}/{} not found", r.name);
                return Ok(SourceResolution::Unavailable(why));
            };
            Some(git_credentials(&secret))
        }
    };
    match git::resolve(&git.url, &git.revision, credentials.as_ref()).await {
        Ok(commit) => {
            info!(revision = git.revision, commit, "resolved source");
            Ok(SourceResolution::Resolved(commit))
        }
        Err(GitError::Unavailable(msg)) => Ok(SourceResolution::Unavailable(msg)),
        // said in the status at once, and retried; not an error of the reconcile
        Err(GitError::Transient(msg)) => {
            warn!(
                revision = git.revision,
                "the git server cannot be reached: {msg}"
            );
            Ok(SourceResolution::Unreachable(msg))
        }
    }
}

/// Git credentials from a Secret: a `token` (with an optional `username`), or a `username` and
/// `password`.
fn git_credentials(secret: &Secret) -> GitCredentials {
    let get = |k: &str| crate::secrets::value(secret, k);
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A Secret with `data` (values base64).
    pub(in crate::controller) fn secret(data: serde_json::Value) -> Secret {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "git"}, "data": data}))
            .unwrap()
    }

    #[test]
    fn a_git_token_goes_with_the_usual_token_user_unless_one_is_given() {
        // "t0k\n" and "bot"
        let token = git_credentials(&secret(serde_json::json!({"token": "dDBrCg=="})));
        assert_eq!(
            (token.username.as_str(), token.password.as_str()),
            ("x-access-token", "t0k")
        );
        let named = secret(serde_json::json!({"token": "dDBrCg==", "username": "Ym90"}));
        assert_eq!(git_credentials(&named).username, "bot");
        let basic = secret(serde_json::json!({"username": "Ym90", "password": "dDBrCg=="}));
        let basic = git_credentials(&basic);
        assert_eq!(
            (basic.username.as_str(), basic.password.as_str()),
            ("bot", "t0k")
        );
    }

    #[test]
    fn a_digest_is_trusted_again_only_for_the_platform_that_recorded_it() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "app-1a2b3c4d-linux-arm64-1", "labels": {"multiarch.dev/platform": "linux-arm64"}},
        }))
        .unwrap();
        let status: MultiArchImageStatus = serde_json::from_value(serde_json::json!({
            "platforms": [
                {"platform": "linux/amd64", "phase": "Built", "digest": "sha256:aa", "builder": "app-1a2b3c4d-linux-amd64-1", "attempts": 0},
                {"platform": "linux/arm64", "phase": "Built", "digest": "sha256:bb", "builder": "app-1a2b3c4d-linux-arm64-1", "attempts": 0},
            ],
        }))
        .unwrap();
        assert_eq!(recorded_digest(&status, &job).as_deref(), Some("sha256:bb"));
        assert!(already_built(&status, &job, "sha256:bb"));
        assert!(!already_built(&status, &job, "sha256:aa"));
    }
}
