//! Image references, parsed once at the edge: [`Repository`], [`Tag`], [`Digest`] and
//! [`Reference`] (a repository plus a tag and/or a digest), with the grammar of the OCI
//! distribution spec.
//!
//! A name whose first component has no `.` or `:` and is not `localhost` is on Docker Hub
//! (`docker.io`, with `library/` for single-component names), as `docker` resolves it.
//!
//! Why not `oci_spec::distribution::Reference` (whose name grammar is the same regular
//! expression): its rules differ where they matter here. It reads a reference without tag or
//! digest as `:latest`, where a `--tag` or source without one is a mistake we refuse; it has no
//! repository-only form (`spec.image` must have neither tag nor digest); it accepts uppercase hex
//! and `sha384` digests, which registries here never produce; it rewrites `index.docker.io` to
//! `docker.io`; its registry host cannot be a bracketed IPv6 address (`[::1]:5000`); it limits
//! the path alone, not the whole name, to 255 characters; and its errors do not say what to fix,
//! while ours end up in the object's `Stalled` condition.

use std::fmt;
use std::str::FromStr;

/// Docker Hub's registry name as written in references.
pub const DOCKER_HUB: &str = "docker.io";

/// A registry's 128-character limit on tags.
pub const MAX_TAG_LEN: usize = 128;

/// Why a reference could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    pub input: String,
    pub reason: String,
}

fn ref_err(input: &str, reason: impl Into<String>) -> ReferenceError {
    ReferenceError {
        input: input.to_string(),
        reason: reason.into(),
    }
}

/// A repository: a registry host and a path, no tag, no digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Repository {
    registry: String,
    path: String,
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tag(String);

/// A content digest, `algorithm:hex`. Only `sha256` is produced; `sha512` is accepted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// A repository with a tag, a digest, or both (the digest wins when both are given).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    pub repository: Repository,
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
}

fn is_path_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut prev_sep = String::new();
    for &ch in b {
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            if !prev_sep.is_empty()
                && !matches!(prev_sep.as_str(), "." | "_" | "__")
                && !prev_sep.bytes().all(|x| x == b'-')
            {
                return false;
            }
            prev_sep.clear();
        } else if matches!(ch, b'.' | b'_' | b'-') {
            prev_sep.push(ch as char);
        } else {
            return false;
        }
    }
    true
}

fn is_registry_host(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

impl Repository {
    /// The registry host, with its port (`registry.example.com`, `127.0.0.1:5001`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The path inside the registry (`team/apiping`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// A reference to this repository at `tag`.
    pub fn with_tag(&self, tag: Tag) -> Reference {
        Reference {
            repository: self.clone(),
            tag: Some(tag),
            digest: None,
        }
    }

    /// A reference to this repository at `digest`.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            repository: self.clone(),
            tag: None,
            digest: Some(digest),
        }
    }
}

impl FromStr for Repository {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains('@') {
            return Err(ref_err(s, "a repository has no digest (remove '@...')"));
        }
        let (first, rest) = match s.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), s.to_string()),
        };
        if !is_registry_host(&first) {
            return Err(ref_err(s, format!("invalid registry host {first:?}")));
        }
        if rest.contains(':') {
            return Err(ref_err(s, "a repository has no tag (remove ':...')"));
        }
        if rest.is_empty() || !rest.split('/').all(is_path_component) {
            return Err(ref_err(
                s,
                "the repository path must be lowercase components separated by '/'",
            ));
        }
        let path = if first == DOCKER_HUB && !rest.contains('/') {
            format!("library/{rest}")
        } else {
            rest
        };
        if first.len() + 1 + path.len() > 255 {
            return Err(ref_err(s, "the name is longer than 255 characters"));
        }
        Ok(Repository {
            registry: first,
            path,
        })
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.path)
    }
}

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_TAG_LEN
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if ok {
            Ok(Tag(s.to_string()))
        } else {
            Err(ref_err(
                s,
                "a tag is 1-128 characters of letters, digits, '_', '.' and '-', not starting with '.' or '-'",
            ))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        let hash = sha2::Sha256::digest(bytes);
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in hash {
            s.push_str(&format!("{b:02x}"));
        }
        Digest(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_ok = |h: &str, n: usize| {
            h.len() == n
                && h.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        };
        match s.split_once(':') {
            Some(("sha256", h)) if hex_ok(h, 64) => Ok(Digest(s.to_string())),
            Some(("sha512", h)) if hex_ok(h, 128) => Ok(Digest(s.to_string())),
            _ => Err(ref_err(
                s,
                "a digest is sha256: followed by 64 lowercase hex digits",
            )),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Reference {
    /// The tag or digest part as a registry API path element (digest preferred).
    pub fn reference_str(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => "latest".to_string(),
        }
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d.parse::<Digest>()?)),
            None => (s, None),
        };
        // a ':' after the last '/' separates the tag (a ':' before it is a registry port)
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (repo, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (
                &name[..last_slash + i],
                Some(name[last_slash + i + 1..].parse::<Tag>()?),
            ),
            None => (name, None),
        };
        if tag.is_none() && digest.is_none() {
            return Err(ref_err(
                s,
                "a reference needs a tag (:tag) or a digest (@sha256:...)",
            ));
        }
        Ok(Reference {
            repository: repo.parse()?,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_with_port_and_path() {
        let r: Repository = "127.0.0.1:5001/team/app".parse().unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5001");
        assert_eq!(r.path(), "team/app");
    }

    #[test]
    fn docker_hub_shorthand_expands() {
        let r: Repository = "alpine".parse().unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine");
        let r: Repository = "team/app".parse().unwrap();
        assert_eq!(r.to_string(), "docker.io/team/app");
    }

    #[test]
    fn repository_rejects_tags_digests_and_uppercase() {
        for bad in [
            "reg.example.com/app:1.0",
            "reg.example.com/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "reg.example.com/App",
            "reg.example.com/",
            "reg.example.com/a//b",
            "reg.example.com/-a",
        ] {
            assert!(bad.parse::<Repository>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn reference_splits_port_tag_and_digest() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let r: Reference = format!("localhost:5000/a/b:v1@{d}").parse().unwrap();
        assert_eq!(r.repository.registry(), "localhost:5000");
        assert_eq!(r.tag.as_ref().unwrap().as_str(), "v1");
        assert_eq!(r.digest.as_ref().unwrap().as_str(), d);
        assert_eq!(r.reference_str(), d);
        assert!("localhost:5000/a/b".parse::<Reference>().is_err());
    }

    #[test]
    fn tags_follow_the_distribution_grammar() {
        assert!("1.0.0".parse::<Tag>().is_ok());
        assert!("_x".parse::<Tag>().is_ok());
        assert!(".x".parse::<Tag>().is_err());
        assert!("-x".parse::<Tag>().is_err());
        assert!("a".repeat(128).parse::<Tag>().is_ok());
        assert!("a".repeat(129).parse::<Tag>().is_err());
    }

    #[test]
    fn digest_of_bytes_is_sha256() {
        assert_eq!(
            Digest::sha256_of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!("sha256:abc".parse::<Digest>().is_err());
    }
}
