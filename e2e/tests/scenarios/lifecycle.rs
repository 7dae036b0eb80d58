//! The object's life: spec changes, deletion, the operator crashing at fixed points, finished
//! builders cleaned up.

use std::collections::BTreeSet;
use std::time::Duration;

use multiarch_e2e::operator::{self, Options};
use multiarch_e2e::registry::{digest, raw, tags};
use multiarch_e2e::scenario::condition;
use multiarch_e2e::{kstatus, Access, Scenario};
use multiarch_operator::api::{Phase, PlatformPhase};
use serde_json::json;

use crate::faults::{build_id, fault};

fn digest_of(o: &multiarch_operator::api::MultiArchImage) -> Option<String> {
    o.status.as_ref().and_then(|s| s.digest.clone())
}

#[tokio::test]
async fn a_tags_change_republishes_without_builders_and_a_build_arg_change_rebuilds() {
    let s = Scenario::start("spec_change", "e2e-change", Access::Shared).await;
    s.apply(&s.mai("app", &["linux/amd64", "linux/arm64"]))
        .await;
    let o = s.wait_ready("app", 90).await;
    let jobs_before = s.job_names("").await;
    let first_build = build_id(&o);
    let index = digest_of(&o).expect("a published digest");

    s.patch("app", json!({"spec": {"tags": ["1.0.1", "latest"]}}))
        .await;
    let o = s
        .wait("app", "generation 2 Ready", 60, |o| {
            o.status.as_ref().and_then(|st| st.observed_generation) == Some(2)
                && o.status.as_ref().and_then(|st| st.phase) == Some(Phase::Succeeded)
        })
        .await;
    assert_eq!(
        s.job_names("").await,
        jobs_before,
        "builders after a tags-only change"
    );
    assert_eq!(
        build_id(&o),
        first_build,
        "a tags-only change keeps the build"
    );
    assert_eq!(
        digest(&raw(&format!("{}/app:1.0.1", s.ns))),
        index,
        "1.0.1 is the same index"
    );

    s.patch(
        "app",
        json!({"spec": {"buildArgs": [{"name": "VERSION", "value": "2"}]}}),
    )
    .await;
    let o = s
        .wait("app", "generation 3 Ready", 90, |o| {
            o.status.as_ref().and_then(|st| st.observed_generation) == Some(3)
                && o.status.as_ref().and_then(|st| st.phase) == Some(Phase::Succeeded)
        })
        .await;
    let second_build = build_id(&o);
    assert_ne!(
        second_build, first_build,
        "a build-arg change is a new build"
    );
    let new_jobs = s
        .job_names(&format!("multiarch.dev/build={second_build}"))
        .await;
    assert_eq!(new_jobs.len(), 2, "builders of the new build: {new_jobs:?}");
    assert!(
        new_jobs.iter().all(|j| !jobs_before.contains(j)),
        "the new build's builders are new Jobs: {new_jobs:?} vs {jobs_before:?}"
    );
}

