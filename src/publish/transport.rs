//! HTTP for the registry adapter: requests of the OCI distribution API with the registry's own
//! authentication (anonymous, HTTP basic, or a bearer token from the registry's token service,
//! as its `WWW-Authenticate` challenge asks), and every response body read under a size cap
//! while it arrives, so a registry answering with an endless body costs at most the cap.
//!
//! Credentials are looked up once per registry and never logged. A host's challenge is met once:
//! later requests carry what it asked for from the start (basic credentials, or a token, asked
//! for before the request once the token service is known, so a new scope costs the token
//! request and no 401). Tokens are kept per host and scope (at most [`MAX_TOKENS`]) and
//! fetched again when the registry refuses one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};
use tokio::sync::Mutex;
use tracing::debug;

use super::credentials::{Credential, DockerConfig};
use super::registry::{RegistryError, RegistryErrorKind};

/// The most of an error answer, a token answer or a `/v2/` answer that is read.
pub(crate) const SMALL_BODY_LIMIT: usize = 64 * 1024;
/// Redirects followed for one request (registries redirect blob reads to object storage).
const MAX_REDIRECTS: usize = 5;
/// Tokens kept per client: a long-lived client (the controller's, one per push Secret) forgets
/// them all past this many scopes, and fetches again those it needs.
pub(crate) const MAX_TOKENS: usize = 256;

/// How a registry asked to be authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// HTTP basic authentication with the credentials as they are.
    Basic,
    /// A bearer token from `realm`, for `service`.
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value (`Bearer realm="..",service="..",scope=".."` or
/// `Basic realm=".."`).
pub(crate) fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(params);
    let realm = params.get("realm")?.clone();
    Some(Challenge::Bearer {
        realm,
        service: params.get("service").cloned(),
    })
}

/// `key="value", key=value` pairs, keys lowercased; commas inside quotes are kept.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            },
            None => match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            },
        };
        out.insert(key, value.to_string());
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// The host that serves a registry's API (Docker Hub's is not `docker.io`).
pub(crate) fn api_host(registry: &str) -> &str {
    match registry {
        "docker.io" | "index.docker.io" => "registry-1.docker.io",
        other => other,
    }
}

/// A token scope for `path` with `actions` (`pull`, or `pull,push`).
pub(crate) fn scope(path: &str, actions: &str) -> String {
    format!("repository:{path}:{actions}")
}

#[derive(Default)]
struct AuthState {
    /// Credentials by registry, looked up once.
    credentials: HashMap<String, Credential>,
    /// How each host asked to be authenticated.
    challenges: HashMap<String, Challenge>,
    /// Bearer tokens by host and scopes.
    tokens: HashMap<(String, String), String>,
}

/// HTTP to registries (cheap to clone; clones share connections, credentials and tokens).
#[derive(Clone)]
pub(crate) struct Transport {
    http: reqwest::Client,
    scheme: &'static str,
    credentials: Arc<DockerConfig>,
    state: Arc<Mutex<AuthState>>,
}

/// The settings a [`Transport`] is built with.
pub(crate) struct TransportConfig {
    pub plain_http: bool,
    pub insecure: bool,
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Connecting, and waiting for each read.
    pub idle_timeout: Duration,
}

impl Transport {
    pub(crate) fn new(
        config: TransportConfig,
        credentials: DockerConfig,
    ) -> Result<Self, RegistryError> {
        let setup = |why: String| {
            RegistryError::new(
                RegistryErrorKind::Setup,
                format!("cannot set up the registry client: {why}"),
            )
        };
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .ok_or_else(|| setup("no TLS crypto provider installed".into()))?;
        let tls = super::tls::client_config(provider, config.insecure, config.extra_roots)
            .map_err(|e| setup(e.to_string()))?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("multiarch-operator/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.idle_timeout)
            .read_timeout(config.idle_timeout)
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| setup(error_chain(&e)))?;
        Ok(Transport {
            http,
            scheme: if config.plain_http { "http" } else { "https" },
            credentials: Arc::new(credentials),
            state: Arc::default(),
        })
    }

    /// The URL of `path` (after `/v2/`) on `registry`.
    pub(crate) fn url(&self, registry: &str, path: &str) -> String {
        format!("{}://{}/v2/{path}", self.scheme, api_host(registry))
    }

