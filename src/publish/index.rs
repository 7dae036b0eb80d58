//! Index assembly and manifest classification, pure (no I/O): reads the manifests and image
//! configs fetched from a registry, and turns verified per-platform images and their attestation
//! manifests into one deterministic OCI image index (or Docker manifest list).
//!
//! The same entries always give byte-identical JSON: images in the order given, each image's
//! attestations right after it, fields in a fixed order, annotations sorted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::platform::Platform;
use crate::reference::Digest;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list (schema 2).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest (schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image manifest, schema 1 (unsupported).
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Signed Docker image manifest, schema 1 (unsupported).
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Every manifest media type the publisher asks a registry for (schema 1 included, so that it
/// can be recognised and refused with a clear error rather than a confusing one).
pub const ACCEPTED_MANIFEST_TYPES: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1_SIGNED,
    DOCKER_SCHEMA1,
];

/// Annotation naming what a manifest in an index is (BuildKit: `attestation-manifest`).
pub const REFERENCE_TYPE_ANNOTATION: &str = "vnd.docker.reference.type";
/// Annotation naming the image an attestation manifest is about.
pub const REFERENCE_DIGEST_ANNOTATION: &str = "vnd.docker.reference.digest";
/// The value of [`REFERENCE_TYPE_ANNOTATION`] on attestation manifests.
pub const ATTESTATION_MANIFEST: &str = "attestation-manifest";

const FOREIGN_LAYER_TYPES: &[&str] = &[
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];

/// The media type of the published index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IndexFormat {
    /// `application/vnd.oci.image.index.v1+json` (the default).
    #[default]
    Oci,
    /// `application/vnd.docker.distribution.manifest.list.v2+json`, for old clients.
    Docker,
}

impl IndexFormat {
    /// The index media type of this format.
    pub fn media_type(self) -> &'static str {
        match self {
            IndexFormat::Oci => OCI_INDEX,
            IndexFormat::Docker => DOCKER_MANIFEST_LIST,
        }
    }
}

impl FromStr for IndexFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "oci" => Ok(IndexFormat::Oci),
            "docker" => Ok(IndexFormat::Docker),
            other => Err(format!(
                "unknown index format {other:?} (expected oci or docker)"
            )),
        }
    }
}

impl fmt::Display for IndexFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IndexFormat::Oci => "oci",
            IndexFormat::Docker => "docker",
        })
    }
}

/// What an index entry says about a manifest: its media type, digest and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestDescriptor {
    /// The manifest's media type.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// A blob a manifest refers to (its config or a layer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobDescriptor {
    /// The blob's media type.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// A non-distributable ("foreign") layer: registries do not hold it, so it is never copied.
    pub foreign: bool,
}

/// The platform of an image, as its config states it (variant and `os.version` included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagePlatform {
    /// `os/architecture/variant`.
    pub platform: Platform,
    /// `os.version` (Windows images).
    pub os_version: Option<String>,
    /// `os.features` (Windows images).
    pub os_features: Vec<String>,
}

impl ImagePlatform {
    /// An image platform with no `os.version` or `os.features`.
    pub fn new(platform: Platform) -> Self {
        ImagePlatform {
            platform,
            os_version: None,
            os_features: Vec::new(),
        }
    }

    /// Reads the platform from an image config blob (`os`, `architecture`, `variant`,
    /// `os.version`, `os.features`). A config without `os` and `architecture`, or with
    /// `unknown/unknown` (an attestation's), is not a runnable image.
    pub fn from_config(config: &[u8]) -> Result<ImagePlatform, ManifestError> {
        #[derive(Deserialize)]
        struct RawConfig {
            architecture: Option<String>,
            os: Option<String>,
            variant: Option<String>,
            #[serde(rename = "os.version")]
            os_version: Option<String>,
            #[serde(rename = "os.features")]
            os_features: Option<Vec<String>>,
        }
        let raw: RawConfig = serde_json::from_slice(config)
            .map_err(|e| ManifestError::Invalid(format!("image config is not valid JSON: {e}")))?;
        let os = raw.os.unwrap_or_default();
        let arch = raw.architecture.unwrap_or_default();
        if os.is_empty() || arch.is_empty() || (os == "unknown" && arch == "unknown") {
            return Err(ManifestError::NoPlatform {
                os: os.clone(),
                architecture: arch.clone(),
            });
        }
        Ok(ImagePlatform {
            platform: Platform::new(&os, &arch, raw.variant.as_deref()),
            os_version: raw.os_version.filter(|v| !v.is_empty()),
            os_features: raw.os_features.unwrap_or_default(),
        })
    }
}

