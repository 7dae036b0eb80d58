//! The registry adapter, over `oci-client`: the only code in the project that talks to a
//! registry. It reads manifests and blobs (verifying every digest), copies blobs between
//! repositories of one registry (a cross-repository mount, or a streamed copy where the registry
//! refuses the mount), and pushes manifests by digest or by tag, checking the digest the registry
//! reports against the digest of the exact bytes sent.
//!
//! Every request has a timeout; 429, 5xx, connection failures and timeouts are retried with
//! exponential backoff; 401, 403 and 404 never are. Credentials come from a Docker config;
//! `oci-client` runs the bearer token exchange when the registry asks for one.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use tokio::sync::Mutex;
use tracing::{debug, warn};

use super::credentials::{Credential, DockerConfig};
use super::index::{BlobDescriptor, ACCEPTED_MANIFEST_TYPES};
use crate::reference::{Digest, Reference, Repository, Tag};

/// The largest manifest the publisher reads (the distribution registry's own limit is 4 MiB).
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;
/// The largest image config the publisher reads into memory.
pub const MAX_CONFIG_SIZE: u64 = 8 * 1024 * 1024;

/// How failed requests are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = no retry).
    pub attempts: u32,
    /// The wait before the first retry; each later wait doubles, up to `max_backoff`.
    pub initial_backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// How to reach registries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Talk plain HTTP (only for registries without TLS, on a trusted network).
    pub plain_http: bool,
    /// Use TLS without verifying the registry's certificate.
    pub insecure: bool,
    /// Extra CA certificates (PEM bundle) trusted for registries, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Per request: connecting, each read, and a whole manifest or metadata request.
    pub timeout: Duration,
    /// How failed requests are retried.
    pub retry: RetryPolicy,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            plain_http: false,
            insecure: false,
            ca_file: None,
            timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
        }
    }
}

/// What kind of failure a registry request met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryErrorKind {
    /// 404, or an error code saying the manifest, blob or repository is unknown.
    NotFound,
    /// 401: credentials missing or refused.
    Unauthorized,
    /// 403: the credentials do not allow this.
    Denied,
    /// 429 or `TOOMANYREQUESTS`.
    RateLimited,
    /// A 5xx answer.
    Server(u16),
    /// The connection failed or broke.
    Connection,
    /// No answer within the timeout.
    Timeout,
    /// TLS could not be established (certificate not trusted, or not a TLS server).
    Tls,
    /// Content did not match its digest, or the registry reported another digest.
    DigestMismatch,
    /// Credentials could not be read (Docker config, credential helper).
    Credentials,
    /// The client could not be set up (for example an unreadable CA file).
    Setup,
    /// Any other failure (an unexpected answer).
    Other,
}

/// A failed registry request, classified.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct RegistryError {
    /// What kind of failure.
    pub kind: RegistryErrorKind,
    /// What happened, for people.
    pub detail: String,
}

impl RegistryError {
    fn new(kind: RegistryErrorKind, detail: impl Into<String>) -> Self {
        RegistryError {
            kind,
            detail: detail.into(),
        }
    }

    /// True when retrying later can succeed: rate limits, 5xx, connection failures, timeouts.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            RegistryErrorKind::RateLimited
                | RegistryErrorKind::Server(_)
                | RegistryErrorKind::Connection
                | RegistryErrorKind::Timeout
        )
    }

    /// True when the registry said the thing asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind == RegistryErrorKind::NotFound
    }
}

fn status_kind(code: u16) -> RegistryErrorKind {
    match code {
        401 => RegistryErrorKind::Unauthorized,
        403 => RegistryErrorKind::Denied,
        404 => RegistryErrorKind::NotFound,
        408 => RegistryErrorKind::Timeout,
        429 => RegistryErrorKind::RateLimited,
        500..=599 => RegistryErrorKind::Server(code),
        _ => RegistryErrorKind::Other,
    }
}

