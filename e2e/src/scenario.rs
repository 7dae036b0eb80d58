//! One scenario: its namespace, its share of the environment's lock, typed access to its
//! objects, and waits on watches with timeouts. A failing scenario prints the operator's log
//! lines about its own namespace.

use std::fs::File;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use multiarch_operator::api::{MultiArchImage, MultiArchImageSpec};
use serde_json::json;

use crate::{env, operator, progress};

/// How a scenario uses what the scenarios share (the default operator, the static nodes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Runs beside other shared scenarios, with the default operator.
    Shared,
    /// Stops the operator or removes shared nodes: runs alone, and puts the default operator
    /// back when it ends, passed or failed.
    Exclusive,
}

/// A running scenario. Dropping it reports the result and, on failure, the operator's log lines
/// about the scenario's namespace.
pub struct Scenario {
    pub name: &'static str,
    pub ns: String,
    pub client: Client,
    access: Access,
    started: Instant,
    log_offset: u64,
    _lock: File,
}

/// A `MultiArchImage` of the sample service in `ns`, pushing to the suite's registry, tags
/// `1.0.0` and `latest`: the product's own type, adjusted by each scenario.
pub fn mai(ns: &str, name: &str, platforms: &[&str]) -> MultiArchImage {
    let env = env();
    let spec: MultiArchImageSpec = serde_json::from_value(json!({
        "source": {"git": {"url": env.git_url, "revision": "main"}},
        "image": format!("{}/{ns}/{name}", env.registry),
        "tags": ["1.0.0", "latest"],
        "platforms": platforms,
    }))
    .expect("a valid spec");
    let mut m = MultiArchImage::new(name, spec);
    m.metadata.namespace = Some(ns.to_string());
    m
}

impl Scenario {
    /// Starts scenario `name` in a fresh namespace `ns`.
    pub async fn start(name: &'static str, ns: &str, access: Access) -> Scenario {
        let env = env();
        let lock_path = env.state.join("e2e.lock");
        let lock = tokio::task::spawn_blocking(move || {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .unwrap_or_else(|e| panic!("opening {}: {e}", lock_path.display()));
            match access {
                Access::Shared => file.lock_shared(),
                Access::Exclusive => file.lock(),
            }
            .expect("the environment's lock");
            file
        })
        .await
        .expect("taking the lock");
        progress(format!("--- {name} ({ns})"));
        if access == Access::Shared {
            tokio::task::spawn_blocking(operator::ensure_default)
                .await
                .expect("the default operator");
        }
        let client = env.client().await;
        let s = Scenario {
            name,
            ns: ns.to_string(),
            client,
            access,
            started: Instant::now(),
            log_offset: operator::log_offset(),
            _lock: lock,
        };
        s.fresh_namespace(ns, &[]).await;
        s
    }

