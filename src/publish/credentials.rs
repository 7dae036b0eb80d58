//! Registry credentials from a Docker config (`config.json`, or a `kubernetes.io/dockerconfigjson`
//! Secret's `.dockerconfigjson`): `auths` entries, and `credHelpers`/`credsStore` through the
//! `docker-credential-<name>` helper on `PATH`, looked up by registry host the way `docker` does.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

/// The key `docker login` uses for Docker Hub.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

const DOCKER_HUB_ALIASES: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credential {
    /// No credentials.
    #[default]
    Anonymous,
    /// A user name and password (or access token used as a password).
    Basic {
        /// The user name.
        username: String,
        /// The password or access token.
        password: String,
    },
    /// An identity token (`identitytoken`, or a helper's `<token>` user): an OAuth2 refresh
    /// token, sent to the registry's token service as the password of `username`.
    IdentityToken {
        /// The user name sent with the token (`<token>` when none is known).
        username: String,
        /// The identity (refresh) token.
        token: String,
    },
    /// A bearer token sent to the registry as is (`registrytoken`).
    RegistryToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { username, .. } => write!(f, "Basic({username:?}, <redacted>)"),
            Credential::IdentityToken { username, .. } => {
                write!(f, "IdentityToken({username:?}, <redacted>)")
            }
            Credential::RegistryToken(_) => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

/// Why credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The config file could not be read.
    #[error("cannot read Docker config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The config is not valid JSON of the expected shape.
    #[error("invalid Docker config{}: {reason}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// What is wrong.
        reason: String,
    },
    /// An `auths` entry cannot be decoded.
    #[error("invalid auth entry for {registry} in the Docker config: {reason}")]
    InvalidAuth {
        /// The `auths` key.
        registry: String,
        /// What is wrong.
        reason: String,
    },
    /// The credential helper failed.
    #[error("credential helper docker-credential-{helper} failed for {registry}: {reason}")]
    Helper {
        /// The helper name (`docker-credential-<helper>`).
        helper: String,
        /// The registry asked about.
        registry: String,
        /// What failed.
        reason: String,
    },
}

#[derive(Clone, Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

/// A parsed Docker config.
#[derive(Clone, Debug, Default)]
pub struct DockerConfig {
    auths: BTreeMap<String, AuthEntry>,
    cred_helpers: BTreeMap<String, String>,
    creds_store: Option<String>,
    /// Where helpers are looked up (`None`: the process's `PATH`).
    helper_path: Option<std::ffi::OsString>,
}

/// The host part of a registry name or `auths` key: scheme and path removed, lower case,
/// Docker Hub's aliases folded into `docker.io`.
pub fn normalize_registry(key: &str) -> String {
    let s = key.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or_default().to_ascii_lowercase();
    if DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        "docker.io".to_string()
    } else {
        host
    }
}

impl DockerConfig {
    /// A config with no credentials (every registry anonymous).
    pub fn empty() -> Self {
        DockerConfig::default()
    }