impl fmt::Display for ImagePlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.platform.fmt(f)
    }
}

/// Why a manifest or config read from a registry cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// A Docker schema 1 manifest.
    #[error("it is a Docker schema 1 manifest ({media_type}), which is deprecated and unsupported: rebuild or re-push the image with a current tool")]
    Schema1 {
        /// The schema 1 media type.
        media_type: String,
    },
    /// Neither an image manifest nor an index.
    #[error(
        "unsupported manifest media type {0:?} (expected an image manifest or an image index)"
    )]
    UnsupportedMediaType(
        /// The media type.
        String,
    ),
    /// A `schemaVersion` other than 2.
    #[error("unsupported manifest schemaVersion {0}")]
    UnsupportedSchemaVersion(
        /// The `schemaVersion`.
        i64,
    ),
    /// The image config names no runnable platform.
    #[error("its config names no runnable platform (os {os:?}, architecture {architecture:?})")]
    NoPlatform {
        /// The config's `os`.
        os: String,
        /// The config's `architecture`.
        architecture: String,
    },
    /// Malformed JSON or descriptors.
    #[error("invalid manifest: {0}")]
    Invalid(
        /// What is wrong.
        String,
    ),
}

/// What kind of manifest an index entry points to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildKind {
    /// A runnable image.
    Image,
    /// An attestation manifest (provenance, SBOM) about the image `subject`.
    Attestation {
        /// The digest of the image it is about.
        subject: Digest,
    },
    /// An image index nested in the index.
    Index,
}

/// One entry of an index read from a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexChild {
    /// The entry's descriptor.
    pub descriptor: ManifestDescriptor,
    /// The platform the index claims (only a claim: the image's config decides).
    pub platform: Option<ImagePlatform>,
    /// What the entry is.
    pub kind: ChildKind,
}

/// An image manifest read from a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageManifest {
    /// OCI or Docker image manifest media type.
    pub media_type: String,
    /// The config blob.
    pub config: BlobDescriptor,
    /// The layers, in order.
    pub layers: Vec<BlobDescriptor>,
}

impl ImageManifest {
    /// The config and the layers that a registry holds (foreign layers left out): what must be
    /// in a repository before this manifest can be pushed there.
    pub fn blobs(&self) -> impl Iterator<Item = &BlobDescriptor> {
        std::iter::once(&self.config).chain(self.layers.iter().filter(|l| !l.foreign))
    }
}

/// An image index (or Docker manifest list) read from a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexManifest {
    /// OCI index or Docker manifest list media type.
    pub media_type: String,
    /// The entries, in order.
    pub manifests: Vec<IndexChild>,
}

/// A manifest read from a registry, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedManifest {
    /// An image manifest.
    Image(ImageManifest),
    /// An index.
    Index(IndexManifest),
}

