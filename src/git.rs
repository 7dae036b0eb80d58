//! Resolving a git revision (branch, tag, `HEAD` or commit) to one commit, in Rust, by reading
//! the server's ref advertisement: the smart HTTP protocol (`GET <url>/info/refs?service=
//! git-upload-pack`) or the git protocol (`git://`). Nothing is cloned; the operator image needs
//! no git.

use std::time::Duration;

use futures::StreamExt;
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

/// The whole of one resolution (connecting, the answer and all of its body) must fit in this.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The most of a ref advertisement read: repositories with many branches, tags and pull request
/// refs advertise tens of MiB; a server sending more is refused. Only the refs that can match the
/// revision are kept, so memory stays at one pkt-line whatever the size.
pub const MAX_ADVERTISEMENT: u64 = 64 * 1024 * 1024;
/// The longest pkt-line the protocol allows (65520 bytes, its 4-byte length included).
const MAX_PKT_LEN: usize = 65520;

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
    let wanted = candidates(revision);
    let mut refs = Vec::new();
    let mut keep = |r: AdvertisedRef| {
        if wanted.contains(&r.name) {
            refs.push(r);
        }
    };
    if url.starts_with("git://") {
        advertisement_git(url, &mut keep).await?;
    } else {
        advertisement_http(url, credentials, &mut keep).await?;
    }
    pick(&refs, revision).ok_or_else(|| {
        GitError::Unavailable(format!(
            "revision {revision:?} is not a branch, tag or commit of {}",
            redacted(url)
        ))
    })
}

/// `url` as it may be shown: without a user name or password written into it.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(_) => url.to_string(),
        Err(_) => "(an invalid URL)".to_string(),
    }
}

/// The ref names `revision` can stand for, in the order [`pick`] tries them.
fn candidates(revision: &str) -> Vec<String> {
    if revision == "HEAD" {
        return vec!["HEAD".into()];
    }
    if revision.starts_with("refs/") {
        return vec![format!("{revision}^{{}}"), revision.to_string()];
    }
    vec![
        format!("refs/heads/{revision}"),
        format!("refs/tags/{revision}^{{}}"),
        format!("refs/tags/{revision}"),
    ]
}

/// Chooses the commit for `revision`: `HEAD`, a full ref name, a branch, then a tag (peeled
/// when annotated).
pub fn pick(refs: &[AdvertisedRef], revision: &str) -> Option<String> {
    candidates(revision)
        .iter()
        .find_map(|name| refs.iter().find(|r| &r.name == name))
        .map(|r| r.commit.clone())
}

/// A v0 ref advertisement read incrementally, as it arrives: pkt-lines are parsed one at a
/// time and each ref handed on, so no more than one pkt-line is held.
#[derive(Debug, Default)]
pub struct AdvertisementReader {
    pending: Vec<u8>,
    read: u64,
}

impl AdvertisementReader {
    /// Reads `data`, the next bytes of the advertisement, handing each ref to `keep`.
    pub fn push(&mut self, data: &[u8], keep: &mut dyn FnMut(AdvertisedRef)) -> Result<(), String> {
        self.read += data.len() as u64;
        if self.read > MAX_ADVERTISEMENT {
            return Err(format!(
                "the ref advertisement is over {MAX_ADVERTISEMENT} bytes"
            ));
        }
        self.pending.extend_from_slice(data);
        let mut at = 0;
        while self.pending.len() - at >= 4 {
            let len = pkt_len(&self.pending[at..at + 4])?;
            if len == 0 {
                at += 4;
                continue;
            }
            if self.pending.len() - at < len {
                break;
            }
            line_ref(&self.pending[at + 4..at + len], keep)?;
            at += len;
        }
        self.pending.drain(..at);
        Ok(())
    }

    /// Ends the advertisement: an unfinished pkt-line is an error.
    pub fn finish(self) -> Result<(), String> {
        if self.pending.is_empty() {
            Ok(())
        } else {
            Err("truncated pkt-line".into())
        }
    }
}

