//! Publishing: verifies per-platform images and pushes them as one OCI image index to tags.
//!
//! The engine works in two phases so that nothing is written before everything is checked:
//!
//! ```text
//! sources --prepare--> PublishPlan --tag_image (optional, per platform)--> --write--> tags
//!          reads only:               copies into the target repository,   copies, then the
//!          manifests, configs,       then the image manifest to a tag     index to each tag
//!          platforms, duplicates                                          in order
//! ```
//!
//! [`Publisher::prepare`] reads every source manifest and image config, takes each image's
//! platform from its config (never from a label), flattens sources that are indexes (an image
//! plus its attestations, or several platforms), and assembles the index; it writes nothing.
//! [`Publisher::write`] copies sources from other repositories of the registry into the target
//! repository, pushes the index to each tag in order, and reports the tags written when it
//! stops part-way ([`PartialWrite`]).
//!
//! Requests are the fewest the checks allow: for N images already in the target repository
//! and T tags, one GET per manifest, one GET per image config and one PUT per tag, 2N + T in all
//! (a registry that wants credentials adds its one challenge). The engine reaches the registry
//! through [`RegistryApi`] and verifies every answer itself (`verify`), so its decisions are
//! tested against registries that misbehave in ways a real one cannot.

#![warn(missing_docs)]

pub mod cache;
pub mod cli;
pub mod credentials;
mod error;
pub mod index;
pub mod registry;
pub mod sign;
#[cfg(test)]
mod tests;
mod tls;
mod transport;
mod verify;

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use futures::future::join_all;
use tracing::{debug, info};

pub use cache::PublisherCache;
pub use credentials::{Credential, DockerConfig};
pub use error::{PartialWrite, PlatformClaim, PublishError};
pub use index::IndexFormat;
pub use registry::{Registry, RegistryApi, RegistryConfig, RegistryError, RetryPolicy};

use crate::platform::Platform;
use crate::reference::{Digest, Reference, ReferenceError, Repository, Tag};
use index::{
    AssembledIndex, BlobDescriptor, ChildKind, ImageManifest, ImagePlatform, IndexEntry,
    IndexError, IndexManifest, ManifestDescriptor, ManifestError, ParsedManifest,
};
use registry::ManifestTarget;
pub use sign::Signer;
use verify::FetchedManifest;

/// How many sources a publish reads at once (each on its own connection), after its first
/// request.
pub const CONCURRENT_READS: usize = 4;

/// An image (or an index) to publish: a reference, and optionally the platform it must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The image or index.
    pub reference: Reference,
    /// When set, the image's config must say this platform (`linux/arm64` matches
    /// `linux/arm64/v8`); for a source index of several platforms, the image of this platform
    /// is taken from it.
    pub platform: Option<Platform>,
}

impl Source {
    /// A source with an expected platform.
    pub fn new(reference: Reference, platform: Option<Platform>) -> Self {
        Source {
            reference,
            platform,
        }
    }
}

/// Why a `SOURCE` argument could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    /// The `PLATFORM` part is not a platform.
    Platform(#[from] crate::platform::PlatformError),
    #[error(transparent)]
    /// The `REF` part is not a reference.
    Reference(#[from] ReferenceError),
}

impl FromStr for Source {
    type Err = SourceError;

    /// `REF` or `PLATFORM=REF` (for example `linux/arm64=reg/app@sha256:...`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((platform, reference)) => Ok(Source {
                platform: Some(platform.parse()?),
                reference: reference.parse()?,
            }),
            None => Ok(Source {
                platform: None,
                reference: s.parse()?,
            }),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.platform {
            write!(f, "{p}=")?;
        }
        write!(f, "{}", self.reference)
    }
}

/// A manifest to list in the index (an image or an attestation), as read, with what is needed
/// to copy it into the target repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedManifest {
    repository: Repository,
    digest: Digest,
    media_type: String,
    bytes: Bytes,
    blobs: Vec<BlobDescriptor>,
    /// The target repository has it (it was read from there, or found there): nothing to copy.
    in_target: bool,
}

impl PlannedManifest {
    /// The repository it was read from.
    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    /// The manifest's digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The manifest's media type.
    pub fn media_type(&self) -> &str {
        &self.media_type
    }

