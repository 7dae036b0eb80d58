//! The `multiarch-operator publish` command: assembles per-platform images into a verified index
//! and pushes it to tags. The index digest is the last line of standard output; logs go to
//! standard error. Exit codes: 0 published, 1 failed with nothing written, 2 usage error, 3 partly
//! written (the tags written are listed).

use std::path::PathBuf;
use std::time::Duration;

use tracing::error;

use super::{DockerConfig, IndexFormat, Publisher, RegistryConfig, Signer, Source};
use crate::reference::{Reference, Repository, Tag};

/// Published.
pub const EXIT_PUBLISHED: i32 = 0;
/// Failed with nothing written: no tag changed.
pub const EXIT_FAILED: i32 = 1;
/// Usage error.
pub const EXIT_USAGE: i32 = 2;
/// Some tags written, not all.
pub const EXIT_PARTIAL: i32 = 3;

/// The media type of the index (`--format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// OCI image index (`application/vnd.oci.image.index.v1+json`).
    #[default]
    Oci,
    /// Docker manifest list (`application/vnd.docker.distribution.manifest.list.v2+json`).
    Docker,
}

impl From<FormatArg> for IndexFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Oci => IndexFormat::Oci,
            FormatArg::Docker => IndexFormat::Docker,
        }
    }
}

/// Arguments of `multiarch-operator publish`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Every source is read and every image's platform checked against its config before anything is \
written; then the index is pushed to each tag in order.

Exit codes: 0 published; 1 failed, nothing written; 2 usage error; 3 partly written (the tags \
written are listed on standard error).

Example:
  multiarch-operator publish --tag reg.example.com/team/app:1.0.0 --tag reg.example.com/team/app:latest \\
    linux/amd64=reg.example.com/team/app@sha256:... linux/arm64=reg.example.com/team/app@sha256:...")]
pub struct PublishArgs {
    /// A tag to publish the index to, as a full reference (registry/repository:tag). Repeatable;
    /// tags are written in this order.
    #[arg(long = "tag", value_name = "REF", required = true, value_parser = parse_tag)]
    pub tags: Vec<Reference>,
    /// An image or index to list, `REF` or `PLATFORM=REF` (for example
    /// `linux/arm64=reg/app@sha256:...`). With a platform, the image's config must agree. An index
    /// (an image plus attestations, or several platforms) is flattened. Entries follow this order.
    #[arg(value_name = "SOURCE", required = true, value_parser = parse_source)]
    pub sources: Vec<Source>,
    /// Talk plain HTTP to the registry.
    #[arg(long)]
    pub plain_http: bool,
    /// Use TLS without verifying the registry's certificate.
    #[arg(long)]
    pub insecure: bool,
    /// Extra CA certificates (PEM) to trust for the registry.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Deadline of each registry operation, its retries included (for example 30s, 2m); a blob
    /// copy gets one second more per MiB.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Media type of the index.
    #[arg(long, value_enum, default_value_t = FormatArg::Oci)]
    pub format: FormatArg,
    /// Sign the index with this cosign private key (`cosign generate-key-pair`), its password in
    /// the environment variable COSIGN_PASSWORD. The index is pushed by digest, then signed
    /// (`sha256-<hex>.sig`, no transparency log), then tagged: no tag names it unsigned.
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
}

/// The environment variable holding the password of `--sign-key` (cosign's own).
pub const SIGN_PASSWORD_ENV: &str = "COSIGN_PASSWORD";

fn parse_tag(s: &str) -> Result<Reference, String> {
    let r: Reference = s.parse().map_err(|e| format!("{e}"))?;
    match (&r.tag, &r.digest) {
        (Some(_), None) => Ok(r),
        _ => Err(format!(
            "{s:?} must be registry/repository:tag (a tag, no digest)"
        )),
    }
}

