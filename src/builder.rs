//! Builder rendering: the batch/v1 Job that builds one platform of one build, as a pure function
//! of the object, the validated build, the resolved commit and the operator's defaults.
//!
//! Why a Job per platform and attempt, not a bare Pod: the Job's pod failure policy retries pods
//! lost to disruptions (eviction, preemption, node loss: the `DisruptionTarget` condition) up to
//! the operator-wide cap without operator involvement, fails at once on a non-zero exit (which the
//! operator counts against `spec.retries` by creating the next attempt's Job), and its
//! `activeDeadlineSeconds` is a backstop for the whole attempt even if the operator is down.
//! Pod templates are immutable, so Jobs are created, never re-applied: a changed build gets new
//! Jobs under new names (the build id is part of the name).
//!
//! Where the node selector is decided: [`node_selector`]; `kubernetes.io/os` and
//! `kubernetes.io/arch` always come from the platform, after the user's additions, so no
//! override can move a build to another architecture.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    AppArmorProfile, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath,
    PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::api::{MultiArchImage, MultiArchImageSpec, ProvenanceMode};
use crate::config::BuilderDefaults;
use crate::platform::Platform;
use crate::validate::DesiredBuild;

/// Label values and keys builders carry (DESIGN "Conventions").
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_NAME_VALUE: &str = "multiarch-builder";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_MANAGED_BY_VALUE: &str = "multiarch-operator";
pub const LABEL_IMAGE: &str = "multiarch.dev/image";
pub const LABEL_PLATFORM: &str = "multiarch.dev/platform";
pub const LABEL_BUILD: &str = "multiarch.dev/build";
pub const LABEL_ATTEMPT: &str = "multiarch.dev/attempt";
/// The repository the builder pushes to.
pub const ANNOTATION_OUTPUT: &str = "multiarch.dev/output";
/// The commit the builder builds.
pub const ANNOTATION_COMMIT: &str = "multiarch.dev/commit";
/// The platform as written in the spec (`linux/arm/v7`).
pub const ANNOTATION_PLATFORM: &str = "multiarch.dev/platform";
/// Set by the operator when it stops a builder (timeout, no node): the reason and message.
pub const ANNOTATION_STOPPED: &str = "multiarch.dev/stopped";
pub const ANNOTATION_DO_NOT_DISRUPT: &str = "karpenter.sh/do-not-disrupt";

/// The builder container's name.
pub const CONTAINER: &str = "buildkit";
const HOME: &str = "/home/user";
const BUILDKIT_STATE: &str = "/home/user/.local/share/buildkit";
const DOCKER_CONFIG_DIR: &str = "/home/user/.docker";
const TERMINATION_LOG: &str = "/dev/termination-log";
/// Where BuildKit writes its metadata (on the `/tmp` emptyDir).
const METADATA_FILE: &str = "/tmp/buildkit-metadata.json";
/// The builder's command: `buildctl-daemonless.sh` with the Job's args, then BuildKit's metadata
/// copied into the termination log. buildctl writes `--metadata-file` atomically (a temporary file
/// in the same directory, then a rename), which cannot work on the kubelet's bind-mounted
/// `/dev/termination-log` (`/dev` is not writable by the build user, and a bind-mounted file cannot
/// be renamed over), so the metadata goes to `/tmp` and is copied. The exit code is BuildKit's.
const BUILD_SCRIPT: &str = "buildctl-daemonless.sh \"$@\"; status=$?; \
if [ -s /tmp/buildkit-metadata.json ]; then cat /tmp/buildkit-metadata.json > /dev/termination-log; fi; \
exit $status";
const ROOTLESS_UID: i64 = 1000;
/// Kubernetes object names here are DNS labels (Job names become pod labels).
pub const MAX_NAME_LEN: usize = 63;

/// Everything one builder is rendered from.
pub struct BuilderInput<'a> {
    pub object: &'a MultiArchImage,
    pub desired: &'a DesiredBuild,
    pub platform: &'a Platform,
    pub commit: &'a str,
    pub attempt: u32,
    pub defaults: &'a BuilderDefaults,
}

