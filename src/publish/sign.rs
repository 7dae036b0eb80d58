//! Cosign signatures of published indexes, key-based, in the format `cosign verify --key`
//! reads: a simple-signing payload naming the index digest, signed with the key, stored as a
//! layer of the manifest tagged `sha256-<hex>.sig` in the index's repository (cosign's tag
//! scheme; registries without the referrers API, such as distribution 2.8, serve it too).
//!
//! Keys are cosign's own encrypted key files (`cosign generate-key-pair`, which can also write
//! them into a Kubernetes Secret), read with the `sigstore` crate. No transparency log entry is
//! made, so verifiers pass `--insecure-ignore-tlog=true`. Keyless signing (Fulcio, Rekor) would
//! be another kind of [`Signer`].
//!
//! Re-signing is idempotent: when the signature manifest already holds a layer with the same
//! payload that verifies with the key, nothing is written. Other signers' layers are kept.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::json;
use sigstore::crypto::signing_key::{ecdsa::ECDSAKeys, SigStoreKeyPair, SigStoreSigner};
use sigstore::crypto::{CosignVerificationKey, Signature, SigningScheme};

use crate::reference::{Digest, Repository, Tag};

/// The media type of cosign's simple-signing payload layer.
pub const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 signature of the payload.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The media type of the signature manifest's config.
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// The media type of the signature manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Why a key cannot sign. Messages never contain the key or the password.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key file cannot be decrypted (a wrong password, or not a cosign key).
    #[error("the key cannot be decrypted with the password given (a wrong password, or not a cosign encrypted key)")]
    Decrypt,
    /// A key type cosign signs with but this signer does not.
    #[error(
        "the key is {0}; signing supports ECDSA P-256 and P-384 keys (cosign's default is P-256)"
    )]
    Unsupported(String),
    /// Signing itself failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A key that signs indexes, cheap to clone.
#[derive(Clone)]
pub struct Signer {
    signer: Arc<SigStoreSigner>,
    verifier: Arc<CosignVerificationKey>,
    key_id: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The signer of a cosign encrypted private key (`cosign.key`) and its password.
    pub fn from_encrypted_pem(pem: &[u8], password: &[u8]) -> Result<Self, SignError> {
        let pair =
            SigStoreKeyPair::from_encrypted_pem(pem, password).map_err(|_| SignError::Decrypt)?;
        let scheme = match &pair {
            SigStoreKeyPair::ECDSA(ECDSAKeys::P256(_)) => SigningScheme::ECDSA_P256_SHA256_ASN1,
            SigStoreKeyPair::ECDSA(ECDSAKeys::P384(_)) => SigningScheme::ECDSA_P384_SHA384_ASN1,
            SigStoreKeyPair::ED25519(_) => return Err(SignError::Unsupported("Ed25519".into())),
            SigStoreKeyPair::RSA(_) => return Err(SignError::Unsupported("RSA".into())),
        };
        let public = pair
            .public_key_to_der()
            .map_err(|e| SignError::Sign(e.to_string()))?;
        let signer = pair
            .to_sigstore_signer(&scheme)
            .map_err(|e| SignError::Sign(e.to_string()))?;
        let verifier = signer
            .to_verification_key()
            .map_err(|e| SignError::Sign(e.to_string()))?;
        Ok(Signer {
            signer: Arc::new(signer),
            verifier: Arc::new(verifier),
            key_id: Digest::sha256_of(&public).to_string(),
        })
    }

    /// The key's identity: the SHA-256 digest of its public key (DER), as
    /// `openssl pkey -pubin -in cosign.pub -outform DER | sha256sum` prints it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The base64 signature of `payload`.
    fn sign(&self, payload: &[u8]) -> Result<String, SignError> {
        let signature = self
            .signer
            .sign(payload)
            .map_err(|e| SignError::Sign(e.to_string()))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(signature))
    }

    /// True when `signature` (base64) is this key's signature of `payload`.
    fn verifies(&self, payload: &[u8], signature: &str) -> bool {
        self.verifier
            .verify_signature(Signature::Base64Encoded(signature.as_bytes()), payload)
            .is_ok()
    }
}

/// The tag cosign looks for the signatures of `digest` under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Digest) -> Tag {
    format!("{}.sig", digest.as_str().replace(':', "-"))
        .parse()
        .expect("a digest makes a valid tag")
}

