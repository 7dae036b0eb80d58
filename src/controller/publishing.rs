//! The controller's registry steps, through the publishing engine (`crate::publish`): checking a
//! builder's reported digest, and publishing the verified index. Registry credentials come from
//! the object's `pushSecretRef` (a `kubernetes.io/dockerconfigjson` Secret); one publisher per
//! version of that Secret is kept and reused, with its connections and tokens.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use tracing::info;

use super::{Context, Error};
use crate::api::{MultiArchImage, MultiArchImageStatus, SignatureStatus};
use crate::plan::{PublishOutcome, PushCheck};
use crate::publish::credentials::DockerConfig;
use crate::publish::registry::RegistryConfig;
use crate::publish::{IndexFormat, PublishPlan, Publisher, RegistryApi as _, Signer, Source};
use crate::reference::{Digest, Tag};
use crate::validate::DesiredBuild;

/// Whether the object's registry credentials can be used.
pub(super) enum Credentials {
    /// A publishing engine with them.
    Ok(Publisher),
    /// A missing or malformed push Secret: a refusal the user must fix, with the reason.
    Refused(String),
}

/// How many publishers (registry clients) the controller keeps: one per push Secret version in
/// use, and one without credentials.
pub(super) const PUBLISHERS_KEPT: usize = 64;

/// The credentials a publisher is made with: none, or the push Secret `namespace/name` at a
/// resourceVersion.
pub(super) type PublisherKey = Option<(String, Option<String>)>;

/// A publishing engine with the object's registry credentials (`pushSecretRef`), the one kept
/// for that version of the Secret when there is one.
pub(super) async fn publisher(ctx: &Context, obj: &MultiArchImage) -> Result<Credentials, Error> {
    let secret = match &obj.spec.push_secret_ref {
        None => None,
        Some(r) => {
            let ns = obj.namespace().unwrap_or_default();
            let secret = super::gather::get_secret(ctx, &ns, &r.name).await?;
            Some((format!("{ns}/{}", r.name), secret))
        }
    };
    let key: PublisherKey = secret.as_ref().map(|(name, secret)| {
        let version = secret.as_ref().and_then(|s| s.resource_version());
        (name.clone(), version)
    });
    let made = ctx.publishers.get_or_make(&key, || {
        let credentials = match &secret {
            None => DockerConfig::empty(),
            Some((name, secret)) => docker_config(secret.as_ref(), name)?,
        };
        let config = RegistryConfig {
            plain_http: ctx.settings.registry_plain_http,
            insecure: ctx.settings.registry_insecure,
            ca_file: ctx.settings.registry_ca_file.clone(),
            ..RegistryConfig::default()
        };
        Publisher::from_config(config, credentials).map_err(|e| e.to_string())
    });
    Ok(match made {
        Ok(p) => Credentials::Ok(p),
        Err(why) => Credentials::Refused(why),
    })
}

/// The Docker config in the push Secret `name` (`namespace/name`), or why it cannot be used.
fn docker_config(secret: Option<&Secret>, name: &str) -> Result<DockerConfig, String> {
    let Some(secret) = secret else {
        return Err(format!("pushSecretRef: Secret {name} not found"));
    };
    let Some(bytes) = secret
        .data
        .as_ref()
        .and_then(|d| d.get(".dockerconfigjson"))
    else {
        return Err(format!(
            "pushSecretRef: Secret {name} has no .dockerconfigjson (it must be of type kubernetes.io/dockerconfigjson)"
        ));
    };
    DockerConfig::from_bytes(&bytes.0).map_err(|e| format!("pushSecretRef: Secret {name}: {e}"))
}

/// Checks that the registry has the manifest a builder reported; `Err` when the registry cannot
/// be asked now (unreachable, failing, too slow: worth asking again).
pub async fn verify_pushed(
    ctx: &Context,
    obj: &MultiArchImage,
    desired: &DesiredBuild,
    digest: &str,
) -> Result<PushCheck, Error> {
    let parsed: Digest = match digest.parse() {
        Ok(d) => d,
        Err(e) => {
            let why = format!("the builder reported an invalid digest: {e}");
            return Ok(PushCheck::Missing(why));
        }
    };
    let publisher = match publisher(ctx, obj).await? {
        Credentials::Ok(p) => p,
        Credentials::Refused(why) => return Ok(PushCheck::Missing(why)),
    };
    let repo = &desired.repository;
    match publisher
        .registry()
        .manifest_digest_exists(repo, &parsed)
        .await
    {
        Ok(true) => Ok(PushCheck::Pushed(digest.to_string())),
        Ok(false) => Ok(PushCheck::Missing(format!(
            "the builder reported {digest}, but {repo} has no such manifest"
        ))),
        Err(e) if e.is_transient() => Err(Error::CheckPushed {
            digest: digest.to_string(),
            message: e.to_string(),
        }),
        // the registry answered, but not usably (too large, another digest, a redirect loop,
        // refused): its fault, not the build's
        Err(e) => Ok(PushCheck::Unusable(format!(
            "cannot check {digest} in {repo}: {e}"
        ))),
    }
}