    /// Size of the manifest in bytes.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Where it was read from, `repository@digest`.
    pub fn reference(&self) -> Reference {
        self.repository.with_digest(self.digest.clone())
    }

    fn descriptor(&self) -> ManifestDescriptor {
        ManifestDescriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size(),
        }
    }
}

/// A verified image of the plan: its manifest, its platform (from its config) and the
/// attestation manifests about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedImage {
    source: Source,
    manifest: PlannedManifest,
    platform: ImagePlatform,
    attestations: Vec<PlannedManifest>,
}

impl PlannedImage {
    /// The source it came from (an image, or an index it was flattened from).
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The image manifest's digest.
    pub fn digest(&self) -> &Digest {
        &self.manifest.digest
    }

    /// The platform, as the image's config states it.
    pub fn platform(&self) -> &Platform {
        &self.platform.platform
    }

    /// The platform with `os.version` and `os.features`.
    pub fn image_platform(&self) -> &ImagePlatform {
        &self.platform
    }

    /// The image manifest.
    pub fn manifest(&self) -> &PlannedManifest {
        &self.manifest
    }

    /// The attestation manifests about this image, in the order of their index.
    pub fn attestations(&self) -> &[PlannedManifest] {
        &self.attestations
    }

    fn name(&self) -> String {
        let at = self.manifest.reference().to_string();
        if self.source.reference.to_string() == at {
            at
        } else {
            format!("{at} (from {})", self.source.reference)
        }
    }
}

/// Everything checked, nothing written: the verified images and the exact index to push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishPlan {
    target: Repository,
    images: Vec<PlannedImage>,
    index: AssembledIndex,
}

impl PublishPlan {
    /// The repository the index is published to.
    pub fn target(&self) -> &Repository {
        &self.target
    }

    /// The index digest (the same for the same sources, whatever the tags).
    pub fn digest(&self) -> &Digest {
        &self.index.digest
    }

    /// The index media type.
    pub fn media_type(&self) -> &str {
        self.index.media_type
    }

    /// The exact index bytes that will be pushed.
    pub fn index_bytes(&self) -> &[u8] {
        &self.index.bytes
    }

    /// The verified images, in index order.
    pub fn images(&self) -> &[PlannedImage] {
        &self.images
    }

    /// The image of `platform` (`linux/arm64` matches `linux/arm64/v8`).
    pub fn image_for(&self, platform: &Platform) -> Option<&PlannedImage> {
        self.images.iter().find(|i| i.platform().matches(platform))
    }
}

/// The publishing engine, over a registry (the HTTP [`Registry`] unless a test gives another).
#[derive(Clone, Debug)]
pub struct Publisher<R = Registry> {
    registry: R,
}

impl Publisher {
    /// An engine with a new registry client.
    // the error is built once, at start-up: its size does not matter
    #[allow(clippy::result_large_err)]
    pub fn from_config(
        config: RegistryConfig,
        credentials: DockerConfig,
    ) -> Result<Self, PublishError> {
        Ok(Publisher::new(
            Registry::new(config, credentials).map_err(PublishError::Setup)?,
        ))
    }
}

impl<R: RegistryApi> Publisher<R> {
    /// An engine over `registry`.
    pub fn new(registry: R) -> Self {
        Publisher { registry }
    }

    /// The registry (for example to check that a builder's pushed digest exists with
    /// [`RegistryApi::manifest_digest_exists`]).
    pub fn registry(&self) -> &R {
        &self.registry
    }

    /// The engine for a publish to `target`: its requests there ask for pull and push access
    /// from the first ([`RegistryApi::pushing_to`]).
    fn pushing_to(&self, target: &Repository) -> Self {
        Publisher::new(self.registry.pushing_to(target))
    }

