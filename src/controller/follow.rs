//! Following a build's inputs after it ended: polling the branch for a new commit and the base
//! images' tags for a new digest (at the object's interval, jittered, with no write when nothing
//! moved), and reading the base images from a published build's provenance.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use tracing::{info, warn};

use super::publishing::{publisher, Credentials};
use super::{gather, Context, Error};
use crate::api::{BaseImage, MultiArchImage, MultiArchImageStatus, Phase, SbomStatus};
use crate::plan::{same_spec, FollowCheck, MovedBase};
use crate::provenance::{self, PREDICATE_TYPE_ANNOTATION};
use crate::publish::index::{parse_manifest, BlobDescriptor, ParsedManifest};
use crate::publish::registry::RegistryApi as _;
use crate::publish::{PublishPlan, Publisher};
use crate::reference::{Digest, Reference};
use crate::validate::DesiredBuild;

/// When each followed object is polled next, by uid. In memory: after a restart every object is
/// first polled at a random point within its interval, so that a thousand objects do not poll in
/// one burst.
#[derive(Default)]
pub(crate) struct Polls {
    next: Mutex<HashMap<String, Due>>,
}

struct Due {
    at: Instant,
    generation: Option<i64>,
}

impl Polls {
    /// Whether the object `uid` is to be polled now. Seen for the first time, its first poll is
    /// scheduled within one interval; a new generation (a resumed object) is due at once.
    fn due(&self, uid: &str, generation: Option<i64>, interval: Duration) -> bool {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match next.get(uid) {
            Some(d) if d.generation != generation => true,
            Some(d) => now >= d.at,
            None => {
                let at = now + interval.mul_f64(random_fraction());
                next.insert(uid.to_string(), Due { at, generation });
                false
            }
        }
    }

    /// Schedules the next poll one interval from now, give or take a tenth.
    fn polled(&self, uid: &str, generation: Option<i64>, interval: Duration) {
        let at = Instant::now() + interval.mul_f64(0.9 + 0.2 * random_fraction());
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        next.insert(uid.to_string(), Due { at, generation });
    }

    /// How long until the object's next poll, if one is scheduled.
    pub(super) fn next_in(&self, uid: &str) -> Option<Duration> {
        let next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        next.get(uid)
            .map(|d| d.at.saturating_duration_since(Instant::now()))
    }

    /// Forgets an object that is no longer followed (deleted, suspended, not polled).
    pub(super) fn forget(&self, uid: &str) {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        next.remove(uid);
    }
}

/// A number in [0, 1) from the operating system's generator (0 if it fails).
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}

/// How often the object's inputs are polled, if they are: its `pollInterval` (raised to the
/// operator's minimum), or the operator's base-image interval when only `rebuildOn.baseImages`
/// is set.
pub(super) fn interval(ctx: &Context, desired: &DesiredBuild) -> Option<Duration> {
    let settings = &ctx.settings;
    let follow = &desired.follow;
    if follow.suspend {
        return None;
    }
    let wanted = match (follow.poll_interval, follow.base_images) {
        (Some(d), _) => d,
        (None, true) => settings.base_image_interval,
        (None, false) => return None,
    };
    Some(wanted.max(settings.min_poll_interval))
}

/// Whether the object's recorded build is followed now: the spec asks for it and it ended
/// (a build in progress is not interrupted by a new commit).
pub(super) fn followed(ctx: &Context, desired: &DesiredBuild, prev: &MultiArchImageStatus) -> bool {
    interval(ctx, desired).is_some()
        && same_spec(prev, &desired.spec_key)
        && matches!(prev.phase, Some(Phase::Succeeded | Phase::Failed))
}

/// Polls the object's inputs when a poll is due: the branch (with `pollInterval`) and the base
/// images' tags (with `rebuildOn.baseImages`). `None` when no poll was due.
pub(super) async fn poll_if_due(
    ctx: &Context,
    obj: &MultiArchImage,
    desired: &DesiredBuild,
    prev: &MultiArchImageStatus,
) -> Result<Option<FollowCheck>, Error> {
    let uid = obj.uid().unwrap_or_default();
    let Some(interval) = interval(ctx, desired).filter(|_| followed(ctx, desired, prev)) else {
        ctx.polls.forget(&uid);
        return Ok(None);
    };
    let generation = obj.metadata.generation;
    if !ctx.polls.due(&uid, generation, interval) {
        return Ok(None);
    }
    let source = match desired.follow.poll_interval {
        Some(_) => Some(gather::resolve_source(ctx, obj).await?),
        None => None,
    };
    let moved = if desired.follow.base_images {
        moved_bases(ctx, obj, &prev.base_images).await?
    } else {
        Vec::new()
    };
    ctx.polls.polled(&uid, generation, interval);
    Ok(Some(FollowCheck { source, moved }))
}

