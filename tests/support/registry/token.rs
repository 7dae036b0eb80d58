//! A small token service, as Docker Hub and GHCR run: `GET /token?service=..&scope=..` with
//! HTTP basic credentials answers a JWT (ES256, with the signing certificate in the `x5c` header,
//! which distribution 2.8 verifies against its `auth.token.rootcertbundle`). Wrong credentials get
//! 401; no credentials get a token granting nothing. Runs on its own thread and runtime, stopped
//! on drop.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

/// The `service` the registry and the tokens name.
pub const SERVICE: &str = "multiarch-test-registry";
/// The `iss` of the tokens.
pub const ISSUER: &str = "multiarch-test-token-issuer";

struct Signer {
    key: EcdsaKeyPair,
    x5c: String,
    users: HashMap<String, String>,
    rng: SystemRandom,
}

/// A running token service.
pub struct TokenIssuer {
    /// `http://127.0.0.1:PORT/token`, the registry's `auth.token.realm`.
    pub realm: String,
    /// The CA that signed the token signing certificate (`auth.token.rootcertbundle`).
    pub root_cert_bundle: PathBuf,
    /// Token requests answered with a token.
    pub issued: Arc<AtomicUsize>,
    /// Token requests refused (wrong credentials).
    pub refused: Arc<AtomicUsize>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl Signer {
    fn jwt(&self, subject: &str, access: serde_json::Value) -> String {
        let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let t = now();
        let claims = json!({
            "iss": ISSUER, "sub": subject, "aud": SERVICE,
            "exp": t + 300, "nbf": t - 60, "iat": t,
            "jti": format!("{t}-{}", rand_suffix(&self.rng)),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .expect("sign token");
        format!("{signing_input}.{}", b64url(signature.as_ref()))
    }

    /// Checks the basic credentials of `authorization`: `Ok(None)` anonymous, `Ok(Some(user))`,
    /// `Err` refused.
    fn account(&self, authorization: Option<&str>) -> Result<Option<String>, ()> {
        let Some(value) = authorization else {
            return Ok(None);
        };
        let encoded = value.strip_prefix("Basic ").ok_or(())?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| ())?;
        let decoded = String::from_utf8(decoded).map_err(|_| ())?;
        let (user, password) = decoded.split_once(':').ok_or(())?;
        match self.users.get(user) {
            Some(p) if p == password => Ok(Some(user.to_string())),
            _ => Err(()),
        }
    }
}

fn rand_suffix(rng: &SystemRandom) -> String {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(rng, &mut b).expect("random");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The `access` claim granting what `scopes` ask for (`repository:NAME:ACTIONS`).
fn grant(scopes: &[String]) -> serde_json::Value {
    let mut access = Vec::new();
    for scope in scopes.iter().flat_map(|s| s.split(' ')) {
        let mut parts = scope.split(':');
        let (Some(kind), Some(actions)) = (parts.next(), scope.rsplit(':').next()) else {
            continue;
        };
        let name = scope
            .strip_prefix(&format!("{kind}:"))
            .and_then(|rest| rest.strip_suffix(&format!(":{actions}")))
            .unwrap_or_default();
        if name.is_empty() {
            continue;
        }
        let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
        access.push(json!({"type": kind, "name": name, "actions": actions}));
    }
    serde_json::Value::Array(access)
}

impl TokenIssuer {
    /// Starts a token service accepting `users` (name, password); writes its CA into `dir`.
    pub fn start(dir: &Path, users: &[(&str, &str)]) -> TokenIssuer {
        let (ca_params, ca_key, ca_cert) = super::test_ca("multiarch-operator test token CA");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("token signing key");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("signing cert params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test token signer");
        let cert = params
            .signed_by(&key, &issuer)
            .expect("signing certificate");
        let root_cert_bundle = dir.join("token-ca.pem");
        std::fs::write(&root_cert_bundle, ca_cert.pem()).expect("write token CA");
        let rng = SystemRandom::new();
        let signer = Arc::new(Signer {
            key: EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &key.serialize_der(),
                &rng,
            )
            .expect("ring key"),
            x5c: base64::engine::general_purpose::STANDARD.encode(cert.der()),
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            rng,
        });

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token service");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let issued = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let (issued2, refused2) = (issued.clone(), refused.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let stream = tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => match accepted {
                            Ok((s, _)) => s,
                            Err(_) => continue,
                        },
                    };
                    let signer = signer.clone();
                    let (issued, refused) = (issued2.clone(), refused2.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(
                            move |req: Request<hyper::body::Incoming>| {
                                let signer = signer.clone();
                                let (issued, refused) = (issued.clone(), refused.clone());
                                async move {
                                    Ok::<_, std::convert::Infallible>(answer(
                                        &signer, &req, &issued, &refused,
                                    ))
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        TokenIssuer {
            realm: format!("http://127.0.0.1:{port}/token"),
            root_cert_bundle,
            issued,
            refused,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }
}

fn answer(
    signer: &Signer,
    req: &Request<hyper::body::Incoming>,
    issued: &AtomicUsize,
    refused: &AtomicUsize,
) -> Response<Full<Bytes>> {
    let respond = |status: StatusCode, body: serde_json::Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("response")
    };
    if req.uri().path() != "/token" {
        return respond(StatusCode::NOT_FOUND, json!({"error": "not found"}));
    }
    let query = req.uri().query().unwrap_or_default();
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let service = pairs
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.as_str());
    if service.is_some_and(|s| s != SERVICE) {
        return respond(StatusCode::BAD_REQUEST, json!({"error": "unknown service"}));
    }
    let scopes: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match signer.account(authorization) {
        Err(()) => {
            refused.fetch_add(1, Ordering::SeqCst);
            respond(
                StatusCode::UNAUTHORIZED,
                json!({"details": "incorrect username or password"}),
            )
        }
        Ok(account) => {
            let access = match &account {
                Some(_) => grant(&scopes),
                None => json!([]),
            };
            let token = signer.jwt(account.as_deref().unwrap_or(""), access);
            issued.fetch_add(1, Ordering::SeqCst);
            respond(
                StatusCode::OK,
                json!({"token": token, "access_token": token, "expires_in": 300}),
            )
        }
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_become_access_entries() {
        let access = grant(&[
            "repository:team/app:pull,push".to_string(),
            "repository:src/app:pull".to_string(),
        ]);
        assert_eq!(
            access,
            json!([
                {"type": "repository", "name": "team/app", "actions": ["pull", "push"]},
                {"type": "repository", "name": "src/app", "actions": ["pull"]}
            ])
        );
    }
}
