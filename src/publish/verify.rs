//! The engine's checks of what a registry answered, whatever registry answered it: a manifest
//! is the digest asked for and the digest the registry reported, a blob is exactly its
//! descriptor's size and digest, and a pushed manifest is stored under the digest of the bytes
//! sent. Pure functions; digests of algorithms other than sha256 are not recomputed.

use bytes::Bytes;

use super::index::BlobDescriptor;
use super::registry::{ManifestTarget, RegistryError, RegistryErrorKind, ServedManifest};
use crate::reference::{Digest, Reference};

/// A manifest as read and verified: its exact bytes and their digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FetchedManifest {
    /// The exact bytes the registry served.
    pub bytes: Bytes,
    /// Their sha256 digest.
    pub digest: Digest,
}

fn mismatch(detail: String) -> RegistryError {
    RegistryError::new(RegistryErrorKind::DigestMismatch, detail)
}

/// True when `claimed` can be checked against content and differs from `actual`.
fn contradicts(claimed: &Digest, actual: &Digest) -> bool {
    claimed.as_str().starts_with("sha256:") && claimed != actual
}

/// The manifest `reference` names, if the bytes served are it: their digest must be the one
/// the registry reported, and the one `reference` asks for.
pub(crate) fn manifest(
    reference: &Reference,
    served: ServedManifest,
) -> Result<FetchedManifest, RegistryError> {
    let digest = Digest::sha256_of(&served.bytes);
    if let Some(reported) = served.reported.filter(|r| contradicts(r, &digest)) {
        return Err(mismatch(format!(
            "the registry says the manifest is {reported}, its content is {digest}"
        )));
    }
    if let Some(want) = reference
        .digest
        .as_ref()
        .filter(|w| contradicts(w, &digest))
    {
        return Err(mismatch(format!(
            "asked for {want}, got content with digest {digest}"
        )));
    }
    Ok(FetchedManifest {
        bytes: served.bytes,
        digest,
    })
}

/// Checks a blob's content against its descriptor: its size, then its digest.
pub(crate) fn blob(descriptor: &BlobDescriptor, data: &[u8]) -> Result<(), RegistryError> {
    if data.len() as u64 != descriptor.size {
        return Err(mismatch(format!(
            "blob {} is {} bytes, its descriptor says {}",
            descriptor.digest,
            data.len(),
            descriptor.size
        )));
    }
    let digest = Digest::sha256_of(data);
    if contradicts(&descriptor.digest, &digest) {
        return Err(mismatch(format!(
            "blob {} has content with digest {digest}",
            descriptor.digest
        )));
    }
    Ok(())
}

/// The digest of manifest `bytes` about to be pushed to `target`; refused when `target` is
/// another digest.
pub(crate) fn push_digest(target: &ManifestTarget, bytes: &[u8]) -> Result<Digest, RegistryError> {
    let digest = Digest::sha256_of(bytes);
    match target {
        ManifestTarget::Digest(d) if d != &digest => Err(mismatch(format!(
            "cannot push content with digest {digest} as {d}"
        ))),
        _ => Ok(digest),
    }
}

/// Checks that the registry stored what was sent: the digest it reports for the push is the
/// digest of the bytes.
pub(crate) fn pushed(sent: &Digest, reported: &Digest) -> Result<(), RegistryError> {
    if reported != sent {
        return Err(mismatch(format!(
            "pushed content with digest {sent}, the registry reports {reported}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(bytes: &'static [u8], reported: Option<Digest>) -> ServedManifest {
        ServedManifest {
            bytes: Bytes::from_static(bytes),
            reported,
        }
    }

    #[test]
    fn a_manifest_must_be_the_digest_asked_for_and_the_digest_reported() {
        let right = Digest::sha256_of(b"{}");
        let other = Digest::sha256_of(b"other");
        let by_digest: Reference = format!("reg.example.com/app@{right}").parse().unwrap();
        let by_tag: Reference = "reg.example.com/app:1".parse().unwrap();
        let ok = manifest(&by_digest, served(b"{}", Some(right.clone()))).unwrap();
        assert_eq!(ok.digest, right);
        assert!(manifest(&by_tag, served(b"{}", None)).is_ok());
        let e = manifest(&by_tag, served(b"{}", Some(other.clone()))).unwrap_err();
        assert_eq!(e.kind, RegistryErrorKind::DigestMismatch);
        assert!(e.detail.contains("the registry says"), "{e}");
        let e = manifest(&by_digest, served(b"other", None)).unwrap_err();
        assert!(e.detail.starts_with(&format!("asked for {right}")), "{e}");
        // another algorithm is not recomputed
        let sha512 = format!("sha512:{}", "ab".repeat(64)).parse().unwrap();
        assert!(manifest(&by_tag, served(b"{}", Some(sha512))).is_ok());
    }

    #[test]
    fn a_blob_must_be_its_descriptors_size_and_digest() {
        let descriptor = |data: &[u8], size| BlobDescriptor {
            media_type: "application/vnd.oci.image.config.v1+json".into(),
            digest: Digest::sha256_of(data),
            size,
            foreign: false,
        };
        assert!(blob(&descriptor(b"{}", 2), b"{}").is_ok());
        let e = blob(&descriptor(b"{}", 3), b"{}").unwrap_err();
        assert!(
            e.detail.contains("is 2 bytes, its descriptor says 3"),
            "{e}"
        );
        let e = blob(&descriptor(b"[]", 2), b"{}").unwrap_err();
        assert_eq!(e.kind, RegistryErrorKind::DigestMismatch);
        assert!(e.detail.contains("has content with digest"), "{e}");
    }

    #[test]
    fn a_push_is_checked_before_and_after() {
        let d = Digest::sha256_of(b"{}");
        let tag = ManifestTarget::Tag("1.0".parse().unwrap());
        assert_eq!(push_digest(&tag, b"{}").unwrap(), d);
        assert_eq!(
            push_digest(&ManifestTarget::Digest(d.clone()), b"{}").unwrap(),
            d
        );
        let other = Digest::sha256_of(b"x");
        assert!(push_digest(&ManifestTarget::Digest(other.clone()), b"{}").is_err());
        assert!(pushed(&d, &d).is_ok());
        let e = pushed(&d, &other).unwrap_err();
        assert_eq!(e.kind, RegistryErrorKind::DigestMismatch);
    }
}