/// Cosign's simple-signing payload for the manifest `digest` of `repo`.
pub fn payload(repo: &Repository, digest: &Digest) -> Vec<u8> {
    let payload = json!({
        "critical": {
            "identity": {"docker-reference": repo.to_string()},
            "image": {"docker-manifest-digest": digest.as_str()},
            "type": "cosign container image signature",
        },
        "optional": null,
    });
    serde_json::to_vec(&payload).expect("a JSON value serializes")
}

/// A blob the signature manifest needs in the registry.
#[derive(Clone, Debug, PartialEq)]
pub struct Blob {
    /// Its digest.
    pub digest: Digest,
    /// Its content.
    pub bytes: Bytes,
}

impl Blob {
    fn of(bytes: Vec<u8>) -> Self {
        Blob {
            digest: Digest::sha256_of(&bytes),
            bytes: Bytes::from(bytes),
        }
    }
}

/// What signing `digest` needs written, given the signature manifest there now.
#[derive(Debug, PartialEq)]
pub enum SignaturePlan {
    /// The key's signature of this payload is there already.
    Present,
    /// The blobs to upload (payload and config), then the manifest to push to the signature tag.
    Write {
        /// The payload and the manifest's config.
        blobs: Vec<Blob>,
        /// The new signature manifest: the layers there before, then this key's.
        manifest: Bytes,
    },
}

/// A layer of a signature manifest, as cosign writes it.
#[derive(serde::Deserialize, serde::Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Layer {
    media_type: String,
    size: u64,
    digest: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    annotations: std::collections::BTreeMap<String, String>,
}

/// Plans the signature of `digest` in `repo` with `signer`, given the manifest now at the
/// signature tag (`None` when there is none). An existing manifest that is not a signature
/// manifest is an error: it is not overwritten.
pub fn plan_signature(
    signer: &Signer,
    repo: &Repository,
    digest: &Digest,
    existing: Option<&[u8]>,
) -> Result<SignaturePlan, String> {
    let payload = payload(repo, digest);
    let payload_digest = Digest::sha256_of(&payload);
    let mut layers = match existing {
        None => Vec::new(),
        Some(bytes) => existing_layers(bytes)?,
    };
    let signed = layers.iter().any(|layer| {
        layer.digest == payload_digest.as_str()
            && layer
                .annotations
                .get(SIGNATURE_ANNOTATION)
                .is_some_and(|s| signer.verifies(&payload, s))
    });
    if signed {
        return Ok(SignaturePlan::Present);
    }
    let signature = signer.sign(&payload).map_err(|e| e.to_string())?;
    layers.push(Layer {
        media_type: PAYLOAD_MEDIA_TYPE.into(),
        size: payload.len() as u64,
        digest: payload_digest.to_string(),
        annotations: [(SIGNATURE_ANNOTATION.to_string(), signature)].into(),
    });
    let config = Blob::of(config(&layers));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "size": config.bytes.len(),
            "digest": config.digest.as_str(),
        },
        "layers": layers,
    });
    let manifest = serde_json::to_vec(&manifest).expect("a JSON value serializes");
    Ok(SignaturePlan::Write {
        blobs: vec![Blob::of(payload), config],
        manifest: Bytes::from(manifest),
    })
}

/// The layers of the signature manifest there now.
fn existing_layers(bytes: &[u8]) -> Result<Vec<Layer>, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Manifest {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        layers: Vec<Layer>,
    }
    let manifest: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| format!("the signature tag holds no image manifest: {e}"))?;
    let not_signatures = manifest
        .layers
        .iter()
        .any(|l| l.media_type != PAYLOAD_MEDIA_TYPE);
    if not_signatures
        || manifest
            .media_type
            .as_deref()
            .unwrap_or(MANIFEST_MEDIA_TYPE)
            != MANIFEST_MEDIA_TYPE
    {
        return Err(
            "the signature tag holds a manifest that is not cosign signatures; it is left as it is"
                .into(),
        );
    }
    Ok(manifest.layers)
}

