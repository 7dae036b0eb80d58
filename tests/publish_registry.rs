//! The publishing engine against a real registry (Debian's `docker-registry`, the CNCF
//! distribution registry) on loopback: without authentication over plain HTTP, with htpasswd
//! basic authentication over TLS with a test CA, and with bearer tokens from a token service the
//! test runs; plus a fault proxy for 5xx retries and a write failing part-way. The real
//! `multiarch-operator publish` binary runs as a process, and results are checked with `skopeo`.
//! Each test has its own registry on its own port.

#[path = "support/registry/mod.rs"]
mod registry;

use multiarch_operator::publish::{
    DockerConfig, IndexFormat, PublishError, Publisher, RegistryApi as _, RegistryConfig, Source,
};
use multiarch_operator::reference::{Digest, Repository, Tag};
use registry::images::{platform_json, Pushed, Pusher, OCI_INDEX, OCI_MANIFEST};
use registry::proxy::{FaultProxy, FaultRule};
use registry::token::TokenIssuer;
use registry::{
    docker_config, docker_config_basic, publish, publish_logging, sha256, token_registry,
    RegistryAuth, RegistryServer, Skopeo,
};
use serde_json::{json, Value};

const USER: &str = "builder";
const PASSWORD: &str = "correct horse battery staple";

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn anonymous() -> tempfile::TempDir {
    docker_config(&json!({}))
}

/// The entries of an index as (digest, platform string or "unknown/unknown", annotations).
fn entries(index: &Value) -> Vec<(String, String, Value)> {
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let mut platform = format!(
                "{}/{}",
                p["os"].as_str().unwrap_or("?"),
                p["architecture"].as_str().unwrap_or("?")
            );
            if let Some(v) = p["variant"].as_str() {
                platform.push('/');
                platform.push_str(v);
            }
            (
                m["digest"].as_str().expect("digest").to_string(),
                platform,
                m["annotations"].clone(),
            )
        })
        .collect()
}

fn assert_entry_matches(index: &Value, i: usize, pushed: &Pushed) {
    let m = &index["manifests"][i];
    assert_eq!(m["digest"], json!(pushed.digest), "entry {i}");
    assert_eq!(m["size"], json!(pushed.size), "entry {i} size");
    assert_eq!(
        m["mediaType"],
        json!(pushed.media_type),
        "entry {i} media type"
    );
}

