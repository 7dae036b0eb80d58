//! The operator's HTTP endpoint: `/healthz` (the process serves), `/readyz` (the controller's
//! watches have synced, or it waits as a leader-election standby), on the address given by
//! `--health-addr`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Shared readiness flag, set once the controller's caches are filled.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A plain response: status, content type, body.
pub(crate) type Reply = (StatusCode, &'static str, Bytes);

/// Serves HTTP/1 on `addr` until the process ends, answering each request with `respond(path)`.
pub(crate) async fn serve_paths<F>(addr: SocketAddr, what: &str, respond: F) -> std::io::Result<()>
where
    F: Fn(&str) -> Reply + Clone + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving {what}");
    loop {
        let (stream, _) = listener.accept().await?;
        let respond = respond.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (code, content_type, body) = respond(req.uri().path());
                async move {
                    let mut response = Response::new(Full::new(body));
                    *response.status_mut() = code;
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static(content_type),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Serves the health endpoints until the process ends.
pub async fn serve(addr: SocketAddr, readiness: Readiness) -> std::io::Result<()> {
    serve_paths(addr, "/healthz and /readyz", move |path| {
        let (code, body) = match path {
            "/healthz" => (StatusCode::OK, "ok"),
            "/readyz" if readiness.is_ready() => (StatusCode::OK, "ok"),
            "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "caches not synced"),
            _ => (StatusCode::NOT_FOUND, "not found"),
        };
        (code, "text/plain; charset=utf-8", Bytes::from(body))
    })
    .await
}
