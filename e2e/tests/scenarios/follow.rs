//! Builds that follow their inputs, with real BuildKit and a repository of each scenario's own:
//! a commit pushed to the polled branch is built and published without touching the object; a
//! suspended object builds nothing until it is resumed; a base image whose tag moves is rebuilt,
//! and the new provenance names the new base digest; the history names each trigger.

use std::time::Duration;

use multiarch_e2e::cmd::{kubectl, run};
use multiarch_e2e::registry::{digest, manifest, raw};
use multiarch_e2e::repo::Repo;
use multiarch_e2e::scenario::condition;
use multiarch_e2e::{env, Access, Scenario};
use multiarch_operator::api::{BuildResult, HistoryEntry, MultiArchImage, Trigger};
use serde_json::{json, Value};

use crate::build::{commit_of, REAL};
use crate::faults::label_namespace;

fn history(o: &MultiArchImage) -> Vec<HistoryEntry> {
    o.status
        .as_ref()
        .map(|s| s.history.clone())
        .unwrap_or_default()
}

fn published(o: &MultiArchImage) -> String {
    o.status
        .as_ref()
        .and_then(|s| s.digest.clone())
        .expect("a published digest")
}

fn ready(o: &MultiArchImage) -> bool {
    condition(o, "Ready").is_some_and(|c| c.status == "True")
}

/// Waits until `name` has published a build of `commit` (its newest history entry succeeded).
async fn wait_published(s: &Scenario, name: &str, commit: &str, secs: u64) -> MultiArchImage {
    let what = format!("a published build of {commit}");
    s.wait(name, &what, secs, |o| {
        ready(o)
            && history(o)
                .first()
                .is_some_and(|h| h.commit == commit && h.result == Some(BuildResult::Succeeded))
    })
    .await
}

/// Events of `reason` on the scenario's objects, as `kubectl` lists them.
fn events(ns: &str, reason: &str) -> String {
    kubectl(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        &format!("reason={reason}"),
        "-o",
        "custom-columns=NOTE:.note,MESSAGE:.message",
    ])
}