/// Verifies every platform's image (its platform read from its config), tags each platform image
/// (`<tags[0]>-<arch><variant>`), then pushes the index to every tag. Nothing is
/// tagged before every image is verified; the index is deterministic, so repeating a publish
/// after a crash writes the same bytes.
pub async fn publish(
    ctx: &Context,
    obj: &MultiArchImage,
    desired: &DesiredBuild,
    status: &MultiArchImageStatus,
) -> Result<PublishOutcome, Error> {
    let publisher = match publisher(ctx, obj).await? {
        Credentials::Ok(p) => p,
        Credentials::Refused(why) => return Ok(PublishOutcome::Refused(why)),
    };
    // the key is read before anything is written: a key that cannot sign publishes nothing
    let signer = match signer(ctx, obj, desired).await? {
        Ok(signer) => signer,
        Err(why) => return Ok(PublishOutcome::Refused(why)),
    };
    let sources = match sources(desired, status) {
        Ok(sources) => sources,
        Err(why) => return Ok(PublishOutcome::Refused(why)),
    };
    let plan = match publisher
        .prepare(&sources, &desired.repository, IndexFormat::Oci)
        .await
    {
        Ok(plan) => plan,
        Err(e) if e.is_platform_mismatch() => {
            return Ok(PublishOutcome::PlatformMismatch(e.to_string()))
        }
        Err(e) if e.is_transient() => {
            let message = e.to_string();
            return Err(Error::VerifyImages { message });
        }
        Err(e) => return Ok(PublishOutcome::Refused(e.to_string())),
    };
    if let Some(refused) = tag_platforms(&publisher, &plan, desired).await? {
        return Ok(refused);
    }
    let written = match &signer {
        None => publisher
            .write(&plan, &desired.tags)
            .await
            .map(|digest| (digest, None)),
        Some(signer) => publisher
            .write_signed(&plan, &desired.tags, signer)
            .await
            .map(|(digest, signature)| (digest, Some(signature))),
    };
    match written {
        Ok((digest, signature)) => {
            let image_ref = format!("{}@{digest}", desired.repository);
            info!(digest = %digest, tags = ?desired.tags.iter().map(Tag::as_str).collect::<Vec<_>>(), "published the index");
            let attached = super::follow::attached_to(&publisher, &plan).await;
            Ok(PublishOutcome::Published {
                digest: digest.to_string(),
                image_ref,
                base_images: attached.base_images,
                signature: signature.map(|s| SignatureStatus {
                    tag: desired.repository.with_tag(s.tag).to_string(),
                    digest: s.digest.to_string(),
                    key: s.key,
                }),
                sboms: attached.sboms,
            })
        }
        Err(e) if e.is_transient() => Err(Error::PushIndex {
            message: e.to_string(),
        }),
        Err(e) => Ok(PublishOutcome::Refused(e.to_string())),
    }
}

/// The cosign key of `spec.signing` (`None` without it), or why it cannot sign. The Secret
/// holds it as `cosign generate-key-pair k8s://...` writes it: `cosign.key`, `cosign.password`.
/// Messages name the Secret and its keys, never their values.
async fn signer(
    ctx: &Context,
    obj: &MultiArchImage,
    desired: &DesiredBuild,
) -> Result<Result<Option<Signer>, String>, Error> {
    let Some(name) = &desired.signing_secret else {
        return Ok(Ok(None));
    };
    let ns = obj.namespace().unwrap_or_default();
    let secret = super::gather::get_secret(ctx, &ns, name).await?;
    Ok(signing_key(secret.as_ref(), &ns, name).map(Some))
}