#[tokio::test]
async fn deleting_objects_stops_their_builders_and_keeps_the_published_tags() {
    let s = Scenario::start("delete", "e2e-delete", Access::Shared).await;
    s.apply(&s.mai("app", &["linux/amd64", "linux/arm64"]))
        .await;
    s.wait_ready("app", 90).await;
    let mut stuck = s.mai("stuck", &["linux/amd64", "linux/arm64"]);
    stuck.metadata.annotations = Some(fault("linux-arm64", "hang"));
    s.apply(&stuck).await;
    s.wait("stuck", "arm64 Building", 60, |o| {
        o.status
            .as_ref()
            .and_then(|st| st.platforms.get(1))
            .map(|p| p.phase)
            == Some(PlatformPhase::Building)
    })
    .await;
    assert!(
        !s.pods("multiarch.dev/image=stuck").await.is_empty(),
        "a running builder pod"
    );
    for name in ["app", "stuck"] {
        s.mais()
            .delete(name, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("deleting {name}: {e}"));
    }
    s.poll("every builder Job and Pod gone", 60, || async {
        (s.jobs("").await.is_empty() && s.pods("").await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        tags(&format!("{}/app", s.ns)),
        ["1.0.0", "1.0.0-amd64", "1.0.0-arm64", "latest"],
        "tags after deletion"
    );
}

/// Restarts the operator with fail point `point`, applies a two-platform object `name`, and
/// waits for the operator to abort there (as a SIGKILL would stop it).
async fn crash_at(s: &Scenario, point: &'static str, name: &str) {
    let pid = tokio::task::spawn_blocking(move || {
        operator::stop("KILL");
        operator::start(&Options {
            failpoint: Some(point.into()),
            ..Default::default()
        })
    })
    .await
    .expect("starting the operator with a fail point");
    s.apply(&s.mai(name, &["linux/amd64", "linux/arm64"])).await;
    tokio::task::spawn_blocking(move || operator::wait_exit(pid, Duration::from_secs(60)))
        .await
        .expect("waiting for the fail point");
}

/// The operator is killed (`MULTIARCH_FAILPOINT` aborts the process) right after creating
/// builders, with one platform built, and after pushing the index but before writing status.
#[tokio::test]
async fn an_operator_killed_at_any_point_resumes_without_duplicate_builders_or_a_new_index() {
    let s = Scenario::start("operator_restart", "e2e-restart", Access::Exclusive).await;
    let blocking = |f: fn()| tokio::task::spawn_blocking(f);

    // builders just created, status not written
    crash_at(&s, "after-builders-created", "early").await;
    assert_eq!(
        s.job_names("multiarch.dev/image=early").await.len(),
        2,
        "builders before the crash"
    );
    let before = s.get("early").await;
    assert!(
        before
            .status
            .as_ref()
            .is_none_or(|st| st.platforms.is_empty()),
        "no platform status was written before the crash: {:?}",
        before.status
    );
    blocking(operator::ensure_default)
        .await
        .expect("restarting");
    s.wait_ready("early", 90).await;
    assert_eq!(
        s.job_names("multiarch.dev/image=early").await.len(),
        2,
        "builders after the restart"
    );

    // one platform built, the other still building
    let mut middle = s.mai("middle", &["linux/amd64", "linux/arm64"]);
    middle.metadata.annotations = Some(fault("linux-arm64", "hang"));
    s.apply(&middle).await;
    s.wait("middle", "amd64 Built", 60, |o| {
        o.status
            .as_ref()
            .and_then(|st| st.platforms.first())
            .map(|p| p.phase)
            == Some(PlatformPhase::Built)
    })
    .await;
    let jobs_before = s.jobs("multiarch.dev/image=middle").await;
    blocking(|| operator::stop("KILL")).await.expect("killing");
    blocking(operator::ensure_default)
        .await
        .expect("restarting");
    // a tags-only change: the new generation in status proves the restarted operator looked
    s.patch(
        "middle",
        json!({"spec": {"tags": ["1.0.0", "latest", "seen"]}}),
    )
    .await;
    s.wait("middle", "generation 2 observed while Building", 60, |o| {
        o.status.as_ref().and_then(|st| st.observed_generation) == Some(2)
            && o.status.as_ref().and_then(|st| st.phase) == Some(Phase::Building)
    })
    .await;
    let jobs_after = s.jobs("multiarch.dev/image=middle").await;
    let uids = |jobs: &[k8s_openapi::api::batch::v1::Job]| -> BTreeSet<String> {
        jobs.iter().filter_map(|j| j.metadata.uid.clone()).collect()
    };
    assert_eq!(jobs_after.len(), 2, "builders after a restart mid-build");
    assert_eq!(
        uids(&jobs_after),
        uids(&jobs_before),
        "the same builders carry on"
    );

    // the index pushed to every tag, status not written
    crash_at(&s, "after-index-pushed", "late").await;
    let pushed = digest(&raw(&format!("{}/late:latest", s.ns)));
    let publishing = s.get("late").await;
    assert_eq!(
        digest_of(&publishing),
        None,
        "status digest before the restart"
    );
    // the last status written is from before the publishing reconcile (`Publishing` is written
    // only when publishing lasts over a second): in progress, never published
    let st = publishing.status.clone().unwrap_or_default();
    assert!(
        matches!(
            st.phase,
            Some(Phase::Pending | Phase::Building | Phase::Publishing)
        ),
        "the status written before publishing: {:?}",
        st.phase
    );
    kstatus::assert_status(&s.ns, "late", "InProgress");
    blocking(operator::ensure_default)
        .await
        .expect("restarting");
    let o = s.wait_ready("late", 90).await;
    assert_eq!(
        digest_of(&o),
        Some(pushed),
        "the republished index is the same index"
    );
    assert_eq!(
        s.job_names("multiarch.dev/image=late").await.len(),
        2,
        "builders of late"
    );
}

#[tokio::test]
async fn finished_builders_are_deleted_after_their_ttl_except_the_last_failed_one() {
    let s = Scenario::start("cleanup_ttl", "e2e-ttl", Access::Exclusive).await;
    tokio::task::spawn_blocking(|| {
        operator::stop("TERM");
        operator::start(&Options {
            args: vec!["--finished-builder-ttl".into(), "5s".into()],
            ..Default::default()
        });
    })
    .await
    .expect("restarting with a short TTL");
    let mut app = s.mai("app", &["linux/amd64", "linux/arm64"]);
    app.spec.retries = 1;
    app.metadata.annotations = Some(fault("linux-amd64", "fail-once"));
    s.apply(&app).await;
    let o = s.wait_ready("app", 90).await;
    let build = build_id(&o);
    // three Jobs: amd64 attempts 1 (failed) and 2, arm64 attempt 1
    let kept = s
        .poll("finished builders cleaned up", 60, || async {
            let names = s.job_names("").await;
            (names.len() <= 1).then_some(names)
        })
        .await;
    assert_eq!(
        kept,
        [format!("app-{build}-linux-amd64-1")],
        "the failed builder is kept"
    );
    assert!(
        s.pods("multiarch.dev/platform=linux-arm64")
            .await
            .is_empty(),
        "pods of deleted builders"
    );
    let o = s.get("app").await;
    let status = o.status.expect("a status");
    assert_eq!(
        status.phase,
        Some(Phase::Succeeded),
        "status after the clean-up"
    );
    assert!(
        status.platforms.iter().all(|p| p
            .digest
            .as_deref()
            .is_some_and(|d| d.starts_with("sha256:"))),
        "digests stay in status: {:?}",
        status.platforms
    );
    tokio::task::spawn_blocking(|| operator::stop("TERM"))
        .await
        .expect("stopping");
}

/// Two objects whose names share a long prefix and whose builds are the same (same repository
/// and inputs, other tags) get builders of their own; an object deleted and created again under
/// the same name builds with Jobs of its own, never adopting its predecessor's.
#[tokio::test]
async fn builders_never_collide_across_objects_or_across_a_delete_and_recreate() {
    let s = Scenario::start("no_collisions", "e2e-names", Access::Shared).await;
    let prefix = "team-payments-settlement-reconciliation-service-";
    let repository = format!("{}/{}/shared", multiarch_e2e::env().registry, s.ns);
    let object = |suffix: &str| {
        let mut m = s.mai(
            &format!("{prefix}{suffix}"),
            &["linux/amd64", "linux/arm64"],
        );
        m.spec.image = repository.clone();
        m.spec.tags = vec![format!("1.0.0-{suffix}")];
        m.spec.platform_tags = false;
        m
    };
    for suffix in ["api", "worker"] {
        s.apply(&object(suffix)).await;
    }
    let mut builders = BTreeSet::new();
    for suffix in ["api", "worker"] {
        let o = s.wait_ready(&format!("{prefix}{suffix}"), 90).await;
        for name in owned_builders(&s, &o).await {
            assert!(
                builders.insert(name.clone()),
                "builder {name} serves two objects"
            );
        }
    }
    assert_eq!(
        builders.len(),
        4,
        "two builders for each object: {builders:?}"
    );

    // deleted and created again at once: the predecessor's Jobs are not adopted
    let name = format!("{prefix}api");
    let old_uid = s.get(&name).await.metadata.uid;
    s.mais()
        .delete(&name, &Default::default())
        .await
        .expect("deleting");
    s.poll("the object gone", 30, || async {
        s.mais()
            .get_opt(&name)
            .await
            .ok()
            .and_then(|o| o.is_none().then_some(()))
    })
    .await;
    s.apply(&object("api")).await;
    let o = s.wait_ready(&name, 120).await;
    assert_ne!(o.metadata.uid, old_uid, "a new object");
    owned_builders(&s, &o).await;
}

/// The builder Jobs `o`'s status names, each checked to exist and to be owned by `o` (uid).
async fn owned_builders(s: &Scenario, o: &multiarch_operator::api::MultiArchImage) -> Vec<String> {
    let uid = o.metadata.uid.clone().expect("a uid");
    let jobs = kube::Api::<k8s_openapi::api::batch::v1::Job>::namespaced(s.client.clone(), &s.ns);
    let mut names = Vec::new();
    for p in &o.status.as_ref().expect("a status").platforms {
        let name = p.builder.clone().expect("a builder name");
        assert!(name.len() <= 63, "{name}");
        let job = jobs
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("builder {name}: {e}"));
        let owners: Vec<String> = job
            .metadata
            .owner_references
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.uid)
            .collect();
        assert_eq!(
            owners.as_slice(),
            std::slice::from_ref(&uid),
            "builder {name} is owned by this object"
        );
        names.push(name);
    }
    names
}

