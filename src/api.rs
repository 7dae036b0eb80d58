//! The `multiarch.dev/v1alpha1` `MultiArchImage` API: the single source of truth for the CRD
//! (`multiarch-operator crd` prints it, `crds/` holds its output). Doc comments here become
//! `kubectl explain` text.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// API group of every kind this operator serves.
pub const GROUP: &str = "multiarch.dev";
/// A new value of this annotation rebuilds the same spec (the branch is resolved again).
pub const REBUILD_ANNOTATION: &str = "multiarch.dev/rebuild";

/// Longest primary tag when per-platform tags are on: `<tag>-<arch><variant>` must stay within a
/// registry's 128 characters, and `<arch><variant>` is at most 31 characters.
pub const MAX_PRIMARY_TAG_LEN: usize = 96;

/// A multi-architecture image: built natively on a node of each platform's CPU architecture and
/// published as one verified OCI image index under every tag.
// the printer columns repeat `type_ = "string"`, which is not a duplicated attribute
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "multiarch.dev",
    version = "v1alpha1",
    kind = "MultiArchImage",
    plural = "multiarchimages",
    shortname = "mai",
    category = "all",
    namespaced,
    status = "MultiArchImageStatus",
    derive = "PartialEq",
    doc = "A container image built natively for several platforms (one BuildKit builder per CPU architecture) and published as a verified OCI image index.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Platforms",
        type_ = "string",
        json_path = ".spec.platforms",
        priority = "1"
    ),
    printcolumn(
        name = "Commit",
        type_ = "string",
        json_path = ".status.source.shortCommit"
    ),
    printcolumn(name = "Digest", type_ = "string", json_path = ".status.digest"),
    printcolumn(
        name = "Suspended",
        type_ = "boolean",
        json_path = ".spec.suspend",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.platformOverrides) || self.platformOverrides.all(o, o.platform in self.platforms)").message("every platformOverrides[].platform must be one of spec.platforms"))]
#[x_kube(validation = Rule::new("!self.platformTags || size(self.tags[0]) <= 96").message("tags[0] must be at most 96 characters when platformTags is true, so that <tag>-<arch><variant> stays within 128"))]
pub struct MultiArchImageSpec {
    /// Where the build context comes from.
    pub source: Source,

    /// Build arguments passed to the Dockerfile (`ARG`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub build_args: Vec<BuildArg>,

    /// The multi-stage build target; empty builds the last stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub target: Option<String>,

    /// The repository to publish to, with no tag and no digest (for example
    /// `registry.example.com/team/app`).
    #[x_kube(validation = Rule::new("!self.contains('@')").message("image must be a repository without a digest (remove '@sha256:...')"))]
    #[x_kube(validation = Rule::new("self.matches('^([A-Za-z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+([._-]+[a-z0-9]+)*(/[a-z0-9]+([._-]+[a-z0-9]+)*)*$')").message("image must be a repository without a tag, like registry.example.com/team/app (lowercase path, no ':tag')"))]
    #[schemars(length(min = 1, max = 255))]
    pub image: String,

