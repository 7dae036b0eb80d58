//! Builders on real Karpenter (its KWOK cloud provider: the provisioning and disruption
//! controllers are Karpenter's own, the nodes are KWOK's instead of EC2 instances). The operator
//! runs without the suite's static-node selector, so each builder is a pending pod that only a
//! node Karpenter launches can take: the NodePool `builders` (e2e/karpenter/nodepool.yaml) offers
//! linux amd64 and arm64 with the instance types of e2e/karpenter/instance_types.py.
//!
//! Each scenario prints its timings.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, ResourceExt};
use multiarch_e2e::operator::{self, Options};
use multiarch_e2e::scenario::condition;
use multiarch_e2e::{progress, Access, Scenario};
use multiarch_operator::api::{MultiArchImage, PlatformStatus, Reason};
use serde_json::json;

/// The operator with builders on Karpenter's nodes, for one scenario; the default instance is
/// back when it is dropped, even when the scenario fails.
struct KarpenterOperator;

impl KarpenterOperator {
    async fn start() -> KarpenterOperator {
        tokio::task::spawn_blocking(|| {
            operator::stop("KILL");
            operator::start(&Options {
                karpenter: true,
                ..Default::default()
            });
        })
        .await
        .expect("starting the operator for Karpenter");
        KarpenterOperator
    }
}

impl Drop for KarpenterOperator {
    fn drop(&mut self) {
        operator::stop("KILL");
        operator::start(&Options::default());
    }
}

fn nodeclaims(s: &Scenario) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("karpenter.sh", "v1", "NodeClaim");
    Api::all_with(s.client.clone(), &ApiResource::from_gvk(&gvk))
}

/// Karpenter's nodes, by name, with their architecture.
async fn karpenter_nodes(s: &Scenario) -> BTreeMap<String, Node> {
    Api::<Node>::all(s.client.clone())
        .list(&ListParams::default().labels("karpenter.sh/nodepool=builders"))
        .await
        .expect("listing nodes")
        .items
        .into_iter()
        .map(|n| (n.name_any(), n))
        .collect()
}

fn label<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn platform<'a>(o: &'a MultiArchImage, name: &str) -> Option<&'a PlatformStatus> {
    o.status
        .as_ref()?
        .platforms
        .iter()
        .find(|p| p.platform == name)
}

