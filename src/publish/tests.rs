//! The engine's decisions against a registry in memory ([`Memory`]), which can do what a real
//! registry cannot: serve content that is not its digest, report another digest than it
//! stored, fail a PUT of one tag. Every request it answers is logged, so the order of reads and
//! writes and their number are checked too. The same engine against a real registry is tested
//! in `tests/publish_registry.rs` and `tests/publish_requests.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::index::{OCI_INDEX, OCI_MANIFEST};
use super::registry::{RegistryErrorKind, ServedManifest};
use super::*;

const REGISTRY: &str = "mem.example";

/// A registry in memory: manifests by repository and reference, blobs by repository and
/// digest, a log of the requests, and the misbehaviour a test asks for.
#[derive(Clone, Default)]
struct Memory(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    /// (repository, tag or digest) -> bytes
    manifests: HashMap<(String, String), Bytes>,
    /// (repository, digest) -> bytes
    blobs: HashMap<(String, String), Bytes>,
    /// Every request, in order: `GET manifest app@sha256:...`, `PUT manifest app:1.0`, ...
    log: Vec<String>,
    /// Served for a manifest (`repository@reference`) instead of what is stored.
    lies: HashMap<String, ServedManifest>,
    /// Served for a blob (by digest) instead of what is stored.
    blob_lies: HashMap<String, Bytes>,
    /// PUTs of a manifest to this reference (a tag, or a digest) fail with this error.
    failing_put: Option<(String, RegistryErrorKind)>,
    /// The digest reported for every PUT, instead of the digest stored.
    put_reports: Option<Digest>,
}

fn error(kind: RegistryErrorKind, what: &str) -> RegistryError {
    RegistryError::new(kind, format!("{what}: injected by the test registry"))
}

impl RegistryApi for Memory {
    fn pushing_to(&self, _target: &Repository) -> Self {
        self.clone()
    }

    async fn get_manifest(&self, reference: &Reference) -> Result<ServedManifest, RegistryError> {
        let mut state = self.0.lock().unwrap();
        let (repo, r) = (reference.repository.to_string(), reference.reference_str());
        state.log.push(format!("GET manifest {reference}"));
        if let Some(lie) = state.lies.get(&format!("{repo}@{r}")) {
            return Ok(lie.clone());
        }
        match state.manifests.get(&(repo, r)) {
            Some(bytes) => Ok(ServedManifest {
                reported: Some(Digest::sha256_of(bytes)),
                bytes: bytes.clone(),
            }),
            None => Err(error(RegistryErrorKind::NotFound, "manifest unknown")),
        }
    }

    async fn get_blob(
        &self,
        repo: &Repository,
        blob: &BlobDescriptor,
    ) -> Result<Bytes, RegistryError> {
        let mut state = self.0.lock().unwrap();
        state.log.push(format!("GET blob {repo}@{}", blob.digest));
        if let Some(lie) = state.blob_lies.get(blob.digest.as_str()) {
            return Ok(lie.clone());
        }
        let key = (repo.to_string(), blob.digest.to_string());
        let found = state.blobs.get(&key).cloned();
        found.ok_or_else(|| error(RegistryErrorKind::NotFound, "blob unknown"))
    }

    async fn manifest_digest_exists(
        &self,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let mut state = self.0.lock().unwrap();
        state.log.push(format!("HEAD manifest {repo}@{digest}"));
        let key = (repo.to_string(), digest.to_string());
        Ok(state.manifests.contains_key(&key))
    }

    async fn copy_blob(
        &self,
        from: &Repository,
        to: &Repository,
        blob: &BlobDescriptor,
    ) -> Result<(), RegistryError> {
        let mut state = self.0.lock().unwrap();
        state
            .log
            .push(format!("MOUNT blob {to}@{} from {from}", blob.digest));
        let key = (from.to_string(), blob.digest.to_string());
        let bytes = state.blobs.get(&key).cloned();
        let bytes = bytes.ok_or_else(|| error(RegistryErrorKind::NotFound, "blob unknown"))?;
        state
            .blobs
            .insert((to.to_string(), blob.digest.to_string()), bytes);
        Ok(())
    }

