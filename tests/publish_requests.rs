//! The requests a publish makes, counted by the test's own proxy (`support/registry/proxy.rs`)
//! in front of a real registry (Debian's `docker-registry`) on loopback. A publish of N images
//! in the target repository to T tags needs 2N + T requests: one GET per source manifest, one
//! GET per image config, one PUT per tag (the first tag's PUT creates the index); per-platform
//! tags add one PUT each; a registry that wants credentials adds its one challenge, and a token
//! service one token request. Connections are reused: as many as sources are read at once.

#[path = "support/registry/mod.rs"]
mod registry;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use multiarch_operator::publish::{
    DockerConfig, IndexFormat, Publisher, RegistryConfig, Source, CONCURRENT_READS,
};
use multiarch_operator::reference::{Repository, Tag};
use registry::images::{Pushed, Pusher};
use registry::proxy::FaultProxy;
use registry::token::TokenIssuer;
use registry::{
    docker_config, docker_config_basic, publish, token_registry, RegistryAuth, RegistryServer,
};

const PLATFORMS: [&str; 8] = [
    "linux/amd64",
    "linux/arm64",
    "linux/arm/v7",
    "linux/ppc64le",
    "linux/s390x",
    "linux/386",
    "linux/riscv64",
    "linux/arm/v6",
];
const TAGS: [&str; 2] = ["1.0.0", "latest"];
const USER: &str = "builder";
const PASSWORD: &str = "correct horse battery staple";

/// What a request was, from the proxy's `METHOD PATH -> STATUS` line: `PUT manifest 1.0.0`
/// for a manifest pushed to a tag, `PUT manifest digest` by digest, `GET blob`, `GET /v2/`...
fn kind(line: &str) -> String {
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or("?"), words.next().unwrap_or("?"));
    let status = line.rsplit(' ').next().unwrap_or("?");
    let what = if path == "/v2/" {
        "/v2/".to_string()
    } else if let Some((_, reference)) = path.split_once("/manifests/") {
        match (method, reference.starts_with("sha256:")) {
            ("PUT", true) => "manifest digest".into(),
            ("PUT", false) => format!("manifest {reference}"),
            _ => "manifest".into(),
        }
    } else if path.contains("/blobs/uploads/") {
        "blob upload".into()
    } else if path.contains("/blobs/") {
        "blob".into()
    } else {
        path.to_string()
    };
    match status {
        "401" => format!("{method} {what} -> 401"),
        _ => format!("{method} {what}"),
    }
}

fn counts(requests: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in requests {
        *counts.entry(kind(r)).or_default() += 1;
    }
    counts
}

/// The counts a publish of `n` images to `tags` should make (and `extra` more).
fn expected(n: usize, tags: &[&str], extra: &[(&str, usize)]) -> BTreeMap<String, usize> {
    let mut e = BTreeMap::from([("GET manifest".to_string(), n), ("GET blob".to_string(), n)]);
    for t in tags {
        e.insert(format!("PUT manifest {t}"), 1);
    }
    for (k, v) in extra {
        *e.entry(k.to_string()).or_default() += v;
    }
    e
}

/// Every read before the first write.
fn assert_reads_first(requests: &[String]) {
    let first_write = requests.iter().position(|r| r.starts_with("PUT"));
    let last_read = requests.iter().rposition(|r| r.starts_with("GET"));
    if let (Some(w), Some(r)) = (first_write, last_read) {
        assert!(r < w, "a read after a write: {requests:#?}");
    }
}

/// Connections reused: one per source read at once (`CONCURRENT_READS`), and one more that the
/// client's pool may open racing the previous connection coming free; never one per request.
fn assert_connections_reused(proxy: &FaultProxy, requests: usize) {
    let used = proxy.connections_used();
    assert!(
        used <= CONCURRENT_READS + 1,
        "{used} connections for {requests} requests"
    );
}

/// `n` images, one per platform, pushed by digest into `path`.
async fn images(push: &Pusher, path: &str, n: usize) -> Vec<Pushed> {
    let mut out = Vec::new();
    for p in &PLATFORMS[..n] {
        out.push(push.image(path, p, &format!("{path} {p}")).await);
    }
    out
}

fn publish_args(proxy: &FaultProxy, path: &str, images: &[Pushed]) -> Vec<String> {
    let mut args = vec!["--plain-http".to_string()];
    for t in TAGS {
        args.extend(["--tag".into(), format!("{}/{path}:{t}", proxy.host)]);
    }
    for (p, image) in PLATFORMS.iter().zip(images) {
        args.push(format!("{p}={}/{path}@{}", proxy.host, image.digest));
    }
    args
}

#[tokio::test]
async fn publish_makes_two_requests_per_image_and_one_per_tag() {
    let reg = RegistryServer::start(RegistryAuth::None, false);
    let push = Pusher::new(&reg, None).await;
    let config = docker_config(&serde_json::json!({}));
    for n in [2, 4, 8] {
        let path = format!("count{n}/app");
        let images = images(&push, &path, n).await;
        let proxy = FaultProxy::start(&reg.host, Vec::new());
        let out = publish(&publish_args(&proxy, &path, &images), config.path(), None).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let requests = proxy.requests();
        println!(
            "N={n} T={}: {} requests over {} connection(s): {:?}",
            TAGS.len(),
            requests.len(),
            proxy.connections_used(),
            counts(&requests)
        );
        assert_eq!(counts(&requests), expected(n, &TAGS, &[]), "{requests:#?}");
        assert_eq!(requests.len(), 2 * n + TAGS.len());
        assert_reads_first(&requests);
        assert_connections_reused(&proxy, requests.len());
    }
}