#[tokio::test]
async fn plain_http_publish_lists_every_platform_in_source_order_and_is_deterministic() {
    let reg = RegistryServer::start(RegistryAuth::None, false);
    let push = Pusher::new(&reg, None).await;
    // amd64 already in the target repository; arm64 as BuildKit pushes it (image + provenance
    // attestation, in another repository); arm/v7 in another repository
    let amd64 = push.image("team/app", "linux/amd64", "amd64").await;
    let (arm64_index, arm64, arm64_att) = push
        .buildkit_image("src/app-arm64", "linux/arm64", "arm64")
        .await;
    let armv7 = push.image("src/app-armv7", "linux/arm/v7", "armv7").await;
    let tag1 = reg.repo("team/app:1.0.0");
    let tag2 = reg.repo("team/app:latest");
    let config = anonymous();
    let args = vec![
        "--plain-http".to_string(),
        "--tag".into(),
        tag1.clone(),
        "--tag".into(),
        tag2.clone(),
        format!("linux/amd64={}", amd64.reference()),
        format!("linux/arm64={}", arm64_index.reference()),
        format!("linux/arm/v7={}", armv7.reference()),
    ];
    let out = publish(&args, config.path(), None).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, reg.log());
    let digest = out.last_line();
    assert!(digest.starts_with("sha256:"), "{digest}");

    let skopeo = Skopeo::new(&reg, None);
    let raw = skopeo.raw(&tag1).await.expect("tag 1");
    assert_eq!(
        sha256(&raw),
        digest,
        "the printed digest is the digest of the index bytes"
    );
    assert_eq!(skopeo.raw(&tag2).await.expect("tag 2"), raw);
    let index: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(index["mediaType"], OCI_INDEX);
    assert_eq!(index["schemaVersion"], 2);
    let got = entries(&index);
    let platforms: Vec<&str> = got.iter().map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(
        platforms,
        vec![
            "linux/amd64",
            "linux/arm64",
            "unknown/unknown",
            "linux/arm/v7"
        ]
    );
    assert_entry_matches(&index, 0, &amd64);
    assert_entry_matches(&index, 1, &arm64);
    assert_entry_matches(&index, 2, &arm64_att);
    assert_entry_matches(&index, 3, &armv7);
    assert_eq!(
        got[2].2,
        json!({"vnd.docker.reference.digest": arm64.digest, "vnd.docker.reference.type": "attestation-manifest"})
    );
    // every entry, and the blobs of the images copied from other repositories, are in the
    // target repository
    for (d, _, _) in &got {
        let m = skopeo.raw(&reg.repo(&format!("team/app@{d}"))).await;
        assert!(m.is_ok(), "{d} not in team/app: {m:?}");
    }
    for (image, arch) in [(&arm64, "arm64"), (&armv7, "arm")] {
        let config = skopeo
            .config(&reg.repo(&format!("team/app@{}", image.digest)))
            .await
            .expect("config blob copied");
        assert_eq!(config["architecture"], arch);
    }
    assert_eq!(skopeo.tags(&reg.repo("team/app")).await.len(), 2);

    // the same sources again, to another tag: the same bytes, the same digest
    let tag3 = reg.repo("team/app:again");
    let mut again = args.clone();
    again[2] = tag3.clone();
    again[4] = tag3.clone();
    let out2 = publish(&again, config.path(), None).await;
    assert_eq!(out2.code, 0, "{}", out2.stderr);
    assert_eq!(out2.last_line(), digest);
    assert_eq!(skopeo.raw(&tag3).await.expect("tag 3"), raw);
}