/// The Job name: `<object>-<build>-<os-arch[-variant]>-<attempt>`, the object name shortened
/// (and the platform hashed, if it must be) to fit 63 characters. Deterministic, so a restarted
/// operator finds the Jobs it created instead of creating them again.
pub fn job_name(object: &str, build_id: &str, platform: &Platform, attempt: u32) -> String {
    let mut slug = platform.slug();
    let tail_len = |slug: &str| build_id.len() + slug.len() + attempt.to_string().len() + 3;
    if tail_len(&slug) + 1 > MAX_NAME_LEN {
        slug = short_hash(&slug);
    }
    let room = MAX_NAME_LEN - tail_len(&slug);
    if object.len() <= room {
        let object = object.trim_end_matches(['-', '.']);
        return format!("{object}-{build_id}-{slug}-{attempt}");
    }
    // cut, and followed by a hash of the whole name, so that two objects sharing a long prefix
    // never get the same builder names
    let hash = short_hash(object);
    let prefix: String = object.chars().take(room - hash.len() - 1).collect();
    let prefix = prefix.trim_end_matches(['-', '.']);
    format!("{prefix}-{hash}-{build_id}-{slug}-{attempt}")
}

fn short_hash(s: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The label value identifying a platform: `os-arch[-variant]`, hashed if longer than a label.
pub fn platform_label(platform: &Platform) -> String {
    let slug = platform.slug();
    if slug.len() > MAX_NAME_LEN {
        short_hash(&slug)
    } else {
        slug
    }
}

/// The labels every builder of `object` carries; selecting on them finds all of its builders.
pub fn object_selector(object: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), LABEL_NAME_VALUE.to_string()),
        (
            LABEL_MANAGED_BY.to_string(),
            LABEL_MANAGED_BY_VALUE.to_string(),
        ),
        (LABEL_IMAGE.to_string(), label_value(object)),
    ])
}

/// Object names can be 253 characters; label values only 63.
fn label_value(s: &str) -> String {
    if s.len() > MAX_NAME_LEN {
        format!(
            "{}-{}",
            &s[..MAX_NAME_LEN - 9].trim_end_matches(['-', '.']),
            short_hash(s)
        )
    } else {
        s.to_string()
    }
}

/// The node selector of a platform's builders: the operator's defaults, then `spec.builder`, then
/// the platform's override, and last the OS and architecture of the platform itself.
pub fn node_selector(
    object: &MultiArchImage,
    platform: &Platform,
    defaults: &BuilderDefaults,
) -> BTreeMap<String, String> {
    let mut selector = defaults.node_selector.clone();
    if let Some(b) = &object.spec.builder {
        selector.extend(b.node_selector.clone());
    }
    if let Some(o) = platform_override(object, platform) {
        selector.extend(o.node_selector.clone());
    }
    selector.insert("kubernetes.io/os".into(), platform.os.clone());
    selector.insert(
        "kubernetes.io/arch".into(),
        platform.node_arch().to_string(),
    );
    selector
}

fn platform_override<'a>(
    object: &'a MultiArchImage,
    platform: &Platform,
) -> Option<&'a crate::api::PlatformOverride> {
    object.spec.platform_overrides.iter().find(|o| {
        o.platform
            .parse::<Platform>()
            .is_ok_and(|p| p.matches(platform))
    })
}

fn resources(
    object: &MultiArchImage,
    platform: &Platform,
    defaults: &BuilderDefaults,
) -> ResourceRequirements {
    let mut requests = defaults.requests.clone();
    let mut limits = defaults.limits.clone();
    let mut apply = |r: &ResourceRequirements| {
        if let Some(q) = &r.requests {
            requests.extend(q.clone());
        }
        if let Some(q) = &r.limits {
            limits.extend(q.clone());
        }
    };
    if let Some(r) = object
        .spec
        .builder
        .as_ref()
        .and_then(|b| b.resources.as_ref())
    {
        apply(r);
    }
    if let Some(r) = platform_override(object, platform).and_then(|o| o.resources.as_ref()) {
        apply(r);
    }
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    }
}

fn tolerations(
    object: &MultiArchImage,
    platform: &Platform,
    defaults: &BuilderDefaults,
) -> Vec<Toleration> {
    let mut all = defaults.tolerations.clone();
    if let Some(b) = &object.spec.builder {
        all.extend(b.tolerations.clone());
    }
    if let Some(o) = platform_override(object, platform) {
        all.extend(o.tolerations.clone());
    }
    all
}

