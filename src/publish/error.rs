//! Errors of the publishing engine: one variant per failed operation, each knowing whether
//! retrying can help ([`PublishError::is_transient`]), and [`PartialWrite`] for a publish that
//! stopped after writing some tags.

use std::fmt;

use super::index::{IndexError, ManifestError};
use super::registry::RegistryError;
use crate::platform::Platform;
use crate::reference::{Digest, Tag};

/// Who said an image has the platform its config contradicts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlatformClaim {
    /// The caller (`PLATFORM=REF` on the command line, `spec.platforms` in the controller).
    Given,
    /// The index the image was listed in (named).
    ListedBy(String),
}

impl fmt::Display for PlatformClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlatformClaim::Given => f.write_str("was given as"),
            PlatformClaim::ListedBy(index) => write!(f, "index {index} lists it as"),
        }
    }
}

/// Why a publish (or one of its steps) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The registry client could not be set up (CA file, credentials file).
    #[error("cannot set up the registry client: {0}")]
    Setup(RegistryError),
    /// A source is in another registry than the target.
    #[error(
        "{reference} is not in registry {registry}: all sources and tags must be in one registry"
    )]
    OtherRegistry {
        /// The source.
        reference: String,
        /// The target's registry.
        registry: String,
    },
    /// The target repository could not be read (looking there for a manifest to copy).
    #[error("cannot access {repository}: {error}")]
    Access {
        /// The target repository.
        repository: String,
        /// The registry's answer.
        error: RegistryError,
    },
    /// A source (or a manifest an index lists) does not exist.
    #[error("{reference} not found in the registry")]
    SourceNotFound {
        /// The missing manifest.
        reference: String,
    },
    /// A source manifest could not be read.
    #[error("cannot read {reference}: {error}")]
    ReadManifest {
        /// The manifest.
        reference: String,
        /// The registry's answer.
        error: RegistryError,
    },
    /// An image's config could not be read.
    #[error("cannot read the config {config} of image {image}: {error}")]
    ReadConfig {
        /// The image (`repository@digest`).
        image: String,
        /// The config blob.
        config: Digest,
        /// The registry's answer.
        error: RegistryError,
    },
    /// A manifest or config that cannot be published (schema 1, unknown media type, no
    /// platform in its config, inconsistent sizes).
    #[error("{reference} cannot be published: {error}")]
    InvalidManifest {
        /// The manifest (or image).
        reference: String,
        /// What is wrong with it.
        error: ManifestError,
    },
    /// An image's config says another platform than the one it was given as, or listed as.
    #[error("image {image} is {actual} according to its config, but {claim} {expected}")]
    PlatformMismatch {
        /// The image (`repository@digest`, with the source it came from).
        image: String,
        /// The platform its config states.
        actual: Platform,
        /// The platform it was given or listed as.
        expected: Platform,
        /// Who claimed `expected`.
        claim: PlatformClaim,
    },
    /// A source index of several platforms has none of the platform it was given as.
    #[error("index {index} has no image for {expected} (its images are {available})")]
    PlatformNotInIndex {
        /// The source index.
        index: String,
        /// The platform asked for.
        expected: Platform,
        /// The platforms the index has, comma-separated.
        available: String,
    },
    /// A source index lists another index.
    #[error("index {index} lists another index, {nested}: nested indexes are not supported, give the inner index as a source instead")]
    NestedIndex {
        /// The source index.
        index: String,
        /// The index it lists.
        nested: Digest,
    },
    /// A source index lists no image.
    #[error("index {index} lists no image")]
    EmptyIndex {
        /// The source index.
        index: String,
    },
    /// A source index lists an attestation of an image it does not list.
    #[error("index {index} lists attestation manifest {attestation} about image {subject}, which it does not list")]
    OrphanAttestation {
        /// The source index.
        index: String,
        /// The attestation manifest.
        attestation: Digest,
        /// The image it is about.
        subject: Digest,
    },
    /// Two images of one platform.
    #[error("two images for {platform}: {first} and {second}")]
    DuplicatePlatform {
        /// The platform.
        platform: Platform,
        /// The first image of it (and its source).
        first: String,
        /// The second image of it (and its source).
        second: String,
    },
    /// The entries do not form an index.
    #[error("cannot assemble the index: {0}")]
    Index(IndexError),
    /// A blob could not be copied into the target repository.
    #[error("cannot copy blob {digest} from {from} to {to}: {error}")]
    CopyBlob {
        /// The blob.
        digest: Digest,
        /// The repository it is in.
        from: String,
        /// The target repository.
        to: String,
        /// The registry's answer.
        error: RegistryError,
    },
    /// A manifest could not be copied into the target repository.
    #[error("cannot copy manifest {digest} from {from} to {to}: {error}")]
    CopyManifest {
        /// The manifest.
        digest: Digest,
        /// The repository it is in.
        from: String,
        /// The target repository.
        to: String,
        /// The registry's answer.
        error: RegistryError,
    },
    /// A manifest (the index, or a per-platform image) could not be pushed.
    #[error("cannot push {what} to {reference}: {error}")]
    PushManifest {
        /// What was pushed (`the index`, `the linux/arm64 image`).
        what: String,
        /// Where to (`repository:tag` or `repository@digest`).
        reference: String,
        /// The registry's answer.
        error: RegistryError,
    },
    /// The index cannot be signed where its signatures go.
    #[error("cannot sign the index at {reference}: {why}")]
    Signature {
        /// The signature tag (`repository:sha256-<hex>.sig`).
        reference: String,
        /// Why.
        why: String,
    },
}

