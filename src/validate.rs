//! The one `validate` step: turns a `MultiArchImage` into a [`DesiredBuild`] of parsed values,
//! or an [`InvalidSpec`] that says what to fix. It catches what the CRD schema and its CEL rules
//! cannot express (platform aliases such as `linux/arm64` and `linux/arm64/v8`, duration values,
//! reference grammar, per-platform tag lengths).

use std::time::Duration;

use sha2::Digest as _;

use crate::api::{MultiArchImage, MultiArchImageSpec, ProvenanceMode, REBUILD_ANNOTATION};
use crate::config::{parse_compact_duration, BuilderDefaults};
use crate::platform::Platform;
use crate::reference::{Repository, Tag, MAX_TAG_LEN};

/// What the object asks for, parsed and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredBuild {
    /// Identifies the build inputs (and the rebuild annotation): a new value means a new build.
    pub spec_key: String,
    /// The id of the build this reconcile works on: the recorded build's while the spec asks for
    /// it, else `spec_key` until the planner decides the new build's id (see
    /// `plan::build::new_build_id`).
    pub build_id: String,
    pub repository: Repository,
    pub tags: Vec<Tag>,
    pub platforms: Vec<Platform>,
    pub platform_tags: bool,
    /// Retries of a build that failed by itself.
    pub retries: u32,
    pub timeout: Duration,
    pub provisioning_timeout: Duration,
    /// The rebuild annotation's value, if any.
    pub rebuild: Option<String>,
    /// What starts builds besides the spec: polling, base images, suspension.
    pub follow: Follow,
    /// BuildKit's provenance attestation: `mode=min|max`, or `None` when off.
    pub provenance: Option<ProvenanceMode>,
    /// The SBOM scanner image builders run (`spec.attestations.sbom`), or `None`.
    pub sbom_scanner: Option<String>,
    /// The Secret holding the cosign key the index is signed with (`spec.signing`), or `None`.
    pub signing_secret: Option<String>,
}

/// How the object follows its inputs between spec changes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Follow {
    /// `spec.source.git.pollInterval`, as written (the operator raises it to its minimum).
    pub poll_interval: Option<Duration>,
    /// `spec.rebuildOn.baseImages`.
    pub base_images: bool,
    /// `spec.suspend`.
    pub suspend: bool,
}

impl DesiredBuild {
    /// Every tag a publish writes: the index tags, then the per-platform tags.
    pub fn published_tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = self.tags.iter().map(|t| t.to_string()).collect();
        tags.extend(self.platform_tag_names());
        tags
    }

    /// `<tags[0]>-<arch><variant>` for each platform when `platformTags` is on, else nothing.
    pub fn platform_tag_names(&self) -> Vec<String> {
        match (self.platform_tags, self.tags.first()) {
            (true, Some(primary)) => self
                .platforms
                .iter()
                .map(|p| format!("{primary}-{}", p.tag_suffix()))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The spec cannot succeed as written; the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

/// Validates the object against the operator's defaults. The checks run in the order of the
/// spec's fields, and the first that fails is reported.
pub fn validate(
    obj: &MultiArchImage,
    defaults: &BuilderDefaults,
) -> Result<DesiredBuild, InvalidSpec> {
    let spec = &obj.spec;
    // before anything else reads the URL: a credential in it would be echoed everywhere
    if has_userinfo(&spec.source.git.url) {
        return Err(invalid(USERINFO_REFUSED.into()));
    }
    let repository: Repository = spec
        .image
        .parse()
        .map_err(|e| invalid(format!("spec.image: {e}")))?;
    let tags = tags(spec)?;
    let platforms = platforms(spec)?;
    if spec.platform_tags {
        check_platform_tag_lengths(&tags[0], &platforms)?;
    }
    check_overrides(spec, &platforms)?;
    let (timeout, provisioning_timeout) = timeouts(spec, defaults)?;
    check_source_url(&spec.source.git.url)?;
    crate::guardrails::check(spec, defaults)?;
    let retries = u32::try_from(spec.retries)
        .map_err(|_| invalid("spec.retries: must be zero or more".into()))?;
    let rebuild = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REBUILD_ANNOTATION))
        .cloned();
    let follow = follow(spec)?;
    let provenance = match spec.attestations.as_ref().and_then(|a| a.provenance) {
        Some(ProvenanceMode::Off) => None,
        mode => Some(mode.unwrap_or_default()),
    };
    if follow.base_images && provenance.is_none() {
        return Err(invalid(
            "spec.rebuildOn.baseImages needs provenance: the base images are read from it (set spec.attestations.provenance to min or max)".into(),
        ));
    }
    let sbom_scanner = spec.attestations.as_ref().filter(|a| a.sbom).map(|a| {
        a.sbom_scanner
            .clone()
            .unwrap_or_else(|| defaults.sbom_scanner.clone())
    });
    let spec_key = build_id(spec, rebuild.as_deref());
    Ok(DesiredBuild {
        build_id: spec_key.clone(),
        spec_key,
        repository,
        tags,
        platforms,
        platform_tags: spec.platform_tags,
        retries,
        timeout,
        provisioning_timeout,
        rebuild,
        follow,
        provenance,
        sbom_scanner,
        signing_secret: spec.signing.as_ref().map(|s| s.key_secret_ref.name.clone()),
    })
}

