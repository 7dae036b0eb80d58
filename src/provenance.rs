//! Reading BuildKit's provenance attestation: the base images a platform was built from (the
//! `FROM` images of every stage, with the digest each tag resolved to), from the in-toto
//! statement's SLSA v0.2 `materials` or SLSA v1 `buildDefinition.resolvedDependencies`. Pure:
//! the bytes come from the registry, read with their caps.

use serde::Deserialize;

/// The in-toto predicate type annotation on an attestation manifest's layers.
pub const PREDICATE_TYPE_ANNOTATION: &str = "in-toto.io/predicate-type";

/// Whether an attestation layer's predicate type is SLSA provenance (any version).
pub fn is_provenance(predicate_type: &str) -> bool {
    predicate_type.starts_with("https://slsa.dev/provenance/")
}

/// Whether an attestation layer's predicate type is an SPDX SBOM (BuildKit's `attest:sbom`).
pub fn is_sbom(predicate_type: &str) -> bool {
    predicate_type.starts_with("https://spdx.dev/Document")
}

/// A base image: `registry/repo:tag` as the build resolved it, and the digest it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    pub name: String,
    pub digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Statement {
    predicate_type: String,
    predicate: Predicate,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Predicate {
    /// SLSA v0.2.
    #[serde(default)]
    materials: Vec<ResourceDescriptor>,
    /// SLSA v1.
    #[serde(default)]
    build_definition: Option<BuildDefinition>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BuildDefinition {
    #[serde(default)]
    resolved_dependencies: Vec<ResourceDescriptor>,
}

#[derive(Deserialize)]
struct ResourceDescriptor {
    #[serde(default)]
    uri: String,
    #[serde(default)]
    digest: std::collections::BTreeMap<String, String>,
}

/// The base images an in-toto provenance statement lists: its `pkg:docker/` materials with a
/// tag (an image named by digest cannot move), each with its `sha256` digest; in the order
/// listed, each once.
pub fn base_images(statement: &[u8]) -> Result<Vec<Material>, String> {
    let statement: Statement =
        serde_json::from_slice(statement).map_err(|e| format!("not an in-toto statement: {e}"))?;
    if !is_provenance(&statement.predicate_type) {
        return Err(format!(
            "predicate type {} is not SLSA provenance",
            statement.predicate_type
        ));
    }
    let predicate = statement.predicate;
    let listed = predicate.materials.iter().chain(
        predicate
            .build_definition
            .iter()
            .flat_map(|b| b.resolved_dependencies.iter()),
    );
    let mut found: Vec<Material> = Vec::new();
    for m in listed {
        let (Some(name), Some(sha)) = (docker_name(&m.uri), m.digest.get("sha256")) else {
            continue;
        };
        let material = Material {
            name,
            digest: format!("sha256:{sha}"),
        };
        if !found.contains(&material) {
            found.push(material);
        }
    }
    Ok(found)
}

/// `registry/repo:tag` of a `pkg:docker/<namespace>/<name>@<version>?<qualifiers>` package URL,
/// when the version is a tag.
fn docker_name(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix("pkg:docker/")?;
    let rest = rest.split(['?', '#']).next()?;
    let (path, version) = rest.rsplit_once('@')?;
    let version = percent_decode(version);
    if version.contains(':') || version.is_empty() {
        // a digest: pinned, it cannot move
        return None;
    }
    Some(format!("{}:{version}", percent_decode(path)))
}

/// Decodes `%XX` escapes (package URLs escape `:` of a registry port, for one).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn slsa_v02_materials_give_the_tagged_docker_images() {
        let statement = serde_json::json!({
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://slsa.dev/provenance/v0.2",
            "subject": [],
            "predicate": {"materials": [
                {"uri": "pkg:docker/127.0.0.1%3A15001/base/golang@latest?platform=linux%2Famd64", "digest": {"sha256": A}},
                {"uri": "pkg:docker/127.0.0.1:15001/base/busybox@1.36?platform=linux%2Farm64", "digest": {"sha256": B}},
                {"uri": "pkg:docker/alpine@sha256%3A0123?platform=linux%2Famd64", "digest": {"sha256": A}},
                {"uri": "https://git.example.com/a.git#4f1a", "digest": {"sha1": "4f1a"}},
                {"uri": "pkg:docker/127.0.0.1%3A15001/base/golang@latest?platform=linux%2Famd64", "digest": {"sha256": A}},
            ]},
        });
        let found = base_images(statement.to_string().as_bytes()).unwrap();
        assert_eq!(
            found,
            [
                Material {
                    name: "127.0.0.1:15001/base/golang:latest".into(),
                    digest: format!("sha256:{A}")
                },
                Material {
                    name: "127.0.0.1:15001/base/busybox:1.36".into(),
                    digest: format!("sha256:{B}")
                },
            ]
        );
    }

    #[test]
    fn slsa_v1_resolved_dependencies_are_read_too() {
        let statement = serde_json::json!({
            "predicateType": "https://slsa.dev/provenance/v1",
            "predicate": {"buildDefinition": {"resolvedDependencies": [
                {"uri": "pkg:docker/docker.io/library/alpine@3.20?platform=linux%2Farm64", "digest": {"sha256": B}},
            ]}},
        });
        let found = base_images(statement.to_string().as_bytes()).unwrap();
        assert_eq!(found[0].name, "docker.io/library/alpine:3.20");
    }

    #[test]
    fn other_statements_are_refused() {
        let sbom =
            serde_json::json!({"predicateType": "https://spdx.dev/Document", "predicate": {}});
        assert!(base_images(sbom.to_string().as_bytes()).is_err());
        assert!(base_images(b"{").is_err());
    }
}