    /// Tags to publish the index to; at least one. `tags[0]` is the primary tag, the base of the
    /// per-platform tags.
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 128)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new("self.all(t, t.matches('^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$'))").message("each tag must be 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"))]
    pub tags: Vec<String>,

    /// Platforms to build, as `os/arch[/variant]` (for example `linux/amd64`, `linux/arm64`,
    /// `linux/arm/v7`); unique; the index lists them in this order.
    #[schemars(length(min = 1, max = 16), inner(length(min = 3, max = 50)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new("self.all(p, p.matches('^[a-z0-9_-]{1,16}/[a-z0-9_-]{1,16}(/[a-z0-9_-]{1,15})?$'))").message("each platform must be os/arch[/variant] in lowercase, for example linux/arm64"))]
    pub platforms: Vec<String>,

    /// A `kubernetes.io/dockerconfigjson` Secret in this namespace with credentials for the
    /// image's registry; mounted into every builder and used for publishing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_secret_ref: Option<LocalObjectReference>,

    /// Also tag each platform's image as `<tags[0]>-<arch><variant>` (for example `1.0.0-arm64`).
    #[serde(default = "default_true")]
    pub platform_tags: bool,

    /// How builders run; defaults come from the operator's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder: Option<BuilderSpec>,

    /// Per-platform additions to `builder` (node selectors and tolerations are merged, resources
    /// replace the listed quantities).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["platform"]))]
    pub platform_overrides: Vec<PlatformOverride>,

    /// Retries per platform of a build that failed by itself (non-zero exit). Disruptions
    /// (eviction, preemption, node loss) are retried without counting.
    #[serde(default = "default_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: i32,

    /// Stops new builds and polling; a build in flight finishes. A spec change made while
    /// suspended is built after resuming.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// The attestations each builder attaches to its image; kept in the published index next to
    /// the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestations: Option<Attestations>,

    /// What else starts a new build, besides a spec change, the rebuild annotation and (with
    /// `source.git.pollInterval`) a new commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild_on: Option<RebuildOn>,

    /// Sign the published index; it is signed before any tag moves to it. Adding it to a
    /// published object signs the index without building again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<Signing>,
}

/// Attestations attached to each platform's image.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attestations {
    /// BuildKit's SLSA provenance: `min` (the default: base images, source, build arguments'
    /// names), `max` (adds the full build definition and argument values) or `off`. The base
    /// images of `rebuildOn.baseImages` are read from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<ProvenanceMode>,

    /// An SPDX SBOM of each platform's image, made on the builder by BuildKit's SBOM scanner
    /// (`attest:sbom`) and kept in the published index after the image.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sbom: bool,

    /// The scanner image for `sbom` (BuildKit's SBOM scanner protocol); defaults to the
    /// operator's `--sbom-scanner-image`. It runs on every builder's node, so it must be
    /// multi-arch; the guardrail allowedBuilderImages applies to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub sbom_scanner: Option<String>,
}

/// How the published index is signed. One method: a cosign key pair in a Secret (keyless
/// signing would be another field beside it).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Signing {
    /// A Secret in this namespace holding a cosign key pair the way
    /// `cosign generate-key-pair k8s://<namespace>/<name>` writes it: `cosign.key` (the
    /// encrypted private key) and `cosign.password`. The index is signed in cosign's format
    /// (`sha256-<hex>.sig`), without a transparency log entry.
    pub key_secret_ref: LocalObjectReference,
}

/// How much provenance BuildKit records.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ProvenanceMode {
    #[default]
    Min,
    Max,
    Off,
}

/// Inputs besides the spec that start a new build when they change.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebuildOn {
    /// Rebuild when a base image's tag (a `FROM` of the Dockerfile, read from the published
    /// provenance) points to a new digest; checked at `source.git.pollInterval`, or at the
    /// operator's `--base-image-interval` when that is unset. Needs provenance (not `off`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub base_images: bool,
}

fn default_true() -> bool {
    true
}

fn default_retries() -> i32 {
    2
}

/// The source of the build context.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// A git repository; the revision is resolved to one commit per build.
    pub git: GitSource,

    /// The build context, a directory relative to the repository root.
    #[serde(default = "default_context_dir")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.contains('..')").message("contextDir must be a relative path inside the repository"))]
    pub context_dir: String,

    /// The Dockerfile, relative to the context directory.
    #[serde(default = "default_dockerfile")]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.contains('..')").message("dockerfile must be a relative path inside the context"))]
    #[schemars(length(min = 1, max = 1024))]
    pub dockerfile: String,
}

fn default_context_dir() -> String {
    ".".to_string()
}

fn default_dockerfile() -> String {
    "Dockerfile".to_string()
}

