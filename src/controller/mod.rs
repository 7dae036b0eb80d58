//! The controller: the only code that talks to the Kubernetes API. It watches `MultiArchImage`
//! objects and their builder Jobs and Pods (kept in reflector stores, so reading them costs no
//! API call), and runs the reconcile loop (`reconcile`): validate -> observe (`gather`, reading
//! builders with `observe`) -> plan -> execute (`execute`, publishing through `publishing`) ->
//! report.

mod error;
mod execute;
mod follow;
mod gather;
pub mod leader;
mod observe;
mod publishing;
mod reconcile;
mod redact;
mod written;

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

pub use error::Error;
pub use observe::{observe, reported_digest, stopped_annotation};

use crate::api::MultiArchImage;
use crate::builder::{LABEL_MANAGED_BY, LABEL_MANAGED_BY_VALUE};
use crate::config::BuilderDefaults;
use crate::metrics::Metrics;

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "multiarch.dev/operator";

/// Settings of `multiarch-operator run`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to watch; empty watches all.
    pub namespaces: Vec<String>,
    /// Objects reconciled at once.
    pub concurrency: u16,
    /// How long an object's changes settle before it is reconciled (kube-runtime's trailing-edge
    /// debounce): changes within it share one reconcile, and so one status write.
    pub debounce: std::time::Duration,
    pub defaults: BuilderDefaults,
    /// Name reported on Events (the pod name in a cluster).
    pub instance: String,
    /// Talk plain HTTP to registries (for registries on a private network without TLS).
    pub registry_plain_http: bool,
    /// Skip TLS verification for registries.
    pub registry_insecure: bool,
    /// Extra CA bundle (PEM) for registries.
    pub registry_ca_file: Option<std::path::PathBuf>,
    /// Leader election; `None` reconciles at once (a single replica).
    pub leader_election: Option<leader::LeaderElection>,
    /// How often a source that could not be resolved (missing revision, denied access, a
    /// missing Secret) is tried again without any change to the object.
    pub source_retry: std::time::Duration,
    /// How long an unreachable git server keeps a new build in progress before it stalls.
    pub source_stall_after: std::time::Duration,
    /// The shortest poll interval honoured.
    pub min_poll_interval: std::time::Duration,
    /// How often base images are checked when only `rebuildOn.baseImages` is set.
    pub base_image_interval: std::time::Duration,
}

/// Shared state of the reconcilers.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub jobs: Store<Job>,
    pub pods: Store<Pod>,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Consecutive failures per object, for backoff.
    failures: Mutex<HashMap<ObjectRef<MultiArchImage>, u32>>,
    /// When each followed object is polled next.
    pub(crate) polls: follow::Polls,
    /// Statuses written that the object cache may not show yet.
    written: written::Written,
    /// One registry client per push Secret version (`publishing::PublisherKey`), reused.
    publishers: crate::publish::PublisherCache<publishing::PublisherKey>,
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
    ctx.metrics.reconcile_failed(error.category());
    warn!(
        namespace = obj.metadata.namespace.as_deref().unwrap_or_default(),
        object = obj.metadata.name.as_deref().unwrap_or_default(),
        category = error.category().as_str(),
        transient = error.is_transient(),
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

/// Why the controller stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// SIGTERM or SIGINT: finish the reconciles in flight, release the lease, exit 0.
    Signal,
    /// The lease could not be renewed in time: stop at once and exit with an error, so that
    /// this replica never races a new leader.
    LostLease,
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    info!("shutting down");
}

/// The controller's clients: `api` for everything it reads and writes, behind the leader's
/// `fence`; `lease` for the Lease alone (a standby must reach it before it leads).
pub struct Clients {
    pub api: Client,
    pub lease: Client,
    pub fence: crate::api_client::Fence,
}