impl ParsedManifest {
    /// The manifest's media type (from its `mediaType`, or inferred for OCI manifests without
    /// one).
    pub fn media_type(&self) -> &str {
        match self {
            ParsedManifest::Image(m) => &m.media_type,
            ParsedManifest::Index(m) => &m.media_type,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: String,
    size: i64,
    annotations: Option<BTreeMap<String, String>>,
    platform: Option<RawPlatform>,
    urls: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawPlatform {
    architecture: String,
    os: String,
    #[serde(rename = "os.version")]
    os_version: Option<String>,
    #[serde(rename = "os.features")]
    os_features: Option<Vec<String>>,
    variant: Option<String>,
}

fn parse_digest(d: &str) -> Result<Digest, ManifestError> {
    d.parse()
        .map_err(|_| ManifestError::Invalid(format!("invalid digest {d:?}")))
}

fn parse_size(size: i64, digest: &str) -> Result<u64, ManifestError> {
    u64::try_from(size).map_err(|_| ManifestError::Invalid(format!("negative size for {digest}")))
}

fn blob(raw: &RawDescriptor, default_type: &str) -> Result<BlobDescriptor, ManifestError> {
    let media_type = raw
        .media_type
        .clone()
        .unwrap_or_else(|| default_type.into());
    let foreign = FOREIGN_LAYER_TYPES.contains(&media_type.as_str())
        || raw.urls.as_ref().is_some_and(|u| !u.is_empty());
    Ok(BlobDescriptor {
        digest: parse_digest(&raw.digest)?,
        size: parse_size(raw.size, &raw.digest)?,
        media_type,
        foreign,
    })
}

fn is_schema1(media_type: &str) -> bool {
    media_type == DOCKER_SCHEMA1 || media_type == DOCKER_SCHEMA1_SIGNED
}

fn child(raw: &RawDescriptor) -> Result<IndexChild, ManifestError> {
    let media_type = raw.media_type.clone().ok_or_else(|| {
        ManifestError::Invalid(format!("index entry {} has no mediaType", raw.digest))
    })?;
    let annotations = raw.annotations.clone().unwrap_or_default();
    let kind = match media_type.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => ChildKind::Index,
        OCI_MANIFEST | DOCKER_MANIFEST => {
            match annotations
                .get(REFERENCE_TYPE_ANNOTATION)
                .map(String::as_str)
            {
                Some(ATTESTATION_MANIFEST) => {
                    let subject = annotations.get(REFERENCE_DIGEST_ANNOTATION).ok_or_else(|| {
                        ManifestError::Invalid(format!(
                            "attestation manifest {} has no {REFERENCE_DIGEST_ANNOTATION} annotation",
                            raw.digest
                        ))
                    })?;
                    ChildKind::Attestation {
                        subject: parse_digest(subject)?,
                    }
                }
                _ => ChildKind::Image,
            }
        }
        mt if is_schema1(mt) => {
            return Err(ManifestError::Schema1 {
                media_type: mt.to_string(),
            })
        }
        other => return Err(ManifestError::UnsupportedMediaType(other.to_string())),
    };
    let platform = raw.platform.as_ref().map(|p| ImagePlatform {
        platform: Platform::new(&p.os, &p.architecture, p.variant.as_deref()),
        os_version: p.os_version.clone().filter(|v| !v.is_empty()),
        os_features: p.os_features.clone().unwrap_or_default(),
    });
    Ok(IndexChild {
        descriptor: ManifestDescriptor {
            media_type,
            digest: parse_digest(&raw.digest)?,
            size: parse_size(raw.size, &raw.digest)?,
        },
        platform,
        kind,
    })
}

/// Classifies a manifest read from a registry: an image manifest (OCI or Docker schema 2) or an
/// index (OCI index or Docker manifest list). Schema 1 and other media types are errors.
pub fn parse_manifest(bytes: &[u8]) -> Result<ParsedManifest, ManifestError> {
    let raw: RawManifest = serde_json::from_slice(bytes)
        .map_err(|e| ManifestError::Invalid(format!("not a JSON manifest: {e}")))?;
    if let Some(mt) = raw.media_type.as_deref().filter(|mt| is_schema1(mt)) {
        return Err(ManifestError::Schema1 {
            media_type: mt.to_string(),
        });
    }
    match raw.schema_version {
        Some(2) => {}
        Some(1) => {
            return Err(ManifestError::Schema1 {
                media_type: raw.media_type.unwrap_or_else(|| DOCKER_SCHEMA1.into()),
            })
        }
        Some(v) => return Err(ManifestError::UnsupportedSchemaVersion(v)),
        None => return Err(ManifestError::Invalid("no schemaVersion".into())),
    }
    let media_type = match raw.media_type {
        Some(mt) => mt,
        None if raw.manifests.is_some() => OCI_INDEX.to_string(),
        None if raw.config.is_some() => OCI_MANIFEST.to_string(),
        None => {
            return Err(ManifestError::Invalid(
                "neither an image manifest nor an index (no config, no manifests)".into(),
            ))
        }
    };
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = raw
                .config
                .as_ref()
                .ok_or_else(|| ManifestError::Invalid("image manifest without config".into()))?;
            let default_layer = if media_type == OCI_MANIFEST {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            } else {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            };
            Ok(ParsedManifest::Image(ImageManifest {
                config: blob(config, "application/vnd.oci.image.config.v1+json")?,
                layers: raw
                    .layers
                    .unwrap_or_default()
                    .iter()
                    .map(|l| blob(l, default_layer))
                    .collect::<Result<_, _>>()?,
                media_type,
            }))
        }
        OCI_INDEX | DOCKER_MANIFEST_LIST => Ok(ParsedManifest::Index(IndexManifest {
            manifests: raw
                .manifests
                .unwrap_or_default()
                .iter()
                .map(child)
                .collect::<Result<_, _>>()?,
            media_type,
        })),
        _ => Err(ManifestError::UnsupportedMediaType(media_type)),
    }
}