#[tokio::test]
async fn docker_format_publishes_a_manifest_list() {
    let reg = RegistryServer::start(RegistryAuth::None, false);
    let push = Pusher::new(&reg, None).await;
    let amd64 = push.image("app", "linux/amd64", "a").await;
    let arm64 = push.image("app", "linux/arm64/v8", "b").await;
    let config = anonymous();
    let tag = reg.repo("app:v1");
    let out = publish(
        &[
            "--plain-http".into(),
            "--format".into(),
            "docker".into(),
            "--tag".into(),
            tag.clone(),
            amd64.reference(),
            format!("linux/arm64={}", arm64.reference()),
        ],
        config.path(),
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let raw = Skopeo::new(&reg, None).raw(&tag).await.unwrap();
    assert_eq!(sha256(&raw), out.last_line());
    let index: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    // the platform comes from the config, variant included
    let platforms: Vec<String> = entries(&index).into_iter().map(|(_, p, _)| p).collect();
    assert_eq!(platforms, vec!["linux/amd64", "linux/arm64/v8"]);
}

#[tokio::test]
async fn failed_checks_exit_1_and_leave_no_tag() {
    let reg = RegistryServer::start(RegistryAuth::None, false);
    let push = Pusher::new(&reg, None).await;
    let amd64 = push.image("team/app", "linux/amd64", "amd64").await;
    let other_amd64 = push.image("team/app", "linux/amd64", "second amd64").await;
    let arm64 = push.image("team/app", "linux/arm64", "arm64").await;
    // a multi-platform index (in another repository), and an index that lies about its
    // image's platform
    let multi_amd64 = push.image("src/multi", "linux/amd64", "multi amd64").await;
    let multi_arm64 = push.image("src/multi", "linux/arm64", "multi arm64").await;
    let multi = push
        .index(
            "src/multi",
            vec![
                multi_amd64.descriptor(Some(platform_json("linux/amd64")), None),
                multi_arm64.descriptor(Some(platform_json("linux/arm64")), None),
            ],
            Some("v1"),
        )
        .await;
    let lying = push
        .index(
            "team/app",
            vec![amd64.descriptor(Some(platform_json("linux/arm64")), None)],
            None,
        )
        .await;
    let orphan_att = push.attestation("team/app", &other_amd64).await;
    let orphan = push
        .index(
            "team/app",
            vec![
                arm64.descriptor(Some(platform_json("linux/arm64")), None),
                orphan_att.descriptor(
                    Some(json!({"architecture": "unknown", "os": "unknown"})),
                    Some(json!({"vnd.docker.reference.digest": other_amd64.digest,
                                "vnd.docker.reference.type": "attestation-manifest"})),
                ),
            ],
            None,
        )
        .await;
    let missing = format!("{}@sha256:{}", reg.repo("team/app"), "0".repeat(64));
    let config = anonymous();
    let tag = reg.repo("team/app:1.0.0");
    let cases: Vec<(&str, Vec<String>, String)> = vec![
        (
            "mislabelled image",
            vec![
                format!("linux/amd64={}", other_amd64.reference()),
                format!("linux/arm64={}", amd64.reference()),
            ],
            format!(
                "image {} is linux/amd64 according to its config, but was given as linux/arm64",
                amd64.reference()
            ),
        ),
        (
            "duplicate platform",
            vec![amd64.reference(), other_amd64.reference()],
            "two images for linux/amd64".into(),
        ),
        (
            "arm64 and arm64/v8 are one platform",
            vec![
                arm64.reference(),
                format!("linux/arm64/v8={}", multi.repo.clone() + ":v1"),
            ],
            "two images for linux/arm64".into(),
        ),
        (
            "missing source",
            vec![amd64.reference(), missing.clone()],
            format!("{missing} not found"),
        ),
        (
            "missing tag",
            vec![reg.repo("team/app:no-such-tag")],
            "no-such-tag not found".into(),
        ),
        (
            "platform not in a multi-platform index",
            vec![format!("linux/s390x={}:v1", multi.repo)],
            "has no image for linux/s390x (its images are linux/amd64, linux/arm64)".into(),
        ),
        (
            "index lying about a platform",
            vec![lying.reference()],
            format!(
                "is linux/amd64 according to its config, but index {} lists it as linux/arm64",
                lying.reference()
            ),
        ),
        (
            "attestation of an image the index does not list",
            vec![orphan.reference()],
            format!("about image {}, which it does not list", other_amd64.digest),
        ),
    ];
    for (name, sources, expected) in cases {
        let mut args = s(&["--plain-http", "--tag", &tag]);
        args.extend(sources);
        let out = publish(&args, config.path(), None).await;
        assert_eq!(out.code, 1, "{name}: {}", out.stderr);
        assert!(
            out.stderr.contains(&expected),
            "{name}: stderr lacks {expected:?}:\n{}",
            out.stderr
        );
        assert!(out.stdout.trim().is_empty(), "{name}: {}", out.stdout);
    }
    let tags = Skopeo::new(&reg, None).tags(&reg.repo("team/app")).await;
    assert!(tags.is_empty(), "no tag may be written: {tags:?}");

    // a multi-platform index is flattened, and a platform picked from it
    let out = publish(
        &[
            "--plain-http".into(),
            "--tag".into(),
            tag.clone(),
            format!("{}:v1", multi.repo),
            format!(
                "linux/arm/v7={}",
                push.image("team/app", "linux/arm/v7", "v7")
                    .await
                    .reference()
            ),
        ],
        config.path(),
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let index = Skopeo::new(&reg, None).raw_json(&tag).await;
    let platforms: Vec<String> = entries(&index).into_iter().map(|(_, p, _)| p).collect();
    assert_eq!(
        platforms,
        vec!["linux/amd64", "linux/arm64", "linux/arm/v7"]
    );
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let config = anonymous();
    let d = format!("sha256:{}", "a".repeat(64));
    for args in [
        s(&["reg.example.com/app:1"]),
        s(&["--tag", "reg.example.com/app:1"]),
        s(&["--tag", "reg.example.com/app", "reg.example.com/app:src"]),
        s(&[
            "--tag",
            "reg.example.com/app:1",
            "--format",
            "v2",
            "reg.example.com/app:src",
        ]),
        s(&[
            "--tag",
            "reg.example.com/app:1",
            "--timeout",
            "soon",
            "reg.example.com/app:src",
        ]),
        s(&[
            "--tag",
            "reg.example.com/app:1",
            "linux=reg.example.com/app:src",
        ]),
        vec![
            "--tag".into(),
            "reg.example.com/app:1".into(),
            format!("other.example.com/app@{d}"),
        ],
        s(&[
            "--tag",
            "reg.example.com/app:1",
            "--tag",
            "other.example.com/app:1",
            "reg.example.com/app:src",
        ]),
    ] {
        let out = publish(&args, config.path(), None).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// The values (and their basic auth encodings with `user`) that must not appear in anything
/// `publish` prints, even at debug level.
fn secret_forms(user: &str, values: &[&str]) -> Vec<String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    values
        .iter()
        .flat_map(|v| [v.to_string(), b64.encode(format!("{user}:{v}"))])
        .collect()
}

fn assert_keeps_secrets(out: &registry::Output, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !out.stdout.contains(secret.as_str()) && !out.stderr.contains(secret.as_str()),
            "publish printed a secret ({secret:?}):\n{}\n{}",
            out.stdout,
            out.stderr
        );
    }
}

#[tokio::test]
async fn basic_auth_over_tls_with_ca_file() {
    let reg = RegistryServer::start(
        RegistryAuth::Htpasswd {
            user: USER.into(),
            password: PASSWORD.into(),
        },
        true,
    );
    let ca = reg.tls.as_ref().unwrap().ca_file.display().to_string();
    let push = Pusher::new(&reg, Some((USER, PASSWORD))).await;
    let amd64 = push.image("team/app", "linux/amd64", "amd64").await;
    let (arm64_index, arm64, _) = push.buildkit_image("src/app", "linux/arm64", "arm64").await;
    let tag = reg.repo("team/app:2.0");
    let sources = vec![
        format!("linux/amd64={}", amd64.reference()),
        format!("linux/arm64={}", arm64_index.reference()),
    ];
    let skopeo = Skopeo::new(&reg, Some((USER, PASSWORD)));

    // wrong password: a clear error, nothing written
    let wrong = docker_config_basic(&reg.host, USER, "wrong password");
    let mut args = vec!["--ca-file".into(), ca.clone(), "--tag".into(), tag.clone()];
    args.extend(sources.clone());
    let secrets = secret_forms(USER, &[PASSWORD, "wrong password"]);
    let out = publish_logging(&args, wrong.path(), None, "debug").await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("401 Unauthorized"), "{}", out.stderr);
    assert_keeps_secrets(&out, &secrets);
    // no credentials at all: the same
    let out = publish(&args, anonymous().path(), None).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("401 Unauthorized"), "{}", out.stderr);

    // a TLS registry whose CA is not trusted: a clear error naming the remedy
    let right = docker_config_basic(&reg.host, USER, PASSWORD);
    let mut untrusted = vec!["--tag".into(), tag.clone()];
    untrusted.extend(sources.clone());
    let out = publish(&untrusted, right.path(), None).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("--ca-file"), "{}", out.stderr);
    assert!(skopeo.tags(&reg.repo("team/app")).await.is_empty());

    // right credentials and the CA: published, blobs mounted across repositories
    let out = publish_logging(&args, right.path(), None, "debug").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, reg.log());
    assert_keeps_secrets(&out, &secrets);
    let raw = skopeo.raw(&tag).await.expect("published tag");
    assert_eq!(sha256(&raw), out.last_line());
    let index: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(entries(&index).len(), 3);
    assert_entry_matches(&index, 1, &arm64);
    assert_eq!(
        skopeo
            .config(&reg.repo(&format!("team/app@{}", arm64.digest)))
            .await
            .expect("arm64 config in the target repository")["architecture"],
        "arm64"
    );

    // --insecure skips verification instead
    let mut insecure = vec![
        "--insecure".into(),
        "--tag".into(),
        reg.repo("team/app:insecure"),
    ];
    insecure.extend(sources);
    let out2 = publish(&insecure, right.path(), None).await;
    assert_eq!(out2.code, 0, "{}", out2.stderr);
    assert_eq!(out2.last_line(), out.last_line());
}