/// Runs the controller until SIGTERM/SIGINT (or, with leader election, until the lease is lost).
/// `readiness` is set while waiting as a standby, and for the leader once its caches synced.
///
/// Losing the lease stops everything at once: the fence is closed (no request leaves any more),
/// the reconciles in flight are dropped, whatever they were doing (every step is safe to cut:
/// the next leader resumes from what the cluster and the registry show), and the process exits
/// with an error.
pub async fn run(
    clients: Clients,
    settings: Settings,
    readiness: crate::health::Readiness,
    metrics: Metrics,
) -> anyhow::Result<()> {
    let mut signal = Box::pin(shutdown_signal());
    let mut elector = match settings.leader_election.clone() {
        Some(le) => {
            let mut elector =
                leader::Elector::new(clients.lease.clone(), le, clients.fence.clone());
            // a standby is ready: it serves health and metrics and waits for the lease
            readiness.set(true);
            metrics.set_leader(false);
            tokio::select! {
                _ = elector.acquire() => {}
                _ = &mut signal => return Ok(()),
            }
            readiness.set(false);
            Some(elector)
        }
        None => None,
    };
    metrics.set_leader(true);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Stop>();
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let supervisor_metrics = metrics.clone();
    let supervisor = tokio::spawn(async move {
        let cause = match elector.as_mut() {
            Some(e) => tokio::select! {
                _ = e.keep() => Stop::LostLease,
                _ = &mut signal => Stop::Signal,
            },
            None => {
                signal.await;
                Stop::Signal
            }
        };
        if cause == Stop::LostLease {
            supervisor_metrics.set_leader(false);
            let _ = lost_tx.send(());
            return cause;
        }
        let _ = stop_tx.send(cause);
        // release only once no reconcile runs any more
        let _ = done_rx.await;
        if let Some(e) = elector.as_mut() {
            e.release().await;
        }
        cause
    });

    let stop = async move {
        let _ = stop_rx.await;
    };
    let controller = run_controller(clients.api, settings, readiness, metrics, stop);
    tokio::select! {
        finished = controller => {
            finished?;
            let _ = done_tx.send(());
        }
        // dropping the controller drops every reconcile in flight
        Ok(()) = lost_rx => {}
    }
    match supervisor.await? {
        Stop::Signal => Ok(()),
        Stop::LostLease => anyhow::bail!(
            "lost the leader lease: stopped at once (the fence closed, reconciles in flight \
             dropped) so that the new leader is the only one writing"
        ),
    }
}

/// What the caches keep of a watched object: not its managed fields, nor the copy of the last
/// applied manifest `kubectl apply` keeps in an annotation (the operator reads neither; with
/// thousands of objects, Jobs and Pods they are most of the memory the caches take).
fn trim<K: kube::Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
    if let Some(a) = o.meta_mut().annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Watches and reconciles until `stop` resolves; in-flight reconciles finish first.
