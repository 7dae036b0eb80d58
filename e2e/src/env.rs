//! The environment `e2e/env.sh up` started, as recorded in its `env` file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Addresses, files and credentials of the running environment.
#[derive(Debug)]
pub struct Env {
    /// `E2E_STATE`: pids, logs, kubeconfigs, the `env` file.
    pub state: PathBuf,
    /// The repository root.
    pub root: PathBuf,
    /// Where the Go-built tools (kubectl, helm, crane, ...) are.
    pub tools_bin: PathBuf,
    /// Admin kubeconfig (the tests' own identity).
    pub kubeconfig: PathBuf,
    /// The operator's kubeconfig: a token of the chart's ServiceAccount.
    pub operator_kubeconfig: PathBuf,
    /// `host:port` of the registry (plain HTTP on loopback).
    pub registry: String,
    /// The sample repository over `git://`.
    pub git_url: String,
    /// The sample repository over smart HTTP, no authentication.
    pub git_http_url: String,
    /// A private copy of the sample over smart HTTP, behind basic authentication.
    pub git_private_url: String,
    /// The user and password the private repository accepts.
    pub git_user: String,
    pub git_password: String,
    /// The operator binary the suite runs (`e2e/run.sh` copies the fresh build here).
    pub operator_bin: PathBuf,
}

static ENV: OnceLock<Env> = OnceLock::new();

/// The running environment. Panics with what to do when it is not up: a scenario never passes
/// without one.
pub fn env() -> &'static Env {
    ENV.get_or_init(|| match load() {
        Ok(env) => env,
        Err(e) => panic!(
            "the e2e environment is not up ({e}): start it with `e2e/env.sh up`, or run the whole \
             suite with `make e2e`"
        ),
    })
}

fn load() -> Result<Env, String> {
    let state = PathBuf::from(
        std::env::var("E2E_STATE").unwrap_or_else(|_| "/tmp/multiarch-e2e".to_string()),
    );
    let file = state.join("env");
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let vars: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = |k: &str| {
        vars.get(k)
            .cloned()
            .ok_or_else(|| format!("{} has no {k}", file.display()))
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .ok_or("no repository root")?;
    let operator_bin = std::env::var("E2E_OPERATOR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| state.join("bin/multiarch-operator"));
    if !operator_bin.exists() {
        return Err(format!(
            "no operator binary at {} (e2e/run.sh copies the fresh build there; or set \
             E2E_OPERATOR)",
            operator_bin.display()
        ));
    }
    Ok(Env {
        tools_bin: PathBuf::from(get("E2E_TOOLS_BIN")?),
        kubeconfig: PathBuf::from(get("KUBECONFIG")?),
        operator_kubeconfig: PathBuf::from(get("E2E_OPERATOR_KUBECONFIG")?),
        registry: get("E2E_REGISTRY")?,
        git_url: get("E2E_GIT_URL")?,
        git_http_url: get("E2E_GIT_HTTP_URL")?,
        git_private_url: get("E2E_GIT_PRIVATE_URL")?,
        git_user: get("E2E_GIT_USER")?,
        git_password: get("E2E_GIT_PASSWORD")?,
        state,
        root,
        operator_bin,
    })
}

impl Env {
    /// A kube client with the admin identity.
    pub async fn client(&self) -> kube::Client {
        multiarch_operator::install_crypto_provider();
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.kubeconfig.display()));
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", self.kubeconfig.display()));
        kube::Client::try_from(config).expect("a kube client")
    }

    /// `PATH` with the tools first, for every command the suite runs.
    pub fn path(&self) -> String {
        format!(
            "{}:{}",
            self.tools_bin.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }
}
