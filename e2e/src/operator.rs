//! The operator process the suite runs out of cluster, with the chart ServiceAccount's token (so
//! its RBAC is the chart's). One default instance serves the shared scenarios; exclusive scenarios
//! stop it, run their own, and put the default back.
//!
//! The pid lives in `$E2E_STATE/operator.pid`, so `e2e/env.sh down` stops whatever is left, and a
//! later test process finds the instance an earlier one started.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cmd::http_get;
use crate::env;

/// Where the default instance serves health and metrics.
pub const HEALTH_ADDR: &str = "127.0.0.1:18081";
pub const METRICS_ADDR: &str = "127.0.0.1:18091";

/// Flags that put builders on the environment's static nodes only (Karpenter's NodePool offers
/// no such label, so it launches nothing for them).
pub fn static_node_args() -> Vec<String> {
    vec![
        "--builder-node-selector".to_string(),
        format!("{STATIC_KEY}=true"),
        "--builder-tolerations".to_string(),
        format!(r#"[{{"key":"{STATIC_KEY}","operator":"Exists","effect":"NoSchedule"}}]"#),
    ]
}

/// How to start an instance.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `MULTIARCH_FAILPOINT`: the process aborts there, like a SIGKILL.
    pub failpoint: Option<String>,
    /// Flags after the defaults.
    pub args: Vec<String>,
    /// Builders go where Karpenter launches nodes: without the default's selector and toleration
    /// of the environment's static nodes.
    pub karpenter: bool,
}

/// The label and taint key of the environment's static nodes (`e2e/env.sh`).
pub const STATIC_KEY: &str = "e2e.multiarch.dev/static";

/// Children this process started, so that they are reaped (a zombie would look alive).
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

fn pid_file() -> std::path::PathBuf {
    env().state.join("operator.pid")
}

/// The log every instance appends to.
pub fn log_path() -> std::path::PathBuf {
    env().state.join("operator.log")
}

/// The current length of the operator log, to read what comes after it.
pub fn log_offset() -> u64 {
    std::fs::metadata(log_path()).map(|m| m.len()).unwrap_or(0)
}

/// The operator log from `offset` on.
pub fn log_since(offset: u64) -> String {
    let text = std::fs::read(log_path()).unwrap_or_default();
    let start = (offset as usize).min(text.len());
    String::from_utf8_lossy(&text[start..]).into_owned()
}

/// Whether `pid` is still running (reaping it when this process is its parent).
pub fn alive(pid: u32) -> bool {
    let mut children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(child) = children.iter_mut().find(|c| c.id() == pid) {
        return matches!(child.try_wait(), Ok(None));
    }
    drop(children);
    // a process another test process started and has not reaped yet is a zombie: it has ended
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The exit status of a child of this process that has ended (`None` if running or not ours).
pub fn exit_code(pid: u32) -> Option<i32> {
    let mut children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let child = children.iter_mut().find(|c| c.id() == pid)?;
    child.try_wait().ok().flatten().and_then(|s| s.code())
}

/// The pid of the instance the pid file names, if it runs.
pub fn running() -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    alive(pid).then_some(pid)
}

/// Starts a process of the operator binary with `args` and environment `vars`, appending to
/// `log`; returns its pid. The caller waits for whatever readiness it needs.
pub fn spawn(args: &[String], vars: &[(String, String)], log: &std::path::Path) -> u32 {
    spawn_with(args, vars, log, false)
}

fn spawn_with(
    args: &[String],
    vars: &[(String, String)],
    log: &std::path::Path,
    clean: bool,
) -> u32 {
    let env = env();
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
    let err = out.try_clone().expect("a second handle on the log");
    let mut command = Command::new(&env.operator_bin);
    if clean {
        command.env_clear();
    }
    let child = command
        .args(args)
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PATH", env.path())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", env.operator_bin.display()));
    let pid = child.id();
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(child);
    pid
}

/// [`spawn`] with only `vars`, `PATH` and `HOME` in the environment (like `env -i`): the
/// process sees exactly what a pod's container would be given.
pub fn spawn_clean(args: &[String], vars: &[(String, String)], log: &std::path::Path) -> u32 {
    let mut all = vec![(
        "HOME".to_string(),
        std::env::var("HOME").unwrap_or_else(|_| "/".into()),
    )];
    all.extend(vars.iter().cloned());
    spawn_with(args, &all, log, true)
}

/// Starts an instance on the default addresses and waits until it is ready (60 s at most).
pub fn start(options: &Options) -> u32 {
    let env = env();
    let mut args: Vec<String> = [
        "run",
        "--registry-plain-http",
        "--health-addr",
        HEALTH_ADDR,
        "--metrics-addr",
        METRICS_ADDR,
        "--provisioning-timeout",
        "15m",
        "--source-retry-interval",
        "5s",
        "--source-stall-after",
        "20s",
        "--min-poll-interval",
        "2s",
        "--base-image-interval",
        "3s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !options.karpenter {
        args.extend(static_node_args());
    }
    // the suite's SBOM scanner (syft behind BuildKit's protocol), which env.sh pushes
    args.push("--sbom-scanner-image".to_string());
    args.push(format!("{}/buildkit/sbom-scanner:e2e", env.registry));
    args.extend(options.args.iter().cloned());
    let mut vars = vec![(
        "KUBECONFIG".to_string(),
        env.operator_kubeconfig.display().to_string(),
    )];
    if let Some(point) = &options.failpoint {
        vars.push(("MULTIARCH_FAILPOINT".to_string(), point.clone()));
    }
    let pid = spawn(&args, &vars, &log_path());
    std::fs::write(pid_file(), pid.to_string()).expect("writing the operator's pid file");
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(HEALTH_ADDR, "/readyz").map(|r| r.0) != Some(200) {
        assert!(
            alive(pid),
            "the operator exited before it was ready; its log:\n{}",
            tail(&log_since(0), 20)
        );
        assert!(
            Instant::now() < deadline,
            "the operator was not ready within 60 s ({options:?})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    pid
}

/// Sends `signal` to `pid` and waits for it to end; a process that ignores it for 20 s is
/// killed, which fails the test.
pub fn stop_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) {
        if Instant::now() > deadline {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("the operator (pid {pid}) ignored SIG{signal} for 20 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops the default instance, if one runs.
pub fn stop(signal: &str) {
    if let Some(pid) = running() {
        stop_pid(pid, signal);
    }
    let _ = std::fs::remove_file(pid_file());
}

/// Makes sure the default instance runs (started with default options when none does).
pub fn ensure_default() {
    if running().is_none() || http_get(HEALTH_ADDR, "/readyz").map(|r| r.0) != Some(200) {
        stop("KILL");
        start(&Options::default());
    }
}

/// Waits for the instance to end by itself (at a fail point), `timeout` at most.
pub fn wait_exit(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the operator did not reach its fail point within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(pid_file());
}

/// The operator's metrics (default instance).
pub fn metrics() -> String {
    http_get(METRICS_ADDR, "/metrics")
        .map(|r| r.1)
        .unwrap_or_default()
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