    /// Reads and checks everything needed to publish `sources` as one index in `target`, and
    /// writes nothing: every source manifest and image config is read, each image's platform is
    /// taken from its config and checked against the platform it was given as (and the one an
    /// index lists it as), indexes are flattened with their attestations, two images of one
    /// platform are refused, manifests read from other repositories are looked for in `target`,
    /// and the index is assembled. Credentials are checked by the first request (with access to
    /// push to `target`), no separate request.
    pub async fn prepare(
        &self,
        sources: &[Source],
        target: &Repository,
        format: IndexFormat,
    ) -> Result<PublishPlan, PublishError> {
        for source in sources {
            if source.reference.repository.registry() != target.registry() {
                return Err(PublishError::OtherRegistry {
                    reference: source.reference.to_string(),
                    registry: target.registry().to_string(),
                });
            }
        }
        let session = self.pushing_to(target);
        let mut images = session.verify_sources(sources).await?;
        let index = index::assemble(&index_entries(&images), format)
            .map_err(|error| index_error(error, &images))?;
        for image in &mut images {
            session.find_in_target(target, &mut image.manifest).await?;
            for attestation in &mut image.attestations {
                session.find_in_target(target, attestation).await?;
            }
        }
        info!(target = %target, digest = %index.digest, images = images.len(), "index prepared");
        Ok(PublishPlan {
            target: target.clone(),
            images,
            index,
        })
    }

    /// Verifies `sources`, their images in order: the first source's manifest is read alone
    /// (the first request meets the registry's challenge, if it makes one, once for all), then
    /// the sources are verified in batches of [`CONCURRENT_READS`] at once. Two sources are
    /// read one after the other: a second connection (a TCP and a TLS handshake) costs more
    /// round trips than it saves.
    async fn verify_sources(&self, sources: &[Source]) -> Result<Vec<PlannedImage>, PublishError> {
        let Some(first) = sources.first() else {
            return Ok(Vec::new());
        };
        let mut first_read = Some(self.fetch(&first.reference).await?);
        let mut images = Vec::new();
        let at_once = if sources.len() > 2 {
            CONCURRENT_READS
        } else {
            1
        };
        for batch in sources.chunks(at_once) {
            let reads: Vec<_> = batch
                .iter()
                .map(|source| {
                    let read = first_read.take();
                    async move {
                        let fetched = match read {
                            Some(fetched) => fetched,
                            None => self.fetch(&source.reference).await?,
                        };
                        self.verify_fetched(source, fetched).await
                    }
                })
                .collect();
            // the first failure in the order of the sources, whichever failed first in time
            for verified in join_all(reads).await {
                images.extend(verified?);
            }
        }
        Ok(images)
    }

    /// Reads one source and verifies its image(s): the images it contributes to an index, each
    /// with its platform from its config and its attestations. Writes nothing.
    pub async fn verify_source(&self, source: &Source) -> Result<Vec<PlannedImage>, PublishError> {
        let fetched = self.fetch(&source.reference).await?;
        self.verify_fetched(source, fetched).await
    }

    /// Verifies a source whose manifest was read.
    async fn verify_fetched(
        &self,
        source: &Source,
        fetched: FetchedManifest,
    ) -> Result<Vec<PlannedImage>, PublishError> {
        let name = source.reference.to_string();
        let parsed = index::parse_manifest(&fetched.bytes).map_err(|error| {
            PublishError::InvalidManifest {
                reference: name.clone(),
                error,
            }
        })?;
        let repo = &source.reference.repository;
        match parsed {
            ParsedManifest::Image(manifest) => {
                let (planned, platform) = self.verify_image(repo, fetched, manifest).await?;
                if let Some(expected) = &source.platform {
                    if !expected.matches(&platform.platform) {
                        return Err(PublishError::PlatformMismatch {
                            image: planned.reference().to_string(),
                            actual: platform.platform,
                            expected: expected.clone(),
                            claim: PlatformClaim::Given,
                        });
                    }
                }
                debug!(source = %source, platform = %platform, digest = %planned.digest, "image verified");
                Ok(vec![PlannedImage {
                    source: source.clone(),
                    manifest: planned,
                    platform,
                    attestations: Vec::new(),
                }])
            }
            ParsedManifest::Index(index) => self.flatten(source, &fetched.digest, index).await,
        }
    }

    /// One read of the manifest `reference` names, verified (`verify::manifest`).
    async fn fetch(&self, reference: &Reference) -> Result<FetchedManifest, PublishError> {
        let read_error = |error: RegistryError| match error.is_not_found() {
            true => PublishError::SourceNotFound {
                reference: reference.to_string(),
            },
            false => PublishError::ReadManifest {
                reference: reference.to_string(),
                error,
            },
        };
        let served = self
            .registry
            .get_manifest(reference)
            .await
            .map_err(read_error)?;
        verify::manifest(reference, served).map_err(read_error)
    }

