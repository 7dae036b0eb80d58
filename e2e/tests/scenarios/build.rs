//! Real builds: each builder pod's own command runs with real rootless BuildKit (the builder
//! double's real mode, selected by the namespace label `e2e.multiarch.dev/builder=buildkit`),
//! building the sample Go service from the suite's git servers.

use std::path::Path;
use std::time::Instant;

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use multiarch_e2e::cmd::{kubectl, run, run_with_input};
use multiarch_e2e::registry::{config, digest, entry_digest, index_platforms, manifest, raw, tags};
use multiarch_e2e::{env, progress, Access, Scenario};
use multiarch_operator::api::MultiArchImage;
use serde_json::Value;

use crate::faults::{build_id, label_namespace};

/// The namespace label that makes the builder double run real BuildKit.
pub const REAL: (&str, &str) = ("e2e.multiarch.dev/builder", "buildkit");

/// The commit `refs/heads/main` of `url` points at, as `git ls-remote` says.
pub fn ls_remote_main(url: &str) -> String {
    run("git", &["ls-remote", url, "refs/heads/main"])
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("git ls-remote {url} printed no refs/heads/main"))
        .to_string()
}

/// The commit in `o`'s status.
pub fn commit_of(o: &MultiArchImage) -> String {
    o.status
        .as_ref()
        .and_then(|s| s.source.as_ref())
        .map(|s| s.commit.clone())
        .expect("a resolved commit in status")
}

#[tokio::test]
async fn two_platforms_build_natively_and_publish_a_verified_index_that_rebuilds_from_cache() {
    let s = Scenario::start("everyday", "e2e-everyday", Access::Shared).await;
    label_namespace(&s, &s.ns, REAL.0, REAL.1).await;
    let ns = s.ns.clone();
    let t0 = Instant::now();
    s.apply(&s.mai("apiping", &["linux/amd64", "linux/arm64"]))
        .await;
    let o = s.wait_ready("apiping", 600).await;
    let cold = t0.elapsed().as_secs();
    multiarch_e2e::kstatus::assert_status(&ns, "apiping", "Current");
    let commit = commit_of(&o);
    assert_eq!(
        commit,
        ls_remote_main(&env().git_url),
        "status.source.commit"
    );
    for arch in ["amd64", "arm64"] {
        let selector = format!("multiarch.dev/platform=linux-{arch}");
        let pods = s.pods(&selector).await;
        assert!(!pods.is_empty(), "a linux/{arch} builder pod");
        let node = pods[0].spec.as_ref().and_then(|sp| sp.node_name.clone());
        assert_eq!(
            node,
            Some(format!("kwok-{arch}-1")),
            "linux/{arch} builder's node"
        );
        let jobs = s.jobs(&selector).await;
        assert_eq!(
            jobs[0].annotations().get("multiarch.dev/commit"),
            Some(&commit),
            "linux/{arch} builder's commit"
        );
    }
    let published = o
        .status
        .as_ref()
        .and_then(|st| st.digest.clone())
        .expect("a digest");
    let index_bytes = raw(&format!("{ns}/apiping:1.0.0"));
    assert_eq!(
        digest(&index_bytes),
        published,
        "1.0.0 points at the published index"
    );
    assert_eq!(
        digest(&raw(&format!("{ns}/apiping:latest"))),
        published,
        "latest too"
    );
    let index: Value = serde_json::from_slice(&index_bytes).expect("index JSON");
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    // each image is followed by its provenance attestation (BuildKit's, kept by the publish)
    assert_eq!(
        index_platforms(&index),
        [
            "linux/amd64",
            "unknown/unknown",
            "linux/arm64",
            "unknown/unknown"
        ]
    );
    let entries = index["manifests"].as_array().expect("an index");
    for pair in entries.chunks(2) {
        assert_eq!(
            pair[1]["annotations"]["vnd.docker.reference.digest"], pair[0]["digest"],
            "the attestation after {} is about it",
            pair[0]["platform"]["architecture"]
        );
    }
    for arch in ["amd64", "arm64"] {
        let c = config(&format!("{ns}/apiping:1.0.0-{arch}"));
        assert_eq!(c["architecture"], arch, "per-platform tag 1.0.0-{arch}");
    }
    let listed = kubectl(&["get", "mai", "-n", &ns, "apiping"]);
    assert!(
        listed.contains(&published),
        "kubectl get mai shows the digest: {listed}"
    );
    server_side_dry_run(&s.jobs("").await);
    real_build_checks(&s, &o, &index).await;
    each_transition_told_once(&s, "apiping").await;

    // a second build of the same commit reuses the per-platform registry caches
    let first_build = build_id(&o);
    let t1 = Instant::now();
    s.annotate("apiping", "multiarch.dev/rebuild", Some("second"))
        .await;
    let o = s
        .wait("apiping", "the rebuild Ready", 600, |o| {
            o.status.as_ref().and_then(|st| st.rebuild.as_deref()) == Some("second")
                && multiarch_e2e::scenario::condition(o, "Ready")
                    .is_some_and(|c| c.status == "True")
        })
        .await;
    let warm = t1.elapsed().as_secs();
    assert_ne!(build_id(&o), first_build, "the rebuild has a new build id");
    assert_eq!(commit_of(&o), commit, "the rebuild's commit");
    for arch in ["amd64", "arm64"] {
        let pod = current_pod(&s, &o, arch).await;
        let log = builder_log(&pod);
        let compile = log
            .split("RUN CGO_ENABLED=0")
            .nth(1)
            .map(|rest| rest.lines().take(4).collect::<Vec<_>>().join("\n"))
            .unwrap_or_default();
        assert!(
            compile.contains("CACHED"),
            "linux/{arch}: the rebuild compiled again instead of using buildcache-{arch}: {compile}"
        );
    }
    real_build_checks(&s, &o, &manifest(&format!("{ns}/apiping:1.0.0"))).await;
    progress(format!(
        "    real two-platform build: {cold} s cold, {warm} s with the registry caches (apply to Ready)"
    ));
}