    async fn put_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        bytes: &Bytes,
    ) -> Result<(), RegistryError> {
        let mut state = self.0.lock().unwrap();
        state.log.push(format!("PUT blob {repo}@{digest}"));
        if &Digest::sha256_of(bytes) != digest {
            return Err(error(RegistryErrorKind::DigestMismatch, "digest invalid"));
        }
        state
            .blobs
            .insert((repo.to_string(), digest.to_string()), bytes.clone());
        Ok(())
    }

    async fn put_manifest(
        &self,
        repo: &Repository,
        target: &ManifestTarget,
        bytes: &Bytes,
        _media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let mut state = self.0.lock().unwrap();
        let (r, shown) = match target {
            ManifestTarget::Tag(t) => (t.to_string(), format!("{repo}:{t}")),
            ManifestTarget::Digest(d) => (d.to_string(), format!("{repo}@{d}")),
        };
        state.log.push(format!("PUT manifest {shown}"));
        if let Some((failing, kind)) = &state.failing_put {
            if failing == &r {
                return Err(error(*kind, "push manifest"));
            }
        }
        let digest = Digest::sha256_of(bytes);
        for reference in [r, digest.to_string()] {
            state
                .manifests
                .insert((repo.to_string(), reference), bytes.clone());
        }
        Ok(state.put_reports.clone().unwrap_or(digest))
    }
}

/// A manifest stored in [`Memory`]: where, and its index descriptor.
#[derive(Clone, Debug)]
struct Stored {
    reference: Reference,
    descriptor: Value,
}

impl Stored {
    fn digest(&self) -> &Digest {
        self.reference.digest.as_ref().unwrap()
    }

    /// Its descriptor listed as `platform` (`os/arch[/variant]`).
    fn listed_as(&self, platform: &str) -> Value {
        let mut d = self.descriptor.clone();
        d["platform"] = platform_json(platform);
        d
    }

    /// Its descriptor listed as an attestation about `subject`.
    fn attesting(&self, subject: &Stored) -> Value {
        let mut d = self.listed_as("unknown/unknown");
        d["annotations"] = json!({
            "vnd.docker.reference.type": "attestation-manifest",
            "vnd.docker.reference.digest": subject.digest().to_string(),
        });
        d
    }

    fn source(&self, platform: Option<&str>) -> Source {
        Source::new(self.reference.clone(), platform.map(|p| p.parse().unwrap()))
    }
}

fn platform_json(platform: &str) -> Value {
    let parts: Vec<&str> = platform.split('/').collect();
    let mut p = json!({"os": parts[0], "architecture": parts[1]});
    if let Some(v) = parts.get(2) {
        p["variant"] = json!(v);
    }
    p
}

fn repository(path: &str) -> Repository {
    format!("{REGISTRY}/{path}").parse().unwrap()
}

impl Memory {
    fn log(&self) -> Vec<String> {
        self.0.lock().unwrap().log.clone()
    }

    fn clear_log(&self) {
        self.0.lock().unwrap().log.clear();
    }

    /// The bytes stored for the manifest `digest` of `repo`.
    fn stored(&self, repo: &Repository, digest: &Digest) -> Bytes {
        let key = (repo.to_string(), digest.to_string());
        self.0.lock().unwrap().manifests[&key].clone()
    }

    /// The log's requests without their references: `GET manifest`, `PUT manifest 1.0`,
    /// `PUT manifest digest`...
    fn kinds(&self) -> Vec<String> {
        self.log()
            .iter()
            .map(|line| {
                let mut words = line.split(' ');
                let (method, what) = (words.next().unwrap(), words.next().unwrap());
                let reference = words.next().unwrap();
                match (method, reference.rsplit_once(':')) {
                    ("PUT", Some((_, t))) if !reference.contains('@') => {
                        format!("PUT {what} {t}")
                    }
                    ("PUT", _) => format!("PUT {what} digest"),
                    _ => format!("{method} {what}"),
                }
            })
            .collect()
    }

    fn blob(&self, path: &str, media_type: &str, data: &[u8]) -> Value {
        let digest = Digest::sha256_of(data);
        let key = (repository(path).to_string(), digest.to_string());
        self.0
            .lock()
            .unwrap()
            .blobs
            .insert(key, Bytes::copy_from_slice(data));
        json!({"mediaType": media_type, "digest": digest.to_string(), "size": data.len()})
    }

    fn manifest(&self, path: &str, value: &Value) -> Stored {
        let bytes = Bytes::from(serde_json::to_vec(value).unwrap());
        let digest = Digest::sha256_of(&bytes);
        let repo = repository(path);
        let key = (repo.to_string(), digest.to_string());
        let size = bytes.len();
        self.0.lock().unwrap().manifests.insert(key, bytes);
        Stored {
            reference: repo.with_digest(digest.clone()),
            descriptor: json!({"mediaType": value["mediaType"], "digest": digest.to_string(), "size": size}),
        }
    }