/// A credential helper script answering for one registry.
fn credential_helper(dir: &std::path::Path, name: &str, host: &str, user: &str, password: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread -r url\nif [ \"$url\" = \"{host}\" ]; then\n  printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}' \"$url\"\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn token_auth_through_a_token_service_and_a_credential_helper() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TokenIssuer::start(dir.path(), &[(USER, PASSWORD)]);
    let reg = token_registry(&issuer);
    let push = Pusher::new(&reg, Some((USER, PASSWORD))).await;
    let amd64 = push.image("team/app", "linux/amd64", "amd64").await;
    // in another repository: a token scoped to the target cannot mount it, so it is copied
    let (arm64_index, arm64, arm64_att) =
        push.buildkit_image("src/app", "linux/arm64", "arm64").await;
    let tag = reg.repo("team/app:3.0");
    let mut args = s(&["--plain-http", "--tag", &tag]);
    args.push(format!("linux/amd64={}", amd64.reference()));
    args.push(format!("linux/arm64={}", arm64_index.reference()));
    let skopeo = Skopeo::new(&reg, Some((USER, PASSWORD)));

    // wrong password: the token service refuses it, publish says so, nothing written
    let refused_before = issuer.refused.load(std::sync::atomic::Ordering::SeqCst);
    let wrong = docker_config_basic(&reg.host, USER, "guess-password");
    let out = publish_logging(&args, wrong.path(), None, "debug").await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_keeps_secrets(&out, &secret_forms(USER, &["guess-password"]));
    assert!(
        out.stderr.contains("token service refused the credentials"),
        "{}",
        out.stderr
    );
    assert!(issuer.refused.load(std::sync::atomic::Ordering::SeqCst) > refused_before);
    assert!(skopeo.tags(&reg.repo("team/app")).await.is_empty());

    // credentials from a credential helper (credHelpers), through the token exchange
    let bin = tempfile::tempdir().unwrap();
    credential_helper(bin.path(), "test", &reg.host, USER, PASSWORD);
    let helper_config = docker_config(&json!({"credHelpers": {reg.host.clone(): "test"}}));
    let out = publish_logging(&args, helper_config.path(), Some(bin.path()), "debug").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, reg.log());
    // what the helper answered is never printed, nor its basic auth form
    assert_keeps_secrets(&out, &secret_forms(USER, &[PASSWORD]));
    let raw = skopeo.raw(&tag).await.expect("published");
    assert_eq!(sha256(&raw), out.last_line());
    let index: Value = serde_json::from_slice(&raw).unwrap();
    assert_entry_matches(&index, 0, &amd64);
    assert_entry_matches(&index, 1, &arm64);
    assert_entry_matches(&index, 2, &arm64_att);
    let att = skopeo
        .raw_json(&reg.repo(&format!("team/app@{}", arm64_att.digest)))
        .await;
    assert_eq!(
        att["layers"][0]["mediaType"],
        "application/vnd.in-toto+json"
    );
    assert!(issuer.issued.load(std::sync::atomic::Ordering::SeqCst) > 0);
}

