//! GitOps with real Flux (source-controller and kustomize-controller): a fleet repository served
//! over smart HTTP holds `MultiArchImage`s, and the README's example (`examples/flux/sync.yaml`,
//! a GitRepository and a Kustomization with `wait: true`) syncs it. Flux must report Ready only
//! once every image is published for the applied revision, fail fast when a build fails, and
//! prune removed images (their builders stop, their published tags stay).

use std::time::{Duration, Instant};

use kube::api::{ApiResource, DynamicObject};
use kube::Api;
use multiarch_e2e::cmd::{kubectl, run_with_input};
use multiarch_e2e::registry::tags;
use multiarch_e2e::repo::{path, Repo};
use multiarch_e2e::scenario::condition;
use multiarch_e2e::{env, progress, Access, Scenario};
use multiarch_operator::api::MultiArchImage;
use serde_json::{json, Value};

const FLUX_NS: &str = "flux-system";

/// A `MultiArchImage` manifest for the fleet, with builder faults as annotations.
fn image(ns: &str, name: &str, faults: &[(&str, &str)], build_args: &[(&str, &str)]) -> String {
    let mut m = multiarch_e2e::mai(ns, name, &["linux/amd64", "linux/arm64"]);
    m.metadata.annotations = Some(
        faults
            .iter()
            .map(|(p, f)| (format!("e2e.multiarch.dev/fault.{p}"), f.to_string()))
            .collect(),
    );
    let mut value = serde_json::to_value(&m).expect("a manifest");
    value["spec"]["retries"] = json!(0);
    if !build_args.is_empty() {
        value["spec"]["buildArgs"] = build_args
            .iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();
    }
    serde_json::to_string_pretty(&value).expect("JSON is YAML")
}

fn kustomizations(s: &Scenario) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "kustomize.toolkit.fluxcd.io".into(),
        version: "v1".into(),
        api_version: "kustomize.toolkit.fluxcd.io/v1".into(),
        kind: "Kustomization".into(),
        plural: "kustomizations".into(),
    };
    Api::namespaced_with(s.client.clone(), FLUX_NS, &resource)
}

/// The Kustomization's `Ready` condition (status, reason, message) and last applied revision.
async fn flux_state(s: &Scenario) -> (String, String, String, String) {
    let k = kustomizations(s)
        .get("images")
        .await
        .expect("the Kustomization");
    let status = &k.data["status"];
    let ready = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or(Value::Null);
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        text(&ready["status"]),
        text(&ready["reason"]),
        text(&ready["message"]),
        text(&status["lastAppliedRevision"]),
    )
}

/// Asks source-controller to fetch the repository now, as `flux reconcile source git` does.
fn reconcile_now() {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    kubectl(&[
        "annotate",
        "--overwrite",
        "-n",
        FLUX_NS,
        "gitrepository",
        "fleet",
        &format!("reconcile.fluxcd.io/requestedAt={stamp}"),
    ]);
}

fn ready_for_generation(o: &MultiArchImage) -> bool {
    condition(o, "Ready").is_some_and(|c| c.status == "True")
        && o.status.as_ref().and_then(|s| s.observed_generation) == o.metadata.generation
}

