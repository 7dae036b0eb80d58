//! Resolving a git revision (branch, tag, `HEAD` or commit) to one commit, in Rust, by reading
//! the server's ref advertisement: the smart HTTP protocol (`GET <url>/info/refs?service=
//! git-upload-pack`) or the git protocol (`git://`). Nothing is cloned; the operator image needs
//! no git.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Credentials for a private repository (HTTP basic auth; a token goes in the password).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitCredentials {
    pub username: String,
    pub password: String,
}

/// Why a revision could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The repository or revision does not exist, or access is denied: fix the spec or secret.
    #[error("{0}")]
    Unavailable(String),
    /// The server could not be reached or failed; worth retrying.
    #[error("{0}")]
    Transient(String),
}

impl GitError {
    pub fn is_transient(&self) -> bool {
        matches!(self, GitError::Transient(_))
    }
}

/// One advertised ref.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdvertisedRef {
    pub name: String,
    pub commit: String,
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn is_full_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Resolves `revision` in the repository at `url` to a commit.
pub async fn resolve(
    url: &str,
    revision: &str,
    credentials: Option<&GitCredentials>,
) -> Result<String, GitError> {
    if is_full_sha(revision) {
        return Ok(revision.to_ascii_lowercase());
    }
    let refs = if url.starts_with("git://") {
        advertisement_git(url).await?
    } else {
        advertisement_http(url, credentials).await?
    };
    pick(&refs, revision).ok_or_else(|| {
        GitError::Unavailable(format!(
            "revision {revision:?} is not a branch, tag or commit of {url}"
        ))
    })
}

/// Chooses the commit for `revision`: `HEAD`, a full ref name, a branch, then a tag (peeled
/// when annotated).
pub fn pick(refs: &[AdvertisedRef], revision: &str) -> Option<String> {
    let find = |name: &str| {
        refs.iter()
            .find(|r| r.name == name)
            .map(|r| r.commit.clone())
    };
    if revision == "HEAD" {
        return find("HEAD");
    }
    if revision.starts_with("refs/") {
        return find(&format!("{revision}^{{}}")).or_else(|| find(revision));
    }
    find(&format!("refs/heads/{revision}"))
        .or_else(|| find(&format!("refs/tags/{revision}^{{}}")))
        .or_else(|| find(&format!("refs/tags/{revision}")))
}

/// Parses a v0 ref advertisement (pkt-lines), skipping the `# service=` header of smart HTTP.
pub fn parse_advertisement(mut data: &[u8]) -> Result<Vec<AdvertisedRef>, String> {
    let mut refs = Vec::new();
    while data.len() >= 4 {
        let len = std::str::from_utf8(&data[..4])
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .ok_or("malformed pkt-line length")?;
        if len == 0 {
            data = &data[4..];
            continue;
        }
        if len < 4 || len > data.len() {
            return Err("truncated pkt-line".into());
        }
        let line = &data[4..len];
        data = &data[len..];
        let line = line.split(|&b| b == 0).next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\n');
        if line.starts_with('#') || line.starts_with("ERR ") {
            if let Some(e) = line.strip_prefix("ERR ") {
                return Err(e.to_string());
            }
            continue;
        }
        if let Some((commit, name)) = line.split_once(' ') {
            if is_full_sha(commit) && name != "capabilities^{}" {
                refs.push(AdvertisedRef {
                    name: name.to_string(),
                    commit: commit.to_string(),
                });
            }
        }
    }
    Ok(refs)
}

async fn advertisement_http(
    url: &str,
    credentials: Option<&GitCredentials>,
) -> Result<Vec<AdvertisedRef>, GitError> {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| GitError::Transient(format!("cannot create an HTTP client: {e}")))?;
    let endpoint = format!(
        "{}/info/refs?service=git-upload-pack",
        url.trim_end_matches('/')
    );
    let mut request = client
        .get(&endpoint)
        .header("User-Agent", "git/2.0 (multiarch-operator)");
    if let Some(c) = credentials {
        request = request.basic_auth(&c.username, Some(&c.password));
    }
    let response = request
        .send()
        .await
        .map_err(|e| GitError::Transient(format!("cannot reach {url}: {e}")))?;
    let status = response.status();
    if status.as_u16() == 401 || status.as_u16() == 403 {
        return Err(GitError::Unavailable(format!(
            "access to {url} denied ({status}): check source.git.secretRef"
        )));
    }
    if status.as_u16() == 404 {
        return Err(GitError::Unavailable(format!("repository {url} not found")));
    }
    if status.is_server_error() || status.as_u16() == 429 {
        return Err(GitError::Transient(format!("{url} answered {status}")));
    }
    if !status.is_success() {
        return Err(GitError::Unavailable(format!("{url} answered {status}")));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| GitError::Transient(format!("reading refs of {url}: {e}")))?;
    parse_advertisement(&body).map_err(|e| {
        GitError::Unavailable(format!("{url} is not a git repository (smart HTTP): {e}"))
    })
}

