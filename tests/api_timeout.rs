//! The operator's Kubernetes client against an apiserver that accepts connections and never
//! answers: every call fails after the timeout instead of hanging (a hung call must not keep a
//! reconcile, or a leader, waiting for ever).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

#[tokio::test]
async fn a_call_that_is_never_answered_fails_after_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            connections.push(stream); // read nothing, answer nothing
        }
    });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let timeout = Duration::from_millis(1500);
    let counted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = counted.clone();
    let client = multiarch_operator::api_client::build(config, timeout, move |_| {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    })
    .unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let start = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), maps.get("anything")).await;
    let elapsed = start.elapsed();
    let result = result.expect("the call ended on its own, before the test's 30 s");
    assert!(result.is_err(), "no answer is an error");
    assert!(
        elapsed >= timeout && elapsed < timeout * 3,
        "failed after {elapsed:?}, the timeout is {timeout:?}"
    );
    assert_eq!(
        counted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the request was counted"
    );
    held.abort();
}