/// The base images whose tag points to a digest none of their platforms was built from: a HEAD
/// request per base image, and a GET of the tag's index only when its digest changed (a tag of
/// a multi-platform image may be recorded by the digest of one platform's image).
async fn moved_bases(
    ctx: &Context,
    obj: &MultiArchImage,
    bases: &[BaseImage],
) -> Result<Vec<MovedBase>, Error> {
    if bases.is_empty() {
        return Ok(Vec::new());
    }
    let publisher = match publisher(ctx, obj).await? {
        Credentials::Ok(p) => p,
        Credentials::Refused(why) => {
            warn!("cannot check base images: {why}");
            return Ok(Vec::new());
        }
    };
    // each base image once, however many platforms were built from it
    let mut names: Vec<&str> = bases.iter().map(|b| b.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut moved = Vec::new();
    for name in names {
        let recorded: Vec<&str> = bases
            .iter()
            .filter(|b| b.name == name)
            .map(|b| b.digest.as_str())
            .collect();
        match base_moved(&publisher, name, &recorded).await {
            Ok(Some(m)) => moved.push(m),
            Ok(None) => {}
            // a registry that cannot be asked now is asked again at the next poll
            Err(why) => warn!(base = name, "cannot check the base image: {why}"),
        }
    }
    Ok(moved)
}

/// Whether the tag `name` moved away from every `recorded` digest.
async fn base_moved(
    publisher: &Publisher,
    name: &str,
    recorded: &[&str],
) -> Result<Option<MovedBase>, String> {
    let reference: Reference = name.parse().map_err(|e| format!("{e}"))?;
    let registry = publisher.registry();
    let Some(now) = registry
        .resolve(&reference)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Err(format!("{name} no longer exists"));
    };
    if recorded.iter().all(|d| *d == now.as_str()) {
        return Ok(None);
    }
    let fetched =
        manifest_by_digest(publisher, &reference.repository.with_digest(now.clone())).await?;
    let children: Vec<String> = match parse_manifest(&fetched.bytes) {
        Ok(ParsedManifest::Index(index)) => index
            .manifests
            .iter()
            .map(|c| c.descriptor.digest.to_string())
            .collect(),
        _ => Vec::new(),
    };
    let stale = recorded
        .iter()
        .find(|d| **d != now.as_str() && !children.iter().any(|c| c == *d));
    Ok(stale.map(|from| MovedBase {
        name: name.to_string(),
        from: from.to_string(),
        to: now.to_string(),
    }))
}

/// What the builders attached to a verified publish plan's images, read from the attestation
/// manifests next to them.
#[derive(Debug, Default)]
pub(super) struct Attached {
    /// Each platform's base images, from its provenance.
    pub base_images: Vec<BaseImage>,
    /// Each platform's SBOM layer.
    pub sboms: Vec<SbomStatus>,
}

/// The base images and SBOMs of each platform of a verified publish plan. An attestation that
/// cannot be read is logged and skipped: the publish stands, only `rebuildOn.baseImages` cannot
/// see that platform's bases (and its SBOM is not listed).
pub(super) async fn attached_to(publisher: &Publisher, plan: &PublishPlan) -> Attached {
    let mut found = Attached::default();
    for image in plan.images() {
        let platform = image.platform().to_string();
        for attestation in image.attestations() {
            let reference = attestation.reference();
            let manifest = match manifest_by_digest(publisher, &reference).await {
                Ok(manifest) => manifest,
                Err(why) => {
                    warn!(platform, "cannot read the attestation manifest: {why}");
                    continue;
                }
            };
            match provenance_of(publisher, &reference, &manifest.bytes).await {
                Ok(materials) => {
                    found
                        .base_images
                        .extend(materials.into_iter().map(|m| BaseImage {
                            platform: platform.clone(),
                            name: m.name,
                            digest: m.digest,
                        }))
                }
                Err(why) => warn!(platform, "cannot read the provenance: {why}"),
            }
            match attestation_layers(&manifest.bytes, provenance::is_sbom) {
                Ok(layers) => found.sboms.extend(layers.into_iter().map(|l| SbomStatus {
                    platform: platform.clone(),
                    attestation: attestation.digest().to_string(),
                    digest: l.digest.to_string(),
                })),
                Err(why) => warn!(platform, "cannot read the attestation manifest: {why}"),
            }
        }
    }
    if !found.base_images.is_empty() {
        info!(
            count = found.base_images.len(),
            "read the base images from the provenance"
        );
    }
    found
}