/// The BuildKit git context: `<url>#<commit>[:<contextDir>]`.
pub fn git_context(url: &str, commit: &str, context_dir: &str) -> String {
    let dir = context_dir.trim_start_matches("./").trim_end_matches('/');
    if dir.is_empty() || dir == "." {
        format!("{url}#{commit}")
    } else {
        format!("{url}#{commit}:{dir}")
    }
}

/// The arguments of `buildctl-daemonless.sh`.
pub fn buildctl_args(input: &BuilderInput<'_>) -> Vec<String> {
    let spec = &input.object.spec;
    let repo = input.desired.repository.to_string();
    let cache = format!("{repo}:buildcache-{}", input.platform.tag_suffix());
    let mut args = vec![
        "build".to_string(),
        "--frontend=dockerfile.v0".to_string(),
        format!(
            "--opt=context={}",
            git_context(&spec.source.git.url, input.commit, &spec.source.context_dir)
        ),
        format!("--opt=filename={}", spec.source.dockerfile),
        format!("--opt=platform={}", input.platform),
    ];
    if let Some(target) = spec.target.as_deref().filter(|t| !t.is_empty()) {
        args.push(format!("--opt=target={target}"));
    }
    for arg in &spec.build_args {
        args.push(format!("--opt=build-arg:{}={}", arg.name, arg.value));
    }
    if spec.source.git.secret_ref.is_some() {
        args.push("--secret=id=GIT_AUTH_TOKEN,env=GIT_AUTH_TOKEN".to_string());
    }
    if let Some(mode) = input.desired.provenance {
        // BuildKit pushes an index: the image and, after it, its provenance attestation
        let mode = if mode == ProvenanceMode::Max {
            "max"
        } else {
            "min"
        };
        args.push(format!("--opt=attest:provenance=mode={mode}"));
    }
    if let Some(scanner) = &input.desired.sbom_scanner {
        // the scanner runs on the builder, over the built image's filesystem
        args.push(format!("--opt=attest:sbom=generator={scanner}"));
    }
    args.push(format!("--import-cache=type=registry,ref={cache}"));
    args.push(format!(
        "--export-cache=type=registry,ref={cache},mode=max,ignore-error=true,oci-mediatypes=true"
    ));
    args.push(format!(
        "--output=type=image,name={repo},push-by-digest=true,push=true,oci-mediatypes=true"
    ));
    args.push(format!("--metadata-file={METADATA_FILE}"));
    args
}

/// Renders the builder Job: its metadata, its failure policy and deadline, and the pod template.
pub fn render_job(input: &BuilderInput<'_>) -> Job {
    let object = input.object;
    let desired = input.desired;
    let name = object.metadata.name.clone().unwrap_or_default();
    let labels = labels(input);
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(
                &name,
                &desired.build_id,
                input.platform,
                input.attempt,
            )),
            namespace: object.metadata.namespace.clone(),
            labels: Some(labels.clone()),
            annotations: Some(annotations(input)),
            owner_references: owner_reference(object).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(input.defaults.max_disruptions),
            active_deadline_seconds: deadline_seconds(desired),
            pod_failure_policy: Some(failure_policy()),
            template: pod_template(input, labels),
            ..Default::default()
        }),
        status: None,
    }
}

// --- metadata and labels ---

/// The labels of the Job and its pods: the object's selector, the platform, build and attempt.
fn labels(input: &BuilderInput<'_>) -> BTreeMap<String, String> {
    let name = input.object.metadata.name.as_deref().unwrap_or_default();
    let mut labels = object_selector(name);
    labels.insert(LABEL_PLATFORM.into(), platform_label(input.platform));
    labels.insert(LABEL_BUILD.into(), input.desired.build_id.clone());
    labels.insert(LABEL_ATTEMPT.into(), input.attempt.to_string());
    labels
}

/// The annotations of the Job (and its pods): where it pushes, the commit, the platform.
fn annotations(input: &BuilderInput<'_>) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            ANNOTATION_OUTPUT.to_string(),
            input.desired.repository.to_string(),
        ),
        (ANNOTATION_COMMIT.to_string(), input.commit.to_string()),
        (ANNOTATION_PLATFORM.to_string(), input.platform.to_string()),
    ])
}

