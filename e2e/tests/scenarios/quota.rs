//! A namespace's ResourceQuota: a builder it has no room for waits (`WaitingForQuota`), in
//! progress and never failed, and is built once the quota frees up.

use k8s_openapi::api::core::v1::{Event, ResourceQuota};
use kube::api::{ListParams, PostParams};
use kube::Api;
use multiarch_e2e::registry::{index_platforms, manifest};
use multiarch_e2e::{Access, Scenario};
use multiarch_operator::api::{Phase, PlatformPhase};
use multiarch_operator::builder::object_selector;
use serde_json::json;

use crate::faults::fault;
use multiarch_e2e::scenario::condition;

fn selector(object: &str) -> String {
    object_selector(object)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// With a quota of one pod taken by another object's running builder, a new object's builders
/// are not created and the object says it waits for quota (`Reconciling`, not `Stalled`); when
/// the first build ends, the waiting builders are created and the image is published.
#[tokio::test]
async fn a_builder_without_quota_waits_for_it_and_is_built_when_it_frees_up() {
    let s = Scenario::start("quota", "e2e-quota", Access::Shared).await;
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "builders"},
        "spec": {"hard": {"pods": "1"}},
    }))
    .expect("a ResourceQuota");
    Api::<ResourceQuota>::namespaced(s.client.clone(), &s.ns)
        .create(&PostParams::default(), &quota)
        .await
        .expect("creating the quota");

    let mut first = s.mai("first", &["linux/amd64"]);
    first.metadata.annotations = Some(fault("linux-amd64", "slow-20"));
    s.apply(&first).await;
    s.wait("first", "its builder running", 60, |o| {
        o.status.as_ref().is_some_and(|st| {
            st.platforms
                .iter()
                .any(|p| p.phase == PlatformPhase::Building)
        })
    })
    .await;

    s.apply(&s.mai("second", &["linux/amd64", "linux/arm64"]))
        .await;
    let waiting = s
        .wait_reason("second", "Reconciling", "WaitingForQuota", 60)
        .await;
    let status = waiting.status.as_ref().expect("a status");
    assert_eq!(status.phase, Some(Phase::Pending), "{status:?}");
    multiarch_e2e::kstatus::assert_status(&s.ns, "second", "InProgress");
    let ready = condition(&waiting, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "WaitingForQuota")
    );
    assert!(
        ready.message.contains("exceeded quota"),
        "the quota's message: {}",
        ready.message
    );
    assert!(
        condition(&waiting, "Stalled").is_none_or(|c| c.status != "True"),
        "a quota wait is not a failure: {:?}",
        status.conditions
    );
    assert_eq!(
        s.job_names(&selector("second")).await,
        Vec::<String>::new(),
        "no builder is created while the quota has no room"
    );

    let done = s.wait_ready("second", 240).await;
    let status = done.status.as_ref().expect("a status");
    assert!(
        status
            .platforms
            .iter()
            .all(|p| p.phase == PlatformPhase::Built),
        "{:?}",
        status.platforms
    );
    let index = manifest(&format!("{}/second:1.0.0", s.ns));
    assert_eq!(index_platforms(&index), ["linux/amd64", "linux/arm64"]);
    s.wait_ready("first", 60).await;

    // said once per platform that had to wait, not once per retry
    let events = Api::<Event>::namespaced(s.client.clone(), &s.ns)
        .list(&ListParams::default().fields("involvedObject.name=second"))
        .await
        .expect("listing Events");
    let told: Vec<&Event> = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("WaitingForQuota"))
        .collect();
    let times: i32 = told
        .iter()
        .map(|e| {
            let series = e.series.as_ref().and_then(|s| s.count).unwrap_or(0);
            e.count.unwrap_or(1).max(series).max(1)
        })
        .sum();
    assert!(
        (1..=2).contains(&times),
        "WaitingForQuota told {times} times: {told:?}"
    );
    assert!(
        told.iter().all(|e| e.type_.as_deref() == Some("Normal")),
        "{told:?}"
    );
}