#[tokio::test]
async fn server_errors_are_retried() {
    let reg = RegistryServer::start(RegistryAuth::None, false);
    let push = Pusher::new(&reg, None).await;
    let amd64 = push.image("team/app", "linux/amd64", "amd64").await;
    let arm64 = push.image("src/app", "linux/arm64", "arm64").await;
    let proxy = FaultProxy::start(
        &reg.host,
        vec![
            FaultRule::first(2, Some("GET"), "/manifests/", 503),
            FaultRule::first(1, Some("POST"), "/blobs/uploads/", 502),
            FaultRule::first(1, Some("PUT"), "/manifests/", 500),
            FaultRule::first(1, Some("GET"), "/blobs/", 429),
        ],
    );
    let tag = format!("{}/team/app:1.0", proxy.host);
    let out = publish(
        &[
            "--plain-http".into(),
            "--tag".into(),
            tag.clone(),
            format!("{}/team/app@{}", proxy.host, amd64.digest),
            format!("linux/arm64={}/src/app@{}", proxy.host, arm64.digest),
        ],
        anonymous().path(),
        None,
    )
    .await;
    assert_eq!(
        out.code,
        0,
        "{}\nproxy saw: {:#?}",
        out.stderr,
        proxy.requests()
    );
    for rule in 0..4 {
        assert!(
            proxy.fired(rule) > 0,
            "fault {rule} never fired: {:#?}",
            proxy.requests()
        );
    }
    assert!(out.stderr.contains("retrying"), "{}", out.stderr);
    let raw = Skopeo::new(&reg, None)
        .raw(&reg.repo("team/app:1.0"))
        .await
        .unwrap();
    assert_eq!(sha256(&raw), out.last_line());
}