    /// Reads an image's config (verified against its descriptor) and returns the manifest to
    /// plan with its platform.
    async fn verify_image(
        &self,
        repo: &Repository,
        fetched: FetchedManifest,
        manifest: ImageManifest,
    ) -> Result<(PlannedManifest, ImagePlatform), PublishError> {
        let image = repo.with_digest(fetched.digest.clone()).to_string();
        let config_error = |error| PublishError::ReadConfig {
            image: image.clone(),
            config: manifest.config.digest.clone(),
            error,
        };
        let config = self
            .registry
            .get_blob(repo, &manifest.config)
            .await
            .map_err(config_error)?;
        verify::blob(&manifest.config, &config).map_err(config_error)?;
        let platform =
            ImagePlatform::from_config(&config).map_err(|error| PublishError::InvalidManifest {
                reference: image,
                error,
            })?;
        Ok((planned(repo, fetched, manifest), platform))
    }

    /// Reads a manifest an index lists, checking it is what the index says (size, media type)
    /// and an image manifest.
    async fn fetch_child(
        &self,
        repo: &Repository,
        index_name: &str,
        descriptor: &ManifestDescriptor,
    ) -> Result<(FetchedManifest, ImageManifest), PublishError> {
        let reference = repo.with_digest(descriptor.digest.clone());
        let fetched = self.fetch(&reference).await?;
        let invalid = |error| PublishError::InvalidManifest {
            reference: reference.to_string(),
            error,
        };
        if fetched.bytes.len() as u64 != descriptor.size {
            return Err(invalid(ManifestError::Invalid(format!(
                "it is {} bytes, but index {index_name} says {}",
                fetched.bytes.len(),
                descriptor.size
            ))));
        }
        match index::parse_manifest(&fetched.bytes).map_err(invalid)? {
            ParsedManifest::Image(m) => Ok((fetched, m)),
            ParsedManifest::Index(_) => Err(PublishError::NestedIndex {
                index: index_name.to_string(),
                nested: descriptor.digest.clone(),
            }),
        }
    }

    /// Flattens a source index: its images (each verified against its config, and against the
    /// platform the index lists it as), the one of the expected platform when one is given, and
    /// the attestations of the images taken.
    async fn flatten(
        &self,
        source: &Source,
        digest: &Digest,
        index: IndexManifest,
    ) -> Result<Vec<PlannedImage>, PublishError> {
        let repo = &source.reference.repository;
        let index_name = source.reference.to_string();
        let mut images: Vec<PlannedImage> = Vec::new();
        let mut attestations: Vec<(ManifestDescriptor, Digest)> = Vec::new();
        for child in index.manifests {
            match child.kind {
                ChildKind::Index => {
                    return Err(PublishError::NestedIndex {
                        index: index_name,
                        nested: child.descriptor.digest,
                    })
                }
                ChildKind::Attestation { subject } => {
                    attestations.push((child.descriptor, subject))
                }
                ChildKind::Image => {
                    images.push(self.verify_listed(source, &index_name, &child).await?);
                }
            }
        }
        if images.is_empty() {
            return Err(PublishError::EmptyIndex { index: index_name });
        }
        for (attestation, subject) in &attestations {
            if !images.iter().any(|i| i.digest() == subject) {
                return Err(PublishError::OrphanAttestation {
                    index: index_name,
                    attestation: attestation.digest.clone(),
                    subject: subject.clone(),
                });
            }
        }
        let mut images = given_platform(source, &index_name, images)?;
        for (descriptor, subject) in attestations {
            let Some(image) = images.iter_mut().find(|i| i.digest() == &subject) else {
                debug!(index = %index_name, attestation = %descriptor.digest, "attestation of an image not taken, left out");
                continue;
            };
            let (fetched, manifest) = self.fetch_child(repo, &index_name, &descriptor).await?;
            image.attestations.push(planned(repo, fetched, manifest));
        }
        debug!(source = %source, index = %digest, images = images.len(), "index flattened");
        Ok(images)
    }

