//! Nodes that are missing, lost or late: builders wait with the scheduler's reason, survive a
//! lost node without counting it as an attempt, and give up at the provisioning timeout.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{Api, ResourceExt};
use multiarch_e2e::cmd::run;
use multiarch_e2e::registry::tags;
use multiarch_e2e::scenario::condition;
use multiarch_e2e::{env, kstatus, Access, Scenario};
use multiarch_operator::api::{
    BuilderSpec, MultiArchImage, Phase, PlatformPhase, PlatformStatus, Reason,
};

use crate::faults::fault;

const ARM64_NODE: &str = "kwok-arm64-1";

/// Removes the suite's arm64 node; the returned guard puts it back, passed or failed.
async fn without_arm64_node(s: &Scenario) -> NodeBack {
    Api::<Node>::all(s.client.clone())
        .delete(ARM64_NODE, &Default::default())
        .await
        .expect("deleting the arm64 node");
    NodeBack
}

/// Puts the arm64 node back when dropped (if it is missing).
struct NodeBack;

impl NodeBack {
    fn restore(&self) {
        add_arm64_node();
    }
}

impl Drop for NodeBack {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Adds the arm64 node as a provisioner would, if it is missing, and waits for it to be Ready.
fn add_arm64_node() {
    let exists = multiarch_e2e::cmd::try_kubectl(&["get", "node", ARM64_NODE], None).is_ok();
    if !exists {
        let script = env().root.join("e2e/env.sh");
        run(
            script.to_str().expect("a UTF-8 path"),
            &["add-node", "arm64", ARM64_NODE],
        );
    }
}

fn arm64(o: &MultiArchImage) -> Option<&PlatformStatus> {
    o.status.as_ref().and_then(|s| s.platforms.get(1))
}

async fn job(s: &Scenario, name: &str) -> Job {
    Api::<Job>::namespaced(s.client.clone(), &s.ns)
        .get(name)
        .await
        .expect("the builder Job")
}

#[tokio::test]
async fn a_builder_without_a_node_waits_with_the_schedulers_reason_and_the_same_job_finishes() {
    let s = Scenario::start("no_arm64_node", "e2e-pending", Access::Exclusive).await;
    let node = without_arm64_node(&s).await;
    s.apply(&s.mai("apiping", &["linux/amd64", "linux/arm64"]))
        .await;
    s.wait_reason("apiping", "Ready", "WaitingForNode", 90)
        .await;
    let o = s
        .wait("apiping", "arm64 WaitingForNode", 60, |o| {
            arm64(o).and_then(|p| p.reason) == Some(Reason::WaitingForNode)
        })
        .await;
    let p = arm64(&o).expect("arm64 status");
    let message = p.message.clone().unwrap_or_default();
    assert!(
        message.contains("didn't match Pod's node affinity/selector"),
        "the scheduler's reason: {message}"
    );
    assert!(p.waiting_since.is_some(), "waitingSince is set");
    kstatus::assert_status(&s.ns, "apiping", "InProgress");
    let waiting = job(&s, p.builder.as_deref().expect("a builder")).await;

    node.restore();
    let o = s.wait_ready("apiping", 90).await;
    let p = arm64(&o).expect("arm64 status");
    let finished = job(&s, p.builder.as_deref().expect("a builder")).await;
    assert_eq!(
        (finished.name_any(), finished.metadata.uid.clone()),
        (waiting.name_any(), waiting.metadata.uid.clone()),
        "the Job that waited is the one that built"
    );
    assert_eq!(p.node.as_deref(), Some(ARM64_NODE));
}

/// A spot interruption: the arm64 node disappears under a running builder. kube-controller-
/// manager's PodGC fails the orphaned pod with a DisruptionTarget condition; the same Job
/// replaces it, the replacement waits for a new node, and the disruption is not an attempt.
#[tokio::test]
async fn a_builder_whose_node_is_lost_is_replaced_without_counting_an_attempt() {
    let s = Scenario::start("node_lost", "e2e-node-lost", Access::Exclusive).await;
    let mut app = s.mai("app", &["linux/amd64", "linux/arm64"]);
    app.metadata.annotations = Some(fault("linux-arm64", "hang"));
    s.apply(&app).await;
    s.wait("app", "arm64 Building", 60, |o| {
        arm64(o).map(|p| p.phase) == Some(PlatformPhase::Building)
    })
    .await;
    let first = s.pods("multiarch.dev/platform=linux-arm64").await;
    assert_eq!(first.len(), 1, "one arm64 builder pod");
    let first = first[0].name_any();
    // the replacement pod builds normally
    s.annotate("app", "e2e.multiarch.dev/fault.linux-arm64", None)
        .await;
    let node = without_arm64_node(&s).await;
    // PodGC waits 40 s before it acts on pods of a vanished node
    s.wait("app", "a disruption recorded", 150, |o| {
        arm64(o).is_some_and(|p| p.disruptions == 1)
    })
    .await;
    let o = s
        .wait("app", "the replacement waiting for a node", 60, |o| {
            arm64(o).and_then(|p| p.reason) == Some(Reason::WaitingForNode)
        })
        .await;
    let p = arm64(&o).expect("arm64 status");
    assert_eq!(p.attempts, 0, "attempts after a disruption");
    let jobs = s.job_names("multiarch.dev/platform=linux-arm64").await;
    assert_eq!(jobs.len(), 1, "one arm64 Job");
    assert_eq!(
        p.builder.as_deref(),
        Some(jobs[0].as_str()),
        "the same Job carries on"
    );
    if let Some(lost) = Api::<Pod>::namespaced(s.client.clone(), &s.ns)
        .get_opt(&first)
        .await
        .expect("reading the pod")
    {
        let reason = lost
            .status
            .and_then(|st| st.conditions)
            .and_then(|cs| cs.into_iter().find(|c| c.type_ == "DisruptionTarget"))
            .and_then(|c| c.reason);
        assert_eq!(
            reason.as_deref(),
            Some("DeletionByPodGC"),
            "the lost pod's condition"
        );
    }
    node.restore();
    let o = s.wait_ready("app", 90).await;
    let p = arm64(&o).expect("arm64 status");
    assert_eq!(
        (p.attempts, p.disruptions),
        (0, 1),
        "attempts and disruptions"
    );
    assert_eq!(p.node.as_deref(), Some(ARM64_NODE), "the new node");
}

#[tokio::test]
async fn a_builder_that_never_gets_a_node_fails_at_the_provisioning_timeout_and_stays_failed() {
    let s = Scenario::start("no_node_timeout", "e2e-no-node", Access::Exclusive).await;
    let node = without_arm64_node(&s).await;
    let mut app = s.mai("app", &["linux/amd64", "linux/arm64"]);
    app.spec.builder = Some(BuilderSpec {
        provisioning_timeout: Some("15s".into()),
        ..Default::default()
    });
    s.apply(&app).await;
    s.wait("app", "arm64 WaitingForNode", 60, |o| {
        arm64(o).and_then(|p| p.reason) == Some(Reason::WaitingForNode)
    })
    .await;
    let o = s
        .wait_reason("app", "Stalled", "NoNodeForPlatform", 60)
        .await;
    kstatus::assert_status(&s.ns, "app", "Failed");
    let p = arm64(&o).expect("arm64 status").clone();
    let message = p.message.clone().unwrap_or_default();
    assert!(
        message.contains(
            "{e2e.multiarch.dev/static=true,kubernetes.io/arch=arm64,kubernetes.io/os=linux}"
        ),
        "names the node selector: {message}"
    );
    assert!(
        message.contains("didn't match Pod's node affinity/selector"),
        "carries the scheduler's reason: {message}"
    );
    assert_eq!(
        o.status.as_ref().and_then(|st| st.phase),
        Some(Phase::Failed)
    );
    let name = p.builder.clone().expect("the builder");
    let stopped = job(&s, &name).await;
    assert_eq!(
        stopped.spec.as_ref().and_then(|sp| sp.suspend),
        Some(true),
        "the waiting builder is stopped"
    );
    let annotation = stopped
        .annotations()
        .get("multiarch.dev/stopped")
        .cloned()
        .unwrap_or_default();
    assert!(
        annotation.contains("NoNodeForPlatform"),
        "stopped annotation: {annotation}"
    );

    s.poll("the waiting builder's pod gone", 60, || async {
        s.pods("multiarch.dev/platform=linux-arm64")
            .await
            .is_empty()
            .then_some(())
    })
    .await;

    // a node arriving after the deadline does not revive the failed build: watched for a while
    node.restore();
    let jobs = Api::<Job>::namespaced(s.client.clone(), &s.ns);
    let job_stays_suspended = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            let j = jobs.get(&name).await.expect("the builder Job");
            assert_eq!(
                j.spec.and_then(|sp| sp.suspend),
                Some(true),
                "the Job was resumed"
            );
            assert!(
                s.pods("multiarch.dev/platform=linux-arm64")
                    .await
                    .is_empty(),
                "a builder pod started after the deadline"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let object_stays_failed = s.holds_for(
        "app",
        "phase Failed, arm64 Failed",
        Duration::from_secs(10),
        |o| {
            o.status.as_ref().and_then(|st| st.phase) == Some(Phase::Failed)
                && arm64(o).map(|p| p.phase) == Some(PlatformPhase::Failed)
                && condition(o, "Stalled").is_some_and(|c| c.status == "True")
        },
    );
    tokio::join!(job_stays_suspended, object_stays_failed);
    assert_eq!(tags(&format!("{}/app", s.ns)), Vec::<String>::new());
}