async fn run_controller(
    client: Client,
    settings: Settings,
    readiness: crate::health::Readiness,
    metrics: Metrics,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let wc = watcher::Config::default();
    let builders =
        watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={LABEL_MANAGED_BY_VALUE}"));
    let objects: Api<MultiArchImage> = watched(&client, &settings.namespaces)?;
    let jobs_api: Api<Job> = watched(&client, &settings.namespaces)?;
    let pods_api: Api<Pod> = watched(&client, &settings.namespaces)?;

    let (job_store, job_writer) = reflector::store::<Job>();
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let (object_store, object_writer) = reflector::store::<MultiArchImage>();
    metrics.watch_objects(object_store.clone());
    let queue = metrics.clone();
    let objects = reflector::reflector(object_writer, watcher(objects, wc).modify(trim))
        .default_backoff()
        .touched_objects()
        .inspect(move |o| {
            if let Ok(o) = o {
                queue.queued(ObjectRef::from(o));
            }
        });
    let queue = metrics.clone();
    let jobs = reflector::reflector(job_writer, watcher(jobs_api, builders.clone()).modify(trim))
        .default_backoff()
        .touched_objects()
        .inspect(move |j: &Result<Job, watcher::Error>| {
            if let Some(o) = j.as_ref().ok().and_then(|j| owner_of(&j.metadata)) {
                queue.queued(o);
            }
        });
    let (queue, job_index) = (metrics.clone(), job_store.clone());
    let pods = reflector::reflector(pod_writer, watcher(pods_api, builders).modify(trim))
        .default_backoff()
        .touched_objects()
        .inspect(move |p: &Result<Pod, watcher::Error>| {
            if let Some(o) = p.as_ref().ok().and_then(|p| owner_of_pod(p, &job_index)) {
                queue.queued(o);
            }
        });

    let config = kube::runtime::controller::Config::default()
        .concurrency(settings.concurrency)
        .debounce(settings.debounce);
    let ctx = context(client, settings, job_store, pod_store, metrics);

    info!("starting the MultiArchImage controller");
    let pod_owners = ctx.jobs.clone();
    set_ready_once_synced(readiness, &ctx, object_store.clone());
    Controller::for_stream(objects, object_store)
        .with_config(config)
        .owns_stream(jobs)
        .watches_stream(pods, move |pod: Pod| owner_of_pod(&pod, &pod_owners))
        .graceful_shutdown_on(stop)
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

/// The API of `K` in the watched namespace, or in all namespaces.
fn watched<K>(client: &Client, namespaces: &[String]) -> anyhow::Result<Api<K>>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespaces {
        [ns] => Ok(Api::namespaced(client.clone(), ns)),
        [] => Ok(Api::all(client.clone())),
        _ => anyhow::bail!("watching several namespaces (not all) is not supported yet: give one namespace, or none for all"),
    }
}

/// The reconcilers' shared state.
fn context(
    client: Client,
    settings: Settings,
    jobs: Store<Job>,
    pods: Store<Pod>,
    metrics: Metrics,
) -> Arc<Context> {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "multiarch-operator".into(),
            instance: Some(settings.instance.clone()),
        },
    );
    Arc::new(Context {
        client,
        settings,
        jobs,
        pods,
        recorder,
        metrics,
        failures: Mutex::new(HashMap::new()),
        polls: follow::Polls::default(),
        written: written::Written::default(),
        publishers: crate::publish::PublisherCache::new(publishing::PUBLISHERS_KEPT),
    })
}

/// Sets `readiness` once every store has seen its first complete list.
fn set_ready_once_synced(
    readiness: crate::health::Readiness,
    ctx: &Context,
    objects: Store<MultiArchImage>,
) {
    let (jobs, pods) = (ctx.jobs.clone(), ctx.pods.clone());
    tokio::spawn(async move {
        // polled, not awaited: a store's readiness wakes only its latest waiter, and reconciles
        // check it too
        loop {
            if ready_now(&jobs) && ready_now(&pods) && ready_now(&objects) {
                readiness.set(true);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// The `MultiArchImage` owning a builder Job (its controller owner reference).
fn owner_of(meta: &kube::api::ObjectMeta) -> Option<ObjectRef<MultiArchImage>> {
    let ns = meta.namespace.as_deref()?;
    let owner = meta
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.kind == "MultiArchImage" && o.controller == Some(true))?;
    Some(ObjectRef::new(&owner.name).within(ns))
}

/// The `MultiArchImage` a builder Pod belongs to, through its Job (object names longer than a
/// label value are hashed in the `multiarch.dev/image` label, so the label cannot name it).
fn owner_of_pod(pod: &Pod, jobs: &Store<Job>) -> Option<ObjectRef<MultiArchImage>> {
    let ns = pod.metadata.namespace.as_deref()?;
    let job = pod
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.kind == "Job" && o.controller == Some(true))?;
    let job = jobs.get(&ObjectRef::new(&job.name).within(ns))?;
    owner_of(&job.metadata)
}
