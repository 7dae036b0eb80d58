//! Test images, built and pushed with `oci-client` directly (not with the code under test): a
//! one-file layer, a config with the platform it claims, an OCI image manifest; BuildKit-shaped
//! attestation manifests and indexes.

use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use serde_json::{json, Value};

use super::{sha256, RegistryServer};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A manifest pushed by digest.
#[derive(Clone, Debug)]
pub struct Pushed {
    /// `HOST/PATH`
    pub repo: String,
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl Pushed {
    /// `HOST/PATH@DIGEST`
    pub fn reference(&self) -> String {
        format!("{}@{}", self.repo, self.digest)
    }

    /// An index entry for this manifest.
    pub fn descriptor(&self, platform: Option<Value>, annotations: Option<Value>) -> Value {
        let mut d = json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size});
        if let Some(a) = annotations {
            d["annotations"] = a;
        }
        if let Some(p) = platform {
            d["platform"] = p;
        }
        d
    }
}

/// The `platform` object of `os/arch[/variant]`.
pub fn platform_json(platform: &str) -> Value {
    let parts: Vec<&str> = platform.split('/').collect();
    let mut p = json!({"architecture": parts[1], "os": parts[0]});
    if let Some(v) = parts.get(2) {
        p["variant"] = json!(v);
    }
    p
}

