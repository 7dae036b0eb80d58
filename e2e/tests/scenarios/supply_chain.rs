//! Signed indexes and SBOMs, checked with the tools users verify with: the real `cosign`
//! (built from its Go module) verifies the published index with the public key of the pair it
//! generated into a Secret, and refuses another key; each platform's SBOM, made on the builder
//! by the suite's SBOM scanner image (syft, in BuildKit's scanner protocol) with real BuildKit,
//! is read back with `crane` and lists the sample's Go module.

use std::path::Path;

use base64::Engine as _;
use multiarch_e2e::cmd::{output, run};
use multiarch_e2e::registry::{digest, manifest, raw, tags};
use multiarch_e2e::scenario::condition;
use multiarch_e2e::{env, Access, Scenario};
use multiarch_operator::api::{MultiArchImage, Signing};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::build::REAL;
use crate::faults::label_namespace;

/// The password of the suite's cosign keys.
const PASSWORD: &str = "e2e-cosign-password";

/// The Go module the sample service is (`e2e/sample/go.mod`).
const SAMPLE_MODULE: &str = "example.com/apiping";

/// `cosign ARGS` with the key password in its environment; its output whatever its status.
fn cosign(args: &[&str], dir: &Path) -> std::process::Output {
    let mut c = multiarch_e2e::cmd::command("cosign");
    c.args(args)
        .current_dir(dir)
        .env("COSIGN_PASSWORD", PASSWORD)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    c.output().expect("running cosign")
}

/// `cosign verify` of `image` with the public key `key`, key-based and without a transparency
/// log, as the README tells users to run it.
fn verify(image: &str, key: &Path) -> std::process::Output {
    verify_with(image, &key.display().to_string())
}

/// `cosign verify` of `image` with the key reference `key` (a file or `k8s://NS/SECRET`).
fn verify_with(image: &str, key: &str) -> std::process::Output {
    cosign(
        &[
            "verify",
            "--key",
            key,
            "--insecure-ignore-tlog=true",
            "--allow-http-registry=true",
            image,
        ],
        &std::env::temp_dir(),
    )
}

/// The SHA-256 digest of a PEM public key's DER: the key id `status.signature.key` names.
fn key_id(pem: &str) -> String {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("a base64 PEM body");
    format!("sha256:{:x}", Sha256::digest(der))
}

fn signing(secret: &str) -> Option<Signing> {
    serde_json::from_value(json!({"keySecretRef": {"name": secret}})).expect("a signing spec")
}

fn status_json(o: &MultiArchImage) -> Value {
    serde_json::to_value(o.status.as_ref().expect("a status")).expect("status as JSON")
}

/// The SPDX packages of the SBOM of `platform` in the index at `index_path`, read with crane:
/// the attestation manifest the index lists for the platform's image, its SPDX layer, the
/// in-toto statement in it. Returns the SPDX layer's digest and the package names.
fn sbom_packages(index_path: &str, platform: &str) -> (String, Vec<String>) {
    let repo = index_path.split(':').next().expect("repo:tag");
    let index = manifest(index_path);
    let entries = index["manifests"].as_array().expect("index manifests");
    let (os, arch) = platform.split_once('/').expect("os/arch");
    let image = entries
        .iter()
        .find(|m| m["platform"]["os"] == os && m["platform"]["architecture"] == arch)
        .unwrap_or_else(|| panic!("{platform} in the index: {index}"));
    let image_digest = image["digest"].as_str().expect("image digest");
    let attestation = entries
        .iter()
        .find(|m| m["annotations"]["vnd.docker.reference.digest"] == image_digest)
        .unwrap_or_else(|| panic!("an attestation manifest for {platform}: {index}"));
    let attestation = attestation["digest"].as_str().expect("attestation digest");
    let at = manifest(&format!("{repo}@{attestation}"));
    let layer = at["layers"]
        .as_array()
        .expect("attestation layers")
        .iter()
        .find(|l| {
            l["annotations"]["in-toto.io/predicate-type"]
                .as_str()
                .is_some_and(|t| t.starts_with("https://spdx.dev/Document"))
        })
        .unwrap_or_else(|| panic!("an SPDX layer in the {platform} attestation manifest: {at}"));
    let layer_digest = layer["digest"].as_str().expect("layer digest").to_string();
    let blob = run(
        "crane",
        &[
            "blob",
            "--insecure",
            &format!("{}/{repo}@{layer_digest}", env().registry),
        ],
    );
    assert_eq!(
        digest(blob.as_bytes()),
        layer_digest,
        "the SBOM blob's digest"
    );
    let statement: Value = serde_json::from_str(&blob).expect("the SBOM is JSON");
    assert_eq!(statement["predicateType"], "https://spdx.dev/Document");
    let names = statement["predicate"]["packages"]
        .as_array()
        .expect("SPDX packages")
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    (layer_digest, names)
}

