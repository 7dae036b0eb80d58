//! The `multiarch-operator` binary: `run` (the controller), `crd` (print the CRD) and `publish`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use multiarch_operator::api_client::Fence;
use multiarch_operator::config::{
    parse_duration, BuilderDefaults, Guardrails, DEFAULT_BUILDER_IMAGE, DEFAULT_SBOM_SCANNER_IMAGE,
};
use multiarch_operator::controller::leader::LeaderElection;
use multiarch_operator::controller::Settings;
use multiarch_operator::metrics::Metrics;
use multiarch_operator::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "multiarch-operator",
    version,
    about = "Native multi-architecture image builds for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run(Box<RunArgs>),
    /// Print the MultiArchImage CustomResourceDefinition (YAML).
    Crd,
    /// Assemble per-platform images into a verified OCI image index and push it to tags.
    Publish(multiarch_operator::publish::cli::PublishArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Namespace to watch (default: all namespaces).
    #[arg(long, env = "MULTIARCH_NAMESPACE")]
    namespace: Option<String>,
    /// Objects reconciled at once.
    #[arg(long, env = "MULTIARCH_CONCURRENCY", default_value_t = 4)]
    concurrency: u16,
    /// How long an object's changes settle before it is reconciled: the changes that arrive
    /// within it (two builders starting, the last builder ending and its Job completing) are
    /// looked at once and share one status write. From 0 (each change at once) to 5s.
    #[arg(long, env = "MULTIARCH_RECONCILE_DEBOUNCE", default_value = "500ms")]
    reconcile_debounce: String,
    /// Default BuildKit image of builders (rootless).
    #[arg(long, env = "MULTIARCH_BUILDER_IMAGE", default_value = DEFAULT_BUILDER_IMAGE)]
    builder_image: String,
    /// Default SBOM scanner image of `spec.attestations.sbom` (BuildKit's SBOM scanner
    /// protocol; multi-arch, it runs on every builder's node).
    #[arg(long, env = "MULTIARCH_SBOM_SCANNER_IMAGE", default_value = DEFAULT_SBOM_SCANNER_IMAGE)]
    sbom_scanner_image: String,
    /// Default builder resource requests, as name=quantity (repeatable).
    #[arg(
        long = "builder-request",
        env = "MULTIARCH_BUILDER_REQUESTS",
        value_delimiter = ','
    )]
    builder_requests: Vec<String>,
    /// Default node selector entries for builders, as key=value (repeatable).
    #[arg(
        long = "builder-node-selector",
        env = "MULTIARCH_BUILDER_NODE_SELECTOR",
        value_delimiter = ','
    )]
    builder_node_selector: Vec<String>,
    /// Default per-attempt build timeout.
    #[arg(long, env = "MULTIARCH_BUILD_TIMEOUT", default_value = "45m")]
    build_timeout: String,
    /// Default time a builder may wait for a node.
    #[arg(long, env = "MULTIARCH_PROVISIONING_TIMEOUT", default_value = "15m")]
    provisioning_timeout: String,
    /// Builder pods lost to disruptions that are replaced per attempt.
    #[arg(long, env = "MULTIARCH_MAX_DISRUPTIONS", default_value_t = 3)]
    max_disruptions: i32,
    /// How long finished builders are kept.
    #[arg(long, env = "MULTIARCH_FINISHED_BUILDER_TTL", default_value = "1h")]
    finished_builder_ttl: String,
    /// How often an unavailable source (denied access, missing revision or Secret) is tried
    /// again, so that a fixed Secret or a pushed branch is noticed without a spec change.
    #[arg(long, env = "MULTIARCH_SOURCE_RETRY_INTERVAL", default_value = "1m")]
    source_retry_interval: String,
    /// How long a git server that cannot be reached (refused, timed out, failing) keeps a new
    /// build in progress (`Reconciling`, retried every 15 s) before the object stalls
    /// (`Stalled`/`SourceUnavailable`, still retried at the source retry interval).
    #[arg(long, env = "MULTIARCH_SOURCE_STALL_AFTER", default_value = "5m")]
    source_stall_after: String,
    /// The shortest `spec.source.git.pollInterval` honoured; shorter intervals are raised to it.
    #[arg(long, env = "MULTIARCH_MIN_POLL_INTERVAL", default_value = "1m")]
    min_poll_interval: String,
    /// How often base images are checked for an object with `rebuildOn.baseImages` and no
    /// `pollInterval`.
    #[arg(long, env = "MULTIARCH_BASE_IMAGE_INTERVAL", default_value = "1h")]
    base_image_interval: String,
    /// How long a call to the Kubernetes API may go unanswered (and connecting and sending
    /// take) before it fails and is retried.
    #[arg(long, env = "MULTIARCH_API_TIMEOUT", default_value = "15s")]
    api_timeout: String,
    /// Talk plain HTTP to registries.
    #[arg(long, env = "MULTIARCH_REGISTRY_PLAIN_HTTP")]
    registry_plain_http: bool,
    /// Do not verify registries' TLS certificates.
    #[arg(long, env = "MULTIARCH_REGISTRY_INSECURE")]
    registry_insecure: bool,
    /// Extra CA bundle (PEM) for registries.
    #[arg(long, env = "MULTIARCH_REGISTRY_CA_FILE")]
    registry_ca_file: Option<PathBuf>,
    /// Default tolerations for builders, as a JSON array of Kubernetes tolerations.
    #[arg(long, env = "MULTIARCH_BUILDER_TOLERATIONS")]
    builder_tolerations: Option<String>,
    /// Guardrail: images a spec's builder.image may name besides the default builder image:
    /// exact references, digests (repo@sha256:...) or prefixes ending in `*` (comma-separated).
    #[arg(long, env = "MULTIARCH_ALLOWED_BUILDER_IMAGES", value_delimiter = ',')]
    allowed_builder_images: Vec<String>,
    /// Guardrail: ServiceAccounts a spec's builder.serviceAccountName may name (`*`: any).
    #[arg(
        long,
        env = "MULTIARCH_ALLOWED_BUILDER_SERVICE_ACCOUNTS",
        value_delimiter = ',',
        default_value = "default"
    )]
    allowed_builder_service_accounts: Vec<String>,
    /// Guardrail: whether specs may add tolerations.
    #[arg(long, env = "MULTIARCH_ALLOW_BUILDER_TOLERATIONS", default_value_t = false, action = clap::ArgAction::Set)]
    allow_builder_tolerations: bool,
    /// Guardrail: toleration keys specs may use (empty: any, when tolerations are allowed).
    #[arg(long, env = "MULTIARCH_ALLOWED_TOLERATION_KEYS", value_delimiter = ',')]
    allowed_toleration_keys: Vec<String>,
    /// Guardrail: whether specs may add node selector entries.
    #[arg(long, env = "MULTIARCH_ALLOW_BUILDER_NODE_SELECTOR", default_value_t = true, action = clap::ArgAction::Set)]
    allow_builder_node_selector: bool,
    /// Guardrail: node selector keys specs may use (empty: any, when node selectors are allowed).
    #[arg(
        long,
        env = "MULTIARCH_ALLOWED_NODE_SELECTOR_KEYS",
        value_delimiter = ','
    )]
    allowed_node_selector_keys: Vec<String>,
    /// Guardrail: whether specs may set builder resources.
    #[arg(long, env = "MULTIARCH_ALLOW_BUILDER_RESOURCES", default_value_t = true, action = clap::ArgAction::Set)]
    allow_builder_resources: bool,
    /// Guardrail: the largest request or limit a spec may set, as name=quantity (comma-separated).
    #[arg(long, env = "MULTIARCH_MAX_BUILDER_RESOURCES", value_delimiter = ',')]
    max_builder_resources: Vec<String>,
    /// Address of /metrics (Prometheus text format).
    #[arg(long, env = "MULTIARCH_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Elect a leader on a Lease, so that of several replicas one reconciles.
    #[arg(long, env = "MULTIARCH_LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the leader election Lease (default: $POD_NAMESPACE, else "default").
    #[arg(long, env = "MULTIARCH_LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "MULTIARCH_LEADER_ELECTION_LEASE",
        default_value = "multiarch-operator"
    )]
    leader_election_lease: String,
    /// How long a leader that stops renewing keeps the Lease.
    #[arg(long, env = "MULTIARCH_LEASE_DURATION", default_value = "15s")]
    lease_duration: String,
    /// Address of /healthz and /readyz.
    #[arg(long, env = "MULTIARCH_HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    health_addr: SocketAddr,
    /// Log level filter (for example info, or multiarch_operator=debug).
    #[arg(long, env = "MULTIARCH_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, env = "MULTIARCH_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn pairs(items: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("{what} {s:?} must be key=value"))
        })
        .collect()
}