    /// Creates namespace `ns` with `labels`, deleting a leftover of an earlier run first.
    pub async fn fresh_namespace(&self, ns: &str, labels: &[(&str, &str)]) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        if api.get_opt(ns).await.expect("reading namespaces").is_some() {
            let _ = api.delete(ns, &DeleteParams::foreground()).await;
            self.poll(&format!("namespace {ns} deleted"), 120, || async {
                api.get_opt(ns)
                    .await
                    .ok()
                    .and_then(|n| n.is_none().then_some(()))
            })
            .await;
        }
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns, "labels": labels}}))
                .expect("a namespace");
        api.create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {ns}: {e}"));
    }

    /// The `MultiArchImage`s of namespace `ns`.
    pub fn mais_in(&self, ns: &str) -> Api<MultiArchImage> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// The scenario's `MultiArchImage`s.
    pub fn mais(&self) -> Api<MultiArchImage> {
        self.mais_in(&self.ns)
    }

    /// [`mai`] in the scenario's namespace.
    pub fn mai(&self, name: &str, platforms: &[&str]) -> MultiArchImage {
        mai(&self.ns, name, platforms)
    }

    /// Applies `m` (server-side apply, field manager `e2e`).
    pub async fn apply(&self, m: &MultiArchImage) {
        let ns = m.namespace().unwrap_or_else(|| self.ns.clone());
        self.mais_in(&ns)
            .patch(
                &m.name_any(),
                &PatchParams::apply("e2e").force(),
                &Patch::Apply(m),
            )
            .await
            .unwrap_or_else(|e| panic!("applying {ns}/{}: {e}", m.name_any()));
    }

    /// Merge-patches `name`'s metadata or spec with `patch`.
    pub async fn patch(&self, name: &str, patch: serde_json::Value) {
        self.mais()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("patching {name}: {e}"));
    }

    /// Sets (or with `None` removes) annotation `key` on `name`.
    pub async fn annotate(&self, name: &str, key: &str, value: Option<&str>) {
        self.patch(name, json!({"metadata": {"annotations": {key: value}}}))
            .await;
    }

    /// The object as it is now.
    pub async fn get(&self, name: &str) -> MultiArchImage {
        self.mais()
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("reading {name}: {e}"))
    }

    /// Waits (on a watch) until `name` in namespace `ns` satisfies `ready`, `secs` at most;
    /// fails the test with `what` and the object's status otherwise.
    pub async fn wait_in(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        secs: u64,
        ready: impl Fn(&MultiArchImage) -> bool,
    ) -> MultiArchImage {
        let api = self.mais_in(ns);
        let cond = |o: Option<&MultiArchImage>| o.is_some_and(&ready);
        match tokio::time::timeout(
            Duration::from_secs(secs),
            await_condition(api.clone(), name, cond),
        )
        .await
        {
            Ok(Ok(Some(o))) => o,
            Ok(Ok(None)) => panic!("{ns}/{name}: gone while waiting for {what}"),
            Ok(Err(e)) => panic!("{ns}/{name}: watch failed while waiting for {what}: {e}"),
            Err(_) => {
                let now = api.get_opt(name).await.ok().flatten();
                panic!(
                    "{ns}/{name}: {what} did not happen within {secs} s; status now: {}",
                    now.and_then(|o| o.status)
                        .map(|s| serde_json::to_string_pretty(&s).unwrap_or_default())
                        .unwrap_or_else(|| "none".into())
                )
            }
        }
    }

    /// [`Scenario::wait_in`] in the scenario's namespace.
    pub async fn wait(
        &self,
        name: &str,
        what: &str,
        secs: u64,
        ready: impl Fn(&MultiArchImage) -> bool,
    ) -> MultiArchImage {
        self.wait_in(&self.ns, name, what, secs, ready).await
    }

    /// Waits until `name` is `Ready=True` for its current generation.
    pub async fn wait_ready(&self, name: &str, secs: u64) -> MultiArchImage {
        self.wait(name, "Ready", secs, |o| {
            condition(o, "Ready").is_some_and(|c| c.status == "True")
                && o.status.as_ref().and_then(|s| s.observed_generation) == o.metadata.generation
        })
        .await
    }

    /// Waits until condition `kind` of `name` has `reason`.
    pub async fn wait_reason(
        &self,
        name: &str,
        kind: &str,
        reason: &str,
        secs: u64,
    ) -> MultiArchImage {
        self.wait(name, &format!("{kind} with reason {reason}"), secs, |o| {
            condition(o, kind).is_some_and(|c| c.reason == reason)
        })
        .await
    }

    /// Watches `name` for `window` and asserts `holds` of every state it is seen in (the
    /// first is the state at the start). For "it does not happen" claims.
    pub async fn holds_for(
        &self,
        name: &str,
        what: &str,
        window: Duration,
        holds: impl Fn(&MultiArchImage) -> bool,
    ) {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let stream = watcher(self.mais(), config);
        let mut seen = 0;
        let watch = async {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.try_next().await.expect("watching the object") {
                if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = event {
                    seen += 1;
                    assert!(
                        holds(&o),
                        "{}/{name}: {what} stopped holding; status: {}",
                        self.ns,
                        serde_json::to_string_pretty(&o.status).unwrap_or_default()
                    );
                }
            }
        };
        let _ = tokio::time::timeout(window, watch).await;
        assert!(seen > 0, "{}/{name}: never seen while watching", self.ns);
    }

    /// Polls `check` every 250 ms until it gives a value, `secs` at most (for lists and
    /// objects of other kinds, where no single watch expresses the wait).
    pub async fn poll<T, F, Fut>(&self, what: &str, secs: u64, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {what} did not happen within {secs} s",
                self.ns
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Jobs in `ns` matching label `selector` ("" for all), sorted by name.
    pub async fn jobs_in(&self, ns: &str, selector: &str) -> Vec<Job> {
        let mut jobs = Api::<Job>::namespaced(self.client.clone(), ns)
            .list(&ListParams::default().labels(selector))
            .await
            .expect("listing Jobs")
            .items;
        jobs.sort_by_key(|j| j.name_any());
        jobs
    }

    /// The scenario's Jobs matching `selector`.
    pub async fn jobs(&self, selector: &str) -> Vec<Job> {
        self.jobs_in(&self.ns, selector).await
    }

    /// Names of the scenario's Jobs matching `selector`.
    pub async fn job_names(&self, selector: &str) -> Vec<String> {
        self.jobs(selector)
            .await
            .iter()
            .map(|j| j.name_any())
            .collect()
    }

    /// Pods in the scenario's namespace matching `selector`.
    pub async fn pods(&self, selector: &str) -> Vec<Pod> {
        let mut pods = Api::<Pod>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default().labels(selector))
            .await
            .expect("listing Pods")
            .items;
        pods.sort_by_key(|p| p.name_any());
        pods
    }

    /// The operator's log lines about this scenario's namespace since it started.
    pub fn operator_log(&self) -> String {
        // text logs say namespace="ns", JSON logs "namespace":"ns"
        let text = format!("namespace=\"{}\"", self.ns);
        let json = format!("\"namespace\":\"{}\"", self.ns);
        operator::log_since(self.log_offset)
            .lines()
            .filter(|l| l.contains(&text) || l.contains(&json))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Condition `kind` of `o`, if present.
pub fn condition<'a>(
    o: &'a MultiArchImage,
    kind: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    o.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == kind))
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let secs = self.started.elapsed().as_secs();
        if std::thread::panicking() {
            progress(format!("    {} FAILED after {secs} s", self.name));
            let log = self.operator_log();
            progress(format!(
                "    operator log about {}:\n{}",
                self.ns,
                operator::tail(&log, 30)
            ));
        } else {
            progress(format!("    {} ok ({secs} s)", self.name));
        }
        if self.access == Access::Exclusive {
            let _ = std::panic::catch_unwind(operator::ensure_default);
        }
    }
}

/// Collects a watch stream's first `n` items (used by scenarios that wait on other kinds).
pub async fn first_n<K, S>(stream: S, n: usize) -> Vec<K>
where
    S: futures::Stream<Item = Result<K, watcher::Error>>,
{
    stream.take(n).try_collect().await.expect("watching")
}