const UNAUTHORIZED_HINT: &str = "401 Unauthorized: the registry wants credentials, or refused the ones given (check `docker login` or the push secret)";

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

/// Classifies an `oci-client` error.
pub(crate) fn classify(e: OciDistributionError) -> RegistryError {
    use RegistryErrorKind as K;
    match e {
        OciDistributionError::ServerError { code, message, .. } => {
            let kind = status_kind(code);
            let detail = match kind {
                K::Unauthorized => UNAUTHORIZED_HINT.to_string(),
                _ => format!("registry answered {code}: {}", message.trim()),
            };
            RegistryError::new(kind, detail)
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let kind = if codes.contains(&&OciErrorCode::Toomanyrequests) {
                K::RateLimited
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                K::NotFound
            } else if codes.contains(&&OciErrorCode::Unauthorized) {
                K::Unauthorized
            } else if codes.contains(&&OciErrorCode::Denied) {
                K::Denied
            } else {
                K::Other
            };
            let messages: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect();
            RegistryError::new(kind, format!("registry answered {}", messages.join("; ")))
        }
        OciDistributionError::UnauthorizedError { .. } => {
            RegistryError::new(K::Unauthorized, UNAUTHORIZED_HINT)
        }
        OciDistributionError::AuthenticationFailure(reason) => RegistryError::new(
            K::Unauthorized,
            format!(
                "the registry's token service refused the credentials: {}",
                reason.trim()
            ),
        ),
        OciDistributionError::RequestError(e) => {
            let text = error_chain(&e);
            let lower = text.to_ascii_lowercase();
            if e.is_timeout() {
                RegistryError::new(K::Timeout, text)
            } else if lower.contains("certificate") || lower.contains("invalidcontenttype") {
                RegistryError::new(
                    K::Tls,
                    format!(
                        "TLS failed ({text}); trust the registry's CA with --ca-file, or use --plain-http for a registry without TLS"
                    ),
                )
            } else if e.is_connect() || e.is_request() || e.is_body() {
                RegistryError::new(K::Connection, text)
            } else if let Some(status) = e.status() {
                RegistryError::new(status_kind(status.as_u16()), text)
            } else {
                RegistryError::new(K::Other, text)
            }
        }
        OciDistributionError::IoError(e) => RegistryError::new(K::Connection, e.to_string()),
        OciDistributionError::DigestError(e) => {
            RegistryError::new(K::DigestMismatch, e.to_string())
        }
        OciDistributionError::ImageManifestNotFoundError(m) => RegistryError::new(K::NotFound, m),
        other => RegistryError::new(K::Other, other.to_string()),
    }
}

/// Where a manifest is pushed: a tag, or its own digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestTarget {
    /// A tag of the repository.
    Tag(Tag),
    /// The manifest's own digest (an untagged push).
    Digest(Digest),
}

/// A manifest as read from a registry: its exact bytes and their digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedManifest {
    /// The exact bytes the registry served.
    pub bytes: Bytes,
    /// Their sha256 digest.
    pub digest: Digest,
}