    /// Reads and verifies one image an index lists; its config's platform must be the one the
    /// index lists it as.
    async fn verify_listed(
        &self,
        source: &Source,
        index_name: &str,
        child: &index::IndexChild,
    ) -> Result<PlannedImage, PublishError> {
        let repo = &source.reference.repository;
        let (fetched, manifest) = self
            .fetch_child(repo, index_name, &child.descriptor)
            .await?;
        let (planned, platform) = self.verify_image(repo, fetched, manifest).await?;
        if let Some(listed) = &child.platform {
            if !listed.platform.matches(&platform.platform) {
                return Err(PublishError::PlatformMismatch {
                    image: planned.reference().to_string(),
                    actual: platform.platform,
                    expected: listed.platform.clone(),
                    claim: PlatformClaim::ListedBy(index_name.to_string()),
                });
            }
        }
        Ok(PlannedImage {
            source: source.clone(),
            manifest: planned,
            platform,
            attestations: Vec::new(),
        })
    }

    /// Looks for a manifest read from another repository in `target` (a read, before any
    /// write), so that the write copies only what is missing.
    async fn find_in_target(
        &self,
        target: &Repository,
        manifest: &mut PlannedManifest,
    ) -> Result<(), PublishError> {
        manifest.in_target = &manifest.repository == target
            || self
                .registry
                .manifest_digest_exists(target, &manifest.digest)
                .await
                .map_err(|error| PublishError::Access {
                    repository: target.to_string(),
                    error,
                })?;
        Ok(())
    }

    /// Makes `manifest` (and its blobs) available in `target`; nothing when the plan found it
    /// there.
    async fn copy_into(
        &self,
        target: &Repository,
        manifest: &PlannedManifest,
    ) -> Result<(), PublishError> {
        if manifest.in_target {
            return Ok(());
        }
        for blob in &manifest.blobs {
            self.registry
                .copy_blob(&manifest.repository, target, blob)
                .await
                .map_err(|error| PublishError::CopyBlob {
                    digest: blob.digest.clone(),
                    from: manifest.repository.to_string(),
                    to: target.to_string(),
                    error,
                })?;
        }
        self.push(
            target,
            &ManifestTarget::Digest(manifest.digest.clone()),
            &manifest.bytes,
            &manifest.media_type,
        )
        .await
        .map_err(|error| PublishError::CopyManifest {
            digest: manifest.digest.clone(),
            from: manifest.repository.to_string(),
            to: target.to_string(),
            error,
        })?;
        info!(digest = %manifest.digest, from = %manifest.repository, to = %target, "manifest copied");
        Ok(())
    }

    /// One PUT of exactly `bytes`, checked before (a push by digest is of that digest) and
    /// after (the registry stored that digest).
    async fn push(
        &self,
        repo: &Repository,
        target: &ManifestTarget,
        bytes: &Bytes,
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let digest = verify::push_digest(target, bytes)?;
        let reported = self
            .registry
            .put_manifest(repo, target, bytes, media_type)
            .await?;
        verify::pushed(&digest, &reported)?;
        Ok(digest)
    }

    /// Pushes one verified image manifest of `plan` to `tag` in the plan's target repository
    /// (a per-platform tag such as `1.0.0-arm64`), copying it there first if needed: one PUT
    /// for an image already there.
    pub async fn tag_image(
        &self,
        plan: &PublishPlan,
        image: &PlannedImage,
        tag: &Tag,
    ) -> Result<Digest, PublishError> {
        let session = self.pushing_to(&plan.target);
        session.copy_into(&plan.target, &image.manifest).await?;
        let reference = plan.target.with_tag(tag.clone());
        let manifest = &image.manifest;
        let target = ManifestTarget::Tag(tag.clone());
        let digest = session
            .push(&plan.target, &target, &manifest.bytes, &manifest.media_type)
            .await
            .map_err(|error| PublishError::PushManifest {
                what: format!("the {} image", image.platform()),
                reference: reference.to_string(),
                error,
            })?;
        info!(tag = %reference, digest = %digest, platform = %image.platform(), "image tagged");
        Ok(digest)
    }