/// A tar archive holding one file (a real layer that real tools can unpack).
pub fn tar_with_file(name: &str, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, s: &[u8]| h[at..at + s.len()].copy_from_slice(s);
    put(&mut header, 0, name.as_bytes());
    put(&mut header, 100, b"0000644\0");
    put(&mut header, 108, b"0000000\0");
    put(&mut header, 116, b"0000000\0");
    put(
        &mut header,
        124,
        format!("{:011o}\0", content.len()).as_bytes(),
    );
    put(&mut header, 136, b"00000000000\0");
    put(&mut header, 148, b"        ");
    header[156] = b'0';
    put(&mut header, 257, b"ustar\0");
    put(&mut header, 263, b"00");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    put(&mut header, 148, format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(content);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

/// Pushes test content to one registry.
pub struct Pusher {
    client: oci_client::Client,
    auth: RegistryAuth,
    host: String,
}

impl Pusher {
    /// A pusher for `registry`, authenticating with `creds` when given.
    pub async fn new(registry: &RegistryServer, creds: Option<(&str, &str)>) -> Pusher {
        multiarch_operator::install_crypto_provider();
        let config = ClientConfig {
            protocol: if registry.tls.is_some() {
                ClientProtocol::Https
            } else {
                ClientProtocol::Http
            },
            extra_root_certificates: registry
                .tls
                .iter()
                .map(|t| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: std::fs::read(&t.ca_file).expect("CA file"),
                })
                .collect(),
            read_timeout: Some(Duration::from_secs(30)),
            ..ClientConfig::default()
        };
        let client = oci_client::Client::try_from(config).expect("oci client");
        let auth = match creds {
            Some((u, p)) => RegistryAuth::Basic(u.into(), p.into()),
            None => RegistryAuth::Anonymous,
        };
        client.store_auth_if_needed(&registry.host, &auth).await;
        Pusher {
            client,
            auth,
            host: registry.host.clone(),
        }
    }

    fn reference(&self, path: &str, reference: &str) -> oci_client::Reference {
        if reference.contains(':') {
            oci_client::Reference::with_digest(self.host.clone(), path.into(), reference.into())
        } else {
            oci_client::Reference::with_tag(self.host.clone(), path.into(), reference.into())
        }
    }

    /// Pushes a blob to `path`.
    pub async fn blob(&self, path: &str, data: &[u8]) -> (String, u64) {
        let digest = sha256(data);
        let r = self.reference(path, &digest);
        // authenticate for push first (a token registry wants a push-scoped token)
        self.client
            .auth(&r, &self.auth, oci_client::RegistryOperation::Push)
            .await
            .expect("authenticate for push");
        self.client
            .push_blob(&r, data.to_vec(), &digest)
            .await
            .unwrap_or_else(|e| panic!("push blob to {path}: {e}"));
        (digest, data.len() as u64)
    }

    /// Pushes manifest `bytes` to `path` by digest, and to `tag` when given.
    pub async fn manifest(
        &self,
        path: &str,
        bytes: Vec<u8>,
        media_type: &str,
        tag: Option<&str>,
    ) -> Pushed {
        let digest = sha256(&bytes);
        let mut targets = vec![digest.clone()];
        targets.extend(tag.map(str::to_string));
        for target in targets {
            self.client
                .push_manifest_raw(
                    &self.reference(path, &target),
                    bytes.clone(),
                    media_type.parse().expect("media type"),
                )
                .await
                .unwrap_or_else(|e| panic!("push manifest to {path}:{target}: {e}"));
        }
        Pushed {
            repo: format!("{}/{path}", self.host),
            size: bytes.len() as u64,
            digest,
            media_type: media_type.into(),
            bytes,
        }
    }

    /// Pushes an image whose config says `config_platform` (`os/arch[/variant]`); `salt` makes
    /// its content unique.
    pub async fn image(&self, path: &str, config_platform: &str, salt: &str) -> Pushed {
        let p = platform_json(config_platform);
        self.image_with_config(path, p, salt, None).await
    }

    /// Pushes an image whose config has the platform fields of `platform` (a JSON object with
    /// `os`, `architecture` and perhaps `variant`, `os.version`), tagged `tag` when given.
    pub async fn image_with_config(
        &self,
        path: &str,
        platform: Value,
        salt: &str,
        tag: Option<&str>,
    ) -> Pushed {
        let layer = tar_with_file(
            "etc/test-image",
            format!("platform {platform} salt {salt}\n").as_bytes(),
        );
        let (layer_digest, layer_size) = self.blob(path, &layer).await;
        let mut config = json!({
            "created": "2026-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created": "2026-01-01T00:00:00Z", "created_by": format!("test {salt}")}]
        });
        for (k, v) in platform.as_object().expect("platform object") {
            config[k] = v.clone();
        }
        let config_bytes = serde_json::to_vec(&config).expect("config JSON");
        let (config_digest, config_size) = self.blob(path, &config_bytes).await;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}]
        });
        self.manifest(
            path,
            serde_json::to_vec(&manifest).expect("manifest JSON"),
            OCI_MANIFEST,
            tag,
        )
        .await
    }

    /// Pushes a BuildKit-style provenance attestation manifest about `subject`.
    pub async fn attestation(&self, path: &str, subject: &Pushed) -> Pushed {
        let statement = json!({
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://slsa.dev/provenance/v0.2",
            "subject": [{"name": "_", "digest": {"sha256": subject.digest.trim_start_matches("sha256:")}}],
            "predicate": {"builder": {"id": "test"}}
        });
        let statement = serde_json::to_vec(&statement).expect("statement");
        let (s_digest, s_size) = self.blob(path, &statement).await;
        let config = serde_json::to_vec(&json!({
            "architecture": "unknown", "os": "unknown", "config": {},
            "rootfs": {"type": "layers", "diff_ids": [s_digest]}
        }))
        .expect("config");
        let (c_digest, c_size) = self.blob(path, &config).await;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c_digest, "size": c_size},
            "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": s_digest, "size": s_size,
                        "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}}]
        });
        self.manifest(
            path,
            serde_json::to_vec(&manifest).expect("manifest"),
            OCI_MANIFEST,
            None,
        )
        .await
    }

    /// Pushes an OCI index of `entries` (descriptors), tagged `tag` when given.
    pub async fn index(&self, path: &str, entries: Vec<Value>, tag: Option<&str>) -> Pushed {
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
        self.manifest(
            path,
            serde_json::to_vec(&index).expect("index"),
            OCI_INDEX,
            tag,
        )
        .await
    }

    /// What a BuildKit builder pushes with provenance on: an index of the image of
    /// `config_platform` and an attestation manifest about it. Returns (index, image,
    /// attestation).
    pub async fn buildkit_image(
        &self,
        path: &str,
        config_platform: &str,
        salt: &str,
    ) -> (Pushed, Pushed, Pushed) {
        let image = self.image(path, config_platform, salt).await;
        let attestation = self.attestation(path, &image).await;
        let index = self
            .index(
                path,
                vec![
                    image.descriptor(Some(platform_json(config_platform)), None),
                    attestation.descriptor(
                        Some(json!({"architecture": "unknown", "os": "unknown"})),
                        Some(json!({
                            "vnd.docker.reference.digest": image.digest,
                            "vnd.docker.reference.type": "attestation-manifest"
                        })),
                    ),
                ],
                None,
            )
            .await;
        (index, image, attestation)
    }
}