#[tokio::test]
async fn a_tag_failing_part_way_exits_3_naming_the_tags_written() {
    let reg = RegistryServer::start(RegistryAuth::None, false);
    let push = Pusher::new(&reg, None).await;
    let amd64 = push.image("team/app", "linux/amd64", "amd64").await;
    let arm64 = push.image("team/app", "linux/arm64", "arm64").await;
    let proxy = FaultProxy::start(
        &reg.host,
        vec![FaultRule::always("PUT", "/team/app/manifests/second", 500)],
    );
    let repo = format!("{}/team/app", proxy.host);
    let out = publish(
        &[
            "--plain-http".into(),
            "--tag".into(),
            format!("{repo}:first"),
            "--tag".into(),
            format!("{repo}:second"),
            "--tag".into(),
            format!("{repo}:third"),
            format!("{repo}@{}", amd64.digest),
            format!("{repo}@{}", arm64.digest),
        ],
        anonymous().path(),
        None,
    )
    .await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("tags written: {repo}:first\n")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("tags not written: {repo}:second {repo}:third")),
        "{}",
        out.stderr
    );
    assert!(proxy.fired(0) > 1, "the failing PUT was retried");
    let skopeo = Skopeo::new(&reg, None);
    let mut tags = skopeo.tags(&reg.repo("team/app")).await;
    tags.sort();
    assert_eq!(tags, vec!["first"]);
    let raw = skopeo.raw(&reg.repo("team/app:first")).await.unwrap();
    assert_eq!(sha256(&raw), out.last_line());
}