    /// Publishes a prepared plan: copies images and attestations read from other repositories
    /// into the target repository (when the plan did not find them there), then pushes the
    /// index to each tag in order. On failure, [`PartialWrite::written`] lists the tags written
    /// before it.
    ///
    /// The index is not pushed by digest first: the first tag's PUT creates it, and the registry
    /// confirms its digest ([`Publisher::write_signed`] pushes it by digest first, to sign it
    /// before any tag names it). With no tag at all, it is pushed by digest.
    pub async fn write(&self, plan: &PublishPlan, tags: &[Tag]) -> Result<Digest, PartialWrite> {
        let session = self.pushing_to(&plan.target);
        session.copy_sources(plan).await.map_err(nothing_tagged)?;
        if tags.is_empty() {
            session
                .push_index(plan, ManifestTarget::Digest(plan.index.digest.clone()))
                .await
                .map_err(nothing_tagged)?;
            info!(index = %plan.target.with_digest(plan.index.digest.clone()), "index pushed");
        }
        session.tag_index(plan, tags).await?;
        Ok(plan.index.digest.clone())
    }

    /// [`Publisher::write`], signed with `signer`: the index is pushed by digest, then its
    /// signature, then the tags, so that no tag ever points at an unsigned index. Signing an
    /// index signed with the same key already writes nothing.
    pub async fn write_signed(
        &self,
        plan: &PublishPlan,
        tags: &[Tag],
        signer: &Signer,
    ) -> Result<(Digest, SignatureRecord), PartialWrite> {
        let session = self.pushing_to(&plan.target);
        session.copy_sources(plan).await.map_err(nothing_tagged)?;
        session
            .push_index(plan, ManifestTarget::Digest(plan.index.digest.clone()))
            .await
            .map_err(nothing_tagged)?;
        let signature = session
            .sign(&plan.target, &plan.index.digest, signer)
            .await
            .map_err(nothing_tagged)?;
        session.tag_index(plan, tags).await?;
        Ok((plan.index.digest.clone(), signature))
    }

    /// Signs the manifest `digest` of `repo` (see [`sign`]): reads the signature tag, and
    /// unless this key's signature is there, uploads the payload and config and pushes the new
    /// signature manifest.
    async fn sign(
        &self,
        repo: &Repository,
        digest: &Digest,
        signer: &Signer,
    ) -> Result<SignatureRecord, PublishError> {
        let tag = sign::signature_tag(digest);
        let reference = repo.with_tag(tag.clone());
        let failed = |error: RegistryError| PublishError::PushManifest {
            what: "the signature".into(),
            reference: reference.to_string(),
            error,
        };
        let existing = match self.registry.get_manifest(&reference).await {
            Ok(served) => Some(served.bytes),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(failed(e)),
        };
        let planned =
            sign::plan_signature(signer, repo, digest, existing.as_deref()).map_err(|why| {
                PublishError::Signature {
                    reference: reference.to_string(),
                    why,
                }
            })?;
        let manifest = match planned {
            sign::SignaturePlan::Present => {
                info!(signature = %reference, "the index is signed with this key already");
                existing.unwrap_or_default()
            }
            sign::SignaturePlan::Write { blobs, manifest } => {
                for blob in &blobs {
                    self.registry
                        .put_blob(repo, &blob.digest, &blob.bytes)
                        .await
                        .map_err(failed)?;
                }
                let target = ManifestTarget::Tag(tag.clone());
                self.push(repo, &target, &manifest, sign::MANIFEST_MEDIA_TYPE)
                    .await
                    .map_err(failed)?;
                info!(signature = %reference, key = signer.key_id(), "index signed");
                manifest
            }
        };
        Ok(SignatureRecord {
            tag,
            digest: Digest::sha256_of(&manifest),
            key: signer.key_id().to_string(),
        })
    }

    /// Copies the images and attestations the plan read from other repositories into its
    /// target repository.
    async fn copy_sources(&self, plan: &PublishPlan) -> Result<(), PublishError> {
        for image in &plan.images {
            self.copy_into(&plan.target, &image.manifest).await?;
            for attestation in &image.attestations {
                self.copy_into(&plan.target, attestation).await?;
            }
        }
        Ok(())
    }