fn owner_reference(object: &MultiArchImage) -> Option<OwnerReference> {
    let mut owner = object.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(true);
    Some(owner)
}

// --- failure policy and deadlines ---

/// The exit codes of a container ended by SIGTERM and by SIGKILL.
const EXIT_SIGTERM: i32 = 143;
const EXIT_SIGKILL: i32 = 137;

/// The whole attempt's backstop: the time to get a node plus the build timeout.
fn deadline_seconds(desired: &DesiredBuild) -> Option<i64> {
    let deadline = desired.provisioning_timeout.as_secs() + desired.timeout.as_secs();
    i64::try_from(deadline).ok()
}

/// A pod lost to a disruption is replaced (counted against `backoffLimit`, the operator-wide
/// cap); a build that fails by itself fails the Job at once. The disruption rule comes first: the
/// first matching rule decides, and an evicted builder's container also ends with a non-zero code.
/// A container ended by a signal (137, SIGKILL; 143, SIGTERM) is a disruption too: a pod deleted
/// outright gets no `DisruptionTarget` condition (Karpenter deletes a `do-not-disrupt` pod when
/// its node's termination grace period runs out, as on a spot interruption), and BuildKit never
/// ends a failed build that way. An out-of-memory kill is also 137: it is replaced up to the cap,
/// then fails with the disruption count in its message.
fn failure_policy() -> PodFailurePolicy {
    PodFailurePolicy {
        rules: vec![
            PodFailurePolicyRule {
                action: "Count".into(),
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: "True".into(),
                }]),
                ..Default::default()
            },
            PodFailurePolicyRule {
                action: "FailJob".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(CONTAINER.into()),
                    operator: "NotIn".into(),
                    values: vec![0, EXIT_SIGKILL, EXIT_SIGTERM], // the apiserver wants them ordered
                }),
                ..Default::default()
            },
        ],
    }
}

// --- the pod ---

/// The pod template: never restarted in place, no API token, on a node of the platform.
fn pod_template(input: &BuilderInput<'_>, labels: BTreeMap<String, String>) -> PodTemplateSpec {
    let (object, platform, defaults) = (input.object, input.platform, input.defaults);
    let mut pod_annotations = annotations(input);
    pod_annotations.insert(ANNOTATION_DO_NOT_DISRUPT.into(), "true".into());
    let builder = object.spec.builder.as_ref();
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(pod_annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            service_account_name: builder.and_then(|b| b.service_account_name.clone()),
            node_selector: Some(node_selector(object, platform, defaults)),
            tolerations: Some(tolerations(object, platform, defaults)).filter(|t| !t.is_empty()),
            security_context: Some(PodSecurityContext {
                fs_group: Some(ROOTLESS_UID),
                ..Default::default()
            }),
            containers: vec![container(input)],
            volumes: Some(storage(&object.spec).into_iter().map(|(v, _)| v).collect()),
            ..Default::default()
        }),
    }
}

// --- the container and its arguments ---

/// The BuildKit container: [`BUILD_SCRIPT`] with [`buildctl_args`], rootless.
fn container(input: &BuilderInput<'_>) -> Container {
    let spec = &input.object.spec;
    let image = spec
        .builder
        .as_ref()
        .and_then(|b| b.image.clone())
        .unwrap_or_else(|| input.defaults.image.clone());
    Container {
        name: CONTAINER.into(),
        image: Some(image),
        command: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            BUILD_SCRIPT.into(),
            "buildctl-daemonless.sh".into(),
        ]),
        args: Some(buildctl_args(input)),
        env: Some(env(spec)),
        resources: Some(resources(input.object, input.platform, input.defaults)),
        volume_mounts: Some(storage(spec).into_iter().map(|(_, m)| m).collect()),
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(rootless_security_context()),
        ..Default::default()
    }
}

/// Rootless BuildKit creates user namespaces: the runtime's default seccomp and AppArmor
/// profiles forbid that (Pod Security "baseline" rejects `Unconfined`).
fn rootless_security_context() -> SecurityContext {
    SecurityContext {
        seccomp_profile: Some(SeccompProfile {
            type_: "Unconfined".into(),
            ..Default::default()
        }),
        app_armor_profile: Some(AppArmorProfile {
            type_: "Unconfined".into(),
            ..Default::default()
        }),
        run_as_user: Some(ROOTLESS_UID),
        run_as_group: Some(ROOTLESS_UID),
        run_as_non_root: Some(true),
        ..Default::default()
    }
}

