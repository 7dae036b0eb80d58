//! The controller: the only code that talks to the Kubernetes API. It watches `MultiArchImage`
//! objects and their builder Jobs and Pods (kept in reflector stores, so reading them costs no
//! API call), and runs the reconcile loop: dereference -> validate -> plan -> act -> status.

mod observe;
mod publishing;
mod reconcile;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Client};
use tracing::{info, warn};

pub use observe::{observe, reported_digest, stopped_annotation};

use crate::api::MultiArchImage;
use crate::builder::{LABEL_IMAGE, LABEL_MANAGED_BY, LABEL_MANAGED_BY_VALUE};
use crate::config::BuilderDefaults;

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "multiarch.dev/operator";

/// Settings of `multiarch-operator run`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to watch; empty watches all.
    pub namespaces: Vec<String>,
    /// Objects reconciled at once.
    pub concurrency: u16,
    pub defaults: BuilderDefaults,
    /// Name reported on Events (the pod name in a cluster).
    pub instance: String,
    /// Talk plain HTTP to registries (for registries on a private network without TLS).
    pub registry_plain_http: bool,
    /// Skip TLS verification for registries.
    pub registry_insecure: bool,
    /// Extra CA bundle (PEM) for registries.
    pub registry_ca_file: Option<std::path::PathBuf>,
}

/// Shared state of the reconcilers.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub jobs: Store<Job>,
    pub pods: Store<Pod>,
    pub recorder: Recorder,
    /// Consecutive failures per object, for backoff.
    failures: Mutex<HashMap<ObjectRef<MultiArchImage>, u32>>,
}

/// Errors of one reconcile; each knows whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("registry: {0}")]
    Registry(String),
    #[error("source: {0}")]
    Source(String),
    #[error("object has no namespace or name")]
    MissingMetadata,
}

impl Error {
    /// A short category for logs and metrics (bounded).
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Registry(_) => "registry",
            Error::Source(_) => "source",
            Error::MissingMetadata => "metadata",
        }
    }
}

fn backoff(ctx: &Context, obj: &MultiArchImage) -> Duration {
    let key = ObjectRef::from(obj);
    let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
    let n = failures.entry(key).or_insert(0);
    *n = (*n + 1).min(10);
    Duration::from_secs((5u64 << (*n - 1)).min(300))
}

fn reset_backoff(ctx: &Context, obj: &MultiArchImage) {
    let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
    failures.remove(&ObjectRef::from(obj));
}

fn error_policy(
    obj: Arc<MultiArchImage>,
    error: &Error,
    ctx: Arc<Context>,
) -> kube::runtime::controller::Action {
    let delay = backoff(&ctx, &obj);
    warn!(
        namespace = obj.metadata.namespace.as_deref().unwrap_or_default(),
        object = obj.metadata.name.as_deref().unwrap_or_default(),
        category = error.category(),
        retry_in = ?delay,
        "reconcile failed: {error}"
    );
    kube::runtime::controller::Action::requeue(delay)
}

/// True once `store` has seen its first complete list.
pub(crate) fn ready_now<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    use futures::FutureExt;
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

/// Runs the controller until SIGTERM/SIGINT; `readiness` is set once the builder caches synced.
pub async fn run(
    client: Client,
    settings: Settings,
    readiness: crate::health::Readiness,
) -> anyhow::Result<()> {
    let wc = watcher::Config::default();
    let builders =
        watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={LABEL_MANAGED_BY_VALUE}"));
    let namespaces = settings.namespaces.clone();

    let (job_store, job_writer) = reflector::store::<Job>();
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let (objects, jobs_api, pods_api): (Api<MultiArchImage>, Api<Job>, Api<Pod>) = match namespaces.as_slice() {
        [ns] => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        [] => (Api::all(client.clone()), Api::all(client.clone()), Api::all(client.clone())),
        _ => anyhow::bail!("watching several namespaces (not all) is not supported yet: give one namespace, or none for all"),
    };
    let jobs = reflector::reflector(job_writer, watcher(jobs_api, builders.clone()))
        .default_backoff()
        .touched_objects();
    let pods = reflector::reflector(pod_writer, watcher(pods_api, builders))
        .default_backoff()
        .touched_objects();

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "multiarch-operator".into(),
            instance: Some(settings.instance.clone()),
        },
    );
    let concurrency = settings.concurrency;
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings,
        jobs: job_store,
        pods: pod_store,
        recorder,
        failures: Mutex::new(HashMap::new()),
    });

    info!("starting the MultiArchImage controller");
    let (jobs_ready, pods_ready) = (ctx.jobs.clone(), ctx.pods.clone());
    tokio::spawn(async move {
        // polled, not awaited: a store's readiness wakes only its latest waiter, and reconciles
        // check it too
        loop {
            if ready_now(&jobs_ready) && ready_now(&pods_ready) {
                readiness.set_ready();
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Controller::new(objects, wc)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .owns_stream(jobs)
        .watches_stream(pods, |pod: Pod| {
            let ns = pod.metadata.namespace.clone()?;
            let name = pod.metadata.labels.as_ref()?.get(LABEL_IMAGE)?.clone();
            Some(ObjectRef::new(&name).within(&ns))
        })
        .shutdown_on_signal()
        .run(reconcile::reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!("controller: {e}");
            }
        })
        .await;
    info!("controller stopped");
    Ok(())
}
