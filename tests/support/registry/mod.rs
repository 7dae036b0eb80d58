//! Test harness for the publishing engine against a real registry: Debian's `docker-registry`
//! (the CNCF distribution registry) started on a free loopback port with its own storage in a
//! temporary directory and killed on drop; TLS material from a test CA; htpasswd files; a token
//! issuer ([`token`]); a fault proxy ([`proxy`]); test images pushed with `oci-client`
//! ([`images`]); and runners for the `multiarch-operator` binary and for `skopeo`, the independent
//! client results are checked with.
//!
//! Missing tools are installed with `e2e/registry/install.sh` when running as root; otherwise
//! the tests fail with instructions, never pass silently.
#![allow(dead_code)]

pub mod images;
pub mod proxy;
pub mod token;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// The tools the tests need on PATH.
pub const TOOLS: &[&str] = &["docker-registry", "skopeo"];

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let p = dir.join(tool);
            p.is_file()
                && std::fs::metadata(&p)
                    .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
                    .unwrap_or(false)
        })
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Makes sure `docker-registry` and `skopeo` are installed (installing them as root), or panics
/// saying how to install them.
pub fn ensure_tools() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let missing = || {
            TOOLS
                .iter()
                .filter(|t| !on_path(t))
                .copied()
                .collect::<Vec<_>>()
        };
        if missing().is_empty() {
            return Ok(());
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/registry/install.sh");
        if is_root() {
            eprintln!("installing {:?} with {}", missing(), script.display());
            let status = Command::new("bash").arg(&script).status();
            if !matches!(status, Ok(s) if s.success()) {
                return Err(format!("{} failed: {status:?}", script.display()));
            }
        }
        match missing() {
            m if m.is_empty() => Ok(()),
            m => Err(format!(
                "the registry tests need {m:?} on PATH: install them with `sudo {}` \
                 (apt-get install -y docker-registry skopeo)",
                script.display()
            )),
        }
    });
    if let Err(e) = ready {
        panic!("{e}");
    }
}

/// A free loopback port (never a default such as 5000: the OS picks from its ephemeral range).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// Waits until something accepts connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A test certificate authority and a server certificate it signed for `127.0.0.1` and
/// `localhost`, written as PEM files.
pub struct TestTls {
    /// The CA certificate (what `--ca-file` gets).
    pub ca_file: PathBuf,
    /// A directory with the CA as `ca.crt`, for `skopeo --cert-dir`.
    pub cert_dir: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A CA (self-signed) with a distinct name.
pub fn test_ca(name: &str) -> (CertificateParams, KeyPair, rcgen::Certificate) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("CA certificate");
    (params, key, cert)
}

impl TestTls {
    /// Generates the CA and the server certificate into `dir`.
    pub fn generate(dir: &Path) -> TestTls {
        let (ca_params, ca_key, ca_cert) = test_ca("multiarch-operator test registry CA");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("server params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "test registry");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        let write = |name: &str, body: String| {
            let p = dir.join(name);
            std::fs::write(&p, body).expect("write TLS file");
            p
        };
        let cert_dir = dir.join("certs.d");
        std::fs::create_dir_all(&cert_dir).expect("cert dir");
        std::fs::write(cert_dir.join("ca.crt"), ca_cert.pem()).expect("write ca.crt");
        TestTls {
            ca_file: write("ca.pem", ca_cert.pem()),
            cert_dir,
            cert_file: write("server.pem", cert.pem()),
            key_file: write("server-key.pem", key.serialize_pem()),
        }
    }
}

/// How the registry authenticates clients.
pub enum RegistryAuth {
    /// Anyone may pull and push.
    None,
    /// HTTP basic authentication against an htpasswd file with one user.
    Htpasswd { user: String, password: String },
    /// Bearer tokens from a token service.
    Token {
        realm: String,
        service: String,
        issuer: String,
        root_cert_bundle: PathBuf,
    },
}