    /// Sends the request `build` makes to `registry`, authenticated for `scopes`: with what
    /// the registry asked for before, and when it answers 401 with a challenge, once more
    /// after meeting it. `build` may be called twice.
    pub(crate) async fn send(
        &self,
        registry: &str,
        scopes: &[String],
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let host = api_host(registry).to_string();
        let known = self.known_authorization(registry, &host, scopes).await?;
        let response = execute(build(&self.http), known.clone()).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let Some(challenge) = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge)
        else {
            return Ok(response);
        };
        let fresh = self.meet(registry, &host, scopes, challenge).await?;
        match fresh {
            Some(auth) if Some(&auth) != known.as_ref() => {
                execute(build(&self.http), Some(auth)).await
            }
            _ => Ok(response),
        }
    }

    async fn credential(&self, registry: &str) -> Result<Credential, RegistryError> {
        if let Some(c) = self.state.lock().await.credentials.get(registry) {
            return Ok(c.clone());
        }
        let credential = self
            .credentials
            .lookup(registry)
            .await
            .map_err(|e| RegistryError::new(RegistryErrorKind::Credentials, e.to_string()))?;
        debug!(registry, credential = ?credential, "registry credentials");
        let mut state = self.state.lock().await;
        state
            .credentials
            .insert(registry.to_string(), credential.clone());
        Ok(credential)
    }

    /// The authorization to send before any challenge of this request: what the host asked
    /// for earlier, if anything.
    async fn known_authorization(
        &self,
        registry: &str,
        host: &str,
        scopes: &[String],
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let challenge = self.state.lock().await.challenges.get(host).cloned();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(basic(&self.credential(registry).await?)),
            Some(Challenge::Bearer { realm, service }) => {
                let credential = self.credential(registry).await?;
                if let Credential::RegistryToken(t) = &credential {
                    return Ok(bearer(t));
                }
                let key = (host.to_string(), scopes.join(" "));
                let known = self.state.lock().await.tokens.get(&key).cloned();
                match known {
                    Some(token) => Ok(bearer(&token)),
                    // a new scope of a known token service: its token first, no 401
                    None => {
                        let token = self
                            .fetch_token(&realm, service.as_deref(), scopes, &credential)
                            .await?;
                        Ok(self.keep_token(key, token).await)
                    }
                }
            }
        }
    }

    /// Meets a challenge: basic credentials, or a new token for `scopes`. `None` when there is
    /// nothing to answer it with (no credentials for a basic challenge).
    async fn meet(
        &self,
        registry: &str,
        host: &str,
        scopes: &[String],
        challenge: Challenge,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        self.state
            .lock()
            .await
            .challenges
            .insert(host.to_string(), challenge.clone());
        let credential = self.credential(registry).await?;
        match challenge {
            Challenge::Basic => Ok(basic(&credential)),
            Challenge::Bearer { realm, service } => {
                if let Credential::RegistryToken(t) = &credential {
                    return Ok(bearer(t));
                }
                let token = self
                    .fetch_token(&realm, service.as_deref(), scopes, &credential)
                    .await?;
                let key = (host.to_string(), scopes.join(" "));
                Ok(self.keep_token(key, token).await)
            }
        }
    }

    /// Keeps `token` for its host and scopes (forgetting every other past [`MAX_TOKENS`]), and
    /// returns its header.
    async fn keep_token(&self, key: (String, String), token: String) -> Option<HeaderValue> {
        let header = bearer(&token);
        let mut state = self.state.lock().await;
        if state.tokens.len() >= MAX_TOKENS {
            state.tokens.clear();
        }
        state.tokens.insert(key, token);
        header
    }

    /// Asks the token service at `realm` for a token (RFC 6750 style, as the distribution
    /// token specification describes), with basic credentials when there are any.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        credential: &Credential,
    ) -> Result<String, RegistryError> {
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        for s in scopes {
            query.push(("scope", s));
        }
        let mut request = self.http.get(realm).query(&query);
        if let Some((user, password)) = basic_pair(credential) {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.map_err(|e| classify_http(&e))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(RegistryError::new(
                RegistryErrorKind::Unauthorized,
                format!("the registry's token service refused the credentials ({status})"),
            ));
        }
        if !status.is_success() {
            return Err(error_of(response, "token service").await);
        }
        let body = read_limited(response, SMALL_BODY_LIMIT, "token answer").await?;
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            RegistryError::new(
                RegistryErrorKind::Other,
                format!("the token service's answer is not a token: {e}"),
            )
        })?;
        answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                RegistryError::new(
                    RegistryErrorKind::Other,
                    "the token service's answer holds no token",
                )
            })
    }
}