/// The materials of the provenance layers of one attestation manifest (`manifest`, its bytes).
async fn provenance_of(
    publisher: &Publisher,
    attestation: &Reference,
    manifest: &[u8],
) -> Result<Vec<provenance::Material>, String> {
    let registry = publisher.registry();
    let layers = attestation_layers(manifest, provenance::is_provenance)?;
    let mut materials = Vec::new();
    for blob in layers {
        let bytes = registry
            .get_blob(&attestation.repository, &blob)
            .await
            .map_err(|e| e.to_string())?;
        if Digest::sha256_of(&bytes) != blob.digest {
            return Err(format!("blob {} has other content", blob.digest));
        }
        materials.extend(provenance::base_images(&bytes)?);
    }
    Ok(materials)
}

/// The manifest `reference` (by digest) names, checked against its digest.
async fn manifest_by_digest(
    publisher: &Publisher,
    reference: &Reference,
) -> Result<crate::publish::registry::ServedManifest, String> {
    let served = publisher
        .registry()
        .get_manifest(reference)
        .await
        .map_err(|e| e.to_string())?;
    match &reference.digest {
        Some(want) if Digest::sha256_of(&served.bytes) != *want => {
            Err(format!("the registry served other content for {reference}"))
        }
        _ => Ok(served),
    }
}

/// The layers of an attestation manifest whose predicate type `wanted` accepts.
fn attestation_layers(
    manifest: &[u8],
    wanted: fn(&str) -> bool,
) -> Result<Vec<BlobDescriptor>, String> {
    #[derive(serde::Deserialize)]
    struct Manifest {
        #[serde(default)]
        layers: Vec<Layer>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Layer {
        media_type: String,
        digest: String,
        size: u64,
        #[serde(default)]
        annotations: std::collections::BTreeMap<String, String>,
    }
    let manifest: Manifest =
        serde_json::from_slice(manifest).map_err(|e| format!("attestation manifest: {e}"))?;
    manifest
        .layers
        .into_iter()
        .filter(|l| {
            l.annotations
                .get(PREDICATE_TYPE_ANNOTATION)
                .is_some_and(|t| wanted(t))
        })
        .map(|l| {
            let digest: Digest = l.digest.parse().map_err(|e| format!("{e}"))?;
            Ok(BlobDescriptor {
                media_type: l.media_type,
                digest,
                size: l.size,
                foreign: false,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provenance_and_sbom_layers_are_told_apart() {
        let (p, s) = (
            format!("sha256:{}", "a".repeat(64)),
            format!("sha256:{}", "b".repeat(64)),
        );
        let manifest = serde_json::json!({"layers": [
            {"mediaType": "application/vnd.in-toto+json", "digest": p, "size": 10,
             "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}},
            {"mediaType": "application/vnd.in-toto+json", "digest": s, "size": 20,
             "annotations": {"in-toto.io/predicate-type": "https://spdx.dev/Document"}},
        ]})
        .to_string();
        let layers = attestation_layers(manifest.as_bytes(), provenance::is_provenance).unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(
            (layers[0].digest.as_str(), layers[0].size),
            (p.as_str(), 10)
        );
        let layers = attestation_layers(manifest.as_bytes(), provenance::is_sbom).unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(
            (layers[0].digest.as_str(), layers[0].size),
            (s.as_str(), 20)
        );
    }

    #[test]
    fn a_first_sight_is_not_due_and_a_new_generation_is() {
        let polls = Polls::default();
        let hour = Duration::from_secs(3600);
        assert!(!polls.due("u", Some(1), hour));
        assert!(polls.next_in("u").unwrap() <= hour);
        assert!(!polls.due("u", Some(1), hour));
        assert!(polls.due("u", Some(2), hour));
        polls.polled("u", Some(2), hour);
        let next = polls.next_in("u").unwrap();
        assert!(
            next >= hour.mul_f64(0.89) && next <= hour.mul_f64(1.1),
            "{next:?}"
        );
        polls.forget("u");
        assert_eq!(polls.next_in("u"), None);
    }
}