/// A running `docker-registry serve`, killed (by its pid) on drop.
pub struct RegistryServer {
    child: Child,
    /// `127.0.0.1:PORT`
    pub host: String,
    pub tls: Option<TestTls>,
    pub dir: tempfile::TempDir,
}

fn htpasswd_line(user: &str, password: &str) -> String {
    let hash = bcrypt::hash_with_result(password, 4)
        .expect("bcrypt")
        .format_for_version(bcrypt::Version::TwoA);
    format!("{user}:{hash}\n")
}

impl RegistryServer {
    /// Starts a registry with `auth`, over TLS with a fresh test CA when `tls` is set.
    pub fn start(auth: RegistryAuth, tls: bool) -> RegistryServer {
        ensure_tools();
        let dir = tempfile::tempdir().expect("registry dir");
        let tls = tls.then(|| TestTls::generate(dir.path()));
        let auth_yaml = match &auth {
            RegistryAuth::None => String::new(),
            RegistryAuth::Htpasswd { user, password } => {
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, htpasswd_line(user, password)).expect("htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: test-registry\n    path: {}\n",
                    path.display()
                )
            }
            RegistryAuth::Token {
                realm,
                service,
                issuer,
                root_cert_bundle,
            } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                root_cert_bundle.display()
            ),
        };
        let tls_yaml = match &tls {
            Some(t) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                t.cert_file.display(),
                t.key_file.display()
            ),
            None => String::new(),
        };
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: test-secret-{port}\n{tls_yaml}\
                 {auth_yaml}",
                storage = dir.path().join("storage").display(),
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).expect("registry config");
            let log_path = dir.path().join("registry.log");
            let log = std::fs::File::create(&log_path).expect("registry log");
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log)
                .spawn()
                .expect("start docker-registry");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
            let start = Instant::now();
            let mut up = false;
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if wait_for_port(addr, Duration::from_millis(100)) {
                    up = true;
                    break;
                }
            }
            if up {
                return RegistryServer {
                    child,
                    host: format!("127.0.0.1:{port}"),
                    tls,
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        }
        panic!("docker-registry did not start; its log:\n{last_log}");
    }

    /// The registry's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `HOST/PATH`
    pub fn repo(&self, path: &str) -> String {
        format!("{}/{path}", self.host)
    }
}

/// A plain-HTTP registry whose clients authenticate with bearer tokens from `issuer`.
pub fn token_registry(issuer: &token::TokenIssuer) -> RegistryServer {
    RegistryServer::start(
        RegistryAuth::Token {
            realm: issuer.realm.clone(),
            service: token::SERVICE.into(),
            issuer: token::ISSUER.into(),
            root_cert_bundle: issuer.root_cert_bundle.clone(),
        },
        false,
    )
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Docker config directory (for `DOCKER_CONFIG`) holding `config`.
pub fn docker_config(config: &serde_json::Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("docker config dir");
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec_pretty(config).expect("json"),
    )
    .expect("write config.json");
    dir
}

/// A Docker config with `auths` basic credentials for `host`.
pub fn docker_config_basic(host: &str, user: &str, password: &str) -> tempfile::TempDir {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    docker_config(&serde_json::json!({"auths": {host: {"auth": auth}}}))
}