#[tokio::test]
async fn a_token_registry_adds_one_challenge_and_one_token_request() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TokenIssuer::start(dir.path(), &[(USER, PASSWORD)]);
    let reg = token_registry(&issuer);
    let push = Pusher::new(&reg, Some((USER, PASSWORD))).await;
    let n = 4;
    let in_target = images(&push, "team/app", n).await;
    let proxy = FaultProxy::start(&reg.host, Vec::new());
    let config = docker_config_basic(&proxy.host, USER, PASSWORD);
    let issued = issuer.issued.load(Ordering::SeqCst);
    let out = publish(
        &publish_args(&proxy, "team/app", &in_target),
        config.path(),
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let requests = proxy.requests();
    let tokens = issuer.issued.load(Ordering::SeqCst) - issued;
    println!(
        "token registry, N={n} T={}: {} registry requests over {} connection(s), {tokens} token request(s): {:?}",
        TAGS.len(),
        requests.len(),
        proxy.connections_used(),
        counts(&requests)
    );
    // the first request meets the challenge; its token (pull and push on the target) serves
    // every later request
    assert_eq!(
        counts(&requests),
        expected(n, &TAGS, &[("GET manifest -> 401", 1)]),
        "{requests:#?}"
    );
    assert_eq!(tokens, 1, "one token for the whole publish");
    assert_reads_first(&requests);
    assert_connections_reused(&proxy, requests.len());

    // sources in another repository: three scopes (the source, the target, a mount from one
    // into the other), a token each, and still one challenge: once the token service is known,
    // a token is asked for before the request that needs it
    let elsewhere = images(&push, "src/app", 2).await;
    let proxy = FaultProxy::start(&reg.host, Vec::new());
    let config = docker_config_basic(&proxy.host, USER, PASSWORD);
    let mut args = publish_args(&proxy, "src/app", &elsewhere);
    for t in TAGS {
        let at = args
            .iter()
            .position(|a| a.ends_with(&format!("src/app:{t}")))
            .unwrap();
        args[at] = format!("{}/team/copied:{t}", proxy.host);
    }
    let issued = issuer.issued.load(Ordering::SeqCst);
    let out = publish(&args, config.path(), None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let requests = proxy.requests();
    let tokens = issuer.issued.load(Ordering::SeqCst) - issued;
    println!(
        "token registry, 2 images copied from another repository: {} registry requests, {tokens} token request(s): {:?}",
        requests.len(),
        counts(&requests)
    );
    let challenges = requests.iter().filter(|r| r.ends_with("-> 401")).count();
    assert_eq!(challenges, 1, "{requests:#?}");
    assert_eq!(tokens, 3, "one token per scope");
}

/// What the controller does: prepare, a tag per platform image, then the index to its tags.
#[tokio::test]
async fn the_controller_adds_one_put_per_platform_tag() {
    multiarch_operator::install_crypto_provider();
    let reg = RegistryServer::start(RegistryAuth::None, false);
    let push = Pusher::new(&reg, None).await;
    let n = 2;
    let images = images(&push, "team/app", n).await;
    let proxy = FaultProxy::start(&reg.host, Vec::new());
    let publisher = Publisher::from_config(
        RegistryConfig {
            plain_http: true,
            ..RegistryConfig::default()
        },
        DockerConfig::empty(),
    )
    .unwrap();
    let target: Repository = format!("{}/team/app", proxy.host).parse().unwrap();
    let sources: Vec<Source> = PLATFORMS
        .iter()
        .zip(&images)
        .map(|(p, i)| {
            let reference = target.with_digest(i.digest.parse().unwrap());
            Source::new(reference, Some(p.parse().unwrap()))
        })
        .collect();
    let plan = publisher
        .prepare(&sources, &target, IndexFormat::Oci)
        .await
        .unwrap();
    let mut platform_tags = Vec::new();
    for image in plan.images() {
        let tag: Tag = format!("1.0.0-{}", image.platform().tag_suffix())
            .parse()
            .unwrap();
        publisher.tag_image(&plan, image, &tag).await.unwrap();
        platform_tags.push(tag.to_string());
    }
    let tags: Vec<Tag> = TAGS.iter().map(|t| t.parse().unwrap()).collect();
    publisher.write(&plan, &tags).await.unwrap();
    let requests = proxy.requests();
    println!(
        "controller, N={n} T={} with platform tags: {} requests: {:?}",
        TAGS.len(),
        requests.len(),
        counts(&requests)
    );
    let mut all_tags: Vec<&str> = platform_tags.iter().map(String::as_str).collect();
    all_tags.extend(TAGS);
    assert_eq!(
        counts(&requests),
        expected(n, &all_tags, &[]),
        "{requests:#?}"
    );
    assert_reads_first(&requests);
}
