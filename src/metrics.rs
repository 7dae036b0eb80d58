//! Prometheus metrics of the operator, served as text on `--metrics-addr` at `/metrics`.
//!
//! Every label has a bounded set of values: an error category, a platform (validated
//! `os/arch[/variant]`), a result (`succeeded` or a failure reason), a phase, an HTTP verb. Never
//! an object name, a namespace or an error string.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use hyper::body::Bytes;
use kube::runtime::reflector::{ObjectRef, Store};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::api::{MultiArchImage, Phase};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabels {
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    platform: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlatformLabels {
    platform: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabels {
    verb: String,
}

/// The categories failed reconciles are counted under (the `category` label): a fixed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCategory {
    Kubernetes,
    Registry,
    Metadata,
    BuilderNameTaken,
}

impl ErrorCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCategory::Kubernetes => "kubernetes",
            ErrorCategory::Registry => "registry",
            ErrorCategory::Metadata => "metadata",
            ErrorCategory::BuilderNameTaken => "builder_name_taken",
        }
    }
}

fn build_duration_histogram() -> Histogram {
    // 10 s to about 3 h
    Histogram::new(exponential_buckets(10.0, 2.0, 11))
}

/// The operator's metrics; cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    reconciles: Counter,
    reconcile_errors: Family<CategoryLabels, Counter>,
    reconcile_duration: Histogram,
    in_flight: Gauge,
    queue_depth: Gauge,
    /// Objects triggered by a watch event and not yet picked up by a reconcile.
    queued: Mutex<HashSet<ObjectRef<MultiArchImage>>>,
    builds: Family<BuildLabels, Counter>,
    build_duration: Family<PlatformLabels, Histogram, fn() -> Histogram>,
    publishes: Family<ResultLabels, Counter>,
    publish_duration: Histogram,
    objects: Family<PhaseLabels, Gauge>,
    leader: Gauge,
    api_requests: Family<VerbLabels, Counter>,
    /// The controller's cache of objects, read at each scrape for the objects-by-phase gauge.
    store: Mutex<Option<Store<MultiArchImage>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("multiarch");
        let inner = Inner {
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            in_flight: Gauge::default(),
            queue_depth: Gauge::default(),
            queued: Mutex::new(HashSet::new()),
            builds: Family::default(),
            build_duration: Family::new_with_constructor(build_duration_histogram),
            publishes: Family::default(),
            publish_duration: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            objects: Family::default(),
            leader: Gauge::default(),
            api_requests: Family::default(),
            store: Mutex::new(None),
            registry: Registry::default(),
        };
        registry.register("reconciles", "Reconciles run", inner.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error category",
            inner.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            inner.reconcile_duration.clone(),
        );
        registry.register(
            "reconciles_in_flight",
            "Reconciles running now",
            inner.in_flight.clone(),
        );
        registry.register(
            "queue_depth",
            "Objects changed (or whose builders changed) and waiting for a reconcile",
            inner.queue_depth.clone(),
        );
        registry.register(
            "builds",
            "Platform builds finished, by platform and result (succeeded, or the failure reason)",
            inner.builds.clone(),
        );
        registry.register(
            "build_duration_seconds",
            "From a successful builder's creation to its completion, by platform",
            inner.build_duration.clone(),
        );
        registry.register(
            "publishes",
            "Index publications, by result (published, or the failure reason)",
            inner.publishes.clone(),
        );
        registry.register(
            "publish_duration_seconds",
            "Time to verify, tag and push one index",
            inner.publish_duration.clone(),
        );
        registry.register(
            "objects",
            "MultiArchImage objects watched, by phase",
            inner.objects.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica reconciles (holds the lease, or runs without leader election)",
            inner.leader.clone(),
        );
        registry.register(
            "kube_api_requests",
            "Requests the operator sent to the Kubernetes API, by verb",
            inner.api_requests.clone(),
        );
        Metrics {
            inner: Arc::new(Inner { registry, ..inner }),
        }
    }

    /// A watch event touched `object`: it waits for a reconcile.
    pub fn queued(&self, object: ObjectRef<MultiArchImage>) {
        let mut queued = self.inner.queued.lock().unwrap_or_else(|e| e.into_inner());
        queued.insert(object);
        self.inner.queue_depth.set(queued.len() as i64);
    }

    /// A reconcile of `object` starts; the returned guard counts it in flight until dropped.
    pub fn reconcile_started(&self, object: &ObjectRef<MultiArchImage>) -> ReconcileGuard {
        {
            let mut queued = self.inner.queued.lock().unwrap_or_else(|e| e.into_inner());
            queued.remove(object);
            self.inner.queue_depth.set(queued.len() as i64);
        }
        self.inner.reconciles.inc();
        self.inner.in_flight.inc();
        ReconcileGuard {
            metrics: self.clone(),
            started: std::time::Instant::now(),
        }
    }

    /// A reconcile failed with an error of `category`.
    pub fn reconcile_failed(&self, category: ErrorCategory) {
        self.inner
            .reconcile_errors
            .get_or_create(&CategoryLabels {
                category: category.as_str().to_string(),
            })
            .inc();
    }

    /// A platform's build ended: `result` is `succeeded` or the failure reason.
    pub fn build_finished(&self, platform: &str, result: &str, duration: Option<Duration>) {
        self.inner
            .builds
            .get_or_create(&BuildLabels {
                platform: platform.to_string(),
                result: result.to_string(),
            })
            .inc();
        if let Some(d) = duration {
            self.inner
                .build_duration
                .get_or_create(&PlatformLabels {
                    platform: platform.to_string(),
                })
                .observe(d.as_secs_f64());
        }
    }

    /// A publication ended: `result` is `published` or the failure reason.
    pub fn published(&self, result: &str, duration: Duration) {
        self.inner
            .publishes
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
        self.inner.publish_duration.observe(duration.as_secs_f64());
    }

    pub fn set_leader(&self, leader: bool) {
        self.inner.leader.set(i64::from(leader));
    }

    /// Counts one request to the Kubernetes API.
    pub fn api_request<B>(&self, request: &http::Request<B>) {
        let watch = request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
        let verb = match *request.method() {
            http::Method::GET if watch => "watch",
            http::Method::GET => "get",
            http::Method::POST => "create",
            http::Method::PUT => "update",
            http::Method::PATCH => "patch",
            http::Method::DELETE => "delete",
            _ => "other",
        };
        self.inner
            .api_requests
            .get_or_create(&VerbLabels { verb: verb.into() })
            .inc();
    }

    /// The objects-by-phase gauge is read from `store` at each scrape.
    pub fn watch_objects(&self, store: Store<MultiArchImage>) {
        *self.inner.store.lock().unwrap_or_else(|e| e.into_inner()) = Some(store);
    }

    /// Sets the objects-by-phase gauge from the objects watched now.
    pub fn count_objects<'a>(&self, objects: impl IntoIterator<Item = &'a MultiArchImage>) {
        let mut counts: std::collections::BTreeMap<&'static str, i64> = [
            Phase::Pending,
            Phase::Building,
            Phase::Publishing,
            Phase::Succeeded,
            Phase::Failed,
        ]
        .into_iter()
        .map(|p| (p.as_str(), 0))
        .collect();
        for obj in objects {
            let phase = obj
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .unwrap_or(Phase::Pending);
            *counts.entry(phase.as_str()).or_default() += 1;
        }
        for (phase, n) in counts {
            self.inner
                .objects
                .get_or_create(&PhaseLabels {
                    phase: phase.into(),
                })
                .set(n);
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let store = self
            .inner
            .store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(store) = store {
            let objects = store.state();
            self.count_objects(objects.iter().map(|o| o.as_ref()));
        }
        let mut out = String::new();
        // writing into a String cannot fail
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }
}