    /// An image whose config says `platform` (none: a config without one); `salt` makes it
    /// unique.
    fn image(&self, path: &str, platform: Option<&str>, salt: &str) -> Stored {
        let mut config = json!({"rootfs": {"type": "layers", "diff_ids": []}, "config": {}});
        if let Some(p) = platform {
            for (k, v) in platform_json(p).as_object().unwrap() {
                config[k] = v.clone();
            }
        }
        let layer = self.blob(
            path,
            "application/vnd.oci.image.layer.v1.tar",
            salt.as_bytes(),
        );
        let config = serde_json::to_vec(&config).unwrap();
        let config = self.blob(path, "application/vnd.oci.image.config.v1+json", &config);
        self.manifest(
            path,
            &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}),
        )
    }

    /// A BuildKit-style attestation manifest about `subject`.
    fn attestation(&self, path: &str, subject: &Stored) -> Stored {
        let statement = format!("statement about {}", subject.digest());
        let layer = self.blob(path, "application/vnd.in-toto+json", statement.as_bytes());
        let config = br#"{"architecture":"unknown","os":"unknown"}"#;
        let config = self.blob(path, "application/vnd.oci.image.config.v1+json", config);
        self.manifest(
            path,
            &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}),
        )
    }

    fn index(&self, path: &str, entries: Vec<Value>) -> Stored {
        self.manifest(
            path,
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}),
        )
    }

    /// What the registry serves for `stored` instead of its content.
    fn lie(&self, stored: &Stored, bytes: &[u8], reported: Option<Digest>) {
        let served = ServedManifest {
            bytes: Bytes::copy_from_slice(bytes),
            reported,
        };
        let key = stored.reference.to_string();
        self.0.lock().unwrap().lies.insert(key, served);
    }
}

fn tags(names: &[&str]) -> Vec<Tag> {
    names.iter().map(|t| t.parse().unwrap()).collect()
}

async fn prepare(memory: &Memory, sources: &[Source]) -> Result<PublishPlan, PublishError> {
    Publisher::new(memory.clone())
        .prepare(sources, &repository("app"), IndexFormat::Oci)
        .await
}

/// The digests an index lists, in order.
fn listed(index: &[u8]) -> Vec<String> {
    let index: Value = serde_json::from_slice(index).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect()
}

fn no_writes(memory: &Memory) {
    let log = memory.log();
    assert!(
        log.iter()
            .all(|l| l.starts_with("GET") || l.starts_with("HEAD")),
        "nothing may be written: {log:#?}"
    );
}

#[tokio::test]
async fn images_in_the_target_publish_with_one_read_per_manifest_and_config_and_one_put_per_tag() {
    let memory = Memory::default();
    let amd64 = memory.image("app", Some("linux/amd64"), "a");
    let arm64 = memory.image("app", Some("linux/arm64"), "b");
    let sources = [amd64.source(Some("linux/amd64")), arm64.source(None)];
    let publisher = Publisher::new(memory.clone());
    let plan = prepare(&memory, &sources).await.unwrap();
    let digest = publisher
        .write(&plan, &tags(&["1.0.0", "latest"]))
        .await
        .unwrap();
    assert_eq!(&digest, plan.digest());
    assert_eq!(
        memory.kinds(),
        [
            "GET manifest",
            "GET blob",
            "GET manifest",
            "GET blob",
            "PUT manifest 1.0.0",
            "PUT manifest latest"
        ],
        "2N + T requests, the index by its tags only"
    );
    assert_eq!(
        listed(plan.index_bytes()),
        [amd64.digest().to_string(), arm64.digest().to_string()]
    );
}

#[tokio::test]
async fn an_index_with_attestations_is_flattened_each_images_attestation_right_after_it() {
    let memory = Memory::default();
    let amd64 = memory.image("app", Some("linux/amd64"), "a");
    let arm64 = memory.image("app", Some("linux/arm64"), "b");
    let amd64_att = memory.attestation("app", &amd64);
    let arm64_att = memory.attestation("app", &arm64);
    // attestations listed after both images, in the other order
    let source = memory.index(
        "app",
        vec![
            amd64.listed_as("linux/amd64"),
            arm64.listed_as("linux/arm64"),
            arm64_att.attesting(&arm64),
            amd64_att.attesting(&amd64),
        ],
    );
    let plan = prepare(&memory, &[source.source(None)]).await.unwrap();
    assert_eq!(
        listed(plan.index_bytes()),
        [
            amd64.digest(),
            amd64_att.digest(),
            arm64.digest(),
            arm64_att.digest()
        ]
        .map(ToString::to_string)
    );
    let index: Value = serde_json::from_slice(plan.index_bytes()).unwrap();
    assert_eq!(
        index["manifests"][1]["annotations"]["vnd.docker.reference.digest"],
        amd64.digest().to_string()
    );
    assert_eq!(
        plan.images()[1].attestations()[0].digest(),
        arm64_att.digest()
    );
    // one arm64 image taken from it: its attestation comes along, the other one stays out
    let plan = prepare(&memory, &[source.source(Some("linux/arm64/v8"))])
        .await
        .unwrap();
    assert_eq!(
        listed(plan.index_bytes()),
        [arm64.digest(), arm64_att.digest()].map(ToString::to_string)
    );
    no_writes(&memory);
}