#[tokio::test]
async fn a_signed_index_verifies_with_cosign_and_each_platforms_sbom_lists_the_go_module() {
    let s = Scenario::start("signed_sbom", "e2e-signed-sbom", Access::Shared).await;
    label_namespace(&s, &s.ns, REAL.0, REAL.1).await;
    let ns = s.ns.clone();
    let keys = tempfile::tempdir().expect("a folder for keys");

    // the key pair, generated by cosign into a Secret, as the README tells users to
    let out = cosign(
        &["generate-key-pair", &format!("k8s://{ns}/cosign")],
        keys.path(),
    );
    assert!(
        out.status.success(),
        "cosign generate-key-pair k8s://: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = keys.path().join("cosign.pub");
    let public_pem = std::fs::read_to_string(&public).expect("cosign wrote cosign.pub");
    // another pair, to show that verification can fail
    let other = keys.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let out = cosign(&["generate-key-pair"], &other);
    assert!(out.status.success(), "cosign generate-key-pair");

    // built and published unsigned first, with SBOMs
    let mut app = s.mai("app", &["linux/amd64", "linux/arm64"]);
    app.spec.attestations =
        Some(serde_json::from_value(json!({"sbom": true})).expect("an attestations spec"));
    s.apply(&app).await;
    let o = s.wait_ready("app", 600).await;
    let st = o.status.clone().expect("a status");
    assert!(st.signature.is_none(), "no signature without spec.signing");
    let index_digest = st.digest.clone().expect("a published digest");
    let sig_tag = format!("{}.sig", index_digest.replace(':', "-"));
    assert!(
        !tags(&format!("{ns}/app")).contains(&sig_tag),
        "no signature tag before signing"
    );
    let unsigned = verify(&format!("{}/{ns}/app:1.0.0", env().registry), &public);
    assert!(
        !unsigned.status.success(),
        "cosign verified an unsigned index"
    );

    // each platform's SBOM: recorded in the status, and listing the sample's Go module
    assert_eq!(st.sboms.len(), 2, "one SBOM per platform: {:?}", st.sboms);
    for platform in ["linux/amd64", "linux/arm64"] {
        let (layer, packages) = sbom_packages(&format!("{ns}/app:1.0.0"), platform);
        assert!(
            packages.iter().any(|p| p == SAMPLE_MODULE),
            "the {platform} SBOM lists {SAMPLE_MODULE}: {packages:?}"
        );
        let recorded = st.sboms.iter().find(|b| b.platform == platform);
        assert_eq!(
            recorded.map(|b| b.digest.as_str()),
            Some(layer.as_str()),
            "status.sboms names the {platform} SBOM"
        );
    }

    // signing added: the same index is signed, without building again
    let jobs_before = s.job_names("").await;
    s.patch(
        "app",
        json!({"spec": {"signing": {"keySecretRef": {"name": "cosign"}}}}),
    )
    .await;
    let o = s
        .wait("app", "a signature in status", 120, |o| {
            o.status.as_ref().is_some_and(|st| st.signature.is_some())
        })
        .await;
    let st = o.status.clone().expect("a status");
    assert_eq!(
        st.digest.as_deref(),
        Some(index_digest.as_str()),
        "the same index"
    );
    assert_eq!(s.job_names("").await, jobs_before, "signing built nothing");
    let signature = st.signature.clone().expect("status.signature");
    assert_eq!(
        signature.tag,
        format!("{}/{ns}/app:{sig_tag}", env().registry)
    );
    assert_eq!(signature.key, key_id(&public_pem), "status.signature.key");
    let sig_manifest = raw(&format!("{ns}/app:{sig_tag}"));
    assert_eq!(
        digest(&sig_manifest),
        signature.digest,
        "status.signature.digest"
    );

    for reference in [
        format!("{}/{ns}/app:1.0.0", env().registry),
        format!("{}/{ns}/app@{index_digest}", env().registry),
    ] {
        let ok = verify(&reference, &public);
        assert!(
            ok.status.success(),
            "cosign verify --key cosign.pub {reference}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let payload: Value = serde_json::from_slice(&ok.stdout)
            .unwrap_or_else(|e| panic!("cosign verify printed no JSON ({e})"));
        assert_eq!(
            payload[0]["critical"]["image"]["docker-manifest-digest"],
            index_digest.as_str()
        );
    }
    // the public key straight from the Secret, as the README shows
    let from_secret = verify_with(
        &format!("{}/{ns}/app:1.0.0", env().registry),
        &format!("k8s://{ns}/cosign"),
    );
    assert!(
        from_secret.status.success(),
        "cosign verify --key k8s://{ns}/cosign: {}",
        String::from_utf8_lossy(&from_secret.stderr)
    );
    let wrong = verify(
        &format!("{}/{ns}/app:1.0.0", env().registry),
        &other.join("cosign.pub"),
    );
    assert!(
        !wrong.status.success(),
        "cosign verified the index with another key"
    );

    // a re-publish of the same index (a new tag) keeps one signature
    s.patch("app", json!({"spec": {"tags": ["1.0.0", "latest", "1.0"]}}))
        .await;
    s.wait("app", "published to 1.0", 120, |o| {
        o.status
            .as_ref()
            .is_some_and(|st| st.published_tags.iter().any(|t| t == "1.0"))
            && condition(o, "Ready").is_some_and(|c| c.status == "True")
    })
    .await;
    assert_eq!(
        raw(&format!("{ns}/app:{sig_tag}")),
        sig_manifest,
        "a re-publish left the signature manifest as it was"
    );
    let layers = manifest(&format!("{ns}/app:{sig_tag}"))["layers"]
        .as_array()
        .map(Vec::len);
    assert_eq!(layers, Some(1), "one signature layer");
    let ok = verify(&format!("{}/{ns}/app:1.0", env().registry), &public);
    assert!(ok.status.success(), "cosign verify of the new tag");

    // a Secret whose password is wrong: nothing published, and the password is never shown
    let bad = "not-the-password-3f9a";
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "cosign-wrong", "namespace": ns},
        "data": {
            "cosign.key": base64::engine::general_purpose::STANDARD.encode(
                std::fs::read(other.join("cosign.key")).expect("the other key")),
            "cosign.password": base64::engine::general_purpose::STANDARD.encode(bad),
        },
    });
    let applied = output(
        "kubectl",
        &["apply", "-f", "-"],
        Some(secret.to_string().as_bytes()),
    );
    assert!(applied.status.success(), "kubectl apply the Secret");
    let mut refused = s.mai("refused", &["linux/amd64"]);
    refused.spec.signing = signing("cosign-wrong");
    s.apply(&refused).await;
    let o = s
        .wait_reason("refused", "Stalled", "PublishFailed", 600)
        .await;
    let message = condition(&o, "Stalled")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("signing.keySecretRef") && message.contains("cannot be decrypted"),
        "{message}"
    );
    let shown = status_json(&o).to_string();
    assert!(!shown.contains(bad), "the password reached the status");
    assert!(
        tags(&format!("{ns}/refused"))
            .iter()
            .all(|t| !t.starts_with("1.0") && t != "latest"),
        "a key that cannot sign published no tag"
    );
    let log = s.operator_log();
    assert!(
        !log.contains(bad),
        "the password reached the operator's log"
    );
}