/// Counts a reconcile in flight and observes its duration when dropped.
pub struct ReconcileGuard {
    metrics: Metrics,
    started: std::time::Instant,
}

impl Drop for ReconcileGuard {
    fn drop(&mut self) {
        self.metrics.inner.in_flight.dec();
        self.metrics
            .inner
            .reconcile_duration
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// Serves `/metrics` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> std::io::Result<()> {
    crate::health::serve_paths(addr, "/metrics", move |path| match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Bytes::from(metrics.encode()),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from("not found"),
        ),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_bounded_labels_and_counts() {
        let m = Metrics::new();
        m.build_finished("linux/arm64", "succeeded", Some(Duration::from_secs(42)));
        m.build_finished("linux/arm64", "BuildFailed", None);
        m.reconcile_failed(ErrorCategory::Registry);
        let req = http::Request::get("/apis/batch/v1/jobs?watch=true&labelSelector=x")
            .body(())
            .unwrap();
        m.api_request(&req);
        let text = m.encode();
        assert!(text
            .contains("multiarch_builds_total{platform=\"linux/arm64\",result=\"succeeded\"} 1"));
        assert!(text
            .contains("multiarch_builds_total{platform=\"linux/arm64\",result=\"BuildFailed\"} 1"));
        assert!(text.contains("multiarch_build_duration_seconds_count{platform=\"linux/arm64\"} 1"));
        assert!(text.contains("multiarch_reconcile_errors_total{category=\"registry\"} 1"));
        assert!(text.contains("multiarch_kube_api_requests_total{verb=\"watch\"} 1"));
    }

    #[test]
    fn queue_depth_counts_distinct_waiting_objects() {
        let m = Metrics::new();
        let a = ObjectRef::<MultiArchImage>::new("a").within("ns");
        let b = ObjectRef::<MultiArchImage>::new("b").within("ns");
        m.queued(a.clone());
        m.queued(a.clone());
        m.queued(b);
        assert!(m.encode().contains("multiarch_queue_depth 2"));
        let guard = m.reconcile_started(&a);
        let text = m.encode();
        assert!(text.contains("multiarch_queue_depth 1"));
        assert!(text.contains("multiarch_reconciles_in_flight 1"));
        drop(guard);
        assert!(m.encode().contains("multiarch_reconciles_in_flight 0"));
    }
}