/// The registry adapter (cheap to clone; clones share connections, credentials and tokens).
#[derive(Clone)]
pub struct Registry {
    client: oci_client::Client,
    config: Arc<RegistryConfig>,
    credentials: Arc<DockerConfig>,
    auths: Arc<Mutex<HashMap<String, RegistryAuth>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The `oci-client` reference for `repo` at `reference` (a digest, or a tag).
fn oci_ref(repo: &Repository, reference: &str) -> oci_client::Reference {
    let (registry, path) = (repo.registry().to_string(), repo.path().to_string());
    if reference.contains(':') {
        oci_client::Reference::with_digest(registry, path, reference.to_string())
    } else {
        oci_client::Reference::with_tag(registry, path, reference.to_string())
    }
}

impl ManifestTarget {
    fn as_str(&self) -> &str {
        match self {
            ManifestTarget::Tag(t) => t.as_str(),
            ManifestTarget::Digest(d) => d.as_str(),
        }
    }
}

/// The digest in a manifest `Location` (`.../manifests/sha256:...`), if it names one.
fn digest_from_location(location: &str) -> Option<Digest> {
    let (_, rest) = location.rsplit_once("/manifests/")?;
    rest.split(['?', '#']).next()?.parse().ok()
}

fn to_auth(credential: Credential) -> RegistryAuth {
    match credential {
        Credential::Anonymous => RegistryAuth::Anonymous,
        Credential::Basic { username, password } => RegistryAuth::Basic(username, password),
        Credential::IdentityToken { username, token } => RegistryAuth::Basic(username, token),
        Credential::RegistryToken(token) => RegistryAuth::Bearer(token),
    }
}

fn load_ca_file(path: &PathBuf) -> Result<Vec<Certificate>, RegistryError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let setup = |why: String| {
        RegistryError::new(
            RegistryErrorKind::Setup,
            format!("CA file {}: {why}", path.display()),
        )
    };
    let pem = std::fs::read(path).map_err(|e| setup(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .map(|c| {
            c.map(|der| Certificate {
                encoding: CertificateEncoding::Der,
                data: der.to_vec(),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setup(format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(setup("no PEM certificate in it".into()));
    }
    Ok(certs)
}

impl Registry {
    /// A registry client with `config`, authenticating with credentials from `credentials`.
    pub fn new(config: RegistryConfig, credentials: DockerConfig) -> Result<Self, RegistryError> {
        let extra_root_certificates = match &config.ca_file {
            Some(path) => load_ca_file(path)?,
            None => Vec::new(),
        };
        let client_config = ClientConfig {
            protocol: if config.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: config.insecure,
            extra_root_certificates,
            platform_resolver: None,
            read_timeout: Some(config.timeout),
            connect_timeout: Some(config.timeout),
            user_agent: concat!("multiarch-operator/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let client = oci_client::Client::try_from(client_config).map_err(|e| {
            RegistryError::new(
                RegistryErrorKind::Setup,
                format!("cannot set up the registry client: {}", error_chain(&e)),
            )
        })?;
        Ok(Registry {
            client,
            config: Arc::new(config),
            credentials: Arc::new(credentials),
            auths: Arc::default(),
        })
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// The credentials of `reference`'s registry, looked up once and handed to `oci-client`
    /// (which must have them before any raw request).
    async fn authorize(
        &self,
        reference: &oci_client::Reference,
    ) -> Result<RegistryAuth, RegistryError> {
        let host = reference.resolve_registry().to_string();
        let mut auths = self.auths.lock().await;
        if let Some(auth) = auths.get(&host) {
            return Ok(auth.clone());
        }
        let credential = self
            .credentials
            .lookup(reference.registry())
            .await
            .map_err(|e| RegistryError::new(RegistryErrorKind::Credentials, e.to_string()))?;
        debug!(registry = %host, credential = ?credential, "registry credentials");
        let auth = to_auth(credential);
        self.client.store_auth_if_needed(&host, &auth).await;
        auths.insert(host, auth.clone());
        Ok(auth)
    }

    /// Runs `attempt` until it succeeds, fails permanently, or the retry policy gives up. Each
    /// attempt is bounded by `timeout` when one is given.
    async fn retry<T, F, Fut>(
        &self,
        what: &str,
        timeout: Option<Duration>,
        mut attempt: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let mut n = 0;
        loop {
            n += 1;
            let result = match timeout {
                Some(t) => match tokio::time::timeout(t, attempt()).await {
                    Ok(r) => r,
                    Err(_) => Err(RegistryError::new(
                        RegistryErrorKind::Timeout,
                        format!("no answer within {t:?}"),
                    )),
                },
                None => attempt().await,
            };
            match result {
                Err(e) if e.is_transient() && n < self.config.retry.attempts.max(1) => {
                    let wait = self.config.retry.backoff(n);
                    warn!(operation = what, attempt = n, error = %e, retry_in = ?wait, "registry request failed, retrying");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// Checks that credentials for pushing to `repo` are accepted where the registry can tell
    /// before a write (a token service refusing them); reads and writes nothing.
    pub async fn check_push_access(&self, repo: &Repository) -> Result<(), RegistryError> {
        let reference = oci_ref(repo, "latest");
        let auth = self.authorize(&reference).await?;
        self.retry("authenticate", Some(self.config.timeout), || async {
            self.client
                .auth(&reference, &auth, RegistryOperation::Push)
                .await
                .map(|_| ())
                .map_err(classify)
        })
        .await
    }

    /// True when `repo` has the manifest `digest` (a HEAD request; 404 is `false`).
    pub async fn manifest_digest_exists(
        &self,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let reference = oci_ref(repo, digest.as_str());
        let auth = self.authorize(&reference).await?;
        self.retry("check manifest", Some(self.config.timeout), || async {
            match self.client.fetch_manifest_digest(&reference, &auth).await {
                Ok(found) => Ok(found == digest.as_str()),
                Err(e) => match classify(e) {
                    e if e.is_not_found() => Ok(false),
                    e => Err(e),
                },
            }
        })
        .await
    }

    /// The digest `reference` resolves to (a HEAD request), `None` when it does not exist.
    pub async fn resolve(&self, reference: &Reference) -> Result<Option<Digest>, RegistryError> {
        let r = oci_ref(&reference.repository, &reference.reference_str());
        let auth = self.authorize(&r).await?;
        self.retry("resolve manifest", Some(self.config.timeout), || async {
            match self.client.fetch_manifest_digest(&r, &auth).await {
                Ok(found) => found.parse().map(Some).map_err(|_| {
                    RegistryError::new(
                        RegistryErrorKind::Other,
                        format!("registry reported an invalid digest {found:?}"),
                    )
                }),
                Err(e) => match classify(e) {
                    e if e.is_not_found() => Ok(None),
                    e => Err(e),
                },
            }
        })
        .await
    }

    /// Reads a manifest (by tag or digest) as exact bytes, and verifies them against the digest
    /// asked for and the one the registry reports.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
    ) -> Result<FetchedManifest, RegistryError> {
        let r = oci_ref(&reference.repository, &reference.reference_str());
        let auth = self.authorize(&r).await?;
        let (bytes, _) = self
            .retry("read manifest", Some(self.config.timeout), || async {
                self.client
                    .pull_manifest_raw(&r, &auth, ACCEPTED_MANIFEST_TYPES)
                    .await
                    .map_err(classify)
            })
            .await?;
        if bytes.len() > MAX_MANIFEST_SIZE {
            return Err(RegistryError::new(
                RegistryErrorKind::Other,
                format!(
                    "manifest is {} bytes, more than {MAX_MANIFEST_SIZE}",
                    bytes.len()
                ),
            ));
        }
        let digest = Digest::sha256_of(&bytes);
        if let Some(want) = &reference.digest {
            if want.as_str().starts_with("sha256:") && want != &digest {
                return Err(RegistryError::new(
                    RegistryErrorKind::DigestMismatch,
                    format!("asked for {want}, got content with digest {digest}"),
                ));
            }
        }
        Ok(FetchedManifest { bytes, digest })
    }

    /// Reads a small blob (an image config) from `repo`, verifying its digest and size.
    pub async fn fetch_blob(
        &self,
        repo: &Repository,
        blob: &BlobDescriptor,
    ) -> Result<Vec<u8>, RegistryError> {
        if blob.size > MAX_CONFIG_SIZE {
            return Err(RegistryError::new(
                RegistryErrorKind::Other,
                format!(
                    "blob {} is {} bytes, more than the {MAX_CONFIG_SIZE} read into memory",
                    blob.digest, blob.size
                ),
            ));
        }
        let r = oci_ref(repo, blob.digest.as_str());
        self.authorize(&r).await?;
        let data = self
            .retry("read blob", Some(self.config.timeout), || async {
                let mut out = Vec::with_capacity(usize::try_from(blob.size).unwrap_or(0));
                self.client
                    .pull_blob(&r, blob.digest.as_str(), &mut out)
                    .await
                    .map_err(classify)?;
                Ok(out)
            })
            .await?;
        if data.len() as u64 != blob.size {
            return Err(RegistryError::new(
                RegistryErrorKind::DigestMismatch,
                format!(
                    "blob {} is {} bytes, its descriptor says {}",
                    blob.digest,
                    data.len(),
                    blob.size
                ),
            ));
        }
        Ok(data)
    }

    /// True when `repo` has the blob `digest`.
    pub async fn blob_exists(
        &self,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let r = oci_ref(repo, digest.as_str());
        self.authorize(&r).await?;
        self.retry("check blob", Some(self.config.timeout), || async {
            self.client
                .blob_exists(&r, digest.as_str())
                .await
                .map_err(classify)
        })
        .await
    }

    /// Makes the blob available in `to`, from `from` in the same registry: nothing when it is
    /// there already, else a cross-repository mount, else (a registry that refuses the mount,
    /// or a token that does not cover `from`) a streamed copy whose digest is verified.
    pub async fn copy_blob(
        &self,
        from: &Repository,
        to: &Repository,
        blob: &BlobDescriptor,
    ) -> Result<(), RegistryError> {
        if self.blob_exists(to, &blob.digest).await? {
            return Ok(());
        }
        let target = oci_ref(to, blob.digest.as_str());
        let source = oci_ref(from, blob.digest.as_str());
        self.authorize(&target).await?;
        let mounted = self
            .retry("mount blob", Some(self.config.timeout), || async {
                self.client
                    .mount_blob(&target, &source, blob.digest.as_str())
                    .await
                    .map_err(classify)
            })
            .await;
        match mounted {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                debug!(blob = %blob.digest, %from, %to, error = %e, "mount not done, copying the blob")
            }
        }
        self.retry("copy blob", None, || async {
            let stream = self
                .client
                .pull_blob_stream(&source, blob.digest.as_str())
                .await
                .map_err(classify)?;
            self.client
                .push_blob_stream(
                    &target,
                    stream.stream.map_err(OciDistributionError::IoError),
                    blob.digest.as_str(),
                    Some(blob.size),
                )
                .await
                .map_err(classify)?;
            Ok(())
        })
        .await
    }

    /// Pushes manifest `bytes` (exactly these bytes) of `media_type` to `repo` at `target`, and
    /// returns their digest once the registry has confirmed it.
    pub async fn push_manifest(
        &self,
        repo: &Repository,
        target: &ManifestTarget,
        bytes: &Bytes,
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::sha256_of(bytes);
        if let ManifestTarget::Digest(d) = target {
            if d != &digest {
                return Err(RegistryError::new(
                    RegistryErrorKind::DigestMismatch,
                    format!("cannot push content with digest {digest} as {d}"),
                ));
            }
        }
        let content_type = http::HeaderValue::from_str(media_type).map_err(|_| {
            RegistryError::new(
                RegistryErrorKind::Other,
                format!("invalid media type {media_type:?}"),
            )
        })?;
        let r = oci_ref(repo, target.as_str());
        let auth = self.authorize(&r).await?;
        self.retry("push manifest", Some(self.config.timeout), || async {
            let location = self
                .client
                .push_manifest_raw(&r, bytes.clone(), content_type.clone())
                .await
                .map_err(classify)?;
            let reported = match digest_from_location(&location) {
                Some(d) => d,
                None => {
                    // the Location names no digest: ask the registry what the reference is now
                    let found = self
                        .client
                        .fetch_manifest_digest(&r, &auth)
                        .await
                        .map_err(classify)?;
                    found.parse().map_err(|_| {
                        RegistryError::new(
                            RegistryErrorKind::Other,
                            format!("registry reported an invalid digest {found:?}"),
                        )
                    })?
                }
            };
            if reported != digest {
                return Err(RegistryError::new(
                    RegistryErrorKind::DigestMismatch,
                    format!("pushed content with digest {digest}, the registry reports {reported}"),
                ));
            }
            Ok(())
        })
        .await?;
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::errors::{OciEnvelope, OciError};

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        let waits: Vec<u128> = (1..=5).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 500, 500]);
        assert_eq!(p.backoff(200), Duration::from_millis(500));
    }

    fn server(code: u16) -> OciDistributionError {
        OciDistributionError::ServerError {
            code,
            url: "http://r/v2/".into(),
            message: "boom".into(),
        }
    }

    fn envelope(code: OciErrorCode) -> OciDistributionError {
        OciDistributionError::RegistryError {
            envelope: OciEnvelope {
                errors: vec![OciError {
                    code,
                    message: "m".into(),
                    detail: serde_json::Value::Null,
                }],
            },
            url: "http://r/v2/".into(),
        }
    }

    #[test]
    fn only_rate_limits_server_errors_and_connection_failures_are_transient() {
        use RegistryErrorKind as K;
        let cases: Vec<(OciDistributionError, RegistryErrorKind, bool)> = vec![
            (server(500), K::Server(500), true),
            (server(502), K::Server(502), true),
            (server(503), K::Server(503), true),
            (server(429), K::RateLimited, true),
            (server(401), K::Unauthorized, false),
            (server(403), K::Denied, false),
            (server(404), K::NotFound, false),
            (server(400), K::Other, false),
            (
                envelope(OciErrorCode::Toomanyrequests),
                K::RateLimited,
                true,
            ),
            (envelope(OciErrorCode::ManifestUnknown), K::NotFound, false),
            (envelope(OciErrorCode::NameUnknown), K::NotFound, false),
            (envelope(OciErrorCode::Unauthorized), K::Unauthorized, false),
            (envelope(OciErrorCode::Denied), K::Denied, false),
            (envelope(OciErrorCode::ManifestInvalid), K::Other, false),
            (
                OciDistributionError::UnauthorizedError { url: "u".into() },
                K::Unauthorized,
                false,
            ),
            (
                OciDistributionError::AuthenticationFailure("bad password".into()),
                K::Unauthorized,
                false,
            ),
            (
                OciDistributionError::IoError(std::io::Error::other("reset")),
                K::Connection,
                true,
            ),
            (
                OciDistributionError::SpecViolationError("202".into()),
                K::Other,
                false,
            ),
        ];
        for (err, kind, transient) in cases {
            let text = err.to_string();
            let e = classify(err);
            assert_eq!(e.kind, kind, "{text}");
            assert_eq!(e.is_transient(), transient, "{text}");
        }
    }

    #[test]
    fn location_digest_is_read_from_the_manifest_url() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            digest_from_location(&format!("http://r:1/v2/a/b/manifests/{d}")),
            Some(d.parse().unwrap())
        );
        assert_eq!(
            digest_from_location(&format!("/v2/a/manifests/{d}?ns=x")),
            Some(d.parse().unwrap())
        );
        assert_eq!(digest_from_location("http://r/v2/a/manifests/latest"), None);
        assert_eq!(digest_from_location("http://r/v2/a/blobs/uploads/x"), None);
    }

    #[test]
    fn ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let config = RegistryConfig {
            ca_file: Some(path.clone()),
            ..RegistryConfig::default()
        };
        let err = Registry::new(config.clone(), DockerConfig::empty()).unwrap_err();
        assert_eq!(err.kind, RegistryErrorKind::Setup);
        std::fs::remove_file(&path).unwrap();
        let err = Registry::new(config, DockerConfig::empty()).unwrap_err();
        assert_eq!(err.kind, RegistryErrorKind::Setup);
        assert!(err.detail.contains("ca.pem"), "{err}");
    }
}