fn names(items: &[String]) -> Vec<String> {
    items
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The guardrail flags, parsed once; a bound that is not a quantity stops the operator.
fn guardrails(args: &RunArgs) -> anyhow::Result<Guardrails> {
    let mut max_resources = BTreeMap::new();
    for (k, v) in pairs(&args.max_builder_resources, "--max-builder-resources")? {
        anyhow::ensure!(
            multiarch_operator::guardrails::parse_quantity(&v).is_some(),
            "--max-builder-resources {k}={v}: {v:?} is not a quantity"
        );
        max_resources.insert(
            k,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity(v),
        );
    }
    Ok(Guardrails {
        allowed_images: names(&args.allowed_builder_images),
        allowed_service_accounts: names(&args.allowed_builder_service_accounts),
        allow_tolerations: args.allow_builder_tolerations,
        allowed_toleration_keys: names(&args.allowed_toleration_keys),
        allow_node_selector: args.allow_builder_node_selector,
        allowed_node_selector_keys: names(&args.allowed_node_selector_keys),
        allow_resources: args.allow_builder_resources,
        max_resources,
    })
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(&args.log_level, args.log_format);
    let settings = settings(&args)?;
    let metrics = Metrics::new();
    // with leader election, everything but the Lease goes through the leader's fence
    let fence = match settings.leader_election {
        Some(_) => Fence::closed(),
        None => Fence::unfenced(),
    };
    let clients = multiarch_operator::controller::Clients {
        api: client(&args, &metrics, fence.clone()).await?,
        lease: client(&args, &metrics, Fence::unfenced()).await?,
        fence,
    };
    let readiness = multiarch_operator::health::Readiness::default();
    let health = tokio::spawn(multiarch_operator::health::serve(
        args.health_addr,
        readiness.clone(),
    ));
    let metrics_server = tokio::spawn(multiarch_operator::metrics::serve(
        args.metrics_addr,
        metrics.clone(),
    ));
    let result = multiarch_operator::controller::run(clients, settings, readiness, metrics).await;
    metrics_server.abort();
    health.abort();
    result
}

/// The controller's settings from the flags (and the pod's environment).
fn settings(args: &RunArgs) -> anyhow::Result<Settings> {
    let defaults = builder_defaults(args)?;
    let instance = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "multiarch-operator".into());
    let leader_election = leader_election(args, &unique_identity(&instance))?;
    Ok(Settings {
        namespaces: args.namespace.iter().cloned().collect(),
        concurrency: args.concurrency,
        debounce: parse_debounce(&args.reconcile_debounce)?,
        defaults,
        instance,
        registry_plain_http: args.registry_plain_http,
        registry_insecure: args.registry_insecure,
        registry_ca_file: args.registry_ca_file.clone(),
        leader_election,
        source_retry: parse_duration(&args.source_retry_interval)?,
        source_stall_after: parse_duration(&args.source_stall_after)?,
        min_poll_interval: parse_duration(&args.min_poll_interval)?,
        base_image_interval: parse_duration(&args.base_image_interval)?,
    })
}