/// The image config of a signature manifest, as cosign makes it: an empty image whose layers
/// are the payloads.
fn config(layers: &[Layer]) -> Vec<u8> {
    let config = json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": layers.iter().map(|_| json!({"created": "0001-01-01T00:00:00Z"})).collect::<Vec<_>>(),
        "os": "",
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>(),
        },
        "config": {},
    });
    serde_json::to_vec(&config).expect("a JSON value serializes")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A cosign encrypted key (made with `cosign generate-key-pair`), its password, and its
    /// public key.
    pub(crate) const KEY: &str = include_str!("testdata/cosign.key");
    pub(crate) const PASSWORD: &str = "multiarch-test";
    pub(crate) const PUBLIC: &str = include_str!("testdata/cosign.pub");

    pub(crate) fn signer() -> Signer {
        Signer::from_encrypted_pem(KEY.as_bytes(), PASSWORD.as_bytes()).unwrap()
    }

    fn repo() -> Repository {
        "registry.example/team/app".parse().unwrap()
    }

    fn digest() -> Digest {
        Digest::sha256_of(b"an index")
    }

    #[test]
    fn a_wrong_password_is_refused_without_naming_it() {
        let err = Signer::from_encrypted_pem(KEY.as_bytes(), b"not-the-password").unwrap_err();
        assert!(matches!(err, SignError::Decrypt));
        assert!(!err.to_string().contains("not-the-password"));
    }

    #[test]
    fn the_payload_names_the_repository_and_digest_as_cosign_does() {
        let payload: serde_json::Value =
            serde_json::from_slice(&payload(&repo(), &digest())).unwrap();
        assert_eq!(
            payload["critical"]["image"]["docker-manifest-digest"],
            digest().as_str()
        );
        assert_eq!(
            payload["critical"]["identity"]["docker-reference"],
            "registry.example/team/app"
        );
        assert_eq!(
            payload["critical"]["type"],
            "cosign container image signature"
        );
    }

    #[test]
    fn the_signature_tag_is_cosigns() {
        let d = digest();
        let hex = d.as_str().trim_start_matches("sha256:");
        assert_eq!(signature_tag(&d).as_str(), format!("sha256-{hex}.sig"));
    }

    #[test]
    fn a_first_signature_verifies_with_the_public_key() {
        let signer = signer();
        let SignaturePlan::Write { blobs, manifest } =
            plan_signature(&signer, &repo(), &digest(), None).unwrap()
        else {
            panic!("nothing to write for a first signature");
        };
        let layers = existing_layers(&manifest).unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0].digest, blobs[0].digest.as_str());
        let public = CosignVerificationKey::try_from_pem(PUBLIC.as_bytes()).unwrap();
        let signature = layers[0].annotations[SIGNATURE_ANNOTATION].as_bytes();
        public
            .verify_signature(Signature::Base64Encoded(signature), &blobs[0].bytes)
            .unwrap();
        // the config lists the payload as its layer
        let config: serde_json::Value = serde_json::from_slice(&blobs[1].bytes).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], blobs[0].digest.as_str());
    }

    #[test]
    fn signing_again_writes_nothing_and_another_digest_adds_a_layer() {
        let signer = signer();
        let SignaturePlan::Write { manifest, .. } =
            plan_signature(&signer, &repo(), &digest(), None).unwrap()
        else {
            panic!("nothing to write for a first signature");
        };
        assert_eq!(
            plan_signature(&signer, &repo(), &digest(), Some(&manifest)).unwrap(),
            SignaturePlan::Present
        );
        // a signature of other content under the tag (another signer's, or a forged one) is
        // kept, and ours is added after it
        let other = Digest::sha256_of(b"another index");
        let SignaturePlan::Write { manifest: kept, .. } =
            plan_signature(&signer, &repo(), &other, Some(&manifest)).unwrap()
        else {
            panic!("a signature of another payload counted as ours");
        };
        assert_eq!(existing_layers(&kept).unwrap().len(), 2);
    }

    #[test]
    fn a_forged_annotation_does_not_count_as_signed() {
        let signer = signer();
        let SignaturePlan::Write { manifest, .. } =
            plan_signature(&signer, &repo(), &digest(), None).unwrap()
        else {
            panic!("nothing to write for a first signature");
        };
        let mut value: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        value["layers"][0]["annotations"][SIGNATURE_ANNOTATION] = "MEUCIQD0".into();
        let forged = serde_json::to_vec(&value).unwrap();
        assert!(matches!(
            plan_signature(&signer, &repo(), &digest(), Some(&forged)).unwrap(),
            SignaturePlan::Write { .. }
        ));
    }

    #[test]
    fn a_tag_holding_something_else_is_not_overwritten() {
        let image = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":1,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}]}"#;
        let err = plan_signature(&signer(), &repo(), &digest(), Some(image)).unwrap_err();
        assert!(err.contains("not cosign signatures"), "{err}");
    }
}