/// Waits until Karpenter has no node left and no NodeClaim, so that a scenario starts from zero.
async fn from_zero(s: &Scenario) {
    s.poll(
        "Karpenter's nodes of earlier scenarios gone",
        180,
        || async {
            let claims = nodeclaims(s).list(&ListParams::default()).await.ok()?;
            (claims.items.is_empty() && karpenter_nodes(s).await.is_empty()).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn builders_launch_nodes_of_their_architecture_that_go_away_after_the_build() {
    let s = Scenario::start("karpenter_from_zero", "e2e-karpenter", Access::Exclusive).await;
    let _operator = KarpenterOperator::start().await;
    from_zero(&s).await;

    let start = Instant::now();
    let mut m = s.mai("app", &["linux/amd64", "linux/arm64"]);
    m.metadata.annotations = Some(BTreeMap::from([
        (
            "e2e.multiarch.dev/fault.linux-amd64".into(),
            "slow-10".into(),
        ),
        (
            "e2e.multiarch.dev/fault.linux-arm64".into(),
            "slow-10".into(),
        ),
    ]));
    s.apply(&m).await;

    // while no node can take it, each builder waits with the scheduler's reason (seen in the
    // status, polled, as each platform passes through it)
    let mut waiting: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while waiting.len() < 2 {
        let o = s.get("app").await;
        for p in ["linux/amd64", "linux/arm64"] {
            if let Some(st) = platform(&o, p) {
                let message = st.message.clone().unwrap_or_default();
                if st.reason == Some(Reason::WaitingForNode)
                    && message.contains("nodes are available")
                {
                    waiting.entry(p.to_string()).or_insert(message);
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "not both platforms seen WaitingForNode with the scheduler's reason: {waiting:?}; \
             status: {:?}",
            o.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // one NodeClaim, and so one node, per architecture
    let mut claimed = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let nodes = loop {
        let nodes = karpenter_nodes(&s).await;
        for n in nodes.values() {
            if let Some(arch) = label(n, "kubernetes.io/arch") {
                claimed.entry(arch.to_string()).or_insert(start.elapsed());
            }
        }
        if claimed.len() == 2 {
            break nodes;
        }
        assert!(
            Instant::now() < deadline,
            "Karpenter launched nodes for {:?} only within 120 s",
            claimed.keys()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let claims = nodeclaims(&s)
        .list(&ListParams::default())
        .await
        .expect("listing NodeClaims");
    assert_eq!(claims.items.len(), 2, "one NodeClaim per architecture");

    let built = s.wait_ready("app", 180).await;
    let ready_after = start.elapsed();
    let mut ran_on = Vec::new();
    for (p, arch, shape) in [
        ("linux/amd64", "amd64", "c7i.large"),
        ("linux/arm64", "arm64", "c7g.large"),
    ] {
        let st = platform(&built, p).expect("platform status");
        let node = st.node.clone().expect("the node the builder ran on");
        let n = nodes
            .get(&node)
            .unwrap_or_else(|| panic!("{p} ran on {node}, not on a node Karpenter launched"));
        assert_eq!(label(n, "kubernetes.io/arch"), Some(arch), "{node}");
        assert_eq!(
            label(n, "node.kubernetes.io/instance-type"),
            Some(shape),
            "the cheapest shape that fits the default builder requests"
        );
        assert!(st.digest.is_some(), "{p} has its digest");
        ran_on.push(node);
    }

    // let go after: the builders' nodes are consolidated away; the status keeps what it said
    let finished = Instant::now();
    s.poll("the builders' nodes removed", 180, || async {
        let nodes = karpenter_nodes(&s).await;
        ran_on.iter().all(|n| !nodes.contains_key(n)).then_some(())
    })
    .await;
    let gone_after = finished.elapsed();
    let after = s.get("app").await;
    assert_eq!(
        condition(&after, "Ready").map(|c| c.status.as_str()),
        Some("True")
    );
    for (p, node) in ["linux/amd64", "linux/arm64"].iter().zip(&ran_on) {
        let st = platform(&after, p).expect("platform status");
        assert_eq!(st.node.as_ref(), Some(node), "{p} keeps its node's name");
        assert_eq!(
            st.digest,
            platform(&built, p).and_then(|b| b.digest.clone()),
            "{p} keeps its digest"
        );
    }
    progress(format!(
        "karpenter timings: node for amd64 after {:.1} s, arm64 after {:.1} s; Ready after {:.1} s \
         (builds take 10 s); nodes gone {:.1} s after Ready",
        claimed["amd64"].as_secs_f64(),
        claimed["arm64"].as_secs_f64(),
        ready_after.as_secs_f64(),
        gone_after.as_secs_f64()
    ));
}

#[tokio::test]
async fn an_interrupted_builder_gets_a_new_node_and_the_build_finishes() {
    let s = Scenario::start(
        "karpenter_interruption",
        "e2e-karpenter-interrupt",
        Access::Exclusive,
    )
    .await;
    let _operator = KarpenterOperator::start().await;
    from_zero(&s).await;

    let mut m = s.mai("app", &["linux/arm64"]);
    m.metadata.annotations = Some(BTreeMap::from([(
        "e2e.multiarch.dev/fault.linux-arm64".into(),
        "slow-90".into(),
    )]));
    s.apply(&m).await;
    let building = s
        .wait("app", "arm64 building on a node", 120, |o| {
            platform(o, "linux/arm64").is_some_and(|p| p.reason == Some(Reason::Building))
        })
        .await;
    let first = platform(&building, "linux/arm64")
        .and_then(|p| p.node.clone())
        .expect("the builder's node");
    // Karpenter records the node's name on its NodeClaim when the node registers, which can lag
    // behind the pod running there
    let claim = s
        .poll("the NodeClaim of the builder's node", 60, || async {
            nodeclaims(&s)
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|c| c.data["status"]["nodeName"] == json!(first))
        })
        .await;

    // what Karpenter does on a spot interruption: the NodeClaim goes, and with it the node
    // (the do-not-disrupt builder holds it for the NodePool's terminationGracePeriod, 30 s)
    let interrupted = Instant::now();
    let pods_api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let watch = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..200 {
            if let Ok(list) = pods_api.list(&ListParams::default()).await {
                for p in list.items {
                    let st = p.status.clone().unwrap_or_default();
                    let line = format!(
                        "{} deleting={} phase={:?} conditions={:?}",
                        p.name_any(),
                        p.metadata.deletion_timestamp.is_some(),
                        st.phase,
                        st.conditions
                            .unwrap_or_default()
                            .iter()
                            .map(|c| format!("{}={}:{:?}", c.type_, c.status, c.reason))
                            .collect::<Vec<_>>()
                    );
                    if !seen.contains(&line) {
                        seen.push(line);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    });
    nodeclaims(&s)
        .delete(&claim.name_any(), &DeleteParams::default())
        .await
        .expect("deleting the NodeClaim");
    let o = s
        .wait(
            "app",
            "the lost builder counted, or the build done",
            180,
            |o| {
                platform(o, "linux/arm64").is_some_and(|p| p.disruptions >= 1 || p.digest.is_some())
            },
        )
        .await;
    for line in watch.await.unwrap_or_default() {
        progress(format!("pod {line}"));
    }
    for job in s.jobs("multiarch.dev/image=app").await {
        progress(format!(
            "job {}: {}",
            job.name_any(),
            serde_json::to_string(&job.status).unwrap_or_default()
        ));
    }
    let p = platform(&o, "linux/arm64").expect("platform status");
    assert!(p.disruptions >= 1, "the lost builder is counted: {p:?}");
    assert_eq!(p.attempts, 0, "a disruption is not a failed attempt: {p:?}");
    let done = s.wait_ready("app", 240).await;
    let p = platform(&done, "linux/arm64").expect("platform status");
    let second = p.node.clone().expect("the node of the second pod");
    assert_ne!(second, first, "the build finished on a new node");
    assert!(
        !karpenter_nodes(&s).await.contains_key(&first),
        "the interrupted node is gone"
    );
    assert!(p.digest.is_some());
    progress(format!(
        "karpenter interruption: Ready {:.1} s after the NodeClaim was deleted (grace period 30 s, build 90 s)",
        interrupted.elapsed().as_secs_f64()
    ));
}

#[tokio::test]
async fn a_builder_no_instance_type_fits_fails_at_the_provisioning_timeout() {
    let s = Scenario::start(
        "karpenter_no_capacity",
        "e2e-karpenter-capacity",
        Access::Exclusive,
    )
    .await;
    let _operator = KarpenterOperator::start().await;
    let mut m = s.mai("huge", &["linux/arm64"]);
    m.spec.builder = serde_json::from_value(json!({
        "provisioningTimeout": "20s",
        "resources": {"requests": {"cpu": "64", "memory": "2Gi"}},
    }))
    .expect("builder settings");
    s.apply(&m).await;
    let o = s
        .wait_reason("huge", "Stalled", "NoNodeForPlatform", 90)
        .await;
    let p = platform(&o, "linux/arm64").expect("platform status");
    let message = p.message.clone().unwrap_or_default();
    assert!(
        message.contains("kubernetes.io/arch=arm64") && message.contains("cpu=64"),
        "names what the builder asked for: {message}"
    );
    s.poll("the builder's pod gone", 60, || async {
        s.pods("multiarch.dev/image=huge")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(
        karpenter_nodes(&s).await.is_empty(),
        "Karpenter launched nothing for it"
    );
}

/// Deletes the namespace's Deployments when dropped, whatever the scenario came to, so that no
/// workload of the test's own keeps a Karpenter node for the scenarios after it.
struct DeleteDeployments(String);

impl Drop for DeleteDeployments {
    fn drop(&mut self) {
        let _ = multiarch_e2e::cmd::try_kubectl(
            &[
                "delete",
                "deployments",
                "--all",
                "-n",
                &self.0,
                "--wait=false",
            ],
            None,
        );
    }
}

/// A Deployment of one pod asking for `cpu` on a node of `arch` (a workload of the test's own).
fn deployment(name: &str, arch: &str, cpu: &str) -> k8s_openapi::api::apps::v1::Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/arch": arch},
                    "containers": [{
                        "name": "main",
                        "image": "registry.example/fake:1",
                        "resources": {"requests": {"cpu": cpu, "memory": "256Mi"}},
                    }],
                },
            },
        },
    }))
    .expect("a Deployment")
}

/// The node the one pod of Deployment `app` runs on, once it runs.
async fn node_of(s: &Scenario, app: &str, secs: u64) -> String {
    s.poll(&format!("{app} running on a node"), secs, || async {
        s.pods(&format!("app={app}"))
            .await
            .into_iter()
            .find_map(|p| {
                let running = p.status.as_ref()?.phase.as_deref() == Some("Running");
                let deleting = p.metadata.deletion_timestamp.is_some();
                (running && !deleting).then(|| p.spec?.node_name).flatten()
            })
    })
    .await
}

#[tokio::test]
async fn a_running_builders_node_is_kept_from_consolidation_while_a_plain_pods_is_not() {
    let s = Scenario::start(
        "karpenter_kept_while_building",
        "e2e-karpenter-kept",
        Access::Exclusive,
    )
    .await;
    let _operator = KarpenterOperator::start().await;
    from_zero(&s).await;
    let _cleanup = DeleteDeployments(s.ns.clone());
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(s.client.clone(), &s.ns);
    let create = |d| {
        let deployments = deployments.clone();
        async move {
            deployments
                .create(&Default::default(), &d)
                .await
                .expect("creating a Deployment")
        }
    };

    // a big pod makes Karpenter launch a 4-CPU arm64 node; the builder then fits beside it
    create(deployment("filler-arm64", "arm64", "2")).await;
    let builder_node = node_of(&s, "filler-arm64", 120).await;
    let mut m = s.mai("app", &["linux/arm64"]);
    m.metadata.annotations = Some(BTreeMap::from([(
        "e2e.multiarch.dev/fault.linux-arm64".into(),
        "slow-300".into(),
    )]));
    s.apply(&m).await;
    let o = s
        .wait("app", "arm64 building", 120, |o| {
            platform(o, "linux/arm64").is_some_and(|p| p.reason == Some(Reason::Building))
        })
        .await;
    assert_eq!(
        platform(&o, "linux/arm64").and_then(|p| p.node.clone()),
        Some(builder_node.clone()),
        "the builder runs beside the big pod"
    );
    // the control: a small plain pod beside a big one on an amd64 node
    create(deployment("filler-amd64", "amd64", "2")).await;
    let filler_node = node_of(&s, "filler-amd64", 120).await;
    create(deployment("control", "amd64", "1")).await;
    let control_node = node_of(&s, "control", 120).await;
    assert_eq!(
        control_node, filler_node,
        "the control runs beside its filler"
    );

    // both nodes become underutilized at once: a cheaper node would do for each
    let underutilized = Instant::now();
    for name in ["filler-arm64", "filler-amd64"] {
        deployments
            .delete(name, &DeleteParams::default())
            .await
            .expect("deleting a filler");
    }
    // the control's node is replaced ...
    s.poll("the control's node consolidated away", 120, || async {
        (!karpenter_nodes(&s).await.contains_key(&control_node)).then_some(())
    })
    .await;
    let replaced_after = underutilized.elapsed();
    let moved = node_of(&s, "control", 60).await;
    assert_ne!(moved, control_node, "the control pod moved to the new node");
    // ... while the builder's node stays, with an Event naming the builder pod
    let builder_pod = s
        .pods("multiarch.dev/image=app")
        .await
        .into_iter()
        .find(|p| p.spec.as_ref().and_then(|sp| sp.node_name.as_deref()) == Some(&builder_node))
        .map(|p| p.name_any())
        .expect("the builder pod on its node");
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::all(s.client.clone());
    let blocked = s
        .poll(
            "a DisruptionBlocked Event naming the builder pod",
            150,
            || async {
                events
                    .list(&ListParams::default().fields("reason=DisruptionBlocked"))
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .find(|e| {
                        e.involved_object.name.as_deref() == Some(builder_node.as_str())
                            && e.message.as_deref().unwrap_or("").contains(&builder_pod)
                    })
                    .and_then(|e| e.message)
            },
        )
        .await;
    assert!(
        karpenter_nodes(&s).await.contains_key(&builder_node),
        "the builder's node is still there"
    );
    let o = s.get("app").await;
    let p = platform(&o, "linux/arm64").expect("platform status");
    assert_eq!(p.reason, Some(Reason::Building), "still building: {p:?}");
    assert_eq!(p.node.as_ref(), Some(&builder_node));
    assert_eq!(p.disruptions, 0, "not disrupted: {p:?}");
    progress(format!(
        "karpenter consolidation: the control's node replaced {:.1} s after it became \
         underutilized; the builder's node kept: {blocked}",
        replaced_after.as_secs_f64()
    ));
    s.mais()
        .delete("app", &Default::default())
        .await
        .expect("deleting the object");
    deployments
        .delete("control", &DeleteParams::default())
        .await
        .expect("deleting the control");
}