fn follow(spec: &MultiArchImageSpec) -> Result<Follow, InvalidSpec> {
    let poll_interval = match &spec.source.git.poll_interval {
        None => None,
        Some(s) => Some(
            parse_compact_duration(s)
                .map_err(|e| invalid(format!("spec.source.git.pollInterval: {e}")))?,
        ),
    };
    Ok(Follow {
        poll_interval,
        base_images: spec.rebuild_on.as_ref().is_some_and(|r| r.base_images),
        suspend: spec.suspend,
    })
}

fn invalid(msg: String) -> InvalidSpec {
    InvalidSpec(msg)
}

/// The tags: at least one, each valid, none twice.
fn tags(spec: &MultiArchImageSpec) -> Result<Vec<Tag>, InvalidSpec> {
    if spec.tags.is_empty() {
        return Err(invalid("spec.tags: at least one tag is required".into()));
    }
    let mut tags = Vec::with_capacity(spec.tags.len());
    for (i, t) in spec.tags.iter().enumerate() {
        let tag: Tag = t
            .parse()
            .map_err(|e| invalid(format!("spec.tags[{i}]: {e}")))?;
        if tags.contains(&tag) {
            return Err(invalid(format!("spec.tags[{i}]: {t:?} is listed twice")));
        }
        tags.push(tag);
    }
    Ok(tags)
}

/// The platforms: at least one, each valid, no two the same (aliases included).
fn platforms(spec: &MultiArchImageSpec) -> Result<Vec<Platform>, InvalidSpec> {
    if spec.platforms.is_empty() {
        return Err(invalid(
            "spec.platforms: at least one platform is required".into(),
        ));
    }
    let mut platforms: Vec<Platform> = Vec::with_capacity(spec.platforms.len());
    for (i, p) in spec.platforms.iter().enumerate() {
        let platform: Platform = p
            .parse()
            .map_err(|e| invalid(format!("spec.platforms[{i}]: {e}")))?;
        if let Some(other) = platforms.iter().find(|q| q.matches(&platform)) {
            return Err(invalid(format!(
                "spec.platforms[{i}]: {platform} is the same platform as {other}; list it once"
            )));
        }
        platforms.push(platform);
    }
    Ok(platforms)
}

/// Each per-platform tag `<tags[0]>-<arch><variant>` fits the registry's tag length limit.
fn check_platform_tag_lengths(primary: &Tag, platforms: &[Platform]) -> Result<(), InvalidSpec> {
    let primary = primary.as_str();
    for p in platforms {
        let len = primary.len() + 1 + p.tag_suffix().len();
        if len > MAX_TAG_LEN {
            return Err(invalid(format!(
                "spec.tags[0]: the per-platform tag {primary}-{} would be {len} characters, over the registry limit of {MAX_TAG_LEN}; shorten the tag or set platformTags: false",
                p.tag_suffix()
            )));
        }
    }
    Ok(())
}

/// Every platform override names one of the platforms.
fn check_overrides(spec: &MultiArchImageSpec, platforms: &[Platform]) -> Result<(), InvalidSpec> {
    for (i, o) in spec.platform_overrides.iter().enumerate() {
        let p: Platform = o
            .platform
            .parse()
            .map_err(|e| invalid(format!("spec.platformOverrides[{i}].platform: {e}")))?;
        if !platforms.iter().any(|q| q.matches(&p)) {
            return Err(invalid(format!(
                "spec.platformOverrides[{i}].platform: {p} is not one of spec.platforms"
            )));
        }
    }
    Ok(())
}

/// The build timeout and the provisioning timeout, from the spec or the defaults; not zero.
fn timeouts(
    spec: &MultiArchImageSpec,
    defaults: &BuilderDefaults,
) -> Result<(Duration, Duration), InvalidSpec> {
    let builder = spec.builder.clone().unwrap_or_default();
    let duration = |value: &Option<String>, field: &str, default: Duration| match value {
        Some(t) => parse_compact_duration(t).map_err(|e| invalid(format!("{field}: {e}"))),
        None => Ok(default),
    };
    let timeout = duration(&builder.timeout, "spec.builder.timeout", defaults.timeout)?;
    let provisioning_timeout = duration(
        &builder.provisioning_timeout,
        "spec.builder.provisioningTimeout",
        defaults.provisioning_timeout,
    )?;
    if timeout.is_zero() || provisioning_timeout.is_zero() {
        return Err(invalid(
            "spec.builder: timeouts must be longer than zero".into(),
        ));
    }
    Ok((timeout, provisioning_timeout))
}