/// A git repository served over HTTP(S) or the git protocol.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitSource {
    /// The repository URL (`https://`, `http://` or `git://`), with no credentials in it
    /// (`user:token@`): those go in the Secret named by `secretRef`.
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://') || self.startsWith('git://')").message("url must start with https://, http:// or git://"))]
    #[x_kube(validation = Rule::new("!self.matches('^[A-Za-z][A-Za-z0-9+.-]*://[^/]*@')").message("url must not carry credentials (user:token@ or token@): put them in a Secret named by secretRef"))]
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,

    /// A branch, tag or full commit SHA; resolved to one commit when a build starts and recorded
    /// in `status.source.commit`.
    #[serde(default = "default_revision")]
    #[schemars(length(min = 1, max = 255))]
    pub revision: String,

    /// A Secret in this namespace with credentials for a private repository: `token` (sent as
    /// the password, for GitHub/GitLab tokens), or `username` and `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,

    /// How often the revision is resolved again (for example `5m`); a new commit starts a build
    /// of it. Unset: resolved only when a build starts. The operator raises shorter intervals to
    /// its `--min-poll-interval` (1m by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self != ''").message("pollInterval must be a duration like 5m, 1h or 90s"))]
    pub poll_interval: Option<String>,
}

fn default_revision() -> String {
    "HEAD".to_string()
}

/// A reference to an object in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
pub struct LocalObjectReference {
    /// The object's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A Dockerfile build argument.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
pub struct BuildArg {
    /// The argument's name.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z_][A-Za-z0-9_]*$')").message("a build argument name is letters, digits and '_'"))]
    pub name: String,
    /// The argument's value.
    #[serde(default)]
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// How builder Jobs run.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuilderSpec {
    /// The BuildKit image (rootless); pin it by digest in production.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Resources of the builder container; include `ephemeral-storage` for BuildKit's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Longest time one attempt may build, counted from the builder's start (for example `45m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self != ''").message("timeout must be a duration like 45m, 1h30m or 90s"))]
    pub timeout: Option<String>,

    /// Longest time a builder may wait for a node of its architecture (for example `15m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self != ''").message("provisioningTimeout must be a duration like 15m"))]
    pub provisioning_timeout: Option<String>,

    /// Node labels merged into every platform's node selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations added to every builder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// The builder's ServiceAccount, for example for registry access through IRSA or EKS Pod
    /// Identity. Its API token is never mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

/// Per-platform builder settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformOverride {
    /// The platform these settings apply to; one of `spec.platforms`.
    #[schemars(length(min = 3, max = 50))]
    pub platform: String,

    /// Node labels merged into this platform's node selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations added to this platform's builders.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Resources for this platform; listed quantities replace the builder's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// The observed state, written only by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MultiArchImageStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The overall phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// `Ready` (always), `Reconciling` and `Stalled` (when true), as kstatus expects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The current build: its identity and the commit every platform builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildStatus>,

    /// The resolved source of the current build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceStatus>,

    /// The value of the `multiarch.dev/rebuild` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<String>,

    /// One entry per platform of the current build, in `spec.platforms` order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformStatus>,

    /// The digest of the published index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,

    /// The published index by digest (`<image>@sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<String>,

    /// The tags the index was last published to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published_tags: Vec<String>,

    /// Since when the git server of a build that has not started could not be reached (set while
    /// it cannot; the object stalls after the operator's `--source-stall-after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_unreachable_since: Option<Time>,

    /// The base images of the published build, read from its provenance: the ones
    /// `rebuildOn.baseImages` watches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub base_images: Vec<BaseImage>,

    /// The last builds, newest first (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,

    /// The signature of the published index (with `spec.signing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureStatus>,

    /// The SBOM attached to each platform's image in the published index (with
    /// `spec.attestations.sbom`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sboms: Vec<SbomStatus>,
}

/// Where the published index's signature is.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignatureStatus {
    /// The signature manifest, `<image>:sha256-<hex>.sig`, as cosign finds it.
    pub tag: String,
    /// The digest of the signature manifest.
    pub digest: String,
    /// The signing key: the SHA-256 digest of its public key (DER).
    pub key: String,
}

/// A platform's SBOM in the published index.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SbomStatus {
    /// The platform it describes.
    pub platform: String,
    /// The attestation manifest holding it (listed in the index after the platform's image).
    pub attestation: String,
    /// The SPDX in-toto statement's blob digest in that manifest.
    pub digest: String,
}