/// The rendered builder Jobs pass the real apiserver's validation again.
pub fn server_side_dry_run(jobs: &[Job]) {
    let mut items = Vec::new();
    for j in jobs {
        let mut j = j.clone();
        j.metadata.resource_version = None;
        j.metadata.uid = None;
        j.metadata.creation_timestamp = None;
        j.metadata.managed_fields = None;
        j.status = None;
        items.push(serde_json::to_value(&j).expect("a Job as JSON"));
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    run_with_input(
        "kubectl",
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=e2e-dry-run",
            "--dry-run=server",
            "-f",
            "-",
        ],
        Some(list.to_string().as_bytes()),
    );
}

/// The builder pod of `o`'s current build for `arch`.
pub async fn current_pod(
    s: &Scenario,
    o: &MultiArchImage,
    arch: &str,
) -> k8s_openapi::api::core::v1::Pod {
    let selector = format!(
        "multiarch.dev/build={},multiarch.dev/platform=linux-{arch}",
        build_id(o)
    );
    s.pods(&selector)
        .await
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no linux/{arch} pod of the current build"))
}

/// What the real build printed (the double keeps each pod's log under its uid).
pub fn builder_log(pod: &k8s_openapi::api::core::v1::Pod) -> String {
    let uid = pod.metadata.uid.clone().expect("a pod uid");
    let path = Path::new("/var/tmp/multiarch-e2e-builds")
        .join(uid)
        .join("container.log");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// What only a real build can show: the images run and print their own platform, the
/// per-platform caches exist, and BuildKit's metadata (the termination message) names the image
/// the index lists and the registry serves.
/// Every Event of object `name` is told once (no series), and each platform's start and finish
/// have Events of their own, naming the builder Job.
async fn each_transition_told_once(s: &Scenario, name: &str) {
    use k8s_openapi::api::events::v1::Event;
    use kube::api::ListParams;
    let events = kube::Api::<Event>::namespaced(s.client.clone(), &s.ns)
        .list(&ListParams::default().fields(&format!("regarding.name={name}")))
        .await
        .expect("listing Events");
    let notes: Vec<String> = events
        .items
        .iter()
        .map(|e| e.note.clone().unwrap_or_default())
        .collect();
    for e in &events.items {
        assert!(
            e.series.is_none(),
            "an Event told more than once: {:?} {:?} {:?}",
            e.reason,
            e.note,
            e.series
        );
    }
    for arch in ["amd64", "arm64"] {
        for step in [
            format!("linux/{arch} building on"),
            format!("linux/{arch} built:"),
        ] {
            let told: Vec<_> = events
                .items
                .iter()
                .filter(|e| e.note.as_deref().is_some_and(|n| n.starts_with(&step)))
                .collect();
            assert_eq!(told.len(), 1, "one Event \"{step}\": {notes:?}");
            let related = told[0].related.as_ref().and_then(|r| r.kind.clone());
            assert_eq!(related.as_deref(), Some("Job"), "{step} names its builder");
        }
    }
}

pub async fn real_build_checks(s: &Scenario, o: &MultiArchImage, index: &Value) {
    let ns = &s.ns;
    let repo = o
        .spec
        .image
        .trim_start_matches(&format!("{}/", env().registry))
        .to_string();
    let tags = tags(&repo);
    let platforms: Vec<String> = o.spec.platforms.clone();
    for platform in &platforms {
        let arch = platform.split('/').nth(1).expect("os/arch");
        assert!(
            tags.contains(&format!("buildcache-{arch}")),
            "registry cache of {platform}: {tags:?}"
        );
        let entry = entry_digest(index, arch);
        let tar = multiarch_e2e::cmd::output(
            "crane",
            &["export", &format!("{}/{repo}@{entry}", env().registry), "-"],
            None,
        );
        assert!(
            tar.status.success(),
            "crane export: {}",
            String::from_utf8_lossy(&tar.stderr)
        );
        let binary = env().state.join(format!("{ns}-{arch}-apiping"));
        let extracted =
            multiarch_e2e::cmd::output("tar", &["-xO", "app/apiping"], Some(&tar.stdout));
        assert!(
            extracted.status.success(),
            "no /app/apiping in the {arch} image"
        );
        std::fs::write(&binary, &extracted.stdout).expect("writing the binary");
        let head = &extracted.stdout[..20.min(extracted.stdout.len())];
        let machine = u16::from_le_bytes([head[18], head[19]]);
        assert_eq!(&head[..4], b"\x7fELF", "the {arch} binary is an ELF file");
        assert_eq!(
            machine,
            if arch == "amd64" { 62 } else { 183 },
            "ELF machine of the {arch} binary"
        );
        run("chmod", &["+x", binary.to_str().expect("a UTF-8 path")]);
        let out = if arch == "arm64" {
            run(
                "qemu-aarch64-static",
                &[binary.to_str().expect("a UTF-8 path")],
            )
        } else {
            run(binary.to_str().expect("a UTF-8 path"), &[])
        };
        assert!(
            out.contains(&format!("GOARCH {arch}")),
            "the {arch} binary's output: {out}"
        );
        let pod = current_pod(s, o, arch).await;
        let message = pod
            .status
            .and_then(|st| st.container_statuses)
            .and_then(|cs| cs.into_iter().next())
            .and_then(|c| c.state)
            .and_then(|st| st.terminated)
            .and_then(|t| t.message)
            .unwrap_or_default();
        let metadata: Value = serde_json::from_str(&message).unwrap_or_else(|e| {
            panic!("the termination message is not BuildKit metadata ({e}): {message}")
        });
        let reported = metadata["containerimage.digest"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let pushed = raw(&format!("{repo}@{reported}"));
        assert_eq!(
            digest(&pushed),
            reported,
            "{platform}: the registry serves the reported manifest"
        );
        // with provenance, BuildKit pushes an index of the image and its attestation: the
        // published index lists that image
        let pushed: Value = serde_json::from_slice(&pushed).expect("manifest JSON");
        let image = if pushed["manifests"].is_array() {
            entry_digest(&pushed, arch)
        } else {
            reported.clone()
        };
        assert_eq!(
            image, entry,
            "{platform}: BuildKit's reported image is the index entry"
        );
    }
}