/// The result of running a command.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The last line of standard output (where `publish` prints the index digest).
    pub fn last_line(&self) -> String {
        self.stdout
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

/// Runs the real `multiarch-operator publish` with `args`, the Docker config in
/// `docker_config`, and `extra_path` (credential helpers) in front of PATH. Its log level is
/// `info`, or `PUBLISH_TEST_LOG` (for example `multiarch_operator=debug`). `PUBLISH_TEST_BIN`
/// runs another build of the binary (to measure an older release).
pub async fn publish(args: &[String], docker_config: &Path, extra_path: Option<&Path>) -> Output {
    let level = std::env::var("PUBLISH_TEST_LOG").unwrap_or_else(|_| "info".into());
    publish_logging(args, docker_config, extra_path, &level).await
}

/// [`publish`] logging at `level` (`RUST_LOG`), for tests that read what it logs.
pub async fn publish_logging(
    args: &[String],
    docker_config: &Path,
    extra_path: Option<&Path>,
    level: &str,
) -> Output {
    publish_with_env(args, docker_config, extra_path, level, &[]).await
}

/// [`publish_logging`] with more environment variables (`COSIGN_PASSWORD`).
pub async fn publish_with_env(
    args: &[String],
    docker_config: &Path,
    extra_path: Option<&Path>,
    level: &str,
    env: &[(&str, &str)],
) -> Output {
    let bin = std::env::var("PUBLISH_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_multiarch-operator").to_string());
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("publish")
        .args(args)
        .env("DOCKER_CONFIG", docker_config)
        .env("RUST_LOG", level)
        .env_remove("HOME")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    if let Some(dir) = extra_path {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![dir.to_path_buf()];
        paths.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(paths).expect("PATH"));
    }
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("publish timed out")
        .expect("run multiarch-operator");
    let output = Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "--- publish {args:?} exited {}\nstdout:\n{}\nstderr:\n{}",
        output.code, output.stdout, output.stderr
    );
    output
}

/// `skopeo`, set up to reach one registry (trusting its CA, with its credentials).
pub struct Skopeo {
    args: Vec<String>,
}

impl Skopeo {
    /// A skopeo for `registry`, authenticating with `creds` when given.
    pub fn new(registry: &RegistryServer, creds: Option<(&str, &str)>) -> Skopeo {
        let mut args = match &registry.tls {
            Some(tls) => vec![
                "--tls-verify=true".to_string(),
                format!("--cert-dir={}", tls.cert_dir.display()),
            ],
            None => vec!["--tls-verify=false".to_string()],
        };
        match creds {
            Some((u, p)) => args.push(format!("--creds={u}:{p}")),
            None => args.push("--no-creds".to_string()),
        }
        Skopeo { args }
    }

    async fn run(&self, command: &str, extra: &[&str], reference: &str) -> Result<Vec<u8>, String> {
        let out = tokio::process::Command::new("skopeo")
            .arg(command)
            .args(extra)
            .args(&self.args)
            .arg(format!("docker://{reference}"))
            .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("cannot run skopeo: {e}"))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `skopeo inspect --raw`: the exact manifest bytes.
    pub async fn raw(&self, reference: &str) -> Result<Vec<u8>, String> {
        self.run("inspect", &["--raw"], reference).await
    }

    /// `skopeo inspect --raw`, parsed.
    pub async fn raw_json(&self, reference: &str) -> serde_json::Value {
        let raw = self
            .raw(reference)
            .await
            .unwrap_or_else(|e| panic!("skopeo inspect --raw {reference}: {e}"));
        serde_json::from_slice(&raw).expect("manifest JSON")
    }

    /// `skopeo inspect --config --raw`: the image config (proves the config blob is readable).
    pub async fn config(&self, reference: &str) -> Result<serde_json::Value, String> {
        let raw = self
            .run("inspect", &["--config", "--raw"], reference)
            .await?;
        serde_json::from_slice(&raw).map_err(|e| e.to_string())
    }

    /// `skopeo list-tags` (an empty list for a repository that does not exist).
    pub async fn tags(&self, repo: &str) -> Vec<String> {
        match self.run("list-tags", &[], repo).await {
            Ok(out) => {
                let v: serde_json::Value = serde_json::from_slice(&out).expect("tags JSON");
                v["Tags"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|t| t.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default()
            }
            // distribution answers 404 for a repository without tags
            Err(e)
                if e.contains("NAME_UNKNOWN")
                    || e.contains("name unknown")
                    || e.contains("404 (Not Found)") =>
            {
                Vec::new()
            }
            Err(e) => panic!("skopeo list-tags {repo}: {e}"),
        }
    }
}

/// The sha256 digest of `bytes`, `sha256:...`.
pub fn sha256(bytes: &[u8]) -> String {
    multiarch_operator::reference::Digest::sha256_of(bytes).to_string()
}