/// The length of the pkt-line whose 4-byte header is `head` (0 for a flush packet).
fn pkt_len(head: &[u8]) -> Result<usize, String> {
    let len = std::str::from_utf8(head)
        .ok()
        .and_then(|h| usize::from_str_radix(h, 16).ok())
        .ok_or("malformed pkt-line length")?;
    match len {
        0 => Ok(0),
        1..=3 => Err("malformed pkt-line length".into()),
        n if n > MAX_PKT_LEN => Err(format!("pkt-line of {n} bytes, over {MAX_PKT_LEN}")),
        n => Ok(n),
    }
}

/// Reads one pkt-line's payload: a ref, a comment, or the server's `ERR`.
fn line_ref(line: &[u8], keep: &mut dyn FnMut(AdvertisedRef)) -> Result<(), String> {
    let line = line.split(|&b| b == 0).next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end_matches('\n');
    if let Some(e) = line.strip_prefix("ERR ") {
        return Err(e.to_string());
    }
    if line.starts_with('#') {
        return Ok(());
    }
    if let Some((commit, name)) = line.split_once(' ') {
        if is_full_sha(commit) && name != "capabilities^{}" {
            keep(AdvertisedRef {
                name: name.to_string(),
                commit: commit.to_string(),
            });
        }
    }
    Ok(())
}

/// Parses a whole v0 ref advertisement (pkt-lines), skipping the `# service=` header of smart
/// HTTP.
pub fn parse_advertisement(data: &[u8]) -> Result<Vec<AdvertisedRef>, String> {
    let mut refs = Vec::new();
    let mut reader = AdvertisementReader::default();
    reader.push(data, &mut |r| refs.push(r))?;
    reader.finish()?;
    Ok(refs)
}

async fn advertisement_http(
    location: &str,
    credentials: Option<&GitCredentials>,
    keep: &mut (dyn FnMut(AdvertisedRef) + Send),
) -> Result<(), GitError> {
    let url = &redacted(location);
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
        .map_err(|e| GitError::Transient(format!("cannot create an HTTP client: {e}")))?;
    let endpoint = format!(
        "{}/info/refs?service=git-upload-pack",
        location.trim_end_matches('/')
    );
    let mut request = client
        .get(&endpoint)
        .header("User-Agent", "git/2.0 (multiarch-operator)");
    if let Some(c) = credentials {
        request = request.basic_auth(&c.username, Some(&c.password));
    }
    let response = request.send().await.map_err(|e| {
        if e.is_redirect() {
            GitError::Unavailable(format!("{url} redirects too often (a redirect loop?)"))
        } else {
            GitError::Transient(format!("cannot reach {url}: {}", without_source(&e)))
        }
    })?;
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
    let not_git = |e: String| {
        GitError::Unavailable(format!("{url} is not a git repository (smart HTTP): {e}"))
    };
    let mut reader = AdvertisementReader::default();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            GitError::Transient(format!("reading refs of {url}: {}", without_source(&e)))
        })?;
        reader.push(&chunk, keep).map_err(not_git)?;
    }
    reader.finish().map_err(not_git)
}

/// A reqwest error's text without the URL it carries (which may hold credentials).
fn without_source(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "the server");
    }
    if e.is_timeout() {
        format!("no complete answer within {TIMEOUT:?} ({text})")
    } else {
        text
    }
}