#[tokio::test]
async fn a_pushed_commit_is_built_without_touching_the_object_and_suspend_holds_it() {
    let s = Scenario::start("follow_commits", "e2e-follow-commits", Access::Shared).await;
    label_namespace(&s, &s.ns, REAL.0, REAL.1).await;
    let repo = Repo::create("follow-commits");
    let base = format!("{}/base/busybox", env().registry);
    repo.write(
        "Dockerfile",
        &format!("FROM {base}\nCOPY version /version\n"),
    );
    repo.write("version", "1\n");
    let first = repo.commit("version 1");

    let mut app = s.mai("app", &["linux/amd64", "linux/arm64"]);
    app.spec.source.git.url = repo.git_url.clone();
    app.spec.source.git.poll_interval = Some("2s".into());
    s.apply(&app).await;
    let o = wait_published(&s, "app", &first, 600).await;
    let first_digest = published(&o);
    assert_eq!(history(&o)[0].trigger, Trigger::SpecChange);
    let generation = o.metadata.generation;

    // a new commit on the branch: built and published for every platform, the object untouched
    repo.write("version", "2\n");
    let second = repo.commit("version 2");
    let o = wait_published(&s, "app", &second, 300).await;
    assert_eq!(
        o.metadata.generation, generation,
        "the object was not edited"
    );
    assert_eq!(commit_of(&o), second);
    let h = history(&o);
    assert_eq!(
        (h[0].trigger, h[1].commit.as_str(), h[1].result),
        (
            Trigger::NewCommit,
            first.as_str(),
            Some(BuildResult::Succeeded)
        ),
        "history: {h:?}"
    );
    let second_digest = published(&o);
    assert_ne!(second_digest, first_digest, "a new index was published");
    assert_eq!(
        digest(&raw(&format!("{}/app:1.0.0", s.ns))),
        second_digest,
        "1.0.0 points at the new index"
    );
    let platforms: Vec<String> = manifest(&format!("{}/app:1.0.0", s.ns))["manifests"]
        .as_array()
        .expect("an index")
        .iter()
        .filter_map(|m| m["platform"]["architecture"].as_str().map(String::from))
        .filter(|a| a != "unknown")
        .collect();
    assert_eq!(platforms, ["amd64", "arm64"], "both platforms rebuilt");
    let listed = kubectl(&["get", "mai", "-n", &s.ns, "app"]);
    assert!(
        listed.contains(&second[..12]),
        "kubectl get mai shows the short commit: {listed}"
    );
    let told = events(&s.ns, "NewCommit");
    assert!(told.contains(&second), "a NewCommit Event names it: {told}");

    // suspended: a new commit builds nothing
    s.patch("app", json!({"spec": {"suspend": true}})).await;
    let wide = kubectl(&["get", "mai", "-n", &s.ns, "app", "-o", "wide"]);
    assert!(
        wide.contains("true"),
        "kubectl get mai -o wide shows Suspended: {wide}"
    );
    repo.write("version", "3\n");
    let third = repo.commit("version 3");
    s.holds_for(
        "app",
        "no build of the commit pushed while suspended",
        Duration::from_secs(12),
        |o| commit_of(o) == second && ready(o),
    )
    .await;
    let jobs = s.jobs("").await;
    assert!(
        jobs.iter().all(|j| {
            j.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("multiarch.dev/commit"))
                != Some(&third)
        }),
        "no builder of {third} while suspended"
    );

    // resumed: the commit is built at once
    s.patch("app", json!({"spec": {"suspend": false}})).await;
    let o = wait_published(&s, "app", &third, 300).await;
    let h = history(&o);
    assert_eq!(h[0].trigger, Trigger::NewCommit);
    assert_eq!(h.len(), 3, "history: {h:?}");
}

/// The digest `reference` points at, as crane says.
fn crane_digest(reference: &str) -> String {
    run("crane", &["digest", reference]).trim().to_string()
}

/// A single-platform base image at `target`, made from the suite's busybox with `label` (a new
/// label gives a new digest: the tag moves).
fn push_base(target: &str, label: &str) -> String {
    let source = format!("{}/base/busybox", env().registry);
    run(
        "crane",
        &[
            "mutate",
            "--platform",
            "linux/amd64",
            &source,
            "--label",
            &format!("e2e.multiarch.dev/base={label}"),
            "-t",
            target,
        ],
    );
    crane_digest(target)
}

