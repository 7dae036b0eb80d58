//! The Kubernetes client the operator talks to the apiserver with: every call must be answered
//! within a timeout (a watch's answer starts at once; its events then stream), connecting and
//! sending are bounded too, and every request is counted for the metrics.

use std::time::Duration;

use kube::client::ClientBuilder;
use kube::Client;

/// A client for `config` whose calls fail after `timeout` without an answer; `on_request` sees
/// every request before it is sent.
pub fn build(
    mut config: kube::Config,
    timeout: Duration,
    on_request: impl Fn(&http::Request<kube::client::Body>) + Clone + Send + Sync + 'static,
) -> Result<Client, kube::Error> {
    config.connect_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    let client = ClientBuilder::try_from(config)?
        .with_layer(&tower::timeout::TimeoutLayer::new(timeout))
        .with_layer(&tower::util::MapRequestLayer::new(
            move |req: http::Request<kube::client::Body>| {
                on_request(&req);
                req
            },
        ))
        .build();
    Ok(client)
}
