//! The registry adapter: the only code in the project that talks to a registry (through
//! [`super::transport`], its HTTP), behind [`RegistryApi`], what the publishing engine needs of
//! a registry. It reads manifests and blobs (never more than a manifest's or config's size cap,
//! while reading), copies blobs between repositories of one registry (a cross-repository mount,
//! or a streamed copy of exactly the descriptor's size where the registry refuses the mount), and
//! pushes manifests by digest or by tag. It reports what the registry said (the bytes, the
//! digests it claims); the engine verifies them (`super::verify`).
//!
//! One request per operation where the protocol allows: no `/v2/` probe before requests (a
//! registry that wants credentials says so with its first 401), and the scope of a token covers
//! the repository being pushed to ([`RegistryApi::pushing_to`]), so one token serves a publish's
//! reads and writes there.
//!
//! Every operation has a deadline, its retries included; 429, 5xx, connection failures and
//! timeouts are retried with jittered exponential backoff inside it; 401, 403, 404 and answers
//! too large never are. Credentials come from a Docker config.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, Response, StatusCode};
use rustls::pki_types::CertificateDer;
use tracing::{debug, warn};

use super::credentials::DockerConfig;
use super::index::{BlobDescriptor, ACCEPTED_MANIFEST_TYPES};
use super::transport::{accept, error_of, read_limited, scope, Transport, TransportConfig};
use crate::reference::{Digest, Reference, Repository, Tag};

/// The largest manifest the publisher reads (the distribution registry's own limit is 4 MiB).
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;
/// The largest image config the publisher reads into memory.
pub const MAX_CONFIG_SIZE: u64 = 8 * 1024 * 1024;
/// The slowest a blob copy may go before its deadline (on top of the operation timeout).
const MIN_COPY_RATE: u64 = 1024 * 1024;

/// How failed requests are retried, inside each operation's deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = no retry).
    pub attempts: u32,
    /// The wait before the first retry; each later wait doubles (plus jitter), up to
    /// `max_backoff`.
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
    /// The backoff schedule: exponential with jitter, `attempts - 1` retries.
    pub fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.initial_backoff)
            .with_max_delay(self.max_backoff)
            .with_max_times(self.attempts.saturating_sub(1) as usize)
            .with_jitter()
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
    /// The deadline of one operation (a manifest read, a check, a push), its retries included;
    /// also the longest wait to connect or for each read. A blob copy gets this plus one second
    /// per MiB.
    pub timeout: Duration,
    /// How failed requests are retried.
    pub retry: RetryPolicy,
}

/// The default deadline of one registry operation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            plain_http: false,
            insecure: false,
            ca_file: None,
            timeout: DEFAULT_TIMEOUT,
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
    /// The registry sent more than the size cap of what was read.
    TooLarge,
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
    pub(crate) fn new(kind: RegistryErrorKind, detail: impl Into<String>) -> Self {
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

/// Where a manifest is pushed: a tag, or its own digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestTarget {
    /// A tag of the repository.
    Tag(Tag),
    /// The manifest's own digest (an untagged push).
    Digest(Digest),
}

impl ManifestTarget {
    fn as_str(&self) -> &str {
        match self {
            ManifestTarget::Tag(t) => t.as_str(),
            ManifestTarget::Digest(d) => d.as_str(),
        }
    }
}

/// A manifest as a registry served it: the exact bytes, and the digest the registry said they
/// have (`Docker-Content-Digest`), unverified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedManifest {
    /// The exact bytes the registry served.
    pub bytes: Bytes,
    /// The digest the registry reported, if it reported a valid one.
    pub reported: Option<Digest>,
}

/// What the publishing engine needs of a registry. Implementations report what the registry
/// answered; the engine verifies content against digests and sizes, so a registry that lies is
/// caught whatever serves it. [`Registry`] speaks HTTP; the engine's tests use one in memory.
pub trait RegistryApi: Clone + Send + Sync {
    /// The same registry (sharing connections and tokens) for a publish to `target`: requests
    /// to `target` ask for pull and push access from the first, so one token serves the reads
    /// there and the writes that follow, and credentials that cannot push are refused before any
    /// write.
    fn pushing_to(&self, target: &Repository) -> Self;

    /// The manifest at `reference` (a tag or a digest), read under the manifest size cap.
    fn get_manifest(
        &self,
        reference: &Reference,
    ) -> impl Future<Output = Result<ServedManifest, RegistryError>> + Send;

