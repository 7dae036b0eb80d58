//! The registry, read through independent clients (skopeo and crane), never through the
//! operator's own code. A registry error fails the test: "nothing tagged" must mean an empty tag
//! list, not an unreachable registry.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cmd::{output, run};
use crate::env;

/// `registry/repo[:tag|@digest]` for a path in the suite's registry.
pub fn reference(path: &str) -> String {
    format!("docker://{}/{path}", env().registry)
}

/// The tags of `repo`, sorted. A repository that does not exist has none; any other answer
/// that is not a tag list fails the test.
pub fn tags(repo: &str) -> Vec<String> {
    let out = output(
        "skopeo",
        &["list-tags", "--tls-verify=false", &reference(repo)],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert!(
            stderr.contains("name unknown")
                || stderr.contains("NAME_UNKNOWN")
                || stderr.contains("registry 404 (Not Found)"),
            "listing the tags of {repo} failed, and not because the repository is missing: {stderr}"
        );
        return Vec::new();
    }
    let list: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("skopeo list-tags {repo}: not JSON: {e}"));
    let mut tags: Vec<String> = list["Tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    tags
}

/// The raw manifest (or index) bytes `path` points at.
pub fn raw(path: &str) -> Vec<u8> {
    run(
        "skopeo",
        &["inspect", "--raw", "--tls-verify=false", &reference(path)],
    )
    .into_bytes()
}

/// The raw manifest as JSON.
pub fn manifest(path: &str) -> Value {
    serde_json::from_slice(&raw(path))
        .unwrap_or_else(|e| panic!("the manifest of {path} is not JSON: {e}"))
}

/// The image config of `path`.
pub fn config(path: &str) -> Value {
    let text = run(
        "skopeo",
        &[
            "inspect",
            "--config",
            "--tls-verify=false",
            &reference(path),
        ],
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("the config of {path} is not JSON: {e}"))
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// The `os/arch[/variant]` of each entry of an index, in order.
pub fn index_platforms(index: &Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|m| {
                    let p = &m["platform"];
                    let mut s = format!(
                        "{}/{}",
                        p["os"].as_str().unwrap_or(""),
                        p["architecture"].as_str().unwrap_or("")
                    );
                    if let Some(v) = p["variant"].as_str() {
                        s.push('/');
                        s.push_str(v);
                    }
                    s
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The digest of the index entry for `arch`.
pub fn entry_digest(index: &Value, arch: &str) -> String {
    index["manifests"]
        .as_array()
        .and_then(|entries| {
            entries
                .iter()
                .find(|m| m["platform"]["architecture"] == arch)
                .and_then(|m| m["digest"].as_str().map(String::from))
        })
        .unwrap_or_else(|| panic!("the index has no {arch} entry: {index}"))
}