    /// Pushes the plan's index to `target` (a tag or its digest).
    async fn push_index(
        &self,
        plan: &PublishPlan,
        target: ManifestTarget,
    ) -> Result<Digest, PublishError> {
        let reference = match &target {
            ManifestTarget::Tag(t) => plan.target.with_tag(t.clone()),
            ManifestTarget::Digest(d) => plan.target.with_digest(d.clone()),
        };
        let bytes = Bytes::copy_from_slice(&plan.index.bytes);
        self.push(&plan.target, &target, &bytes, plan.index.media_type)
            .await
            .map_err(|error| PublishError::PushManifest {
                what: "the index".into(),
                reference: reference.to_string(),
                error,
            })
    }

    /// Pushes the plan's index to each tag in order, stopping at the first that fails.
    async fn tag_index(&self, plan: &PublishPlan, tags: &[Tag]) -> Result<(), PartialWrite> {
        let mut written = Vec::new();
        for tag in tags {
            if let Err(error) = self
                .push_index(plan, ManifestTarget::Tag(tag.clone()))
                .await
            {
                return Err(PartialWrite { written, error });
            }
            info!(tag = %plan.target.with_tag(tag.clone()), digest = %plan.index.digest, "index tagged");
            written.push(tag.clone());
        }
        Ok(())
    }
}

/// A failure before any tag was written.
fn nothing_tagged(error: PublishError) -> PartialWrite {
    PartialWrite {
        written: Vec::new(),
        error,
    }
}

/// The signature a signed publish left: where, and with which key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureRecord {
    /// The signature tag (`sha256-<hex>.sig`) in the index's repository.
    pub tag: Tag,
    /// The digest of the signature manifest at that tag.
    pub digest: Digest,
    /// The signing key's identity ([`Signer::key_id`]).
    pub key: String,
}

/// Why the verified images do not form an index; two images of one platform are named with
/// the sources they came from.
fn index_error(error: IndexError, images: &[PlannedImage]) -> PublishError {
    match error {
        IndexError::DuplicatePlatform {
            platform,
            first,
            second,
        } => {
            let name = |digest: &Digest| {
                let image = images.iter().find(|i| i.digest() == digest);
                image.map_or_else(|| digest.to_string(), PlannedImage::name)
            };
            PublishError::DuplicatePlatform {
                platform,
                first: name(&first),
                second: name(&second),
            }
        }
        other => PublishError::Index(other),
    }
}

/// The index entries of the verified images: each image, then its attestations.
fn index_entries(images: &[PlannedImage]) -> Vec<IndexEntry> {
    let mut entries = Vec::new();
    for image in images {
        entries.push(IndexEntry::Image {
            descriptor: image.manifest.descriptor(),
            platform: image.platform.clone(),
        });
        for attestation in &image.attestations {
            entries.push(IndexEntry::Attestation {
                descriptor: attestation.descriptor(),
                subject: image.manifest.digest.clone(),
            });
        }
    }
    entries
}

/// The images of an index source that its given platform (`PLATFORM=`) takes: the one image,
/// which must be of that platform, or those of an index with several that match it.
#[allow(clippy::result_large_err)] // the engine's own error type, as its async steps return
fn given_platform(
    source: &Source,
    index_name: &str,
    mut images: Vec<PlannedImage>,
) -> Result<Vec<PlannedImage>, PublishError> {
    let Some(expected) = &source.platform else {
        return Ok(images);
    };
    if images.len() == 1 {
        if !expected.matches(images[0].platform()) {
            return Err(PublishError::PlatformMismatch {
                image: images[0].name(),
                actual: images[0].platform().clone(),
                expected: expected.clone(),
                claim: PlatformClaim::Given,
            });
        }
        return Ok(images);
    }
    let available: Vec<String> = images.iter().map(|i| i.platform().to_string()).collect();
    images.retain(|i| expected.matches(i.platform()));
    if images.is_empty() {
        return Err(PublishError::PlatformNotInIndex {
            index: index_name.to_string(),
            expected: expected.clone(),
            available: available.join(", "),
        });
    }
    Ok(images)
}

fn planned(
    repo: &Repository,
    fetched: FetchedManifest,
    manifest: ImageManifest,
) -> PlannedManifest {
    PlannedManifest {
        repository: repo.clone(),
        digest: fetched.digest,
        media_type: manifest.media_type.clone(),
        bytes: fetched.bytes,
        blobs: manifest.blobs().cloned().collect(),
        in_target: false,
    }
}
