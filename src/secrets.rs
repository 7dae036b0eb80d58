//! Secret values the operator knows (the object's push Secret and git Secret) and scrubbing them
//! from text that leaves the builder: a failed builder's log tail is copied into status and
//! Events, and a build log can print a token (a git error with the URL, a `RUN echo`). Pure: the
//! controller reads the Secrets and passes them in.

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;

/// What replaces a secret value.
pub const REDACTED: &str = "[redacted]";

/// Values shorter than this are not scrubbed: replacing every `1` or `ab` in a log would hide
/// the log, and so short a value protects nothing.
const MIN_LEN: usize = 4;

/// Every value of `secret` as text, and the forms a tool prints them in: for a
/// `.dockerconfigjson`, each registry's password, identity token and `auth` (base64 of
/// `user:password`); for a git Secret, `base64(user:token)` as sent in a basic auth header.
pub fn known_values(secret: &Secret) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = |k: &str| value(secret, k);
    let mut out = Vec::new();
    for (k, v) in secret.data.iter().flatten() {
        let value = String::from_utf8_lossy(&v.0).trim().to_string();
        if k == ".dockerconfigjson" {
            out.extend(docker_config_values(&value));
        } else {
            out.push(value);
        }
    }
    let user = text("username").unwrap_or_else(|| "x-access-token".into());
    if let Some(password) = text("token").or_else(|| text("password")) {
        out.push(b64.encode(format!("{user}:{password}")));
    }
    out.retain(|v| v.len() >= MIN_LEN);
    out.sort();
    out.dedup();
    out
}

/// The value of `key` in `secret`, as text without surrounding white space.
pub fn value(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    Some(String::from_utf8_lossy(&bytes.0).trim().to_string())
}

/// Passwords, tokens and `auth` values of a Docker config (and `auth` decoded).
fn docker_config_values(json: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Ok(config) = serde_json::from_str::<serde_json::Value>(json) else {
        // not JSON: the whole value is the secret
        return vec![json.to_string()];
    };
    let mut out = Vec::new();
    for entry in config
        .get("auths")
        .and_then(|a| a.as_object())
        .into_iter()
        .flat_map(|a| a.values())
    {
        for field in ["password", "auth", "identitytoken", "registrytoken"] {
            if let Some(v) = entry.get(field).and_then(|v| v.as_str()) {
                out.push(v.to_string());
            }
        }
        if let Some(decoded) = entry
            .get("auth")
            .and_then(|v| v.as_str())
            .and_then(|a| b64.decode(a).ok())
        {
            let decoded = String::from_utf8_lossy(&decoded).into_owned();
            if let Some((_, password)) = decoded.split_once(':') {
                out.push(password.to_string());
            }
            out.push(decoded);
        }
    }
    out
}

/// `text` with every one of `secrets` replaced by [`REDACTED`] (longest first, so that a value
/// containing another is replaced whole).
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut sorted: Vec<&String> = secrets.iter().filter(|s| s.len() >= MIN_LEN).collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for s in sorted {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_git_token_and_its_basic_auth_header_are_known() {
        let values = known_values(&secret(&[("token", "ghp_s3cret0123\n")]));
        assert!(values.contains(&"ghp_s3cret0123".to_string()));
        // base64("x-access-token:ghp_s3cret0123")
        assert!(values.contains(&"eC1hY2Nlc3MtdG9rZW46Z2hwX3MzY3JldDAxMjM=".to_string()));
        let basic = known_values(&secret(&[("username", "bob"), ("password", "hunter22")]));
        assert!(basic.contains(&"hunter22".to_string()));
        assert!(basic.contains(&"Ym9iOmh1bnRlcjIy".to_string()), "{basic:?}");
    }

    #[test]
    fn a_docker_configs_passwords_and_auth_are_known() {
        let auth = "dXNlcjpyZWctcGFzc3dvcmQ="; // user:reg-password
        let config = format!(
            r#"{{"auths":{{"r.example.com":{{"auth":"{auth}"}},"o.example.com":{{"username":"u","password":"other-pass","identitytoken":"idtok-123"}}}}}}"#
        );
        let values = known_values(&secret(&[(".dockerconfigjson", &config)]));
        for want in [
            auth,
            "reg-password",
            "user:reg-password",
            "other-pass",
            "idtok-123",
        ] {
            assert!(values.contains(&want.to_string()), "{want} in {values:?}");
        }
    }

    #[test]
    fn scrubbing_replaces_every_known_value_and_keeps_the_rest() {
        let values = known_values(&secret(&[("token", "tok-0123456789")]));
        let log = "#5 fetching https://x-access-token:tok-0123456789@git.example.com/a.git\n\
                   Authorization: Basic eC1hY2Nlc3MtdG9rZW46dG9rLTAxMjM0NTY3ODk=\nerror: exit 128";
        let scrubbed = scrub(log, &values);
        assert!(!scrubbed.contains("tok-0123456789"), "{scrubbed}");
        assert!(!scrubbed.contains("eC1hY2Nlc3MtdG9rZW46dG9rLTAxMjM0NTY3ODk="));
        assert!(scrubbed.contains("x-access-token:[redacted]@git.example.com"));
        assert!(scrubbed.contains("Basic [redacted]") && scrubbed.contains("error: exit 128"));
        assert_eq!(
            scrub("a 1 b", &["1".to_string()]),
            "a 1 b",
            "too short to scrub"
        );
    }
}