/// A base image a platform was built from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaseImage {
    /// The platform built from it.
    pub platform: String,
    /// The image as the Dockerfile names it, with its tag (`registry/repo:tag`).
    pub name: String,
    /// The digest the tag pointed to when the build resolved it.
    pub digest: String,
}

/// What started a build.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Trigger {
    /// A new object or a changed spec.
    SpecChange,
    /// A new value of the `multiarch.dev/rebuild` annotation.
    RebuildAnnotation,
    /// The polled revision moved to a new commit.
    NewCommit,
    /// A base image's tag moved to a new digest.
    BaseImage,
}

/// How a build ended.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum BuildResult {
    Succeeded,
    Failed,
    /// Replaced by a newer build before it finished.
    Superseded,
}

/// One build in `status.history`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// The build id (part of its builders' names).
    pub build_id: String,
    /// The commit it built.
    pub commit: String,
    /// What started it.
    pub trigger: Trigger,
    /// Details of the trigger: the base image and its two digests, or the rebuild value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How it ended; unset while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<BuildResult>,
    /// The digest of the index it published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

/// The identity of a build.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildStatus {
    /// A hash of the build inputs (source, Dockerfile, arguments, target, platforms, image,
    /// builder), the rebuild annotation and the commit (and, for a base-image rebuild, the new
    /// base digests); part of every builder's name.
    pub id: String,
    /// The hash of the spec's build inputs and the rebuild annotation this build was started for
    /// (a build recorded without it started for `id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_key: Option<String>,
    /// When the build started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
}

/// The resolved source.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// The commit every platform builds.
    pub commit: String,
    /// Its first 12 characters (the `Commit` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_commit: Option<String>,
    /// The revision it was resolved from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// One platform's build.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformStatus {
    /// The platform, as written in `spec.platforms`.
    pub platform: String,
    /// The platform's phase.
    pub phase: PlatformPhase,
    /// The builder Job of the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder: Option<String>,
    /// The node the builder runs or ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Builds that failed by themselves; disruptions are not counted.
    #[serde(default)]
    pub attempts: i32,
    /// Builder pods lost to disruptions (eviction, preemption, node loss) in this build.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disruptions: i32,
    /// The pushed image's manifest digest, verified in the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Since when the builder waits for a node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<Time>,
    /// Why the platform is not built yet, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Why it waits, or the failure with the tail of the builder's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// The overall phase.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Phase {
    Pending,
    Building,
    Publishing,
    Succeeded,
    Failed,
}

/// A platform's phase.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum PlatformPhase {
    Pending,
    Building,
    Built,
    Failed,
}

/// Condition reasons, also used as Event reasons.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum Reason {
    Building,
    WaitingForNode,
    Publishing,
    Published,
    InvalidSpec,
    SourceUnavailable,
    BuildFailed,
    NoNodeForPlatform,
    BuildTimeout,
    BuilderRejected,
    PlatformMismatch,
    PublishFailed,
    WaitingForQuota,
    RegistryUnavailable,
    NewCommit,
    BaseImageMoved,
    SourceResolved,
}

impl Reason {
    /// Every reason, in the order the README lists them.
    pub const ALL: [Reason; 17] = [
        Reason::Building,
        Reason::WaitingForNode,
        Reason::Publishing,
        Reason::Published,
        Reason::InvalidSpec,
        Reason::SourceUnavailable,
        Reason::BuildFailed,
        Reason::NoNodeForPlatform,
        Reason::BuildTimeout,
        Reason::BuilderRejected,
        Reason::PlatformMismatch,
        Reason::PublishFailed,
        Reason::WaitingForQuota,
        Reason::RegistryUnavailable,
        Reason::NewCommit,
        Reason::BaseImageMoved,
        Reason::SourceResolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Building => "Building",
            Reason::WaitingForNode => "WaitingForNode",
            Reason::Publishing => "Publishing",
            Reason::Published => "Published",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::SourceUnavailable => "SourceUnavailable",
            Reason::BuildFailed => "BuildFailed",
            Reason::NoNodeForPlatform => "NoNodeForPlatform",
            Reason::BuildTimeout => "BuildTimeout",
            Reason::BuilderRejected => "BuilderRejected",
            Reason::PlatformMismatch => "PlatformMismatch",
            Reason::PublishFailed => "PublishFailed",
            Reason::WaitingForQuota => "WaitingForQuota",
            Reason::RegistryUnavailable => "RegistryUnavailable",
            Reason::NewCommit => "NewCommit",
            Reason::BaseImageMoved => "BaseImageMoved",
            Reason::SourceResolved => "SourceResolved",
        }
    }

    /// The reason written as [`Reason::as_str`] writes it (a condition's or an annotation's).
    pub fn parse(s: &str) -> Option<Reason> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Building => "Building",
            Phase::Publishing => "Publishing",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