/// The git URL is one BuildKit can fetch without SSH.
fn check_source_url(url: &str) -> Result<(), InvalidSpec> {
    if url.starts_with("https://") || url.starts_with("http://") || url.starts_with("git://") {
        return Ok(());
    }
    Err(invalid(format!(
        "spec.source.git.url: {url:?} must start with https://, http:// or git:// (SSH URLs are not supported)"
    )))
}

/// The refusal of a git URL with credentials in it; names no part of the URL.
pub const USERINFO_REFUSED: &str = "spec.source.git.url: credentials in the URL (user:token@ or token@) are refused: put them in a Secret named by spec.source.git.secretRef";

/// Whether `url` (`scheme://authority/...`) may carry userinfo (`user[:password]@`): an `@`
/// anywhere before the first `/` after the scheme. Stricter than any one URL parser (WHATWG
/// parsers end the authority at `\`, `?` or `#` too, curl does not), so that no parser a URL
/// reaches finds credentials in it. The CRD's CEL rule on `url` is the same test.
pub fn has_userinfo(url: &str) -> bool {
    url.split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or_default())
        .is_some_and(|authority| authority.contains('@'))
}

/// A short hash of the build inputs: everything but the tags, `platformTags`, `retries` and how
/// the object follows its inputs (`pollInterval`, `rebuildOn`, `suspend`). Fields added since
/// v1alpha1's first release enter the hash only when set, so that an object written before them
/// keeps its build.
pub fn build_id(spec: &MultiArchImageSpec, rebuild: Option<&str>) -> String {
    let mut source = spec.source.clone();
    source.git.poll_interval = None;
    let mut inputs = serde_json::json!({
        "source": source,
        "buildArgs": spec.build_args,
        "target": spec.target,
        "image": spec.image,
        "platforms": spec.platforms,
        "builder": spec.builder,
        "platformOverrides": spec.platform_overrides,
        "pushSecretRef": spec.push_secret_ref,
        "rebuild": rebuild,
    });
    if let Some(a) = &spec.attestations {
        inputs["attestations"] = serde_json::json!(a);
    }
    let hash = sha2::Sha256::digest(inputs.to_string().as_bytes());
    hash.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    pub fn object(spec: serde_json::Value) -> MultiArchImage {
        let mut base = serde_json::json!({
            "source": {"git": {"url": "https://git.example.com/team/apiping.git", "revision": "main"}},
            "image": "registry.example.com/team/apiping",
            "tags": ["1.0.0", "latest"],
            "platforms": ["linux/amd64", "linux/arm64"],
        });
        if let (Some(b), Some(s)) = (base.as_object_mut(), spec.as_object()) {
            for (k, v) in s {
                b.insert(k.clone(), v.clone());
            }
        }
        let mut obj = MultiArchImage::new("apiping", serde_json::from_value(base).unwrap());
        obj.metadata.namespace = Some("builds".into());
        obj.metadata.uid = Some("0c5a6a5e-1111-4222-8333-444455556666".into());
        obj.metadata.generation = Some(1);
        obj
    }

    fn check(spec: serde_json::Value) -> Result<DesiredBuild, InvalidSpec> {
        validate(&object(spec), &BuilderDefaults::default())
    }

    #[test]
    fn valid_spec_gives_parsed_values_and_platform_tags() {
        let d = check(serde_json::json!({})).unwrap();
        assert_eq!(
            d.repository.to_string(),
            "registry.example.com/team/apiping"
        );
        assert_eq!(d.platforms.len(), 2);
        assert_eq!(
            d.published_tags(),
            vec!["1.0.0", "latest", "1.0.0-amd64", "1.0.0-arm64"]
        );
        assert_eq!(d.build_id.len(), 8);
    }

    #[test]
    fn invalid_specs_say_what_to_fix() {
        let cases = [
            (
                serde_json::json!({"platforms": ["linux/arm64", "linux/arm64/v8"]}),
                "same platform",
            ),
            (
                serde_json::json!({"platforms": ["linux"]}),
                "spec.platforms[0]",
            ),
            (
                serde_json::json!({"image": "registry.example.com/team/app:1.0"}),
                "spec.image",
            ),
            (serde_json::json!({"tags": []}), "at least one tag"),
            (serde_json::json!({"tags": ["-bad"]}), "spec.tags[0]"),
            (serde_json::json!({"tags": ["a", "a"]}), "listed twice"),
            (
                serde_json::json!({"tags": ["x".repeat(125)]}),
                "over the registry limit",
            ),
            (
                serde_json::json!({"builder": {"timeout": "45 minutes"}}),
                "spec.builder.timeout",
            ),
            (
                serde_json::json!({"platformOverrides": [{"platform": "linux/s390x"}]}),
                "not one of spec.platforms",
            ),
            (
                serde_json::json!({"source": {"git": {"url": "git@github.com:a/b.git"}}}),
                "SSH URLs are not supported",
            ),
            (serde_json::json!({"retries": -1}), "spec.retries"),
            (
                serde_json::json!({"source": {"git": {"url": "https://user:s3cret@git.example.com/a.git"}}}),
                "credentials in the URL",
            ),
        ];
        for (spec, want) in cases {
            let err = check(spec.clone()).expect_err(&spec.to_string());
            assert!(
                err.0.contains(want),
                "{spec}: {err} should mention {want:?}"
            );
        }
    }

    #[test]
    fn credentials_in_a_git_url_are_refused_without_echoing_them() {
        for url in [
            "https://user:s3cret@git.example.com/a.git",
            "https://s3cret@git.example.com/a.git",
            "http://x-access-token:s3cret@127.0.0.1:8080/private/a.git",
            "https://s3cret@git.example.com",
            "https://git.example.com\\s3cret@evil.example.com/a.git",
            "https://git.example.com?s3cret@evil.example.com/a.git",
            "git://s3cret@git.example.com/a.git",
        ] {
            assert!(has_userinfo(url), "{url}");
            let err = check(serde_json::json!({"source": {"git": {"url": url}}}))
                .expect_err(url)
                .0;
            assert_eq!(err, USERINFO_REFUSED);
            assert!(!err.contains("s3cret"));
        }
        for url in [
            "https://git.example.com/team/a.git",
            "https://git.example.com/team/a@b.git",
            "http://127.0.0.1:8080/private/a.git",
            "git://git.example.com/a.git",
        ] {
            assert!(!has_userinfo(url), "{url}");
        }
    }

    #[test]
    fn long_tag_is_fine_without_platform_tags() {
        assert!(
            check(serde_json::json!({"tags": ["x".repeat(125)], "platformTags": false})).is_ok()
        );
    }

    #[test]
    fn build_id_changes_with_build_inputs_and_rebuild_but_not_tags() {
        let base = check(serde_json::json!({})).unwrap().build_id;
        let tags_only = check(serde_json::json!({"tags": ["2.0.0"]}))
            .unwrap()
            .build_id;
        assert_eq!(base, tags_only);
        let args = check(serde_json::json!({"buildArgs": [{"name": "A", "value": "1"}]}))
            .unwrap()
            .build_id;
        assert_ne!(base, args);
        let mut obj = object(serde_json::json!({}));
        obj.metadata.annotations = Some(BTreeMap::from([(
            REBUILD_ANNOTATION.to_string(),
            "x".to_string(),
        )]));
        let rebuilt = validate(&obj, &BuilderDefaults::default()).unwrap();
        assert_ne!(base, rebuilt.build_id);
        assert_eq!(rebuilt.rebuild.as_deref(), Some("x"));
    }

    #[test]
    fn following_and_suspending_keep_the_build_and_provenance_changes_it() {
        let base = check(serde_json::json!({})).unwrap();
        assert_eq!(base.provenance, Some(ProvenanceMode::Min));
        assert_eq!(base.follow, Follow::default());
        let url = "https://git.example.com/team/apiping.git";
        let followed = check(serde_json::json!({
            "source": {"git": {"url": url, "revision": "main", "pollInterval": "5m"}},
            "rebuildOn": {"baseImages": true},
            "suspend": true,
        }))
        .unwrap();
        assert_eq!(followed.spec_key, base.spec_key);
        assert_eq!(
            followed.follow,
            Follow {
                poll_interval: Some(Duration::from_secs(300)),
                base_images: true,
                suspend: true
            }
        );
        let off = check(serde_json::json!({"attestations": {"provenance": "off"}})).unwrap();
        assert_ne!(off.spec_key, base.spec_key);
        // an SBOM is part of what is built; signing is not (it signs the same index)
        let sbom = check(serde_json::json!({"attestations": {"sbom": true}})).unwrap();
        assert_ne!(sbom.spec_key, base.spec_key);
        assert_eq!(
            sbom.sbom_scanner.as_deref(),
            Some(crate::config::DEFAULT_SBOM_SCANNER_IMAGE)
        );
        let signed = check(serde_json::json!({"signing": {"keySecretRef": {"name": "cosign"}}}));
        assert_eq!(signed.unwrap().spec_key, base.spec_key);
        assert_eq!(off.provenance, None);
        let err = check(serde_json::json!({
            "attestations": {"provenance": "off"},
            "rebuildOn": {"baseImages": true},
        }))
        .unwrap_err();
        assert!(err.0.contains("needs provenance"), "{err}");
    }
}