impl PublishError {
    /// True when retrying the same publish later can succeed (registry overloaded, unreachable,
    /// rate limiting); false for anything that needs a change (credentials, sources, platforms).
    pub fn is_transient(&self) -> bool {
        match self {
            PublishError::Access { error, .. }
            | PublishError::ReadManifest { error, .. }
            | PublishError::ReadConfig { error, .. }
            | PublishError::CopyBlob { error, .. }
            | PublishError::CopyManifest { error, .. }
            | PublishError::PushManifest { error, .. } => error.is_transient(),
            PublishError::Setup(_)
            | PublishError::OtherRegistry { .. }
            | PublishError::SourceNotFound { .. }
            | PublishError::InvalidManifest { .. }
            | PublishError::PlatformMismatch { .. }
            | PublishError::PlatformNotInIndex { .. }
            | PublishError::NestedIndex { .. }
            | PublishError::EmptyIndex { .. }
            | PublishError::OrphanAttestation { .. }
            | PublishError::DuplicatePlatform { .. }
            | PublishError::Signature { .. }
            | PublishError::Index(_) => false,
        }
    }

    /// True for the errors that say an image is not the platform it should be
    /// ([`PublishError::PlatformMismatch`], [`PublishError::PlatformNotInIndex`]).
    pub fn is_platform_mismatch(&self) -> bool {
        matches!(
            self,
            PublishError::PlatformMismatch { .. } | PublishError::PlatformNotInIndex { .. }
        )
    }
}

/// A write that failed: the tags written before the failure (in order; empty when no tag was
/// written, which leaves every tag as it was), and the failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}{}", written_note(written))]
pub struct PartialWrite {
    /// The tags written before the failure, in order.
    pub written: Vec<Tag>,
    /// The failure.
    pub error: PublishError,
}

fn written_note(written: &[Tag]) -> String {
    if written.is_empty() {
        String::new()
    } else {
        let tags: Vec<&str> = written.iter().map(Tag::as_str).collect();
        format!(" (tags already written: {})", tags.join(", "))
    }
}

impl PartialWrite {
    /// True when no tag was written (untagged manifests may have been pushed by digest).
    pub fn nothing_tagged(&self) -> bool {
        self.written.is_empty()
    }

    /// True when retrying the whole write later can succeed.
    pub fn is_transient(&self) -> bool {
        self.error.is_transient()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::registry::RegistryErrorKind;

    #[test]
    fn platform_mismatch_names_both_platforms() {
        let e = PublishError::PlatformMismatch {
            image: "reg/app@sha256:1".into(),
            actual: "linux/amd64".parse().unwrap(),
            expected: "linux/arm64".parse().unwrap(),
            claim: PlatformClaim::Given,
        };
        assert_eq!(
            e.to_string(),
            "image reg/app@sha256:1 is linux/amd64 according to its config, but was given as linux/arm64"
        );
        assert!(e.is_platform_mismatch() && !e.is_transient());
        let e = PublishError::PlatformMismatch {
            image: "reg/app@sha256:1".into(),
            actual: "linux/amd64".parse().unwrap(),
            expected: "linux/arm64".parse().unwrap(),
            claim: PlatformClaim::ListedBy("reg/app:multi".into()),
        };
        assert!(e
            .to_string()
            .ends_with("but index reg/app:multi lists it as linux/arm64"));
    }

    #[test]
    fn transience_follows_the_registry_error() {
        let err = |kind| RegistryError {
            kind,
            detail: "x".into(),
        };
        let push = |kind| PublishError::PushManifest {
            what: "index".into(),
            reference: "r".into(),
            error: err(kind),
        };
        assert!(push(RegistryErrorKind::Server(503)).is_transient());
        assert!(push(RegistryErrorKind::Timeout).is_transient());
        assert!(!push(RegistryErrorKind::Unauthorized).is_transient());
        assert!(!push(RegistryErrorKind::NotFound).is_transient());
        assert!(!PublishError::SourceNotFound {
            reference: "r".into()
        }
        .is_transient());
        let partial = PartialWrite {
            written: vec!["1.0".parse().unwrap()],
            error: push(RegistryErrorKind::Server(500)),
        };
        assert!(partial.is_transient() && !partial.nothing_tagged());
        assert!(partial.to_string().ends_with("(tags already written: 1.0)"));
    }
}