    /// The content of a small blob (an image config) of `repo`, never more than its
    /// descriptor's size.
    fn get_blob(
        &self,
        repo: &Repository,
        blob: &BlobDescriptor,
    ) -> impl Future<Output = Result<Bytes, RegistryError>> + Send;

    /// True when `repo` has the manifest `digest` (404 is `false`).
    fn manifest_digest_exists(
        &self,
        repo: &Repository,
        digest: &Digest,
    ) -> impl Future<Output = Result<bool, RegistryError>> + Send;

    /// Makes the blob of `from` available in `to`, of the same registry.
    fn copy_blob(
        &self,
        from: &Repository,
        to: &Repository,
        blob: &BlobDescriptor,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Uploads a small blob (a signature's payload or config) of exactly `bytes` to `repo` as
    /// `digest`, unless `repo` has it; the registry verifies the digest.
    fn put_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        bytes: &Bytes,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Pushes exactly `bytes`, of `media_type`, to `repo` at `target`; returns the digest the
    /// registry says it stored.
    fn put_manifest(
        &self,
        repo: &Repository,
        target: &ManifestTarget,
        bytes: &Bytes,
        media_type: &str,
    ) -> impl Future<Output = Result<Digest, RegistryError>> + Send;
}

/// The registry adapter over HTTP (cheap to clone; clones share connections, credentials and
/// tokens).
#[derive(Clone)]
pub struct Registry {
    transport: Transport,
    config: RegistryConfig,
    /// The repository a publish pushes to ([`RegistryApi::pushing_to`]).
    push_target: Option<Repository>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The digest in a manifest `Location` (`.../manifests/sha256:...`), if it names one.
fn digest_from_location(location: &str) -> Option<Digest> {
    let (_, rest) = location.rsplit_once("/manifests/")?;
    rest.split(['?', '#']).next()?.parse().ok()
}

/// Whether two digests are of one algorithm (`sha256:...`), so that they can be compared.
fn same_algorithm(a: &Digest, b: &Digest) -> bool {
    a.as_str().split_once(':').map(|(alg, _)| alg) == b.as_str().split_once(':').map(|(alg, _)| alg)
}

/// The digest a registry reports in `Docker-Content-Digest`, if it is a valid one.
fn reported_digest(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get("docker-content-digest")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The certificates of a PEM file, each checked to be a usable root.
fn load_ca_file(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, RegistryError> {
    use rustls::pki_types::pem::PemObject;
    let setup = |why: String| {
        RegistryError::new(
            RegistryErrorKind::Setup,
            format!("CA file {}: {why}", path.display()),
        )
    };
    let pem = std::fs::read(path).map_err(|e| setup(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setup(format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(setup("no PEM certificate in it".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in &certs {
        roots
            .add(cert.clone())
            .map_err(|e| setup(format!("invalid certificate: {e}")))?;
    }
    Ok(certs)
}

/// The status a request expected, or the error the answer stands for.
async fn expect(
    response: Response,
    ok: &[StatusCode],
    what: &str,
) -> Result<Response, RegistryError> {
    if ok.contains(&response.status()) {
        Ok(response)
    } else {
        Err(error_of(response, what).await)
    }
}

/// Resolves a `Location` the registry gave against the request's URL.
fn resolve_location(base: &str, response: &Response) -> Result<url::Url, RegistryError> {
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            RegistryError::new(
                RegistryErrorKind::Other,
                "the registry's answer has no Location",
            )
        })?;
    url::Url::parse(base)
        .and_then(|b| b.join(location))
        .map_err(|e| {
            RegistryError::new(
                RegistryErrorKind::Other,
                format!("invalid Location {location:?}: {e}"),
            )
        })
}

impl Registry {
    /// A registry client with `config`, authenticating with credentials from `credentials`.
    pub fn new(config: RegistryConfig, credentials: DockerConfig) -> Result<Self, RegistryError> {
        let extra_roots = match &config.ca_file {
            Some(path) => load_ca_file(path)?,
            None => Vec::new(),
        };
        let transport = Transport::new(
            TransportConfig {
                plain_http: config.plain_http,
                insecure: config.insecure,
                extra_roots,
                idle_timeout: config.timeout,
            },
            credentials,
        )?;
        Ok(Registry {
            transport,
            config,
            push_target: None,
        })
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Runs `attempt` until it succeeds, fails permanently, or the retry policy gives up, all
    /// within `deadline`.
    async fn retry<T, F, Fut>(
        &self,
        what: &str,
        deadline: Duration,
        attempt: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let retried = attempt
            .retry(self.config.retry.backoff())
            .when(RegistryError::is_transient)
            .notify(|e, wait| {
                warn!(operation = what, error = %e, retry_in = ?wait, "registry request failed, retrying")
            });
        match tokio::time::timeout(deadline, retried).await {
            Ok(result) => result,
            Err(_) => Err(RegistryError::new(
                RegistryErrorKind::Timeout,
                format!("{what}: not done within {deadline:?}"),
            )),
        }
    }

    /// The token scope of a read of `repo`: pull, and push too when it is the repository being
    /// pushed to, so that reads and writes there share one token.
    fn read_scope(&self, repo: &Repository) -> String {
        match &self.push_target {
            Some(target) if target == repo => scope(repo.path(), "pull,push"),
            _ => scope(repo.path(), "pull"),
        }
    }

    /// One request for the manifest at `reference` (`GET` or `HEAD`), accepting every manifest
    /// type the engine reads, with pull access to `repo`.
    async fn request_manifest(
        &self,
        method: reqwest::Method,
        repo: &Repository,
        reference: &str,
    ) -> Result<Response, RegistryError> {
        let url = self.transport.url(
            repo.registry(),
            &format!("{}/manifests/{reference}", repo.path()),
        );
        let scopes = [self.read_scope(repo)];
        self.transport
            .send(repo.registry(), &scopes, |http| {
                http.request(method.clone(), &url)
                    .headers(accept(ACCEPTED_MANIFEST_TYPES))
            })
            .await
    }

    /// A HEAD request for a manifest: its answer when it exists, `None` on 404.
    async fn head_manifest(
        &self,
        repo: &Repository,
        reference: &str,
    ) -> Result<Option<Response>, RegistryError> {
        let response = self
            .request_manifest(reqwest::Method::HEAD, repo, reference)
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        expect(response, &[StatusCode::OK], "check manifest")
            .await
            .map(Some)
    }

    /// The digest of the manifest at `reference` in `repo` (a HEAD request, or a bounded read
    /// where the registry reports no digest), `None` when it does not exist.
    async fn manifest_digest(
        &self,
        repo: &Repository,
        reference: &str,
    ) -> Result<Option<Digest>, RegistryError> {
        let Some(response) = self.head_manifest(repo, reference).await? else {
            return Ok(None);
        };
        if let Some(d) = reported_digest(response.headers()) {
            return Ok(Some(d));
        }
        let served = self.read_manifest(repo, reference).await?;
        Ok(Some(Digest::sha256_of(&served.bytes)))
    }

    /// The digest `reference` resolves to (a HEAD request), `None` when it does not exist.
    pub async fn resolve(&self, reference: &Reference) -> Result<Option<Digest>, RegistryError> {
        let r = reference.reference_str();
        self.retry("resolve manifest", self.config.timeout, || async {
            self.manifest_digest(&reference.repository, &r).await
        })
        .await
    }

    /// One GET of a manifest, read up to [`MAX_MANIFEST_SIZE`].
    async fn read_manifest(
        &self,
        repo: &Repository,
        reference: &str,
    ) -> Result<ServedManifest, RegistryError> {
        let response = self
            .request_manifest(reqwest::Method::GET, repo, reference)
            .await?;
        let response = expect(response, &[StatusCode::OK], "read manifest").await?;
        let reported = reported_digest(response.headers());
        let bytes = read_limited(response, MAX_MANIFEST_SIZE, "manifest").await?;
        Ok(ServedManifest { bytes, reported })
    }

    /// True when `repo` has the blob `digest`.
    async fn blob_exists(&self, repo: &Repository, digest: &Digest) -> Result<bool, RegistryError> {
        let url = self
            .transport
            .url(repo.registry(), &format!("{}/blobs/{digest}", repo.path()));
        let scopes = [self.read_scope(repo)];
        self.retry("check blob", self.config.timeout, || async {
            let response = self
                .transport
                .send(repo.registry(), &scopes, |http| http.head(&url))
                .await?;
            match response.status() {
                StatusCode::OK => Ok(true),
                StatusCode::NOT_FOUND => Ok(false),
                _ => Err(error_of(response, "check blob").await),
            }
        })
        .await
    }

    /// Asks the registry to mount the blob from `from` into `to`: `None` when it did, else the
    /// upload the registry opened instead (or an upload opened for the copy).
    async fn mount(
        &self,
        from: &Repository,
        to: &Repository,
        blob: &BlobDescriptor,
    ) -> Result<Option<url::Url>, RegistryError> {
        let url = self
            .transport
            .url(to.registry(), &format!("{}/blobs/uploads/", to.path()));
        let query = [("mount", blob.digest.as_str()), ("from", from.path())];
        let scopes = [scope(to.path(), "pull,push"), scope(from.path(), "pull")];
        let response = self
            .transport
            .send(to.registry(), &scopes, |http| {
                http.post(&url).query(&query).header(CONTENT_LENGTH, "0")
            })
            .await?;
        let response = expect(
            response,
            &[StatusCode::CREATED, StatusCode::ACCEPTED],
            "mount blob",
        )
        .await?;
        if response.status() == StatusCode::CREATED {
            return Ok(None);
        }
        resolve_location(&url, &response).map(Some)
    }

    /// Streams the blob from `from` into the open `upload` of `to`, refusing a source that
    /// sends more than the descriptor's size; the registry verifies the digest.
    async fn stream_copy(
        &self,
        from: &Repository,
        to: &Repository,
        blob: &BlobDescriptor,
        upload: &url::Url,
    ) -> Result<(), RegistryError> {
        let source_url = self.transport.url(
            from.registry(),
            &format!("{}/blobs/{}", from.path(), blob.digest),
        );
        let source = self
            .transport
            .send(from.registry(), &[scope(from.path(), "pull")], |http| {
                http.get(&source_url)
            })
            .await?;
        let source = expect(source, &[StatusCode::OK], "read blob").await?;
        let size = blob.size;
        let mut sent = 0u64;
        let body = source.bytes_stream().map(move |chunk| {
            let chunk = chunk?;
            sent += chunk.len() as u64;
            if sent > size {
                return Err(std::io::Error::other(format!(
                    "the source sent more than the blob's {size} bytes"
                ))
                .into());
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(chunk)
        });
        let mut target = upload.clone();
        target
            .query_pairs_mut()
            .append_pair("digest", blob.digest.as_str());
        let scopes = [scope(to.path(), "pull,push")];
        let body = std::sync::Mutex::new(Some(reqwest::Body::wrap_stream(body)));
        let response = self
            .transport
            .send(to.registry(), &scopes, |http| {
                let request = http
                    .request(Method::PUT, target.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size);
                match body.lock().ok().and_then(|mut b| b.take()) {
                    Some(b) => request.body(b),
                    None => request,
                }
            })
            .await?;
        expect(response, &[StatusCode::CREATED], "copy blob")
            .await
            .map(|_| ())
    }
}

impl RegistryApi for Registry {
    fn pushing_to(&self, target: &Repository) -> Self {
        Registry {
            push_target: Some(target.clone()),
            ..self.clone()
        }
    }

    async fn get_manifest(&self, reference: &Reference) -> Result<ServedManifest, RegistryError> {
        let r = reference.reference_str();
        self.retry("read manifest", self.config.timeout, || async {
            self.read_manifest(&reference.repository, &r).await
        })
        .await
    }

    /// Reads at most the descriptor's size (and never more than [`MAX_CONFIG_SIZE`]): a byte
    /// more is already wrong.
    async fn get_blob(
        &self,
        repo: &Repository,
        blob: &BlobDescriptor,
    ) -> Result<Bytes, RegistryError> {
        if blob.size > MAX_CONFIG_SIZE {
            return Err(RegistryError::new(
                RegistryErrorKind::TooLarge,
                format!(
                    "blob {} is {} bytes, more than the {MAX_CONFIG_SIZE} read into memory",
                    blob.digest, blob.size
                ),
            ));
        }
        let url = self.transport.url(
            repo.registry(),
            &format!("{}/blobs/{}", repo.path(), blob.digest),
        );
        let scopes = [self.read_scope(repo)];
        self.retry("read blob", self.config.timeout, || async {
            let response = self
                .transport
                .send(repo.registry(), &scopes, |http| http.get(&url))
                .await?;
            let response = expect(response, &[StatusCode::OK], "read blob").await?;
            read_limited(response, blob.size as usize, "blob").await
        })
        .await
        .map_err(|e| match e.kind {
            RegistryErrorKind::TooLarge => RegistryError::new(
                RegistryErrorKind::DigestMismatch,
                format!(
                    "blob {} is larger than its descriptor's {} bytes",
                    blob.digest, blob.size
                ),
            ),
            _ => e,
        })
    }

    /// A HEAD request (or, where the registry reports no digest, a bounded read).
    async fn manifest_digest_exists(
        &self,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        // a registry that answers for `digest` with another digest of the same algorithm is a
        // digest mismatch, not a missing manifest
        self.retry("check manifest", self.config.timeout, || async {
            match self.manifest_digest(repo, digest.as_str()).await? {
                Some(found) if &found != digest && same_algorithm(&found, digest) => {
                    Err(RegistryError::new(
                        RegistryErrorKind::DigestMismatch,
                        format!("asked for manifest {digest}, the registry answered with {found}"),
                    ))
                }
                found => Ok(found.as_ref() == Some(digest)),
            }
        })
        .await
    }

    /// A cross-repository mount (one request, whether or not `to` has the blob already); where
    /// the registry refuses it (or a token does not cover `from`), nothing when `to` has the
    /// blob, else a streamed copy of exactly the descriptor's size.
    async fn copy_blob(
        &self,
        from: &Repository,
        to: &Repository,
        blob: &BlobDescriptor,
    ) -> Result<(), RegistryError> {
        let upload = self
            .retry("mount blob", self.config.timeout, || {
                self.mount(from, to, blob)
            })
            .await?;
        let Some(upload) = upload else {
            return Ok(());
        };
        if self.blob_exists(to, &blob.digest).await? {
            return Ok(());
        }
        debug!(blob = %blob.digest, %from, %to, "mount not done, copying the blob");
        let deadline = self.config.timeout + Duration::from_secs(blob.size / MIN_COPY_RATE);
        self.retry("copy blob", deadline, || {
            self.stream_copy(from, to, blob, &upload)
        })
        .await
    }

    /// A HEAD, then (when missing) a POST opening an upload and one PUT of the whole blob.
    async fn put_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        bytes: &Bytes,
    ) -> Result<(), RegistryError> {
        if self.blob_exists(repo, digest).await? {
            return Ok(());
        }
        let url = self
            .transport
            .url(repo.registry(), &format!("{}/blobs/uploads/", repo.path()));
        let scopes = [scope(repo.path(), "pull,push")];
        self.retry("upload blob", self.config.timeout, || async {
            let response = self
                .transport
                .send(repo.registry(), &scopes, |http| {
                    http.post(&url).header(CONTENT_LENGTH, "0")
                })
                .await?;
            let response = expect(response, &[StatusCode::ACCEPTED], "open upload").await?;
            let mut upload = resolve_location(&url, &response)?;
            upload
                .query_pairs_mut()
                .append_pair("digest", digest.as_str());
            let response = self
                .transport
                .send(repo.registry(), &scopes, |http| {
                    http.request(Method::PUT, upload.clone())
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .body(bytes.clone())
                })
                .await?;
            expect(response, &[StatusCode::CREATED], "upload blob")
                .await
                .map(|_| ())
        })
        .await
    }

    /// The digest comes from the answer (`Docker-Content-Digest`, or the `Location`), or where
    /// it names none, from asking the registry what `target` is now.
    async fn put_manifest(
        &self,
        repo: &Repository,
        target: &ManifestTarget,
        bytes: &Bytes,
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let content_type = HeaderValue::from_str(media_type).map_err(|_| {
            RegistryError::new(
                RegistryErrorKind::Other,
                format!("invalid media type {media_type:?}"),
            )
        })?;
        let url = self.transport.url(
            repo.registry(),
            &format!("{}/manifests/{}", repo.path(), target.as_str()),
        );
        let scopes = [scope(repo.path(), "pull,push")];
        self.retry("push manifest", self.config.timeout, || async {
            let response = self
                .transport
                .send(repo.registry(), &scopes, |http| {
                    http.put(&url)
                        .header(CONTENT_TYPE, content_type.clone())
                        .body(bytes.clone())
                })
                .await?;
            let response = expect(
                response,
                &[StatusCode::CREATED, StatusCode::OK],
                "push manifest",
            )
            .await?;
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(digest_from_location);
            match reported_digest(response.headers()).or(location) {
                Some(d) => Ok(d),
                None => self
                    .manifest_digest(repo, target.as_str())
                    .await?
                    .ok_or_else(|| {
                        RegistryError::new(
                            RegistryErrorKind::Other,
                            "the registry accepted the manifest but does not have it",
                        )
                    }),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap_and_stops_after_the_attempts() {
        use backon::BackoffBuilder;
        let p = RetryPolicy {
            attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        let waits: Vec<Duration> = p.backoff().build().collect();
        assert_eq!(waits.len(), 5, "attempts - 1 retries");
        for (n, w) in waits.iter().enumerate() {
            let base = Duration::from_millis(100 * (1 << n)).min(Duration::from_millis(500));
            assert!(
                *w >= base && *w <= base * 2,
                "wait {n}: {w:?} not in [{base:?}, 2x]"
            );
        }
        assert_eq!(
            RetryPolicy { attempts: 1, ..p }.backoff().build().count(),
            0
        );
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