/// Before the operator has looked at a new object, the apiserver gives it the CRD's status
/// default, `observedGeneration: 0`, behind `metadata.generation`: kstatus (Flux, `kubectl
/// wait`) reads that as in progress, where no status at all would read as Current.
#[tokio::test]
async fn a_new_object_reads_as_in_progress_before_the_operator_has_seen_it() {
    let s = Scenario::start("new_object_status", "e2e-new", Access::Exclusive).await;
    let blocking = |f: fn()| tokio::task::spawn_blocking(f);
    tokio::task::spawn_blocking(|| operator::stop("TERM"))
        .await
        .expect("stopping the operator");
    s.apply(&s.mai("fresh", &["linux/amd64"])).await;
    let o = s.get("fresh").await;
    let status = o.status.clone().expect("the CRD's status default");
    assert_eq!(
        status.observed_generation,
        Some(0),
        "status.observedGeneration"
    );
    assert!(
        status.conditions.is_empty(),
        "no conditions before the operator"
    );
    assert_eq!(o.metadata.generation, Some(1));
    kstatus::assert_status(&s.ns, "fresh", "InProgress");
    blocking(operator::ensure_default)
        .await
        .expect("starting the operator");
    let o = s.wait_ready("fresh", 90).await;
    assert_eq!(o.status.and_then(|st| st.observed_generation), Some(1));
    kstatus::assert_status(&s.ns, "fresh", "Current");

    // a spec change the operator has not observed yet (it is stopped): in progress
    blocking(|| operator::stop("TERM")).await.expect("stopping");
    s.annotate(
        "fresh",
        "e2e.multiarch.dev/fault.linux-amd64",
        Some("slow-8"),
    )
    .await;
    s.patch(
        "fresh",
        json!({"spec": {"buildArgs": [{"name": "VERSION", "value": "2"}]}}),
    )
    .await;
    let o = s.get("fresh").await;
    assert_eq!(o.metadata.generation, Some(2));
    assert_eq!(o.status.and_then(|st| st.observed_generation), Some(1));
    kstatus::assert_status(&s.ns, "fresh", "InProgress");

    // building: in progress, then Current again
    blocking(operator::ensure_default).await.expect("starting");
    let building = s
        .wait("fresh", "building generation 2", 60, |o| {
            o.status.as_ref().is_some_and(|st| {
                st.observed_generation == Some(2) && st.phase == Some(Phase::Building)
            })
        })
        .await;
    // the kstatus conventions, said by the object itself, not only inferred from Ready
    let reconciling = condition(&building, "Reconciling").map(|c| c.status.clone());
    assert_eq!(
        reconciling.as_deref(),
        Some("True"),
        "Reconciling while building"
    );
    let ready = condition(&building, "Ready").map(|c| c.status.clone());
    assert_eq!(ready.as_deref(), Some("False"), "Ready while building");
    kstatus::assert_status(&s.ns, "fresh", "InProgress");
    s.wait_ready("fresh", 90).await;
    kstatus::assert_status(&s.ns, "fresh", "Current");

    // deleting, in the foreground (the operator holds no finalizer; a builder Job held by the
    // test's own finalizer keeps the object in deletion): Terminating
    let job = s
        .job_names("")
        .await
        .into_iter()
        .next()
        .expect("a builder Job");
    let jobs = kube::Api::<k8s_openapi::api::batch::v1::Job>::namespaced(s.client.clone(), &s.ns);
    let hold = json!({"metadata": {"finalizers": ["e2e.multiarch.dev/hold"]}});
    jobs.patch(&job, &Default::default(), &kube::api::Patch::Merge(&hold))
        .await
        .expect("holding a builder Job");
    s.mais()
        .delete("fresh", &kube::api::DeleteParams::foreground())
        .await
        .expect("deleting in the foreground");
    let o = s.get("fresh").await;
    assert!(o.metadata.deletion_timestamp.is_some(), "in deletion");
    assert!(
        !o.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f.contains("multiarch")),
        "no finalizer of the operator's"
    );
    kstatus::assert_status(&s.ns, "fresh", "Terminating");
    let release = json!({"metadata": {"finalizers": null}});
    jobs.patch(
        &job,
        &Default::default(),
        &kube::api::Patch::Merge(&release),
    )
    .await
    .expect("releasing the Job");
    s.poll("the object gone", 60, || async {
        s.mais()
            .get_opt("fresh")
            .await
            .ok()
            .and_then(|o| o.is_none().then_some(()))
    })
    .await;
}