    /// Parses a Docker config from its JSON bytes (a `config.json`, or the `.dockerconfigjson`
    /// key of a `kubernetes.io/dockerconfigjson` Secret).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CredentialError> {
        Self::parse(bytes, None)
    }

    fn parse(bytes: &[u8], path: Option<&Path>) -> Result<Self, CredentialError> {
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| CredentialError::Parse {
            path: path.map(Path::to_path_buf),
            reason: e.to_string(),
        })?;
        Ok(DockerConfig {
            auths: raw.auths,
            cred_helpers: raw.cred_helpers,
            creds_store: raw.creds_store.filter(|s| !s.is_empty()),
            helper_path: None,
        })
    }

    /// Reads `config.json` from the directory in `DOCKER_CONFIG`, or `~/.docker/config.json`.
    /// A missing file is an empty config, as for `docker`.
    pub fn load_default() -> Result<Self, CredentialError> {
        let dir = match std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
                Some(home) => PathBuf::from(home).join(".docker"),
                None => return Ok(DockerConfig::empty()),
            },
        };
        Self::load_file(&dir.join("config.json"))
    }

    /// Reads a Docker config file; a missing file is an empty config.
    pub fn load_file(path: &Path) -> Result<Self, CredentialError> {
        match std::fs::read(path) {
            Ok(bytes) => Self::parse(&bytes, Some(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerConfig::empty()),
            Err(source) => Err(CredentialError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Looks helpers up in `path` (a `PATH`-style list) instead of the process's `PATH`.
    pub fn with_helper_path(mut self, path: impl Into<std::ffi::OsString>) -> Self {
        self.helper_path = Some(path.into());
        self
    }

    /// The credential helper for `registry`: its `credHelpers` entry, else `credsStore`.
    fn helper_for(&self, registry: &str) -> Option<&str> {
        let host = normalize_registry(registry);
        self.cred_helpers
            .iter()
            .find(|(k, _)| normalize_registry(k) == host)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
            .or(self.creds_store.as_deref())
    }

    /// The `auths` entry for `registry` (exact key first, then any key naming the same host).
    fn auth_entry(&self, registry: &str) -> Option<(&str, &AuthEntry)> {
        if let Some((k, v)) = self.auths.get_key_value(registry) {
            return Some((k, v));
        }
        let host = normalize_registry(registry);
        self.auths
            .iter()
            .find(|(k, _)| normalize_registry(k) == host)
            .map(|(k, v)| (k.as_str(), v))
    }

    /// The credentials for `registry` (a host such as `ghcr.io` or `127.0.0.1:5001`, with or
    /// without `https://`; Docker Hub under any of its names). A registry the config does not
    /// mention is anonymous.
    pub async fn lookup(&self, registry: &str) -> Result<Credential, CredentialError> {
        if let Some(helper) = self.helper_for(registry) {
            return self.run_helper(helper, registry).await;
        }
        match self.auth_entry(registry) {
            Some((key, entry)) => entry_credential(key, entry),
            None => Ok(Credential::Anonymous),
        }
    }

    async fn run_helper(
        &self,
        helper: &str,
        registry: &str,
    ) -> Result<Credential, CredentialError> {
        let err = |reason: String| CredentialError::Helper {
            helper: helper.to_string(),
            registry: registry.to_string(),
            reason,
        };
        let server_url = if normalize_registry(registry) == "docker.io" {
            DOCKER_HUB_AUTH_KEY.to_string()
        } else {
            normalize_registry(registry)
        };
        let program = format!("docker-credential-{helper}");
        let mut cmd = tokio::process::Command::new(&program);
        cmd.arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(path) = &self.helper_path {
            cmd.env("PATH", path);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| err(format!("cannot run {program} (is it on PATH?): {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            // a helper that exits without reading its input is judged by its output, as docker
            // does (Go's os/exec ignores EPIPE on standard input)
            match stdin.write_all(server_url.as_bytes()).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(e) => return Err(err(format!("cannot write to {program}: {e}"))),
            }
        }
        let output = tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| {
                err(format!(
                    "{program} did not answer within {HELPER_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| err(format!("{program}: {e}")))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            if stdout.contains("credentials not found") {
                return Ok(Credential::Anonymous);
            }
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(err(format!(
                "{program} exited with {}: {}",
                output.status,
                format!("{} {}", stdout.trim(), stderr.trim()).trim()
            )));
        }
        helper_credential(&output.stdout).map_err(err)
    }
}

#[derive(Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

fn helper_credential(stdout: &[u8]) -> Result<Credential, String> {
    let out: HelperOutput =
        serde_json::from_slice(stdout).map_err(|e| format!("invalid helper output: {e}"))?;
    Ok(match (out.username.as_str(), out.secret.is_empty()) {
        (_, true) => Credential::Anonymous,
        ("<token>", false) => Credential::IdentityToken {
            username: "<token>".into(),
            token: out.secret,
        },
        (_, false) => Credential::Basic {
            username: out.username,
            password: out.secret,
        },
    })
}

fn entry_credential(key: &str, entry: &AuthEntry) -> Result<Credential, CredentialError> {
    let invalid = |reason: &str| CredentialError::InvalidAuth {
        registry: key.to_string(),
        reason: reason.to_string(),
    };
    let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    if let Some(token) = nonempty(&entry.registrytoken) {
        return Ok(Credential::RegistryToken(token));
    }
    let (mut username, mut password) = (nonempty(&entry.username), nonempty(&entry.password));
    if let Some(auth) = nonempty(&entry.auth) {
        let engine = base64::engine::general_purpose::STANDARD;
        let decoded = engine
            .decode(auth.trim())
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(auth.trim()))
            .map_err(|_| invalid("\"auth\" is not base64"))?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| invalid("\"auth\" is not UTF-8 text"))?;
        let (u, p) = decoded
            .split_once(':')
            .ok_or_else(|| invalid("\"auth\" is not base64 of user:password"))?;
        username = Some(u.to_string()).filter(|s| !s.is_empty());
        password = Some(p.to_string()).filter(|s| !s.is_empty());
    }
    if let Some(token) = nonempty(&entry.identitytoken) {
        return Ok(Credential::IdentityToken {
            username: username.unwrap_or_else(|| "<token>".into()),
            token,
        });
    }
    match (username, password) {
        (Some(username), Some(password)) => Ok(Credential::Basic { username, password }),
        (None, None) => Ok(Credential::Anonymous),
        (Some(_), None) => Err(invalid("a user name without a password")),
        (None, Some(_)) => Err(invalid("a password without a user name")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn basic(u: &str, p: &str) -> Credential {
        Credential::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn registry_names_normalize_to_hosts() {
        for (input, want) in [
            ("ghcr.io", "ghcr.io"),
            ("https://ghcr.io", "ghcr.io"),
            ("https://ghcr.io/v2/", "ghcr.io"),
            ("http://127.0.0.1:5001", "127.0.0.1:5001"),
            ("Registry.Example.com:443/v1/", "registry.example.com:443"),
            ("https://index.docker.io/v1/", "docker.io"),
            ("index.docker.io", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("docker.io", "docker.io"),
        ] {
            assert_eq!(normalize_registry(input), want, "{input}");
        }
    }

    #[tokio::test]
    async fn auths_entries_are_found_by_host() {
        let config = format!(
            r#"{{"auths":{{
                "https://index.docker.io/v1/":{{"auth":"{hub}"}},
                "ghcr.io":{{"username":"octo","password":"pat"}},
                "https://quay.io":{{"auth":"{quay}"}},
                "reg.example.com:5443":{{"auth":"{colon}"}},
                "id.example.com":{{"auth":"{idu}","identitytoken":"refresh"}},
                "tok.example.com":{{"registrytoken":"bearer-xyz"}},
                "nopad.example.com":{{"auth":"{nopad}"}},
                "placeholder.example.com":{{}}
            }}}}"#,
            hub = b64("hubuser:hubpass"),
            quay = b64("robot+x:secret"),
            colon = b64("user:pa:ss"),
            idu = b64("00000000-0000-0000-0000-000000000000:"),
            nopad = b64("ab:c").trim_end_matches('='),
        );
        let cfg = DockerConfig::from_bytes(config.as_bytes()).unwrap();
        let cases: Vec<(&str, Credential)> = vec![
            ("docker.io", basic("hubuser", "hubpass")),
            ("index.docker.io", basic("hubuser", "hubpass")),
            ("https://index.docker.io/v1/", basic("hubuser", "hubpass")),
            ("ghcr.io", basic("octo", "pat")),
            ("https://ghcr.io", basic("octo", "pat")),
            ("quay.io", basic("robot+x", "secret")),
            ("reg.example.com:5443", basic("user", "pa:ss")),
            ("reg.example.com", Credential::Anonymous),
            (
                "id.example.com",
                Credential::IdentityToken {
                    username: "00000000-0000-0000-0000-000000000000".into(),
                    token: "refresh".into(),
                },
            ),
            (
                "tok.example.com",
                Credential::RegistryToken("bearer-xyz".into()),
            ),
            ("nopad.example.com", basic("ab", "c")),
            ("placeholder.example.com", Credential::Anonymous),
            ("unknown.example.com", Credential::Anonymous),
        ];
        for (registry, want) in cases {
            assert_eq!(cfg.lookup(registry).await.unwrap(), want, "{registry}");
        }
    }

    #[tokio::test]
    async fn invalid_auth_entries_are_errors() {
        for entry in [
            r#"{"auth":"%%%"}"#,
            r#"{"auth":"bm9jb2xvbg=="}"#, // "nocolon"
            r#"{"username":"u"}"#,
            r#"{"password":"p"}"#,
        ] {
            let cfg =
                DockerConfig::from_bytes(format!(r#"{{"auths":{{"r.io":{entry}}}}}"#).as_bytes())
                    .unwrap();
            let err = cfg.lookup("r.io").await.unwrap_err();
            assert!(
                matches!(err, CredentialError::InvalidAuth { .. }),
                "{entry}: {err}"
            );
        }
        assert!(matches!(
            DockerConfig::from_bytes(b"{not json").unwrap_err(),
            CredentialError::Parse { .. }
        ));
    }

    #[test]
    fn credentials_are_redacted_in_debug_output() {
        let s = format!("{:?}", basic("u", "hunter2"));
        assert!(!s.contains("hunter2"), "{s}");
        let s = format!("{:?}", Credential::RegistryToken("tok123".into()));
        assert!(!s.contains("tok123"), "{s}");
    }

    #[test]
    fn missing_config_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DockerConfig::load_file(&dir.path().join("config.json")).unwrap();
        assert!(cfg.auths.is_empty() && cfg.creds_store.is_none());
    }

    fn write_helper(dir: &Path, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn credential_helpers_are_run_with_the_server_url() {
        let dir = tempfile::tempdir().unwrap();
        // echoes the server URL it was asked about as the user name
        write_helper(
            dir.path(),
            "echo",
            r#"[ "$1" = get ] || exit 9; read -r url || true; printf '{"ServerURL":"%s","Username":"%s","Secret":"s3cret"}' "$url" "$url""#,
        );
        write_helper(
            dir.path(),
            "token",
            r#"cat >/dev/null; printf '{"Username":"<token>","Secret":"idtok"}'"#,
        );
        write_helper(
            dir.path(),
            "none",
            r#"cat >/dev/null; echo "credentials not found in native keychain"; exit 1"#,
        );
        write_helper(
            dir.path(),
            "broken",
            r#"cat >/dev/null; echo "keychain locked" >&2; exit 3"#,
        );
        let config = r#"{
            "auths": {"ghcr.io": {"auth": "dTpw"}},
            "credHelpers": {"ghcr.io": "echo", "https://index.docker.io/v1/": "echo",
                            "tok.io": "token", "none.io": "none", "broken.io": "broken",
                            "missing.io": "does-not-exist"},
            "credsStore": "token"
        }"#;
        let cfg = DockerConfig::from_bytes(config.as_bytes())
            .unwrap()
            .with_helper_path(dir.path().as_os_str());
        // credHelpers wins over auths
        assert_eq!(
            cfg.lookup("ghcr.io").await.unwrap(),
            basic("ghcr.io", "s3cret")
        );
        // Docker Hub is asked for under its v1 URL
        assert_eq!(
            cfg.lookup("index.docker.io").await.unwrap(),
            basic(DOCKER_HUB_AUTH_KEY, "s3cret")
        );
        let token = Credential::IdentityToken {
            username: "<token>".into(),
            token: "idtok".into(),
        };
        assert_eq!(cfg.lookup("tok.io").await.unwrap(), token);
        // credsStore serves registries without a credHelpers entry
        assert_eq!(cfg.lookup("other.io").await.unwrap(), token);
        assert_eq!(cfg.lookup("none.io").await.unwrap(), Credential::Anonymous);
        let err = cfg.lookup("broken.io").await.unwrap_err().to_string();
        assert!(err.contains("keychain locked"), "{err}");
        let err = cfg.lookup("missing.io").await.unwrap_err().to_string();
        assert!(err.contains("docker-credential-does-not-exist"), "{err}");
    }
}