#[tokio::test]
async fn a_manifest_that_is_not_its_digest_is_refused_before_any_write() {
    let memory = Memory::default();
    let amd64 = memory.image("app", Some("linux/amd64"), "a");
    let arm64 = memory.image("app", Some("linux/arm64"), "b");
    // the registry serves another image for arm64's digest (and reports no digest)
    let other = memory.image("app", Some("linux/arm64"), "c");
    let other_bytes = memory.stored(&repository("app"), other.digest());
    memory.lie(&arm64, &other_bytes, None);
    let err = prepare(&memory, &[amd64.source(None), arm64.source(None)])
        .await
        .unwrap_err();
    match &err {
        PublishError::ReadManifest { reference, error } => {
            assert_eq!(reference, &arm64.reference.to_string());
            assert_eq!(error.kind, RegistryErrorKind::DigestMismatch);
            assert!(error.detail.starts_with("asked for"), "{error}");
        }
        other => panic!("{other}"),
    }
    assert!(!err.is_transient());
    // content that is the digest asked for, but the registry reports another one
    let memory = Memory::default();
    let amd64 = memory.image("app", Some("linux/amd64"), "a");
    let stored = memory.stored(&repository("app"), amd64.digest());
    memory.lie(&amd64, &stored, Some(Digest::sha256_of(b"something else")));
    let err = prepare(&memory, &[amd64.source(None)]).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("the registry says the manifest is"),
        "{err}"
    );
    no_writes(&memory);
}

#[tokio::test]
async fn a_config_that_is_not_its_descriptor_is_refused_before_any_write() {
    let memory = Memory::default();
    let amd64 = memory.image("app", Some("linux/amd64"), "a");
    let manifest: Value =
        serde_json::from_slice(&memory.stored(&repository("app"), amd64.digest())).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    // the same size, other content: an arm64 config where the amd64 one was
    {
        let mut state = memory.0.lock().unwrap();
        let config = &state.blobs[&(repository("app").to_string(), config_digest.clone())];
        let lie = String::from_utf8(config.to_vec()).unwrap();
        let lie = Bytes::from(lie.replace("amd64", "arm64"));
        state.blob_lies.insert(config_digest, lie);
    }
    let err = prepare(&memory, &[amd64.source(None)]).await.unwrap_err();
    match &err {
        PublishError::ReadConfig { error, .. } => {
            assert_eq!(error.kind, RegistryErrorKind::DigestMismatch, "{err}")
        }
        other => panic!("{other}"),
    }
    no_writes(&memory);
}