fn parse_source(s: &str) -> Result<Source, String> {
    s.parse().map_err(|e| format!("{e}"))
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match crate::config::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("the timeout must be more than 0s".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// Checks that every tag and source is in one registry; returns the tags grouped into runs of
/// consecutive tags of one repository, in order.
fn tag_runs(args: &PublishArgs) -> Result<Vec<(Repository, Vec<Tag>)>, String> {
    let registry = args
        .tags
        .first()
        .map(|t| t.repository.registry().to_string())
        .ok_or("at least one --tag is required")?;
    let others = args
        .tags
        .iter()
        .map(|t| &t.repository)
        .chain(args.sources.iter().map(|s| &s.reference.repository))
        .filter(|r| r.registry() != registry)
        .map(|r| r.to_string())
        .collect::<Vec<_>>();
    if !others.is_empty() {
        return Err(format!(
            "all tags and sources must be in one registry ({registry}); not: {}",
            others.join(", ")
        ));
    }
    let mut runs: Vec<(Repository, Vec<Tag>)> = Vec::new();
    for t in &args.tags {
        let tag = t.tag.clone().ok_or("a --tag has no tag")?;
        match runs.last_mut() {
            Some((repo, tags)) if repo == &t.repository => tags.push(tag),
            _ => runs.push((t.repository.clone(), vec![tag])),
        }
    }
    Ok(runs)
}

/// Runs the command and returns the process exit code.
pub async fn run(args: PublishArgs) -> i32 {
    crate::install_crypto_provider();
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    crate::telemetry::init(&level, crate::telemetry::LogFormat::Text);
    let runs = match tag_runs(&args) {
        Ok(runs) => runs,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let signer = match signer(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: nothing written: {e}");
            return EXIT_FAILED;
        }
    };
    let publisher = match publisher(&args) {
        Ok(p) => p,
        Err(e) => {
            error!("{e}");
            eprintln!("error: nothing written: {e}");
            return EXIT_FAILED;
        }
    };
    // every check, for every target repository, before any write
    let plans = match prepare_all(&publisher, &args, &runs).await {
        Ok(plans) => plans,
        Err(e) => {
            error!(error = %e, "publish failed");
            eprintln!("error: nothing written: {e}");
            return EXIT_FAILED;
        }
    };
    write_all(&publisher, &runs, &plans, signer.as_ref()).await
}

/// The signer of `--sign-key`, read before anything is checked or written.
fn signer(args: &PublishArgs) -> Result<Option<Signer>, String> {
    let Some(path) = &args.sign_key else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|e| format!("--sign-key {}: {e}", path.display()))?;
    let password = std::env::var(SIGN_PASSWORD_ENV).unwrap_or_default();
    Signer::from_encrypted_pem(&pem, password.as_bytes())
        .map(Some)
        .map_err(|e| {
            format!(
                "--sign-key {} (password from {SIGN_PASSWORD_ENV}): {e}",
                path.display()
            )
        })
}

/// The publishing engine with the Docker config's credentials and the flags' registry settings.
fn publisher(args: &PublishArgs) -> Result<Publisher, String> {
    let credentials = DockerConfig::load_default().map_err(|e| e.to_string())?;
    let config = RegistryConfig {
        plain_http: args.plain_http,
        insecure: args.insecure,
        ca_file: args.ca_file.clone(),
        timeout: args.timeout,
        ..RegistryConfig::default()
    };
    Publisher::from_config(config, credentials).map_err(|e| e.to_string())
}

/// One plan per run, each target repository prepared once; nothing is written.
async fn prepare_all(
    publisher: &Publisher,
    args: &PublishArgs,
    runs: &[(Repository, Vec<Tag>)],
) -> Result<Vec<super::PublishPlan>, super::PublishError> {
    let format = IndexFormat::from(args.format);
    let mut plans: Vec<(Repository, super::PublishPlan)> = Vec::new();
    for (repo, _) in runs {
        let plan = match plans.iter().find(|(r, _)| r == repo) {
            Some((_, known)) => known.clone(),
            None => publisher.prepare(&args.sources, repo, format).await?,
        };
        plans.push((repo.clone(), plan));
    }
    Ok(plans.into_iter().map(|(_, p)| p).collect())
}

/// Writes each run's index and tags; the exit code says how far it got.
async fn write_all(
    publisher: &Publisher,
    runs: &[(Repository, Vec<Tag>)],
    plans: &[super::PublishPlan],
    signer: Option<&Signer>,
) -> i32 {
    let mut written: Vec<Reference> = Vec::new();
    let mut digest = None;
    for ((repo, tags), plan) in runs.iter().zip(plans) {
        let result = match signer {
            None => publisher.write(plan, tags).await,
            Some(signer) => {
                publisher
                    .write_signed(plan, tags, signer)
                    .await
                    .map(|(d, signature)| {
                        let at = repo.with_tag(signature.tag.clone());
                        eprintln!("signed: {at} ({}), key {}", signature.digest, signature.key);
                        d
                    })
            }
        };
        match result {
            Ok(d) => {
                written.extend(tags.iter().map(|t| repo.with_tag(t.clone())));
                digest = Some(d);
            }
            Err(partial) => {
                written.extend(partial.written.iter().map(|t| repo.with_tag(t.clone())));
                error!(error = %partial.error, "publish failed");
                if written.is_empty() {
                    eprintln!("error: no tag written: {}", partial.error);
                    return EXIT_FAILED;
                }
                report_partial(runs, &written, &partial.error.to_string());
                println!("{}", plan.digest());
                return EXIT_PARTIAL;
            }
        }
    }
    match digest {
        Some(d) => {
            let tags: Vec<String> = written.iter().map(ToString::to_string).collect();
            tracing::info!(digest = %d, tags = %tags.join(" "), "published");
            println!("{d}");
            EXIT_PUBLISHED
        }
        None => EXIT_USAGE,
    }
}

/// Says which tags were written and which were not, after a write failed part-way.
fn report_partial(runs: &[(Repository, Vec<Tag>)], written: &[Reference], error: &str) {
    let done: Vec<String> = written.iter().map(ToString::to_string).collect();
    let missing: Vec<String> = runs
        .iter()
        .flat_map(|(r, ts)| ts.iter().map(|t| r.with_tag(t.clone()).to_string()))
        .filter(|t| !done.contains(t))
        .collect();
    eprintln!("error: partly published: {error}");
    eprintln!("tags written: {}", done.join(" "));
    eprintln!("tags not written: {}", missing.join(" "));
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: PublishArgs,
    }

    fn parse(argv: &[&str]) -> Result<PublishArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("publish").chain(argv.iter().copied())).map(|c| c.args)
    }

    const D: &str = "sha256:abababababababababababababababababababababababababababababababab";

    #[test]
    fn arguments_parse_with_defaults() {
        let a = parse(&[
            "--tag",
            "reg.example.com/team/app:1.0",
            &format!("linux/arm64=reg.example.com/team/app@{D}"),
        ])
        .unwrap();
        assert_eq!(a.tags.len(), 1);
        assert_eq!(a.sources[0].platform, Some("linux/arm64".parse().unwrap()));
        assert_eq!(a.timeout, Duration::from_secs(20));
        assert_eq!(a.format, FormatArg::Oci);
        assert!(!a.plain_http && !a.insecure && a.ca_file.is_none());
        let a = parse(&[
            "--tag=reg.example.com/a:1",
            "--format",
            "docker",
            "--timeout",
            "2m",
            "--plain-http",
            "--insecure",
            "--ca-file",
            "/tmp/ca.pem",
            "reg.example.com/a:src",
        ])
        .unwrap();
        assert_eq!(IndexFormat::from(a.format), IndexFormat::Docker);
        assert_eq!(a.timeout, Duration::from_secs(120));
        assert!(a.plain_http && a.insecure);
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for argv in [
            vec!["reg.example.com/a:1"],                               // no --tag
            vec!["--tag", "reg.example.com/a:1"],                      // no source
            vec!["--tag", "reg.example.com/a", "reg.example.com/a:1"], // tag without tag
            vec![
                "--tag",
                &format!("reg.example.com/a@{D}"),
                "reg.example.com/a:1",
            ],
            vec!["--tag", "reg.example.com/a:1", "linux=reg.example.com/a:1"],
            vec![
                "--tag",
                "reg.example.com/a:1",
                "--timeout",
                "soon",
                "reg.example.com/a:2",
            ],
            vec![
                "--tag",
                "reg.example.com/a:1",
                "--timeout",
                "0s",
                "reg.example.com/a:2",
            ],
            vec![
                "--tag",
                "reg.example.com/a:1",
                "--format",
                "v2",
                "reg.example.com/a:2",
            ],
        ] {
            let err = parse(&argv).unwrap_err();
            assert_eq!(err.exit_code(), EXIT_USAGE, "{argv:?}");
        }
    }

    #[test]
    fn tags_and_sources_must_share_one_registry() {
        let a = parse(&[
            "--tag",
            "reg.example.com/a:1",
            "--tag",
            "other.example.com/a:1",
            "reg.example.com/a:src",
        ])
        .unwrap();
        let err = tag_runs(&a).unwrap_err();
        assert!(err.contains("other.example.com/a"), "{err}");
        let a = parse(&["--tag", "reg.example.com/a:1", "other.example.com/a:src"]).unwrap();
        assert!(tag_runs(&a).is_err());
    }

    #[test]
    fn tags_are_grouped_by_repository_in_order() {
        let a = parse(&[
            "--tag",
            "reg.example.com/a:1",
            "--tag",
            "reg.example.com/a:2",
            "--tag",
            "reg.example.com/b:1",
            "--tag",
            "reg.example.com/a:3",
            "reg.example.com/src:x",
        ])
        .unwrap();
        let runs: Vec<(String, Vec<String>)> = tag_runs(&a)
            .unwrap()
            .into_iter()
            .map(|(r, ts)| (r.to_string(), ts.iter().map(|t| t.to_string()).collect()))
            .collect();
        assert_eq!(
            runs,
            vec![
                ("reg.example.com/a".into(), vec!["1".into(), "2".into()]),
                ("reg.example.com/b".into(), vec!["1".into()]),
                ("reg.example.com/a".into(), vec!["3".into()]),
            ]
        );
    }
}