/// One manifest to list in the published index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexEntry {
    /// A verified image: its platform comes from its config.
    Image {
        /// The image manifest.
        descriptor: ManifestDescriptor,
        /// Its platform, from its config.
        platform: ImagePlatform,
    },
    /// An attestation manifest about the image whose digest is `subject`.
    Attestation {
        /// The attestation manifest.
        descriptor: ManifestDescriptor,
        /// The digest of the image it is about.
        subject: Digest,
    },
}

impl IndexEntry {
    /// The descriptor of the entry's manifest.
    pub fn descriptor(&self) -> &ManifestDescriptor {
        match self {
            IndexEntry::Image { descriptor, .. } | IndexEntry::Attestation { descriptor, .. } => {
                descriptor
            }
        }
    }
}

/// Why entries cannot form an index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// No image among the entries.
    #[error("an index needs at least one image")]
    NoImages,
    /// Two images of one platform.
    #[error("two images for {platform}: {first} and {second}")]
    DuplicatePlatform {
        /// The platform.
        platform: Platform,
        /// The first image of it.
        first: Digest,
        /// The second image of it.
        second: Digest,
    },
    /// A manifest listed twice.
    #[error("manifest {0} is listed twice")]
    DuplicateManifest(
        /// The manifest.
        Digest,
    ),
    /// An attestation whose image is not an entry.
    #[error(
        "attestation manifest {attestation} is about image {subject}, which is not in the index"
    )]
    OrphanAttestation {
        /// The attestation manifest.
        attestation: Digest,
        /// The image it is about.
        subject: Digest,
    },
    /// An entry that is not an image manifest (an index is never nested).
    #[error("{digest} has media type {media_type}, which cannot be listed in an index")]
    NotAManifest {
        /// The entry.
        digest: Digest,
        /// Its media type.
        media_type: String,
    },
}

/// An index ready to push: its exact bytes, their digest and media type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssembledIndex {
    /// The index media type.
    pub media_type: &'static str,
    /// The exact bytes to push.
    pub bytes: Vec<u8>,
    /// Their digest.
    pub digest: Digest,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexJson<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<DescriptorJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DescriptorJson<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<&'static str, &'a str>>,
    platform: PlatformJson<'a>,
}

#[derive(Serialize)]
struct PlatformJson<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(rename = "os.version", skip_serializing_if = "Option::is_none")]
    os_version: Option<&'a str>,
    #[serde(rename = "os.features", skip_serializing_if = "<[String]>::is_empty")]
    os_features: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
}

const UNKNOWN_PLATFORM: PlatformJson<'static> = PlatformJson {
    architecture: "unknown",
    os: "unknown",
    os_version: None,
    os_features: &[],
    variant: None,
};

/// Assembles the index: images in the order given, each image's attestations right after it (in
/// the order given). Errors: no image, two images of one platform (`linux/arm64` and
/// `linux/arm64/v8` are one), a manifest listed twice, an attestation whose image is not in the
/// index, an entry that is not an image manifest. Deterministic: the same entries give the same
/// bytes.
pub fn assemble(entries: &[IndexEntry], format: IndexFormat) -> Result<AssembledIndex, IndexError> {
    check_manifests(entries)?;
    let images = images_of(entries)?;
    check_attestations(entries, &images)?;
    let mut manifests = Vec::with_capacity(entries.len());
    for (image, platform) in &images {
        manifests.push(image_descriptor(image, platform));
        manifests.extend(entries.iter().filter_map(|e| match e {
            IndexEntry::Attestation {
                descriptor,
                subject,
            } if subject == &image.digest => Some(attestation_descriptor(descriptor, subject)),
            _ => None,
        }));
    }
    let media_type = format.media_type();
    let bytes = serde_json::to_vec(&IndexJson {
        schema_version: 2,
        media_type,
        manifests,
    })
    .unwrap_or_default(); // serialising these plain structs cannot fail
    Ok(AssembledIndex {
        media_type,
        digest: Digest::sha256_of(&bytes),
        bytes,
    })
}

