//! A fault proxy in front of a plain-HTTP registry, with deterministic fault points: each rule
//! answers matching requests (method, path) with a given status, the first N times or always;
//! everything else is forwarded unchanged. It records every request and the connection it came
//! on, so it also serves as a counting proxy. Runs on its own thread and runtime, stopped on
//! drop.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};

/// A fault point.
#[derive(Clone, Debug)]
pub struct FaultRule {
    /// The method it applies to (`None`: any).
    pub method: Option<&'static str>,
    /// It applies to request paths ending with this.
    pub path_suffix: String,
    /// It applies to request paths containing this.
    pub path_contains: String,
    /// The status answered.
    pub status: u16,
    /// How many times it fires (`None`: always).
    pub times: Option<usize>,
}

impl FaultRule {
    /// Fails the first `times` requests whose path contains `path_contains` with `status`.
    pub fn first(
        times: usize,
        method: Option<&'static str>,
        path_contains: &str,
        status: u16,
    ) -> FaultRule {
        FaultRule {
            method,
            path_suffix: String::new(),
            path_contains: path_contains.into(),
            status,
            times: Some(times),
        }
    }

    /// Fails every request of `method` whose path ends with `path_suffix` with `status`.
    pub fn always(method: &'static str, path_suffix: &str, status: u16) -> FaultRule {
        FaultRule {
            method: Some(method),
            path_suffix: path_suffix.into(),
            path_contains: String::new(),
            status,
            times: None,
        }
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method.is_none_or(|m| m == method)
            && path.ends_with(&self.path_suffix)
            && path.contains(&self.path_contains)
    }
}

#[derive(Default)]
struct State {
    fired: Vec<usize>,
    requests: Vec<String>,
    /// The connection (numbered from 1 as accepted) of each request.
    request_connections: Vec<usize>,
    connections: usize,
}

/// A running fault proxy.
pub struct FaultProxy {
    /// `127.0.0.1:PORT`, the address clients use instead of the registry's.
    pub host: String,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    upstream: String,
    host: String,
    rules: Vec<FaultRule>,
    state: Arc<Mutex<State>>,
    client: reqwest::Client,
}

impl FaultProxy {
    /// Starts a proxy to the plain-HTTP registry at `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str, rules: Vec<FaultRule>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let host = format!("127.0.0.1:{}", listener.local_addr().expect("addr").port());
        listener.set_nonblocking(true).expect("nonblocking");
        let state = Arc::new(Mutex::new(State {
            fired: vec![0; rules.len()],
            requests: Vec::new(),
            request_connections: Vec::new(),
            connections: 0,
        }));
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            host: host.clone(),
            rules,
            state: state.clone(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(60))
                .build()
                .expect("proxy client"),
        });
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let stream = tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => match accepted {
                            Ok((s, _)) => s,
                            Err(_) => continue,
                        },
                    };
                    let connection = {
                        let mut state = shared.state.lock().expect("state");
                        state.connections += 1;
                        state.connections
                    };
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let shared = shared.clone();
                            async move {
                                Ok::<_, std::convert::Infallible>(
                                    handle(&shared, req, connection).await,
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        FaultProxy {
            host,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// How many times rule `i` fired.
    pub fn fired(&self, i: usize) -> usize {
        self.state.lock().expect("state").fired[i]
    }

    /// Every request seen, as `METHOD PATH -> STATUS`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().expect("state").requests.clone()
    }

    /// The connections that carried requests (a client may open one more that it never uses,
    /// racing a connect against a connection coming free).
    pub fn connections_used(&self) -> usize {
        let state = self.state.lock().expect("state");
        let mut used = state.request_connections.clone();
        used.sort_unstable();
        used.dedup();
        used.len()
    }
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

async fn handle(
    shared: &Shared,
    req: Request<hyper::body::Incoming>,
    connection: usize,
) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let fault = {
        let mut state = shared.state.lock().expect("state");
        let hit = shared.rules.iter().enumerate().find(|(i, r)| {
            r.matches(&method, &path) && r.times.is_none_or(|n| state.fired[*i] < n)
        });
        match hit {
            Some((i, rule)) => {
                state.fired[i] += 1;
                state
                    .requests
                    .push(format!("{method} {path} -> {} (injected)", rule.status));
                state.request_connections.push(connection);
                Some(rule.status)
            }
            None => None,
        }
    };
    if let Some(status) = fault {
        // the error code a registry sends with this status
        let code = match status {
            429 => "TOOMANYREQUESTS",
            401 => "UNAUTHORIZED",
            404 => "MANIFEST_UNKNOWN",
            _ => "UNAVAILABLE",
        };
        return Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(
                r#"{{"errors":[{{"code":"{code}","message":"injected fault"}}]}}"#
            ))))
            .expect("fault response");
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return bad_gateway("cannot read the request body"),
    };
    let url = format!("http://{}{}", shared.upstream, path_and_query);
    let mut forward = shared.client.request(parts.method.clone(), &url);
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            forward = forward.header(name, value);
        }
    }
    let upstream = match forward.body(body).send().await {
        Ok(r) => r,
        Err(e) => return bad_gateway(&e.to_string()),
    };
    let status = upstream.status();
    let mut response = Response::builder().status(status);
    for (name, value) in upstream.headers() {
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        // the registry builds absolute URLs from its own address: point them at the proxy
        let value = match value.to_str() {
            Ok(v) if v.contains(&shared.upstream) => v.replace(&shared.upstream, &shared.host),
            Ok(v) => v.to_string(),
            Err(_) => continue,
        };
        response = response.header(name, value);
    }
    let bytes = upstream.bytes().await.unwrap_or_default();
    let mut state = shared.state.lock().expect("state");
    state
        .requests
        .push(format!("{method} {path} -> {}", status.as_u16()));
    state.request_connections.push(connection);
    drop(state);
    response
        .body(Full::new(bytes))
        .unwrap_or_else(|_| bad_gateway("bad upstream response"))
}

fn bad_gateway(why: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(why.to_string())));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
