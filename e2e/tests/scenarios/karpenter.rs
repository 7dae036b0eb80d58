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
    let claim = nodeclaims(&s)
        .list(&ListParams::default())
        .await
        .expect("listing NodeClaims")
        .items
        .into_iter()
        .find(|c| c.data["status"]["nodeName"] == json!(first))
        .expect("the NodeClaim of the builder's node");

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