async fn advertisement_git(
    location: &str,
    keep: &mut (dyn FnMut(AdvertisedRef) + Send),
) -> Result<(), GitError> {
    let url = &redacted(location);
    let parsed = url::Url::parse(location)
        .map_err(|e| GitError::Unavailable(format!("invalid url {url}: {e}")))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| GitError::Unavailable(format!("{url} has no host")))?
        .to_string();
    let port = parsed.port().unwrap_or(9418);
    let path = parsed.path().to_string();
    let mut seen = 0usize;
    let mut counted = |r: AdvertisedRef| {
        seen += 1;
        keep(r)
    };
    let work = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| GitError::Transient(format!("cannot reach {url}: {e}")))?;
        let mut stream = tokio::io::BufReader::new(stream);
        let request = format!("git-upload-pack {path}\0host={host}:{port}\0");
        let line = format!("{:04x}{request}", request.len() + 4);
        stream
            .get_mut()
            .write_all(line.as_bytes())
            .await
            .map_err(|e| GitError::Transient(format!("{url}: {e}")))?;
        // read the advertisement up to its flush packet, then end the conversation
        let mut reader = AdvertisementReader::default();
        loop {
            let mut head = [0u8; 4];
            if stream.read_exact(&mut head).await.is_err() {
                break;
            }
            let len = pkt_len(&head).map_err(|e| GitError::Unavailable(format!("{url}: {e}")))?;
            if len == 0 {
                break;
            }
            let mut line = vec![0u8; len];
            line[..4].copy_from_slice(&head);
            stream
                .read_exact(&mut line[4..])
                .await
                .map_err(|e| GitError::Transient(format!("{url}: {e}")))?;
            reader
                .push(&line, &mut counted)
                .map_err(|e| GitError::Unavailable(format!("{url}: {e}")))?;
        }
        let _ = stream.get_mut().write_all(b"0000").await;
        reader
            .finish()
            .map_err(|e| GitError::Unavailable(format!("{url}: {e}")))
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| GitError::Transient(format!("{url} did not answer within {TIMEOUT:?}")))??;
    if seen == 0 {
        return Err(GitError::Unavailable(format!(
            "repository {url} not found or empty"
        )));
    }
    Ok(())
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

    #[test]
    fn advertisement_read_in_pieces_gives_the_same_refs() {
        let data = sample();
        let whole = parse_advertisement(&data).unwrap();
        for size in [1, 3, 7, 64] {
            let mut refs = Vec::new();
            let mut reader = AdvertisementReader::default();
            for piece in data.chunks(size) {
                reader.push(piece, &mut |r| refs.push(r)).unwrap();
                assert!(
                    reader.pending.len() < MAX_PKT_LEN,
                    "holds at most a pkt-line"
                );
            }
            reader.finish().unwrap();
            assert_eq!(refs, whole, "pieces of {size}");
        }
    }

    #[test]
    fn malformed_and_oversized_advertisements_are_refused() {
        assert!(parse_advertisement(b"zzzz")
            .unwrap_err()
            .contains("malformed"));
        assert!(parse_advertisement(b"0002")
            .unwrap_err()
            .contains("malformed"));
        assert!(parse_advertisement(b"fff5abc")
            .unwrap_err()
            .contains("over 65520"));
        assert!(parse_advertisement(b"0010abc")
            .unwrap_err()
            .contains("truncated"));
        let mut reader = AdvertisementReader::default();
        let flushes = vec![b'0'; 1024 * 1024];
        let mut pushed = 0u64;
        let err = loop {
            match reader.push(&flushes, &mut |_| {}) {
                Ok(()) => pushed += flushes.len() as u64,
                Err(e) => break e,
            }
        };
        assert!(err.contains("over"), "{err}");
        assert_eq!(pushed, MAX_ADVERTISEMENT, "refused at the cap, not before");
    }

    #[test]
    fn only_the_refs_a_revision_can_name_are_candidates() {
        assert_eq!(candidates("HEAD"), ["HEAD"]);
        assert_eq!(
            candidates("refs/pull/1/head"),
            ["refs/pull/1/head^{}", "refs/pull/1/head"]
        );
        assert_eq!(
            candidates("v1"),
            ["refs/heads/v1", "refs/tags/v1^{}", "refs/tags/v1"]
        );
    }

    #[test]
    fn credentials_written_into_a_url_are_not_shown() {
        assert_eq!(
            redacted("https://user:tok@git.example/a.git"),
            "https://git.example/a.git"
        );
        assert_eq!(
            redacted("https://tok@git.example/a.git"),
            "https://git.example/a.git"
        );
        assert_eq!(
            redacted("git://git.example/a.git"),
            "git://git.example/a.git"
        );
        assert!(!redacted("https://tok@[bad/x").contains("tok"));
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
