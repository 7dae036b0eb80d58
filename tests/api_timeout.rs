//! The operator's Kubernetes client against an apiserver that accepts connections and never
//! answers: every call fails after the timeout instead of hanging (a hung call must not keep a
//! reconcile, or a leader, waiting for ever), and a leader's fence cuts a call in flight when it
//! closes and sends nothing after.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use multiarch_operator::api_client::Fence;

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
    let client =
        multiarch_operator::api_client::build(config, timeout, Fence::unfenced(), move |_| {
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

#[tokio::test]
async fn a_closing_fence_cuts_the_call_in_flight_and_nothing_is_sent_after() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = accepted.clone();
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            connections.push(stream);
        }
    });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let fence = Fence::closed();
    let margin = Duration::from_millis(1000);
    fence.open_until(Instant::now() + margin);
    let client =
        multiarch_operator::api_client::build(config, Duration::from_secs(30), fence, |_| {})
            .unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");

    let start = Instant::now();
    let cut = maps.get("in-flight").await;
    let elapsed = start.elapsed();
    let error = cut
        .expect_err("a call the fence cut is an error")
        .to_string();
    assert!(
        error.contains("leadership ended"),
        "the error says why: {error}"
    );
    assert!(
        elapsed >= margin - Duration::from_millis(100) && elapsed < Duration::from_secs(5),
        "cut after {elapsed:?}, the fence closed after {margin:?} (the client's timeout is 30 s)"
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);

    let start = Instant::now();
    let refused = maps.get("after").await;
    assert!(refused.is_err(), "refused once the fence is closed");
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "refused at once"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "nothing was sent after the fence closed"
    );
    held.abort();
}
