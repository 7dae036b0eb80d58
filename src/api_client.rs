//! The Kubernetes client the operator talks to the apiserver with: every call must be answered
//! within a timeout (a watch's answer starts at once; its events then stream), connecting and
//! sending are bounded too, every request is counted for the metrics, and, with leader election,
//! no request leaves after the leader's [`Fence`] closed.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use kube::client::ClientBuilder;
use kube::Client;

/// Until when this replica may talk to the apiserver as the leader. Kubernetes has no fencing
/// token, so the leader fences itself by time: a successful renewal that started at `t` opens the
/// fence until `t` plus the renew deadline, which is before any standby can consider the Lease
/// expired (a standby waits a whole lease duration from when it saw the renewal, which is after
/// `t`). A request is refused once the fence is closed, and a request in flight is abandoned when
/// it closes: every call's timeout is the smaller of the client's timeout and the fence's margin.
#[derive(Clone, Debug)]
pub struct Fence {
    /// `None`: no leader election, never fenced.
    until: Option<Arc<Mutex<Instant>>>,
}

impl Fence {
    /// A fence that never closes (one replica, no leader election).
    pub fn unfenced() -> Self {
        Fence { until: None }
    }

    /// A fence closed until the first [`Fence::open_until`] (a replica that is not leading yet).
    pub fn closed() -> Self {
        Fence {
            until: Some(Arc::new(Mutex::new(Instant::now()))),
        }
    }

    /// Opens the fence until `until` (never moves it back).
    pub fn open_until(&self, until: Instant) {
        if let Some(lock) = &self.until {
            let mut current = lock.lock().unwrap_or_else(|e| e.into_inner());
            *current = (*current).max(until);
        }
    }

    /// Closes the fence now: nothing more is sent.
    pub fn close(&self) {
        if let Some(lock) = &self.until {
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
    }

    /// When the fence closes; `None` when it never does.
    pub fn until(&self) -> Option<Instant> {
        self.until
            .as_ref()
            .map(|lock| *lock.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The error of a request refused or abandoned by a closed [`Fence`].
#[derive(Debug, thiserror::Error)]
#[error("not sent: this replica's leadership ended (the lease was not renewed in time)")]
pub struct Fenced;

/// The tower layer that applies a [`Fence`] to every request.
#[derive(Clone)]
struct FenceLayer(Fence);

impl<S> tower::Layer<S> for FenceLayer {
    type Service = FencedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FencedService {
            inner,
            fence: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct FencedService<S> {
    inner: S,
    fence: Fence,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, R> tower::Service<R> for FencedService<S>
where
    S: tower::Service<R>,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let Some(until) = self.fence.until() else {
            let call = self.inner.call(req);
            return Box::pin(async move { call.await.map_err(Into::into) });
        };
        if Instant::now() >= until {
            return Box::pin(std::future::ready(Err(Fenced.into())));
        }
        let call = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout_at(until.into(), call).await {
                Ok(answer) => answer.map_err(Into::into),
                Err(_) => Err(Fenced.into()),
            }
        })
    }
}

/// A client for `config` whose calls fail after `timeout` without an answer, and are neither
/// sent nor waited for once `fence` closes; `on_request` sees every request before it is sent.
pub fn build(
    mut config: kube::Config,
    timeout: Duration,
    fence: Fence,
    on_request: impl Fn(&http::Request<kube::client::Body>) + Clone + Send + Sync + 'static,
) -> Result<Client, kube::Error> {
    config.connect_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    let client = ClientBuilder::try_from(config)?
        .with_layer(&tower::timeout::TimeoutLayer::new(timeout))
        .with_layer(&FenceLayer(fence))
        .with_layer(&tower::util::MapRequestLayer::new(
            move |req: http::Request<kube::client::Body>| {
                on_request(&req);
                req
            },
        ))
        .build();
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_opens_forward_only_and_closes_at_once() {
        assert_eq!(Fence::unfenced().until(), None);
        let fence = Fence::closed();
        let later = Instant::now() + Duration::from_secs(10);
        fence.open_until(later);
        fence.open_until(later - Duration::from_secs(5));
        assert_eq!(fence.until(), Some(later), "never moved back");
        let copy = fence.clone();
        fence.close();
        assert!(
            copy.until().unwrap() <= Instant::now(),
            "closed for every clone"
        );
    }
}