/// The base images the provenance attached to `index`'s amd64 image lists, as `(uri, sha256)`.
fn provenance_materials(repo: &str, index: &Value) -> Vec<(String, String)> {
    let manifests = index["manifests"].as_array().expect("an index");
    let attestation = manifests
        .iter()
        .find(|m| m["annotations"]["vnd.docker.reference.type"] == "attestation-manifest")
        .unwrap_or_else(|| panic!("the index keeps the provenance attestation: {index}"));
    let att = manifest(&format!(
        "{repo}@{}",
        attestation["digest"].as_str().unwrap()
    ));
    let layer = att["layers"]
        .as_array()
        .and_then(|l| {
            l.iter().find(|l| {
                l["annotations"]["in-toto.io/predicate-type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("https://slsa.dev/provenance/"))
            })
        })
        .unwrap_or_else(|| panic!("a provenance layer: {att}"))
        .clone();
    let blob = run(
        "crane",
        &[
            "blob",
            &format!(
                "{}/{repo}@{}",
                env().registry,
                layer["digest"].as_str().unwrap()
            ),
        ],
    );
    let statement: Value = serde_json::from_str(&blob).expect("an in-toto statement");
    let predicate = &statement["predicate"];
    let listed = predicate["materials"]
        .as_array()
        .or_else(|| predicate["buildDefinition"]["resolvedDependencies"].as_array())
        .cloned()
        .unwrap_or_default();
    listed
        .iter()
        .map(|m| {
            (
                m["uri"].as_str().unwrap_or_default().to_string(),
                m["digest"]["sha256"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_moved_base_image_is_rebuilt_and_the_provenance_names_the_new_digest() {
    let s = Scenario::start("follow_base", "e2e-follow-base", Access::Shared).await;
    label_namespace(&s, &s.ns, REAL.0, REAL.1).await;
    let base = format!("{}/{}/base:1", env().registry, s.ns);
    let before = push_base(&base, "1");
    let repo = Repo::create("follow-base");
    repo.write(
        "Dockerfile",
        &format!("FROM {base}\nCOPY version /version\n"),
    );
    repo.write("version", "1\n");
    let commit = repo.commit("version 1");

    let mut app = s.mai("app", &["linux/amd64"]);
    app.spec.source.git.url = repo.git_url.clone();
    app.spec.rebuild_on = Some(serde_json::from_value(json!({"baseImages": true})).unwrap());
    s.apply(&app).await;
    let o = wait_published(&s, "app", &commit, 600).await;
    let bases = o
        .status
        .as_ref()
        .map(|s| s.base_images.clone())
        .unwrap_or_default();
    let recorded: Vec<(&str, &str)> = bases
        .iter()
        .map(|b| (b.name.as_str(), b.digest.as_str()))
        .collect();
    assert_eq!(
        recorded,
        [(base.as_str(), before.as_str())],
        "status.baseImages, read from the provenance"
    );
    let first_digest = published(&o);

    // the base image's tag moves: the same commit is rebuilt, and the Event names both digests
    let after = push_base(&base, "2");
    assert_ne!(after, before);
    let o = s
        .wait("app", "a rebuild for the moved base image", 300, |o| {
            ready(o)
                && history(o).first().is_some_and(|h| {
                    h.trigger == Trigger::BaseImage && h.result == Some(BuildResult::Succeeded)
                })
        })
        .await;
    assert_eq!(commit_of(&o), commit, "the same commit");
    let detail = history(&o)[0].detail.clone().unwrap_or_default();
    assert!(
        detail.contains(&base) && detail.contains(&before) && detail.contains(&after),
        "the history names the base image and both digests: {detail}"
    );
    let told = events(&s.ns, "BaseImageMoved");
    assert!(
        told.contains(&after),
        "a BaseImageMoved Event names the new digest: {told}"
    );
    assert_ne!(published(&o), first_digest);
    let index = manifest(&format!("{}/app:1.0.0", s.ns));
    let materials = provenance_materials(&format!("{}/app", s.ns), &index);
    let hex = after.trim_start_matches("sha256:");
    assert!(
        materials
            .iter()
            .any(|(uri, sha)| uri.contains("/base") && sha == hex),
        "the new provenance names the new base digest {after}: {materials:?}"
    );
    let bases = o
        .status
        .as_ref()
        .map(|s| s.base_images.clone())
        .unwrap_or_default();
    assert_eq!(bases[0].digest, after, "status.baseImages follows");

    // nothing moved since: no further build
    s.holds_for(
        "app",
        "no build while nothing moves",
        Duration::from_secs(8),
        |o| history(o).len() == 2,
    )
    .await;
    // the rebuild annotation is a trigger of its own
    s.annotate("app", "multiarch.dev/rebuild", Some("again"))
        .await;
    let o = s
        .wait("app", "the annotated rebuild", 300, |o| {
            ready(o)
                && history(o).first().is_some_and(|h| {
                    h.trigger == Trigger::RebuildAnnotation
                        && h.result == Some(BuildResult::Succeeded)
                })
        })
        .await;
    let triggers: Vec<Trigger> = history(&o).iter().map(|h| h.trigger).collect();
    assert_eq!(
        triggers,
        [
            Trigger::RebuildAnnotation,
            Trigger::BaseImage,
            Trigger::SpecChange
        ]
    );
}