async fn advertisement_git(url: &str) -> Result<Vec<AdvertisedRef>, GitError> {
    let parsed = url::Url::parse(url)
        .map_err(|e| GitError::Unavailable(format!("invalid url {url}: {e}")))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| GitError::Unavailable(format!("{url} has no host")))?
        .to_string();
    let port = parsed.port().unwrap_or(9418);
    let path = parsed.path().to_string();
    let work = async {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| GitError::Transient(format!("cannot reach {url}: {e}")))?;
        let request = format!("git-upload-pack {path}\0host={host}:{port}\0");
        let line = format!("{:04x}{request}", request.len() + 4);
        stream
            .write_all(line.as_bytes())
            .await
            .map_err(|e| GitError::Transient(format!("{url}: {e}")))?;
        // read the advertisement up to its flush packet, then end the conversation
        let mut buf = Vec::new();
        loop {
            let mut head = [0u8; 4];
            if stream.read_exact(&mut head).await.is_err() {
                break;
            }
            let len = std::str::from_utf8(&head)
                .ok()
                .and_then(|h| usize::from_str_radix(h, 16).ok())
                .ok_or_else(|| GitError::Unavailable(format!("{url}: malformed answer")))?;
            buf.extend_from_slice(&head);
            if len == 0 {
                break;
            }
            let mut body = vec![0u8; len.saturating_sub(4)];
            stream
                .read_exact(&mut body)
                .await
                .map_err(|e| GitError::Transient(format!("{url}: {e}")))?;
            buf.extend_from_slice(&body);
        }
        let _ = stream.write_all(b"0000").await;
        Ok::<_, GitError>(buf)
    };
    let buf = tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| GitError::Transient(format!("{url} did not answer within {TIMEOUT:?}")))??;
    let refs =
        parse_advertisement(&buf).map_err(|e| GitError::Unavailable(format!("{url}: {e}")))?;
    if refs.is_empty() {
        return Err(GitError::Unavailable(format!(
            "repository {url} not found or empty"
        )));
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(s: &str) -> String {
        format!("{:04x}{s}", s.len() + 4)
    }

    fn sample() -> Vec<u8> {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let c = "c".repeat(40);
        let d = "d".repeat(40);
        format!(
            "{}0000{}{}{}{}{}0000",
            pkt("# service=git-upload-pack\n"),
            pkt(&format!(
                "{a} HEAD\0multi_ack symref=HEAD:refs/heads/main\n"
            )),
            pkt(&format!("{a} refs/heads/main\n")),
            pkt(&format!("{b} refs/heads/release\n")),
            pkt(&format!("{c} refs/tags/v1.0.0\n")),
            pkt(&format!("{d} refs/tags/v1.0.0^{{}}\n")),
        )
        .into_bytes()
    }

    #[test]
    fn advertisement_lists_refs_without_capabilities() {
        let refs = parse_advertisement(&sample()).unwrap();
        assert_eq!(refs.len(), 5);
        assert_eq!(refs[0].name, "HEAD");
    }

    #[test]
    fn revisions_resolve_to_branches_then_peeled_tags() {
        let refs = parse_advertisement(&sample()).unwrap();
        assert_eq!(pick(&refs, "HEAD").unwrap(), "a".repeat(40));
        assert_eq!(pick(&refs, "main").unwrap(), "a".repeat(40));
        assert_eq!(pick(&refs, "release").unwrap(), "b".repeat(40));
        assert_eq!(
            pick(&refs, "v1.0.0").unwrap(),
            "d".repeat(40),
            "annotated tags are peeled"
        );
        assert_eq!(pick(&refs, "refs/heads/release").unwrap(), "b".repeat(40));
        assert!(pick(&refs, "nope").is_none());
    }

    #[test]
    fn server_errors_are_reported() {
        let data = pkt("ERR access denied or repository not exported: /x.git");
        assert!(parse_advertisement(data.as_bytes())
            .unwrap_err()
            .contains("access denied"));
    }

    #[tokio::test]
    async fn full_commit_needs_no_server() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            resolve("https://unreachable.invalid/x.git", sha, None)
                .await
                .unwrap(),
            sha
        );
    }
}