/// `--reconcile-debounce`: a duration jiff reads (`500ms`, `1s`, `0s`), at most 5 s (a longer
/// one would hold back what users see).
fn parse_debounce(s: &str) -> anyhow::Result<std::time::Duration> {
    let parsed: jiff::SignedDuration = s
        .parse()
        .map_err(|_| anyhow::anyhow!("--reconcile-debounce: {s:?} is not a duration like 500ms"))?;
    let d = std::time::Duration::try_from(parsed)
        .map_err(|_| anyhow::anyhow!("--reconcile-debounce: {s} is negative"))?;
    anyhow::ensure!(
        d <= std::time::Duration::from_secs(5),
        "--reconcile-debounce: {s} is over 5s"
    );
    Ok(d)
}

/// The operator-wide builder defaults from the flags.
fn builder_defaults(args: &RunArgs) -> anyhow::Result<BuilderDefaults> {
    let guardrails = guardrails(args)?;
    let mut defaults = BuilderDefaults {
        image: args.builder_image.clone(),
        sbom_scanner: args.sbom_scanner_image.clone(),
        timeout: parse_duration(&args.build_timeout)?,
        provisioning_timeout: parse_duration(&args.provisioning_timeout)?,
        max_disruptions: args.max_disruptions,
        finished_ttl: parse_duration(&args.finished_builder_ttl)?,
        node_selector: pairs(&args.builder_node_selector, "--builder-node-selector")?,
        guardrails,
        ..BuilderDefaults::default()
    };
    if let Some(json) = args
        .builder_tolerations
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        defaults.tolerations = serde_json::from_str(json).map_err(|e| {
            anyhow::anyhow!("--builder-tolerations must be a JSON array of tolerations: {e}")
        })?;
    }
    for (k, v) in pairs(&args.builder_requests, "--builder-request")? {
        defaults.requests.insert(
            k,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity(v),
        );
    }
    Ok(defaults)
}

/// This process's leader election identity: its pod name followed by a random suffix, so that two
/// processes never share one (replicas without `POD_NAME` or `HOSTNAME`, or a restarted process
/// in the same pod, whose predecessor's Lease record must not be taken for its own).
fn unique_identity(instance: &str) -> String {
    let mut bytes = [0u8; 4];
    // without randomness, the process id and the clock still tell processes apart
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        bytes = (nanos ^ std::process::id()).to_be_bytes();
    }
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{instance}_{suffix}")
}