/// The library API the controller calls: prepare (reads only), per-platform tags, write.
#[tokio::test]
async fn controller_api_prepares_tags_platform_images_and_writes() {
    multiarch_operator::install_crypto_provider();
    let reg = RegistryServer::start(RegistryAuth::None, false);
    let push = Pusher::new(&reg, None).await;
    let amd64 = push.image("team/app", "linux/amd64", "amd64").await;
    let (arm64_index, arm64, arm64_att) = push
        .buildkit_image("team/app", "linux/arm64", "arm64")
        .await;
    let publisher = Publisher::from_config(
        RegistryConfig {
            plain_http: true,
            ..RegistryConfig::default()
        },
        DockerConfig::empty(),
    )
    .unwrap();
    let target: Repository = reg.repo("team/app").parse().unwrap();
    let source = |platform: &str, r: &Pushed| {
        Source::new(
            r.reference().parse().unwrap(),
            Some(platform.parse().unwrap()),
        )
    };

    // the registry adapter: a builder's digest is there, another is not
    let amd64_digest: Digest = amd64.digest.parse().unwrap();
    assert!(publisher
        .registry()
        .manifest_digest_exists(&target, &amd64_digest)
        .await
        .unwrap());
    let absent: Digest = format!("sha256:{}", "1".repeat(64)).parse().unwrap();
    assert!(!publisher
        .registry()
        .manifest_digest_exists(&target, &absent)
        .await
        .unwrap());

    // a mismatch is a distinct error, and nothing was written
    let err = publisher
        .prepare(&[source("linux/arm64", &amd64)], &target, IndexFormat::Oci)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PublishError::PlatformMismatch { .. }),
        "{err}"
    );
    assert!(err.is_platform_mismatch() && !err.is_transient());
    let err = publisher
        .prepare(
            &[source("linux/amd64", &arm64_index)],
            &target,
            IndexFormat::Oci,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PublishError::PlatformMismatch { .. }),
        "{err}"
    );

    let plan = publisher
        .prepare(
            &[
                source("linux/amd64", &amd64),
                source("linux/arm64", &arm64_index),
            ],
            &target,
            IndexFormat::Oci,
        )
        .await
        .unwrap();
    assert_eq!(plan.images().len(), 2);
    let arm = plan.image_for(&"linux/arm64/v8".parse().unwrap()).unwrap();
    assert_eq!(arm.digest().as_str(), arm64.digest);
    assert_eq!(arm.attestations()[0].digest().as_str(), arm64_att.digest);
    let skopeo = Skopeo::new(&reg, None);
    assert!(
        skopeo.tags(&reg.repo("team/app")).await.is_empty(),
        "prepare writes nothing"
    );

    // per-platform tags, then the index to the tags
    for image in plan.images() {
        let tag: Tag = format!("1.0.0-{}", image.platform().tag_suffix())
            .parse()
            .unwrap();
        let d = publisher.tag_image(&plan, image, &tag).await.unwrap();
        assert_eq!(&d, image.digest());
    }
    let tags: Vec<Tag> = vec!["1.0.0".parse().unwrap(), "latest".parse().unwrap()];
    let digest = publisher.write(&plan, &tags).await.unwrap();
    assert_eq!(&digest, plan.digest());
    let raw = skopeo.raw(&reg.repo("team/app:latest")).await.unwrap();
    assert_eq!(raw, plan.index_bytes());
    let latest = reg.repo("team/app:latest").parse().unwrap();
    assert_eq!(
        publisher
            .registry()
            .resolve(&latest)
            .await
            .unwrap()
            .as_ref(),
        Some(plan.digest())
    );
    let nowhere = reg.repo("team/app:nowhere").parse().unwrap();
    assert_eq!(publisher.registry().resolve(&nowhere).await.unwrap(), None);
    let per_platform = skopeo.raw_json(&reg.repo("team/app:1.0.0-arm64")).await;
    assert_eq!(per_platform["mediaType"], OCI_MANIFEST);
    assert_eq!(
        sha256(&skopeo.raw(&reg.repo("team/app:1.0.0-arm64")).await.unwrap()),
        arm64.digest
    );
    let mut all = skopeo.tags(&reg.repo("team/app")).await;
    all.sort();
    assert_eq!(all, vec!["1.0.0", "1.0.0-amd64", "1.0.0-arm64", "latest"]);
}

/// The manifests PUT to `repo`, in the order the registry's access log shows them: the path
/// after `/manifests/` (a tag or a digest).
fn manifest_puts(log: &str, repo: &str) -> Vec<String> {
    let prefix = format!("\"PUT /v2/{repo}/manifests/");
    log.lines()
        .filter_map(|l| {
            let at = l.find(&prefix)? + prefix.len();
            l[at..].split_whitespace().next().map(str::to_string)
        })
        .collect()
}

