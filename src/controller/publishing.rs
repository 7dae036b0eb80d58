//! The controller's registry steps, through the publishing engine (`crate::publish`): checking a
//! builder's reported digest, and publishing the verified index. Registry credentials come from
//! the object's `pushSecretRef` (a `kubernetes.io/dockerconfigjson` Secret).

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use tracing::info;

use super::{Context, Error};
use crate::api::{MultiArchImage, MultiArchImageStatus};
use crate::plan::PublishOutcome;
use crate::publish::credentials::DockerConfig;
use crate::publish::registry::RegistryConfig;
use crate::publish::{IndexFormat, Publisher, Source};
use crate::reference::{Digest, Tag};
use crate::validate::DesiredBuild;

/// A publishing engine with the object's registry credentials. A missing or malformed push
/// Secret is a refusal the user must fix, reported as `Err(Ok(message))`.
async fn publisher(
    ctx: &Context,
    obj: &MultiArchImage,
) -> Result<Result<Publisher, String>, Error> {
    let credentials = match &obj.spec.push_secret_ref {
        None => DockerConfig::empty(),
        Some(r) => {
            let ns = obj.namespace().unwrap_or_default();
            let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&r.name)
                .await?;
            let Some(secret) = secret else {
                return Ok(Err(format!(
                    "pushSecretRef: Secret {ns}/{} not found",
                    r.name
                )));
            };
            let Some(bytes) = secret
                .data
                .as_ref()
                .and_then(|d| d.get(".dockerconfigjson"))
            else {
                return Ok(Err(format!(
                    "pushSecretRef: Secret {ns}/{} has no .dockerconfigjson (it must be of type kubernetes.io/dockerconfigjson)",
                    r.name
                )));
            };
            match DockerConfig::from_bytes(&bytes.0) {
                Ok(c) => c,
                Err(e) => return Ok(Err(format!("pushSecretRef: Secret {ns}/{}: {e}", r.name))),
            }
        }
    };
    let config = RegistryConfig {
        plain_http: ctx.settings.registry_plain_http,
        insecure: ctx.settings.registry_insecure,
        ca_file: ctx.settings.registry_ca_file.clone(),
        ..RegistryConfig::default()
    };
    match Publisher::from_config(config, credentials) {
        Ok(p) => Ok(Ok(p)),
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// Checks that the registry has the manifest a builder reported: `Ok(Ok(digest))` when it does,
/// `Ok(Err(why))` when it does not, `Err` when the registry cannot be asked now.
pub async fn verify_pushed(
    ctx: &Context,
    obj: &MultiArchImage,
    desired: &DesiredBuild,
    digest: &str,
) -> Result<Result<String, String>, Error> {
    let parsed: Digest = match digest.parse() {
        Ok(d) => d,
        Err(e) => return Ok(Err(format!("the builder reported an invalid digest: {e}"))),
    };
    let publisher = match publisher(ctx, obj).await? {
        Ok(p) => p,
        Err(msg) => return Ok(Err(msg)),
    };
    match publisher
        .registry()
        .manifest_digest_exists(&desired.repository, &parsed)
        .await
    {
        Ok(true) => Ok(Ok(digest.to_string())),
        Ok(false) => Ok(Err(format!(
            "the builder reported {digest}, but {} has no such manifest",
            desired.repository
        ))),
        Err(e) if e.is_transient() => Err(Error::Registry(e.to_string())),
        Err(e) => Ok(Err(format!(
            "cannot check {digest} in {}: {e}",
            desired.repository
        ))),
    }
}

/// Verifies every platform's image (its platform read from its config), tags each platform image
/// (`<tags[0]>-<arch><variant>`), then pushes the index by digest and to every tag. Nothing is
/// tagged before every image is verified; the index is deterministic, so repeating a publish
/// after a crash writes the same bytes.
pub async fn publish(
    ctx: &Context,
    obj: &MultiArchImage,
    desired: &DesiredBuild,
    status: &MultiArchImageStatus,
) -> Result<PublishOutcome, Error> {
    let publisher = match publisher(ctx, obj).await? {
        Ok(p) => p,
        Err(msg) => return Ok(PublishOutcome::Refused(msg)),
    };
    let mut sources = Vec::with_capacity(desired.platforms.len());
    for platform in &desired.platforms {
        let digest = status
            .platforms
            .iter()
            .find(|p| p.platform == platform.to_string())
            .and_then(|p| p.digest.as_deref())
            .and_then(|d| d.parse::<Digest>().ok());
        let Some(digest) = digest else {
            return Ok(PublishOutcome::Refused(format!(
                "{platform} has no built image"
            )));
        };
        sources.push(Source::new(
            desired.repository.with_digest(digest),
            Some(platform.clone()),
        ));
    }

    let plan = match publisher
        .prepare(&sources, &desired.repository, IndexFormat::Oci)
        .await
    {
        Ok(plan) => plan,
        Err(e) if e.is_platform_mismatch() => {
            return Ok(PublishOutcome::PlatformMismatch(e.to_string()))
        }
        Err(e) if e.is_transient() => return Err(Error::Registry(e.to_string())),
        Err(e) => return Ok(PublishOutcome::Refused(e.to_string())),
    };

    for (platform, tag) in desired.platforms.iter().zip(desired.platform_tag_names()) {
        let Some(image) = plan.image_for(platform) else {
            return Ok(PublishOutcome::Refused(format!(
                "the verified images have no {platform} image"
            )));
        };
        let tag: Tag = match tag.parse() {
            Ok(t) => t,
            Err(e) => return Ok(PublishOutcome::Refused(format!("per-platform tag: {e}"))),
        };
        if let Err(e) = publisher.tag_image(&plan, image, &tag).await {
            return if e.is_transient() {
                Err(Error::Registry(e.to_string()))
            } else {
                Ok(PublishOutcome::Refused(e.to_string()))
            };
        }
    }

    match publisher.write(&plan, &desired.tags).await {
        Ok(digest) => {
            let image_ref = format!("{}@{digest}", desired.repository);
            info!(digest = %digest, tags = ?desired.tags.iter().map(Tag::as_str).collect::<Vec<_>>(), "published the index");
            Ok(PublishOutcome::Published {
                digest: digest.to_string(),
                image_ref,
            })
        }
        Err(e) if e.is_transient() => Err(Error::Registry(e.to_string())),
        Err(e) => Ok(PublishOutcome::Refused(e.to_string())),
    }
}