/// Leader election, when `--leader-elect` is set, with this replica's identity `instance`.
fn leader_election(args: &RunArgs, instance: &str) -> anyhow::Result<Option<LeaderElection>> {
    if !args.leader_elect {
        return Ok(None);
    }
    let lease_duration = parse_duration(&args.lease_duration)?;
    anyhow::ensure!(
        lease_duration >= std::time::Duration::from_secs(3),
        "--lease-duration must be at least 3s"
    );
    Ok(Some(LeaderElection {
        namespace: args
            .leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into()),
        lease: args.leader_election_lease.clone(),
        identity: instance.to_string(),
        lease_duration,
    }))
}

/// A Kubernetes client from the environment (in-cluster or kubeconfig) whose calls time out after
/// `--api-timeout` and are counted in the metrics.
async fn client(args: &RunArgs, metrics: &Metrics, fence: Fence) -> anyhow::Result<kube::Client> {
    let counter = metrics.clone();
    let client = multiarch_operator::api_client::build(
        kube::Config::infer().await?,
        parse_duration(&args.api_timeout)?,
        fence,
        move |req| counter.api_request(req),
    )?;
    Ok(client)
}

#[tokio::main]
async fn main() {
    multiarch_operator::install_crypto_provider();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => match run(*args).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("multiarch-operator: {e:#}");
                1
            }
        },
        Command::Crd => {
            print!("{}", multiarch_operator::api::crd_yaml());
            0
        }
        Command::Publish(args) => multiarch_operator::publish::cli::run(args).await,
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> RunArgs {
        let mut all = vec!["multiarch-operator", "run"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).map(|c| c.command) {
            Ok(Command::Run(args)) => *args,
            Ok(_) => panic!("not run"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_debounce_reads_milliseconds_and_stays_short() {
        let ms = std::time::Duration::from_millis;
        assert_eq!(parse_debounce("500ms").unwrap(), ms(500));
        assert_eq!(parse_debounce("0s").unwrap(), ms(0));
        assert_eq!(parse_debounce("5s").unwrap(), ms(5000));
        for bad in ["6s", "1m", "-1s", "soon", ""] {
            let e = parse_debounce(bad).unwrap_err().to_string();
            assert!(e.starts_with("--reconcile-debounce"), "{bad}: {e}");
        }
    }

    /// With no flags: the default image and the `default` account only. Then the environment
    /// as the chart renders it, lists that are empty as "": an empty list stays empty (no
    /// ServiceAccount may be named), it does not fall back to the default.
    #[test]
    fn guardrail_flags_default_closed_and_read_the_charts_environment() {
        let g = guardrails(&run_args(&[])).unwrap();
        assert_eq!(g, Guardrails::default());
        assert_eq!(g.allowed_service_accounts, vec!["default".to_string()]);
        // the only test of this binary that touches the environment
        for (k, v) in [
            (
                "MULTIARCH_ALLOWED_BUILDER_IMAGES",
                "registry.example.com/buildkit/*",
            ),
            ("MULTIARCH_ALLOWED_BUILDER_SERVICE_ACCOUNTS", ""),
            ("MULTIARCH_ALLOW_BUILDER_TOLERATIONS", "true"),
            ("MULTIARCH_ALLOWED_TOLERATION_KEYS", "builds,gpu"),
            ("MULTIARCH_ALLOW_BUILDER_NODE_SELECTOR", "false"),
            ("MULTIARCH_ALLOWED_NODE_SELECTOR_KEYS", ""),
            ("MULTIARCH_ALLOW_BUILDER_RESOURCES", "true"),
            (
                "MULTIARCH_MAX_BUILDER_RESOURCES",
                "cpu=16,ephemeral-storage=200Gi,memory=64Gi",
            ),
        ] {
            std::env::set_var(k, v);
        }
        let g = guardrails(&run_args(&[])).unwrap();
        assert_eq!(g.allowed_images, vec!["registry.example.com/buildkit/*"]);
        assert_eq!(g.allowed_service_accounts, Vec::<String>::new());
        assert!(g.allow_tolerations && !g.allow_node_selector && g.allow_resources);
        assert_eq!(g.allowed_toleration_keys, vec!["builds", "gpu"]);
        assert_eq!(g.max_resources.len(), 3);
        std::env::set_var("MULTIARCH_MAX_BUILDER_RESOURCES", "cpu=lots");
        let err = guardrails(&run_args(&[])).unwrap_err().to_string();
        assert!(err.contains("not a quantity"), "{err}");
    }
}