#[tokio::test]
async fn a_signed_publish_pushes_the_index_then_its_signature_then_the_tags_and_signs_once() {
    const KEY: &str = include_str!("../src/publish/testdata/cosign.key");
    const PUBLIC: &str = include_str!("../src/publish/testdata/cosign.pub");
    const KEY_PASSWORD: &str = "multiarch-test";
    let reg = RegistryServer::start(RegistryAuth::None, false);
    let push = Pusher::new(&reg, None).await;
    let amd64 = push.image("team/app", "linux/amd64", "amd64").await;
    let arm64 = push.image("team/app", "linux/arm64", "arm64").await;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("cosign.key");
    std::fs::write(&key, KEY).unwrap();
    let config = anonymous();
    let args = |tag: &str| {
        vec![
            "--plain-http".to_string(),
            "--sign-key".into(),
            key.display().to_string(),
            "--tag".into(),
            reg.repo(&format!("team/app:{tag}")),
            format!("linux/amd64={}", amd64.reference()),
            format!("linux/arm64={}", arm64.reference()),
        ]
    };
    let signed = |args: Vec<String>, password: &'static str| {
        let config = config.path().to_path_buf();
        async move {
            let env = [("COSIGN_PASSWORD", password)];
            registry::publish_with_env(&args, &config, None, "info", &env).await
        }
    };

    // a wrong password: refused before anything is written, and never shown
    let out = signed(args("1.0.0"), "not-the-password").await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("cannot be decrypted"), "{}", out.stderr);
    assert!(!out.stderr.contains("not-the-password"), "{}", out.stderr);
    let skopeo = Skopeo::new(&reg, None);
    assert!(skopeo.tags(&reg.repo("team/app")).await.is_empty());

    let before = manifest_puts(&reg.log(), "team/app").len();
    let out = signed(args("1.0.0"), KEY_PASSWORD).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, reg.log());
    let digest = out.last_line();
    let sig_tag = format!("{}.sig", digest.replace(':', "-"));
    assert_eq!(
        manifest_puts(&reg.log(), "team/app")[before..],
        [digest.clone(), sig_tag.clone(), "1.0.0".into()],
        "the index by digest, then its signature, then the tag"
    );
    let sig_ref = reg.repo(&format!("team/app:{sig_tag}"));
    let manifest = skopeo.raw_json(&sig_ref).await;
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{manifest}");
    let payload_ref = reg.repo(&format!(
        "team/app@{}",
        layers[0]["digest"].as_str().unwrap()
    ));
    let payload = blob(&payload_ref).await;
    let claims: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        claims["critical"]["image"]["docker-manifest-digest"],
        digest
    );
    let signature = layers[0]["annotations"]["dev.cosignproject.cosign/signature"]
        .as_str()
        .expect("signature annotation");
    let public = sigstore::crypto::CosignVerificationKey::try_from_pem(PUBLIC.as_bytes()).unwrap();
    public
        .verify_signature(
            sigstore::crypto::Signature::Base64Encoded(signature.as_bytes()),
            &payload,
        )
        .expect("the signature verifies with the public key");

    // the same index again, to another tag: signed already, so no second signature
    let sig_manifest = skopeo.raw(&sig_ref).await.unwrap();
    let out = signed(args("latest"), KEY_PASSWORD).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.last_line(), digest);
    assert_eq!(skopeo.raw(&sig_ref).await.unwrap(), sig_manifest);
    assert_eq!(
        manifest_puts(&reg.log(), "team/app")[before + 3..],
        [digest, "latest".into()],
        "a re-publish pushes the index and the tag, not the signature"
    );
}

/// The blob at `reference` (`host/repo@digest`), read over plain HTTP.
async fn blob(reference: &str) -> Vec<u8> {
    multiarch_operator::install_crypto_provider();
    let (repo, digest) = reference.split_once('@').expect("a digest reference");
    let (host, path) = repo.split_once('/').expect("host/path");
    let url = format!("http://{host}/v2/{path}/blobs/{digest}");
    let response = reqwest::get(&url).await.expect("GET blob");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    let bytes = response.bytes().await.expect("blob body").to_vec();
    assert_eq!(sha256(&bytes), digest, "{url}");
    bytes
}