/// Watches Flux and the image until the Kustomization is Ready for `commit`, checking at every
/// look that Flux never says Ready for that commit while `name` is not published for its
/// generation; returns how long after the image Flux said Ready. Fails after `secs`.
async fn flux_waits_for(s: &Scenario, commit: &str, name: &str, generation: i64, secs: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut image_ready_at = None;
    let mut seen_waiting = false;
    loop {
        let (ready, reason, message, applied) = flux_state(s).await;
        let o = s.mais().get_opt(name).await.expect("reading the image");
        let published = o
            .as_ref()
            .is_some_and(|o| o.metadata.generation == Some(generation) && ready_for_generation(o));
        if published && image_ready_at.is_none() {
            image_ready_at = Some(Instant::now());
        }
        let flux_ready = ready == "True" && applied.contains(commit);
        if flux_ready {
            assert!(
                published,
                "Flux says Ready for {commit} ({message}) while {name} is not published for \
                 generation {generation}: {:?}",
                o.and_then(|o| o.status)
            );
            assert!(seen_waiting, "Flux was never seen waiting for {name}");
            let tags = tags(&format!("{}/{name}", s.ns));
            assert!(
                tags.contains(&"1.0.0".to_string()),
                "the index is published: {tags:?}"
            );
            return image_ready_at
                .map(|t| t.elapsed().as_secs_f64())
                .unwrap_or_default();
        }
        if !published && o.is_some() {
            seen_waiting = true;
        }
        assert!(
            Instant::now() < deadline,
            "Flux not Ready for {commit} within {secs} s: {ready} {reason}: {message} (applied \
             {applied})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn flux_reports_ready_only_once_published_fails_fast_and_prunes() {
    let s = Scenario::start("gitops_flux", "e2e-flux", Access::Shared).await;
    let fleet = Repo::create("fleet-flux");
    let marker = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "fleet", "namespace": s.ns}, "data": {"owner": "platform"}});
    fleet.write("images/fleet.yaml", &marker.to_string());
    fleet.commit("an empty fleet");
    let example = std::fs::read_to_string(env().root.join("examples/flux/sync.yaml"))
        .expect("the README's Flux example");
    let example = example.replace("https://git.example.com/platform/fleet.git", &fleet.url);
    assert!(
        example.contains(&fleet.url),
        "the example names a repository"
    );
    run_with_input("kubectl", &["apply", "-f", "-"], Some(example.as_bytes()));

    // a commit adding an image: Flux is Ready only once it is published
    fleet.write(
        "images/app.yaml",
        &image(&s.ns, "app", &[("linux-arm64", "slow-8")], &[]),
    );
    let added = fleet.commit("add app");
    reconcile_now();
    let lag = flux_waits_for(&s, &added, "app", 1, 180).await;
    progress(format!(
        "    Flux Ready {lag:.1} s after the image (its health checks poll)"
    ));

    // a commit changing its build args: Flux waits for the new generation
    fleet.write(
        "images/app.yaml",
        &image(
            &s.ns,
            "app",
            &[("linux-arm64", "slow-8")],
            &[("VERSION", "2")],
        ),
    );
    let changed = fleet.commit("app: VERSION=2");
    reconcile_now();
    let lag = flux_waits_for(&s, &changed, "app", 2, 180).await;
    progress(format!(
        "    Flux Ready {lag:.1} s after generation 2 was published"
    ));

    // a commit adding a build that fails: Flux fails fast, naming the object
    let broken = image(
        &s.ns,
        "broken",
        &[("linux-arm64", "fail"), ("linux-amd64", "slow-300")],
        &[],
    );
    fleet.write("images/broken.yaml", &broken);
    let failing = fleet.commit("add broken");
    reconcile_now();
    let stalled = s.wait_reason("broken", "Stalled", "BuildFailed", 120).await;
    let stalled_at = Instant::now();
    let deadline = stalled_at + Duration::from_secs(60);
    let message = loop {
        let (ready, reason, message, _) = flux_state(&s).await;
        if ready == "False" && message.contains("broken") {
            progress(format!(
                "    Flux failed ({reason}) {:.1} s after the image stalled",
                stalled_at.elapsed().as_secs_f64()
            ));
            break message;
        }
        assert!(
            Instant::now() < deadline,
            "Flux did not fail within 60 s of {failing}'s image stalling: {ready} {reason}: {message}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        message.contains(&format!("MultiArchImage/{}/broken", s.ns)),
        "Flux names the object: {message}"
    );
    assert!(stalled.status.is_some());
    let running = s.pods("multiarch.dev/image=broken").await;
    assert!(
        !running.is_empty(),
        "the failed image's other builder still runs (so pruning has a builder to stop)"
    );

    // a commit removing both: pruned, their builders stop, the published tags stay
    let published = tags(&format!("{}/app", s.ns));
    fleet.remove("images/app.yaml");
    fleet.remove("images/broken.yaml");
    let removed = fleet.commit("remove the images");
    reconcile_now();
    s.poll("both images pruned", 120, || async {
        let left = s.mais().list(&Default::default()).await.ok()?.items;
        left.is_empty().then_some(())
    })
    .await;
    s.poll("their builders gone", 120, || async {
        (s.jobs("").await.is_empty() && s.pods("").await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        tags(&format!("{}/app", s.ns)),
        published,
        "published tags stay"
    );
    s.poll("Flux Ready for the removal", 120, || async {
        let (ready, _, _, applied) = flux_state(&s).await;
        (ready == "True" && applied.contains(&removed)).then_some(())
    })
    .await;
    kubectl(&[
        "delete",
        "-n",
        FLUX_NS,
        "kustomization/images",
        "gitrepository/fleet",
        "--wait=false",
    ]);
}

/// Every reason of the one enum, as the operator's own condition writer words it, read by the real
/// kstatus library: the reasons of work in progress are InProgress, `Published` is Current, every
/// failure is Failed, and an unreachable source the operator still retries after its stall time
/// (Stalled and Reconciling both true) is Failed. Complements the scenarios, which check the
/// verdicts on objects the operator reconciled, with the reasons no scenario reaches on its own
/// (`PublishFailed` needs a registry that refuses a write for good).
#[test]
fn kstatus_reads_every_reason_as_the_readme_says() {
    use multiarch_operator::api::{MultiArchImageStatus, Phase, Reason};
    use multiarch_operator::plan::{Conditions, Verdict};

    let now = "2026-12-04T10:00:00Z".parse().expect("a time");
    let verdicts: Vec<(Verdict, &str)> = Reason::ALL
        .iter()
        .map(|&reason| {
            let (phase, expected) = match reason {
                Reason::Building | Reason::WaitingForNode | Reason::WaitingForQuota => {
                    (Phase::Building, "InProgress")
                }
                Reason::Publishing | Reason::RegistryUnavailable => {
                    (Phase::Publishing, "InProgress")
                }
                Reason::Published => (Phase::Succeeded, "Current"),
                _ => (Phase::Failed, "Failed"),
            };
            (Verdict::new(phase, reason, "m"), expected)
        })
        .chain([
            (
                Verdict::new(Phase::Pending, Reason::SourceUnavailable, "unreachable"),
                "InProgress",
            ),
            (
                Verdict::new(Phase::Failed, Reason::SourceUnavailable, "unreachable")
                    .still_trying(),
                "Failed",
            ),
        ])
        .collect();
    let objects: Vec<Value> = verdicts
        .iter()
        .enumerate()
        .map(|(i, (verdict, _))| {
            let prev = MultiArchImageStatus::default();
            let mut status = prev.clone();
            status.observed_generation = Some(3);
            Conditions::new(&prev, now, Some(3)).apply(&mut status, verdict);
            json!({
                "apiVersion": "multiarch.dev/v1alpha1", "kind": "MultiArchImage",
                "metadata": {"name": format!("o{i}"), "namespace": "n", "generation": 3},
                "status": status,
            })
        })
        .collect();
    let program = env().tools_bin.join("kstatus");
    let input = serde_json::to_vec(&objects).expect("JSON");
    let out = run_with_input(&path(&program), &[], Some(&input));
    let said: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a verdict line"))
        .collect();
    assert_eq!(said.len(), verdicts.len());
    for ((verdict, expected), said) in verdicts.iter().zip(&said) {
        assert_eq!(
            said["status"].as_str(),
            Some(*expected),
            "{:?} ({:?}, still trying: {}): kstatus said {said}",
            verdict.reason,
            verdict.phase,
            verdict.still_trying
        );
    }
}