async fn execute(
    request: RequestBuilder,
    authorization: Option<HeaderValue>,
) -> Result<Response, RegistryError> {
    let request = match authorization {
        Some(a) => request.header(AUTHORIZATION, a),
        None => request,
    };
    request.send().await.map_err(|e| classify_http(&e))
}

fn basic_pair(credential: &Credential) -> Option<(&str, &str)> {
    match credential {
        Credential::Basic { username, password } => Some((username, password)),
        Credential::IdentityToken { username, token } => Some((username, token)),
        Credential::Anonymous | Credential::RegistryToken(_) => None,
    }
}

fn basic(credential: &Credential) -> Option<HeaderValue> {
    use base64::Engine as _;
    let (user, password) = basic_pair(credential)?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

fn bearer(token: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Reads a response body, refusing it as soon as it passes `limit` bytes (or announces more).
pub(crate) async fn read_limited(
    response: Response,
    limit: usize,
    what: &str,
) -> Result<Bytes, RegistryError> {
    let too_large = |size: String| {
        RegistryError::new(
            RegistryErrorKind::TooLarge,
            format!("the registry sent a {what} of {size} bytes; at most {limit} are read"),
        )
    };
    if let Some(len) = response.content_length() {
        if len > limit as u64 {
            return Err(too_large(len.to_string()));
        }
    }
    let mut body = BytesMut::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| classify_http(&e))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(format!("more than {limit}")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The error a non-success answer stands for, read from its status and (at most
/// [`SMALL_BODY_LIMIT`] of) its body.
pub(crate) async fn error_of(response: Response, what: &str) -> RegistryError {
    let status = response.status();
    let body = read_limited(response, SMALL_BODY_LIMIT, "error answer")
        .await
        .unwrap_or_default();
    classify_answer(status.as_u16(), &body, what)
}

/// Classifies a registry's error answer: its status, and the codes of an OCI error envelope.
pub(crate) fn classify_answer(status: u16, body: &[u8], what: &str) -> RegistryError {
    use RegistryErrorKind as K;
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<EnvelopeError>,
    }
    #[derive(serde::Deserialize)]
    struct EnvelopeError {
        code: String,
        #[serde(default)]
        message: String,
    }
    let envelope = serde_json::from_slice::<Envelope>(body)
        .ok()
        .filter(|e| !e.errors.is_empty());
    let codes: Vec<&str> = envelope
        .iter()
        .flat_map(|e| e.errors.iter().map(|e| e.code.as_str()))
        .collect();
    let by_code = if codes.contains(&"TOOMANYREQUESTS") {
        Some(K::RateLimited)
    } else if codes.iter().any(|c| {
        matches!(
            *c,
            "MANIFEST_UNKNOWN" | "BLOB_UNKNOWN" | "NAME_UNKNOWN" | "NOT_FOUND"
        )
    }) {
        Some(K::NotFound)
    } else if codes.contains(&"UNAUTHORIZED") {
        Some(K::Unauthorized)
    } else if codes.contains(&"DENIED") {
        Some(K::Denied)
    } else {
        None
    };
    let kind = match (by_code, status_kind(status)) {
        (_, K::Server(code)) => K::Server(code),
        (Some(kind), _) => kind,
        (None, kind) => kind,
    };
    if kind == K::Unauthorized {
        return RegistryError::new(kind, UNAUTHORIZED_HINT);
    }
    let detail = match envelope {
        Some(e) => e
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        None => String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_string(),
    };
    let detail = if detail.is_empty() {
        format!("{what}: the registry answered {status}")
    } else {
        format!("{what}: the registry answered {status}: {detail}")
    };
    RegistryError::new(kind, detail)
}

pub(crate) fn status_kind(code: u16) -> RegistryErrorKind {
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

pub(crate) const UNAUTHORIZED_HINT: &str = "401 Unauthorized: the registry wants credentials, or refused the ones given (check `docker login` or the push secret)";

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
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

/// Classifies a failed HTTP exchange (no answer, or an answer that broke off).
pub(crate) fn classify_http(e: &reqwest::Error) -> RegistryError {
    use RegistryErrorKind as K;
    let text = error_chain(e);
    let lower = text.to_ascii_lowercase();
    if e.is_timeout() {
        RegistryError::new(K::Timeout, format!("no answer in time: {text}"))
    } else if e.is_redirect() {
        RegistryError::new(
            K::Other,
            format!("the registry redirected more than {MAX_REDIRECTS} times (a redirect loop?): {text}"),
        )
    } else if lower.contains("certificate") || lower.contains("invalidcontenttype") {
        RegistryError::new(
            K::Tls,
            format!(
                "TLS failed ({text}); trust the registry's CA with --ca-file, or use --plain-http for a registry without TLS"
            ),
        )
    } else if e.is_connect() || e.is_request() || e.is_body() || e.is_decode() {
        RegistryError::new(K::Connection, text)
    } else if let Some(status) = e.status() {
        RegistryError::new(status_kind(status.as_u16()), text)
    } else {
        RegistryError::new(K::Other, text)
    }
}

/// Headers asking for any of `media_types`.
pub(crate) fn accept(media_types: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&media_types.join(", ")) {
        headers.insert(reqwest::header::ACCEPT, v);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_parsed_with_quoted_commas() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge("bearer realm=http://t/token"),
            Some(Challenge::Bearer {
                realm: "http://t/token".into(),
                service: None
            })
        );
        assert_eq!(parse_challenge(r#"Bearer service="s""#), None, "no realm");
        assert_eq!(parse_challenge("Digest nonce=1"), None);
    }

    #[test]
    fn error_envelopes_decide_the_kind_unless_the_server_failed() {
        use RegistryErrorKind as K;
        let env = |code: &str| format!(r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#);
        let cases = [
            (404, env("MANIFEST_UNKNOWN"), K::NotFound),
            (400, env("TOOMANYREQUESTS"), K::RateLimited),
            (429, String::new(), K::RateLimited),
            (401, env("UNAUTHORIZED"), K::Unauthorized),
            (403, env("DENIED"), K::Denied),
            (400, env("MANIFEST_INVALID"), K::Other),
            (503, env("UNKNOWN"), K::Server(503)),
            (502, "<html>bad gateway</html>".into(), K::Server(502)),
            (404, String::new(), K::NotFound),
        ];
        for (status, body, kind) in cases {
            let e = classify_answer(status, body.as_bytes(), "read manifest");
            assert_eq!(e.kind, kind, "{status} {body}");
        }
        let e = classify_answer(400, env("MANIFEST_INVALID").as_bytes(), "push manifest");
        assert!(e.detail.contains("MANIFEST_INVALID: m"), "{e}");
        assert!(e.detail.starts_with("push manifest"), "{e}");
    }

    #[tokio::test]
    async fn tokens_are_kept_up_to_their_bound() {
        crate::install_crypto_provider();
        let config = TransportConfig {
            plain_http: true,
            insecure: false,
            extra_roots: Vec::new(),
            idle_timeout: Duration::from_secs(1),
        };
        let transport = Transport::new(config, DockerConfig::empty()).unwrap();
        let key = |i: usize| ("r".to_string(), scope(&format!("app{i}"), "pull"));
        for i in 0..MAX_TOKENS {
            transport.keep_token(key(i), format!("t{i}")).await;
        }
        {
            let state = transport.state.lock().await;
            assert_eq!(state.tokens.len(), MAX_TOKENS);
            assert_eq!(state.tokens.get(&key(0)).map(String::as_str), Some("t0"));
        }
        // one more scope: the others are forgotten (and fetched again when needed)
        let header = transport.keep_token(key(MAX_TOKENS), "last".into()).await;
        assert_eq!(header.unwrap().to_str().unwrap(), "Bearer last");
        assert_eq!(transport.state.lock().await.tokens.len(), 1);
    }

    #[test]
    fn docker_hub_is_served_from_its_api_host() {
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("ghcr.io"), "ghcr.io");
        assert_eq!(api_host("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