/// The signer of the Secret `ns/name` as read (`None`: not found), or why it cannot sign.
fn signing_key(secret: Option<&Secret>, ns: &str, name: &str) -> Result<Signer, String> {
    let at = format!("signing.keySecretRef: Secret {ns}/{name}");
    let Some(data) = secret.and_then(|s| s.data.as_ref()) else {
        return Err(format!("{at} not found, or empty"));
    };
    let (Some(key), Some(password)) = (data.get("cosign.key"), data.get("cosign.password")) else {
        return Err(format!(
            "{at} must hold cosign.key and cosign.password (as `cosign generate-key-pair k8s://{ns}/{name}` writes them)"
        ));
    };
    Signer::from_encrypted_pem(&key.0, &password.0).map_err(|e| format!("{at}: cosign.key: {e}"))
}

/// Each platform's built image, in the order of `spec.platforms`; `Err` names a platform that
/// has none.
fn sources(desired: &DesiredBuild, status: &MultiArchImageStatus) -> Result<Vec<Source>, String> {
    desired
        .platforms
        .iter()
        .map(|platform| {
            let digest = status
                .platforms
                .iter()
                .find(|p| p.platform == platform.to_string())
                .and_then(|p| p.digest.as_deref())
                .and_then(|d| d.parse::<Digest>().ok())
                .ok_or_else(|| format!("{platform} has no built image"))?;
            let image = desired.repository.with_digest(digest);
            Ok(Source::new(image, Some(platform.clone())))
        })
        .collect()
}

/// Tags each verified platform image `<tags[0]>-<arch><variant>` (when `platformTags` is on);
/// `Some` when the registry refuses.
async fn tag_platforms(
    publisher: &Publisher,
    plan: &PublishPlan,
    desired: &DesiredBuild,
) -> Result<Option<PublishOutcome>, Error> {
    for (platform, tag) in desired.platforms.iter().zip(desired.platform_tag_names()) {
        let refused = |why: String| Ok(Some(PublishOutcome::Refused(why)));
        let Some(image) = plan.image_for(platform) else {
            return refused(format!("the verified images have no {platform} image"));
        };
        let tag: Tag = match tag.parse() {
            Ok(t) => t,
            Err(e) => return refused(format!("per-platform tag: {e}")),
        };
        match publisher.tag_image(plan, image, &tag).await {
            Ok(_) => {}
            Err(e) if e.is_transient() => {
                let platform = platform.to_string();
                let message = e.to_string();
                return Err(Error::TagImage { platform, message });
            }
            Err(e) => return refused(e.to_string()),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::gather::tests::secret;

    #[test]
    fn a_push_secret_that_cannot_be_used_says_why() {
        let missing = docker_config(None, "ns/regcred").unwrap_err();
        assert_eq!(missing, "pushSecretRef: Secret ns/regcred not found");
        let opaque = docker_config(
            Some(&secret(serde_json::json!({"token": "eA=="}))),
            "ns/regcred",
        );
        assert!(opaque
            .unwrap_err()
            .contains("kubernetes.io/dockerconfigjson"));
        // {"auths": {}}
        let empty = secret(serde_json::json!({".dockerconfigjson": "eyJhdXRocyI6IHt9fQ=="}));
        assert!(docker_config(Some(&empty), "ns/regcred").is_ok());
    }

    #[test]
    fn a_signing_secret_that_cannot_sign_says_why_without_its_values() {
        use crate::publish::sign::tests::{KEY, PASSWORD};
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let at = "signing.keySecretRef: Secret ns/cosign";
        let missing = signing_key(None, "ns", "cosign").unwrap_err();
        assert_eq!(missing, format!("{at} not found, or empty"));
        let no_password = secret(serde_json::json!({"cosign.key": b64(KEY)}));
        let e = signing_key(Some(&no_password), "ns", "cosign").unwrap_err();
        assert!(e.starts_with(at) && e.contains("cosign.password"), "{e}");
        let wrong = "not-the-password-7c1e";
        let bad =
            secret(serde_json::json!({"cosign.key": b64(KEY), "cosign.password": b64(wrong)}));
        let e = signing_key(Some(&bad), "ns", "cosign").unwrap_err();
        assert!(e.starts_with(&format!("{at}: cosign.key: ")), "{e}");
        assert!(!e.contains(wrong), "the password is never told: {e}");
        let good =
            secret(serde_json::json!({"cosign.key": b64(KEY), "cosign.password": b64(PASSWORD)}));
        assert!(signing_key(Some(&good), "ns", "cosign").is_ok());
    }
}