/// Every entry a manifest (not an index), none twice.
fn check_manifests(entries: &[IndexEntry]) -> Result<(), IndexError> {
    let mut seen = BTreeSet::new();
    for e in entries {
        let d = e.descriptor();
        if !seen.insert(d.digest.clone()) {
            return Err(IndexError::DuplicateManifest(d.digest.clone()));
        }
        if !matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST) {
            return Err(IndexError::NotAManifest {
                digest: d.digest.clone(),
                media_type: d.media_type.clone(),
            });
        }
    }
    Ok(())
}

/// The images among the entries, in order: at least one, no two of one platform.
fn images_of(
    entries: &[IndexEntry],
) -> Result<Vec<(&ManifestDescriptor, &ImagePlatform)>, IndexError> {
    let images: Vec<(&ManifestDescriptor, &ImagePlatform)> = entries
        .iter()
        .filter_map(|e| match e {
            IndexEntry::Image {
                descriptor,
                platform,
            } => Some((descriptor, platform)),
            IndexEntry::Attestation { .. } => None,
        })
        .collect();
    if images.is_empty() {
        return Err(IndexError::NoImages);
    }
    for (i, (d, p)) in images.iter().enumerate() {
        if let Some((first, _)) = images[..i]
            .iter()
            .find(|(_, q)| q.platform.matches(&p.platform))
        {
            return Err(IndexError::DuplicatePlatform {
                platform: p.platform.clone(),
                first: first.digest.clone(),
                second: d.digest.clone(),
            });
        }
    }
    Ok(images)
}

/// Every attestation is of one of the images.
fn check_attestations(
    entries: &[IndexEntry],
    images: &[(&ManifestDescriptor, &ImagePlatform)],
) -> Result<(), IndexError> {
    for e in entries {
        if let IndexEntry::Attestation {
            descriptor,
            subject,
        } = e
        {
            if !images.iter().any(|(d, _)| &d.digest == subject) {
                return Err(IndexError::OrphanAttestation {
                    attestation: descriptor.digest.clone(),
                    subject: subject.clone(),
                });
            }
        }
    }
    Ok(())
}

fn image_descriptor<'a>(
    image: &'a ManifestDescriptor,
    platform: &'a ImagePlatform,
) -> DescriptorJson<'a> {
    DescriptorJson {
        media_type: &image.media_type,
        digest: image.digest.as_str(),
        size: image.size,
        annotations: None,
        platform: PlatformJson {
            architecture: &platform.platform.architecture,
            os: &platform.platform.os,
            os_version: platform.os_version.as_deref(),
            os_features: &platform.os_features,
            variant: platform.platform.variant.as_deref(),
        },
    }
}