/// The CRD: the schema derived from the types, plus a default for `status`.
///
/// `status` defaults to `{observedGeneration: 0}`, so that an object the operator has not
/// looked at yet reads as in progress to kstatus (Flux's health checks, `kubectl wait`): with no
/// status at all kstatus calls it Current, and a Flux `Kustomization` with `wait: true` would
/// pass before any build started. The apiserver applies the default on create and when it reads
/// objects stored without a status.
pub fn crd(
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON;
    let mut crd = MultiArchImage::crd();
    for version in &mut crd.spec.versions {
        let status = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("status"));
        if let Some(status) = status {
            status.default = Some(JSON(serde_json::json!({"observedGeneration": 0})));
        }
    }
    crd
}

/// The CRD as YAML, exactly what `multiarch-operator crd` prints and `crds/` holds.
pub fn crd_yaml() -> String {
    let crd = crd();
    // serializing a CRD cannot fail: it is plain data with string keys
    let yaml = serde_norway::to_string(&crd).unwrap_or_default();
    format!("---\n{yaml}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reasons_are_one_list_in_the_types_the_schema_and_the_readme() {
        let schema = serde_json::to_value(schemars::schema_for!(Reason)).unwrap();
        let in_schema: Vec<&str> = schema["enum"]
            .as_array()
            .expect("Reason is a string enum")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let listed: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(in_schema, listed, "Reason::ALL misses a variant");
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
        let readme = include_str!("../README.md");
        let paragraph = readme
            .split("\n\n")
            .find(|p| p.starts_with("Condition reasons:"))
            .expect("the README lists the condition reasons");
        let sentence = paragraph.split(". ").next().unwrap();
        let in_readme: Vec<&str> = sentence.split('`').skip(1).step_by(2).collect();
        assert_eq!(in_readme, listed, "the README's list of reasons drifted");
    }

    #[test]
    fn committed_crd_matches_the_types() {
        let committed = include_str!("../crds/multiarchimages.multiarch.dev.yaml");
        assert!(
            committed == crd_yaml(),
            "crds/ drifted from the API types: run `multiarch-operator crd > crds/multiarchimages.multiarch.dev.yaml`"
        );
    }

    #[test]
    fn defaults_fill_in_optional_fields() {
        let spec: MultiArchImageSpec = serde_json::from_value(serde_json::json!({
            "source": {"git": {"url": "https://example.com/a.git"}},
            "image": "registry.example.com/team/app",
            "tags": ["1.0.0"],
            "platforms": ["linux/amd64"],
        }))
        .unwrap();
        assert_eq!(spec.source.context_dir, ".");
        assert_eq!(spec.source.dockerfile, "Dockerfile");
        assert_eq!(spec.source.git.revision, "HEAD");
        assert!(spec.platform_tags);
        assert_eq!(spec.retries, 2);
    }

    #[test]
    fn status_defaults_to_generation_zero_so_a_new_object_is_in_progress() {
        let crd = crd();
        let status = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| s.properties.as_ref())
            .and_then(|p| p.get("status"))
            .expect("a status schema");
        assert_eq!(
            status.default.as_ref().map(|d| &d.0),
            Some(&serde_json::json!({"observedGeneration": 0}))
        );
    }

    #[test]
    fn crd_carries_short_name_status_and_cel_rules() {
        let y = crd_yaml();
        assert!(y.contains("- mai"));
        assert!(y.contains("status: {}"));
        assert!(y.contains("x-kubernetes-validations"));
        assert!(y.contains("x-kubernetes-list-type: set"));
    }
}