/// The container's environment: rootless BuildKit's, the Docker config with a push Secret, and
/// the git token with a git Secret.
fn env(spec: &MultiArchImageSpec) -> Vec<EnvVar> {
    let mut env = vec![
        env_var("BUILDKITD_FLAGS", "--oci-worker-no-process-sandbox"),
        env_var("HOME", HOME),
        env_var("USER", "user"),
        env_var("XDG_RUNTIME_DIR", "/tmp/run"),
        env_var("TMPDIR", "/tmp"),
    ];
    if spec.push_secret_ref.is_some() {
        env.push(env_var("DOCKER_CONFIG", DOCKER_CONFIG_DIR));
    }
    if let Some(secret) = &spec.source.git.secret_ref {
        // BuildKit reads the git token for the context from the GIT_AUTH_TOKEN build secret.
        env.push(EnvVar {
            name: "GIT_AUTH_TOKEN".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: "token".into(),
                    optional: Some(true),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    env
}

// --- volumes and mounts ---

/// Each volume of the pod with where the container mounts it: BuildKit's state and `/tmp` on
/// emptyDirs, and with a push Secret its Docker config, read-only.
fn storage(spec: &MultiArchImageSpec) -> Vec<(Volume, VolumeMount)> {
    let mount = |name: &str, path: &str, read_only: Option<bool>| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only,
        ..Default::default()
    };
    let scratch = |name: &str, path: &str| {
        let volume = Volume {
            name: name.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        };
        (volume, mount(name, path, None))
    };
    let mut all = vec![scratch("buildkitd", BUILDKIT_STATE), scratch("tmp", "/tmp")];
    if let Some(secret) = &spec.push_secret_ref {
        let config = KeyToPath {
            key: ".dockerconfigjson".into(),
            path: "config.json".into(),
            ..Default::default()
        };
        let volume = Volume {
            name: "docker-config".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                items: Some(vec![config]),
                ..Default::default()
            }),
            ..Default::default()
        };
        all.push((
            volume,
            mount("docker-config", DOCKER_CONFIG_DIR, Some(true)),
        ));
    }
    all
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{tests::object, validate};

    fn render(spec: serde_json::Value, platform: &str, attempt: u32) -> Job {
        let obj = object(spec);
        let defaults = BuilderDefaults::default();
        let desired = validate(&obj, &defaults).unwrap();
        let platform: Platform = platform.parse().unwrap();
        render_job(&BuilderInput {
            object: &obj,
            desired: &desired,
            platform: &platform,
            commit: "4f1a528c0ffee0000000000000000000000000ab",
            attempt,
            defaults: &defaults,
        })
    }

    fn pod(job: &Job) -> &PodSpec {
        job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    #[test]
    fn arch_selector_always_matches_the_platform() {
        let cases = [
            ("linux/amd64", "amd64"),
            ("linux/arm64", "arm64"),
            ("linux/arm64/v8", "arm64"),
            ("linux/arm/v7", "arm64"),
        ];
        for (platform, arch) in cases {
            // a user override naming another arch never wins over the platform
            let job = render(
                serde_json::json!({
                    "platforms": [platform],
                    "builder": {"nodeSelector": {"kubernetes.io/arch": "amd64", "pool": "builders"}},
                    "platformOverrides": [{"platform": platform, "nodeSelector": {"kubernetes.io/arch": "s390x", "karpenter.sh/capacity-type": "on-demand"}}],
                }),
                platform,
                1,
            );
            let sel = pod(&job).node_selector.clone().unwrap();
            assert_eq!(sel["kubernetes.io/arch"], arch, "{platform}");
            assert_eq!(sel["kubernetes.io/os"], "linux");
            assert_eq!(sel["pool"], "builders");
            assert_eq!(sel["karpenter.sh/capacity-type"], "on-demand");
        }
    }

    #[test]
    fn builder_is_owned_labelled_and_carries_no_token() {
        let job = render(
            serde_json::json!({"pushSecretRef": {"name": "regcred"}}),
            "linux/arm64",
            1,
        );
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "MultiArchImage");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.uid, "0c5a6a5e-1111-4222-8333-444455556666");
        let tpl = job
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap();
        let labels = tpl.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_NAME], "multiarch-builder");
        assert_eq!(labels[LABEL_MANAGED_BY], "multiarch-operator");
        assert_eq!(labels[LABEL_IMAGE], "apiping");
        assert_eq!(labels[LABEL_PLATFORM], "linux-arm64");
        let ann = tpl.annotations.as_ref().unwrap();
        assert_eq!(ann[ANNOTATION_OUTPUT], "registry.example.com/team/apiping");
        assert_eq!(ann[ANNOTATION_DO_NOT_DISRUPT], "true");
        let p = pod(&job);
        assert_eq!(p.automount_service_account_token, Some(false));
        let c = &p.containers[0];
        let requests = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert!(requests.contains_key("ephemeral-storage"));
        assert!(job.spec.as_ref().unwrap().active_deadline_seconds.unwrap() > 0);
        assert!(p.volumes.as_ref().unwrap().iter().any(|v| v
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            == Some("regcred")));
    }

    #[test]
    fn buildctl_pushes_by_digest_with_a_per_platform_cache() {
        let job = render(
            serde_json::json!({"buildArgs": [{"name": "GOVERSION", "value": "1.22"}], "target": "runtime", "source": {"git": {"url": "https://git.example.com/a.git"}, "contextDir": "svc", "dockerfile": "docker/Dockerfile"}}),
            "linux/arm/v7",
            2,
        );
        let args = pod(&job).containers[0].args.clone().unwrap();
        let has = |s: &str| args.iter().any(|a| a == s);
        assert!(has("--opt=context=https://git.example.com/a.git#4f1a528c0ffee0000000000000000000000000ab:svc"));
        assert!(has("--opt=filename=docker/Dockerfile"));
        assert!(has("--opt=platform=linux/arm/v7"));
        assert!(has("--opt=target=runtime"));
        assert!(has("--opt=build-arg:GOVERSION=1.22"));
        assert!(has(
            "--import-cache=type=registry,ref=registry.example.com/team/apiping:buildcache-armv7"
        ));
        assert!(args.iter().any(|a| a.starts_with(
            "--export-cache=type=registry,ref=registry.example.com/team/apiping:buildcache-armv7,"
        ) && a.contains("ignore-error=true")));
        assert!(has("--output=type=image,name=registry.example.com/team/apiping,push-by-digest=true,push=true,oci-mediatypes=true"));
        assert!(has("--metadata-file=/tmp/buildkit-metadata.json"));
        // the metadata reaches the termination log through the wrapper, not by buildctl's own
        // atomic write (which cannot replace a bind-mounted file)
        let command = pod(&job).containers[0].command.clone().unwrap();
        assert_eq!(command[..2], ["/bin/sh".to_string(), "-c".to_string()]);
        assert!(command[2].contains(METADATA_FILE) && command[2].contains(TERMINATION_LOG));
        assert!(command[2].starts_with("buildctl-daemonless.sh \"$@\""));
        assert!(command[2].ends_with("exit $status"));
    }

    #[test]
    fn attestations_are_asked_of_buildkit_as_the_spec_says() {
        let attest = |spec: serde_json::Value| -> Vec<String> {
            let job = render(spec, "linux/arm64", 1);
            let args = pod(&job).containers[0].args.clone().unwrap();
            args.into_iter().filter(|a| a.contains("attest:")).collect()
        };
        assert_eq!(
            attest(serde_json::json!({})),
            ["--opt=attest:provenance=mode=min"]
        );
        assert_eq!(
            attest(serde_json::json!({"attestations": {"provenance": "max"}})),
            ["--opt=attest:provenance=mode=max"]
        );
        assert!(attest(serde_json::json!({"attestations": {"provenance": "off"}})).is_empty());
        assert_eq!(
            attest(serde_json::json!({"attestations": {"provenance": "off", "sbom": true}})),
            ["--opt=attest:sbom=generator=docker/buildkit-syft-scanner:stable-1"]
        );
        // a scanner the spec names (allowed by the guardrail) is the one BuildKit runs
        let defaults = BuilderDefaults {
            sbom_scanner: "registry.example.com/scanners/syft:1".into(),
            ..BuilderDefaults::default()
        };
        let obj = object(
            serde_json::json!({"attestations": {"sbom": true, "sbomScanner": "registry.example.com/scanners/syft:1"}}),
        );
        let desired = validate(&obj, &defaults).unwrap();
        let platform: Platform = "linux/arm64".parse().unwrap();
        let args = buildctl_args(&BuilderInput {
            object: &obj,
            desired: &desired,
            platform: &platform,
            attempt: 1,
            commit: "4f1a528c0ffee0000000000000000000000000ab",
            defaults: &defaults,
        });
        let sbom = "--opt=attest:sbom=generator=registry.example.com/scanners/syft:1";
        assert!(args.iter().any(|a| a == sbom), "{args:?}");
    }

    #[test]
    fn names_are_deterministic_dns_labels_within_63_characters() {
        let p: Platform = "linux/arm64".parse().unwrap();
        assert_eq!(
            job_name("apiping", "1a2b3c4d", &p, 1),
            "apiping-1a2b3c4d-linux-arm64-1"
        );
        let long = "a".repeat(253);
        for platform in [
            "linux/amd64",
            "linux/arm/v7",
            "linux/abcdefghijklmnop/abcdefghijklmno",
        ] {
            let p: Platform = platform.parse().unwrap();
            for attempt in [1, 10, 100] {
                let n = job_name(&long, "1a2b3c4d", &p, attempt);
                assert!(n.len() <= MAX_NAME_LEN, "{n}");
                assert_eq!(n, job_name(&long, "1a2b3c4d", &p, attempt));
                assert!(
                    n.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                    "{n}"
                );
                assert!(!n.starts_with('-') && !n.ends_with('-'));
            }
        }
        let n = job_name("my-app-", "1a2b3c4d", &p, 1);
        assert!(!n.contains("--"), "{n}");
    }

    #[test]
    fn objects_sharing_a_long_prefix_get_different_builder_names() {
        let p: Platform = "linux/arm64".parse().unwrap();
        let prefix = "team-payments-settlement-reconciliation-service-";
        let a = job_name(&format!("{prefix}api"), "1a2b3c4d", &p, 1);
        let b = job_name(&format!("{prefix}worker"), "1a2b3c4d", &p, 1);
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert!(n.len() <= MAX_NAME_LEN, "{n}");
            assert!(n.starts_with("team-payments-"), "{n}");
            assert!(n.ends_with("-1a2b3c4d-linux-arm64-1"), "{n}");
        }
        // a name that fits is kept whole, with no hash
        assert_eq!(
            job_name("apiping", "1a2b3c4d", &p, 2),
            "apiping-1a2b3c4d-linux-arm64-2"
        );
    }

    #[test]
    fn build_failure_fails_the_job_and_disruptions_are_counted_separately() {
        let job = render(serde_json::json!({}), "linux/amd64", 1);
        let spec = job.spec.as_ref().unwrap();
        let rules = &spec.pod_failure_policy.as_ref().unwrap().rules;
        assert_eq!(
            rules[0].action, "Count",
            "disruptions first: an evicted builder exits 137"
        );
        assert!(rules[0].on_pod_conditions.is_some());
        assert_eq!(rules[1].action, "FailJob");
        assert_eq!(
            spec.backoff_limit,
            Some(BuilderDefaults::default().max_disruptions)
        );
        assert_eq!(pod(&job).restart_policy.as_deref(), Some("Never"));
    }

    #[test]
    fn every_mount_has_its_volume_and_the_docker_config_is_read_only() {
        let job = render(
            serde_json::json!({"pushSecretRef": {"name": "regcred"}}),
            "linux/amd64",
            1,
        );
        let p = pod(&job);
        let volumes: Vec<&str> = p
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        let mounts = p.containers[0].volume_mounts.clone().unwrap();
        assert_eq!(
            volumes,
            mounts.iter().map(|m| m.name.as_str()).collect::<Vec<_>>()
        );
        let config = mounts
            .iter()
            .find(|m| m.mount_path == DOCKER_CONFIG_DIR)
            .unwrap();
        assert_eq!(config.read_only, Some(true));
        let env = p.containers[0].env.clone().unwrap();
        assert!(env.iter().any(|e| e.name == "DOCKER_CONFIG"));
        assert!(!env.iter().any(|e| e.name == "GIT_AUTH_TOKEN"));
    }
}