/// An attestation manifest, right after its image, as BuildKit writes it.
fn attestation_descriptor<'a>(
    descriptor: &'a ManifestDescriptor,
    subject: &'a Digest,
) -> DescriptorJson<'a> {
    DescriptorJson {
        media_type: &descriptor.media_type,
        digest: descriptor.digest.as_str(),
        size: descriptor.size,
        annotations: Some(BTreeMap::from([
            (REFERENCE_DIGEST_ANNOTATION, subject.as_str()),
            (REFERENCE_TYPE_ANNOTATION, ATTESTATION_MANIFEST),
        ])),
        platform: UNKNOWN_PLATFORM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
            .parse()
            .unwrap()
    }

    fn desc(n: u8) -> ManifestDescriptor {
        ManifestDescriptor {
            media_type: OCI_MANIFEST.into(),
            digest: digest(n),
            size: 100 + u64::from(n),
        }
    }

    fn image(n: u8, platform: &str) -> IndexEntry {
        IndexEntry::Image {
            descriptor: desc(n),
            platform: ImagePlatform::new(platform.parse().unwrap()),
        }
    }

    fn attestation(n: u8, subject: u8) -> IndexEntry {
        IndexEntry::Attestation {
            descriptor: desc(n),
            subject: digest(subject),
        }
    }

    fn manifests(index: &AssembledIndex) -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_slice(&index.bytes).unwrap();
        v["manifests"].as_array().unwrap().clone()
    }

    #[test]
    fn index_lists_images_in_source_order_with_attestations_after_their_image() {
        // (entries, expected digests in order)
        let cases: Vec<(Vec<IndexEntry>, Vec<u8>)> = vec![
            (vec![image(1, "linux/amd64")], vec![1]),
            (
                vec![image(2, "linux/arm64"), image(1, "linux/amd64")],
                vec![2, 1],
            ),
            (
                vec![
                    image(1, "linux/amd64"),
                    attestation(11, 1),
                    image(2, "linux/arm64"),
                    attestation(12, 2),
                ],
                vec![1, 11, 2, 12],
            ),
            (
                // attestations given before or far from their image still follow it
                vec![
                    attestation(12, 2),
                    image(1, "linux/amd64"),
                    image(2, "linux/arm64"),
                    attestation(11, 1),
                    image(3, "linux/arm/v7"),
                ],
                vec![1, 11, 2, 12, 3],
            ),
            (
                vec![
                    image(1, "linux/amd64"),
                    attestation(11, 1),
                    attestation(21, 1),
                ],
                vec![1, 11, 21],
            ),
        ];
        for (entries, expected) in cases {
            let index = assemble(&entries, IndexFormat::Oci).unwrap();
            let got: Vec<String> = manifests(&index)
                .iter()
                .map(|m| m["digest"].as_str().unwrap().to_string())
                .collect();
            let want: Vec<String> = expected.iter().map(|&n| digest(n).to_string()).collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn index_bytes_are_deterministic_and_fields_in_fixed_order() {
        let entries = vec![
            IndexEntry::Image {
                descriptor: desc(1),
                platform: ImagePlatform {
                    platform: "windows/amd64".parse().unwrap(),
                    os_version: Some("10.0.20348.2340".into()),
                    os_features: vec!["win32k".into()],
                },
            },
            image(2, "linux/arm/v7"),
            attestation(3, 2),
        ];
        let a = assemble(&entries, IndexFormat::Oci).unwrap();
        let b = assemble(&entries.clone(), IndexFormat::Oci).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.digest, Digest::sha256_of(&a.bytes));
        let expected = format!(
            concat!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":["#,
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d1}","size":101,"platform":{{"architecture":"amd64","os":"windows","os.version":"10.0.20348.2340","os.features":["win32k"]}}}},"#,
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d2}","size":102,"platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}},"#,
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d3}","size":103,"annotations":{{"vnd.docker.reference.digest":"{d2}","vnd.docker.reference.type":"attestation-manifest"}},"platform":{{"architecture":"unknown","os":"unknown"}}}}"#,
                "]}}"
            ),
            d1 = digest(1),
            d2 = digest(2),
            d3 = digest(3)
        );
        assert_eq!(String::from_utf8(a.bytes).unwrap(), expected);
    }

    #[test]
    fn docker_format_uses_the_manifest_list_media_type() {
        let entries = vec![image(1, "linux/amd64")];
        let oci = assemble(&entries, IndexFormat::Oci).unwrap();
        let docker = assemble(&entries, IndexFormat::Docker).unwrap();
        assert_eq!(oci.media_type, OCI_INDEX);
        assert_eq!(docker.media_type, DOCKER_MANIFEST_LIST);
        let v: serde_json::Value = serde_json::from_slice(&docker.bytes).unwrap();
        assert_eq!(v["mediaType"], DOCKER_MANIFEST_LIST);
        assert_ne!(oci.digest, docker.digest);
    }

    #[test]
    fn invalid_entry_sets_are_rejected() {
        let mut index_entry = image(5, "linux/s390x");
        if let IndexEntry::Image { descriptor, .. } = &mut index_entry {
            descriptor.media_type = OCI_INDEX.into();
        }
        let cases: Vec<(&str, Vec<IndexEntry>, IndexError)> = vec![
            ("empty", vec![], IndexError::NoImages),
            (
                "only attestations",
                vec![attestation(11, 1)],
                IndexError::NoImages,
            ),
            (
                "same platform twice",
                vec![image(1, "linux/amd64"), image(2, "linux/amd64")],
                IndexError::DuplicatePlatform {
                    platform: "linux/amd64".parse().unwrap(),
                    first: digest(1),
                    second: digest(2),
                },
            ),
            (
                "arm64 and arm64/v8 are one platform",
                vec![image(1, "linux/arm64"), image(2, "linux/arm64/v8")],
                IndexError::DuplicatePlatform {
                    platform: "linux/arm64/v8".parse().unwrap(),
                    first: digest(1),
                    second: digest(2),
                },
            ),
            (
                "arm and arm/v7 are one platform",
                vec![image(1, "linux/arm/v7"), image(2, "linux/arm")],
                IndexError::DuplicatePlatform {
                    platform: "linux/arm".parse().unwrap(),
                    first: digest(1),
                    second: digest(2),
                },
            ),
            (
                "attestation of an image not in the index",
                vec![image(1, "linux/amd64"), attestation(11, 9)],
                IndexError::OrphanAttestation {
                    attestation: digest(11),
                    subject: digest(9),
                },
            ),
            (
                "attestation of an attestation",
                vec![
                    image(1, "linux/amd64"),
                    attestation(11, 1),
                    attestation(12, 11),
                ],
                IndexError::OrphanAttestation {
                    attestation: digest(12),
                    subject: digest(11),
                },
            ),
            (
                "same manifest twice",
                vec![image(1, "linux/amd64"), image(1, "linux/arm64")],
                IndexError::DuplicateManifest(digest(1)),
            ),
            (
                "an index is never nested",
                vec![image(1, "linux/amd64"), index_entry],
                IndexError::NotAManifest {
                    digest: digest(5),
                    media_type: OCI_INDEX.into(),
                },
            ),
        ];
        for (name, entries, want) in cases {
            assert_eq!(
                assemble(&entries, IndexFormat::Oci),
                Err(want),
                "case {name}"
            );
        }
    }

    #[test]
    fn different_platforms_of_one_arch_are_not_duplicates() {
        let entries = vec![
            image(1, "linux/arm/v6"),
            image(2, "linux/arm/v7"),
            image(3, "linux/arm64"),
            image(4, "windows/amd64"),
            image(5, "linux/amd64"),
        ];
        assert_eq!(
            manifests(&assemble(&entries, IndexFormat::Oci).unwrap()).len(),
            5
        );
    }

    #[test]
    fn index_entry_platform_comes_from_image_config() {
        type Want = Result<(&'static str, Option<&'static str>), ()>;
        let cases: Vec<(&str, Want)> = vec![
            (
                r#"{"architecture":"arm64","os":"linux","variant":"v8","rootfs":{}}"#,
                Ok(("linux/arm64/v8", None)),
            ),
            (
                r#"{"architecture":"amd64","os":"linux"}"#,
                Ok(("linux/amd64", None)),
            ),
            (
                r#"{"architecture":"amd64","os":"windows","os.version":"10.0.17763.1","os.features":null}"#,
                Ok(("windows/amd64", Some("10.0.17763.1"))),
            ),
            (
                r#"{"architecture":"arm","os":"linux","variant":"v7"}"#,
                Ok(("linux/arm/v7", None)),
            ),
            (r#"{"architecture":"unknown","os":"unknown"}"#, Err(())),
            (r#"{"config":{}}"#, Err(())),
            (r#"not json"#, Err(())),
        ];
        for (config, want) in cases {
            let got = ImagePlatform::from_config(config.as_bytes());
            match want {
                Ok((platform, os_version)) => {
                    let got = got.unwrap();
                    assert_eq!(got.platform.to_string(), platform, "{config}");
                    assert_eq!(got.os_version.as_deref(), os_version, "{config}");
                }
                Err(()) => assert!(got.is_err(), "{config} should be rejected"),
            }
        }
    }

    #[test]
    fn manifests_are_classified() {
        let d1 = digest(1);
        let d2 = digest(2);
        let image_manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d1}","size":10}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d2}","size":20}}]}}"#
        );
        match parse_manifest(image_manifest.as_bytes()).unwrap() {
            ParsedManifest::Image(m) => {
                assert_eq!(m.media_type, OCI_MANIFEST);
                assert_eq!(m.config.digest, d1);
                assert_eq!(m.blobs().count(), 2);
            }
            other => panic!("{other:?}"),
        }
        // an OCI manifest may omit mediaType
        let bare = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d1}","size":10}},"layers":[]}}"#
        );
        assert_eq!(
            parse_manifest(bare.as_bytes()).unwrap().media_type(),
            OCI_MANIFEST
        );
        // a foreign layer is not copied
        let foreign = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{d1}","size":10}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{d2}","size":20,"urls":["https://example.com/l"]}}]}}"#
        );
        match parse_manifest(foreign.as_bytes()).unwrap() {
            ParsedManifest::Image(m) => assert_eq!(m.blobs().count(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn buildkit_index_children_are_images_and_attestations() {
        let (d1, d2) = (digest(1), digest(2));
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{d1}","size":500,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{d2}","size":300,"annotations":{{"vnd.docker.reference.digest":"{d1}","vnd.docker.reference.type":"attestation-manifest"}},"platform":{{"architecture":"unknown","os":"unknown"}}}}]}}"#
        );
        let ParsedManifest::Index(idx) = parse_manifest(index.as_bytes()).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(idx.manifests.len(), 2);
        assert_eq!(idx.manifests[0].kind, ChildKind::Image);
        assert_eq!(
            idx.manifests[0]
                .platform
                .as_ref()
                .unwrap()
                .platform
                .to_string(),
            "linux/arm64/v8"
        );
        assert_eq!(
            idx.manifests[1].kind,
            ChildKind::Attestation {
                subject: d1.clone()
            }
        );
        let nested = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[{{"mediaType":"{OCI_INDEX}","digest":"{d1}","size":5}}]}}"#
        );
        let ParsedManifest::Index(idx) = parse_manifest(nested.as_bytes()).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(idx.manifests[0].kind, ChildKind::Index);
    }

    #[test]
    fn unusable_manifests_are_rejected() {
        let d1 = digest(1);
        type Check = fn(&ManifestError) -> bool;
        let cases: Vec<(String, Check)> = vec![
            (
                r#"{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[]}"#.into(),
                |e| matches!(e, ManifestError::Schema1 { .. }),
            ),
            (
                format!(r#"{{"schemaVersion":1,"mediaType":"{DOCKER_SCHEMA1_SIGNED}"}}"#),
                |e| matches!(e, ManifestError::Schema1 { .. }),
            ),
            (
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[{{"mediaType":"{DOCKER_SCHEMA1_SIGNED}","digest":"{d1}","size":5}}]}}"#
                ),
                |e| matches!(e, ManifestError::Schema1 { .. }),
            ),
            (
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d1}","size":5,"annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}}]}}"#
                ),
                |e| matches!(e, ManifestError::Invalid(_)),
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.artifact.manifest.v1+json"}"#
                    .into(),
                |e| matches!(e, ManifestError::UnsupportedMediaType(_)),
            ),
            (
                r#"{"schemaVersion":3}"#.into(),
                |e| matches!(e, ManifestError::UnsupportedSchemaVersion(3)),
            ),
            (
                r#"{"schemaVersion":2}"#.into(),
                |e| matches!(e, ManifestError::Invalid(_)),
            ),
            (
                r#"{"schemaVersion":2,"config":{"digest":"sha256:short","size":1}}"#.into(),
                |e| matches!(e, ManifestError::Invalid(_)),
            ),
            ("[]".into(), |e| matches!(e, ManifestError::Invalid(_))),
        ];
        for (manifest, check) in cases {
            let err = parse_manifest(manifest.as_bytes()).unwrap_err();
            assert!(check(&err), "{manifest}: unexpected {err:?}");
        }
        let schema1 = parse_manifest(br#"{"schemaVersion":1}"#).unwrap_err();
        assert!(schema1.to_string().contains("schema 1"), "{schema1}");
    }

    #[test]
    fn format_parses_from_its_name() {
        assert_eq!("oci".parse::<IndexFormat>(), Ok(IndexFormat::Oci));
        assert_eq!("docker".parse::<IndexFormat>(), Ok(IndexFormat::Docker));
        assert!("v2".parse::<IndexFormat>().is_err());
        assert_eq!(IndexFormat::default().to_string(), "oci");
    }
}