#[tokio::test]
async fn a_tag_put_failing_halfway_reports_the_tags_written_and_stops() {
    let memory = Memory::default();
    let amd64 = memory.image("app", Some("linux/amd64"), "a");
    let arm64 = memory.image("app", Some("linux/arm64"), "b");
    let plan = prepare(&memory, &[amd64.source(None), arm64.source(None)])
        .await
        .unwrap();
    memory.0.lock().unwrap().failing_put = Some(("second".into(), RegistryErrorKind::Server(500)));
    memory.clear_log();
    let partial = Publisher::new(memory.clone())
        .write(&plan, &tags(&["first", "second", "third"]))
        .await
        .unwrap_err();
    assert_eq!(partial.written, tags(&["first"]));
    assert!(!partial.nothing_tagged() && partial.is_transient());
    match &partial.error {
        PublishError::PushManifest {
            what, reference, ..
        } => {
            assert_eq!(what, "the index");
            assert_eq!(reference, &format!("{REGISTRY}/app:second"));
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        memory.kinds(),
        ["PUT manifest first", "PUT manifest second"]
    );
}

#[tokio::test]
async fn a_registry_that_stores_another_digest_than_the_one_pushed_is_caught() {
    let memory = Memory::default();
    let amd64 = memory.image("app", Some("linux/amd64"), "a");
    let plan = prepare(&memory, &[amd64.source(None)]).await.unwrap();
    memory.0.lock().unwrap().put_reports = Some(Digest::sha256_of(b"not the index"));
    let partial = Publisher::new(memory.clone())
        .write(&plan, &tags(&["1.0"]))
        .await
        .unwrap_err();
    assert!(partial.nothing_tagged(), "{partial}");
    match &partial.error {
        PublishError::PushManifest { error, .. } => {
            assert_eq!(error.kind, RegistryErrorKind::DigestMismatch)
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn refused_sources_write_nothing() {
    let memory = Memory::default();
    let amd64 = memory.image("app", Some("linux/amd64"), "a");
    let amd64_again = memory.image("app", Some("linux/amd64"), "b");
    let no_platform = memory.image("app", None, "c");
    let cases = [
        (
            vec![amd64.source(Some("linux/arm64"))],
            "was given as linux/arm64",
        ),
        (
            vec![amd64.source(None), amd64_again.source(None)],
            &format!(
                "two images for linux/amd64: {} and {}",
                amd64.reference, amd64_again.reference
            ),
        ),
        (vec![no_platform.source(None)], "cannot be published"),
    ];
    for (sources, says) in cases {
        let err = prepare(&memory, &sources).await.unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
        assert!(!err.is_transient());
    }
    no_writes(&memory);
}

#[tokio::test]
async fn sources_of_another_repository_are_looked_for_while_preparing_and_copied_before_any_tag() {
    let memory = Memory::default();
    let amd64 = memory.image("src/amd64", Some("linux/amd64"), "a");
    let arm64 = memory.image("app", Some("linux/arm64"), "b");
    let plan = prepare(&memory, &[amd64.source(None), arm64.source(None)])
        .await
        .unwrap();
    assert_eq!(
        memory.kinds(),
        [
            "GET manifest",
            "GET blob",
            "GET manifest",
            "GET blob",
            "HEAD manifest"
        ],
        "one look for the image read from elsewhere"
    );
    memory.clear_log();
    let publisher = Publisher::new(memory.clone());
    publisher.write(&plan, &tags(&["1.0"])).await.unwrap();
    assert_eq!(
        memory.kinds(),
        [
            "MOUNT blob",
            "MOUNT blob",
            "PUT manifest digest",
            "PUT manifest 1.0"
        ]
    );
    // published again: it is in the target now, nothing to copy
    memory.clear_log();
    let plan = prepare(&memory, &[amd64.source(None), arm64.source(None)])
        .await
        .unwrap();
    publisher.write(&plan, &tags(&["1.1"])).await.unwrap();
    assert!(
        !memory
            .kinds()
            .iter()
            .any(|k| k.starts_with("MOUNT") || k == "PUT manifest digest"),
        "{:#?}",
        memory.log()
    );
}

#[tokio::test]
async fn without_tags_the_index_is_pushed_by_digest() {
    let memory = Memory::default();
    let amd64 = memory.image("app", Some("linux/amd64"), "a");
    let plan = prepare(&memory, &[amd64.source(None)]).await.unwrap();
    memory.clear_log();
    Publisher::new(memory.clone())
        .write(&plan, &[])
        .await
        .unwrap();
    assert_eq!(memory.kinds(), ["PUT manifest digest"]);
    let pushed = memory.stored(&repository("app"), plan.digest());
    assert_eq!(&pushed[..], plan.index_bytes());
}

#[test]
fn sources_parse_with_and_without_a_platform() {
    let d = format!("sha256:{}", "ab".repeat(32));
    let s: Source = format!("linux/arm64=reg.example.com/app@{d}")
        .parse()
        .unwrap();
    assert_eq!(s.platform, Some("linux/arm64".parse().unwrap()));
    assert_eq!(s.reference.digest.as_ref().unwrap().as_str(), d);
    assert_eq!(
        s.to_string(),
        format!("linux/arm64=reg.example.com/app@{d}")
    );
    let s: Source = "127.0.0.1:5001/team/app:1.0-amd64".parse().unwrap();
    assert_eq!(s.platform, None);
    assert_eq!(s.reference.repository.registry(), "127.0.0.1:5001");
    for bad in [
        "linux=reg.example.com/app:1",
        "linux/arm64=",
        "reg.example.com/app",
        "=reg.example.com/app:1",
        "linux/arm64=reg.example.com/App:1",
    ] {
        assert!(bad.parse::<Source>().is_err(), "{bad} should be rejected");
    }
}
