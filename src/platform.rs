//! `Platform`: an `os/arch[/variant]` triple, parsed once and compared the way registries do.
//!
//! `linux/arm64` and `linux/arm64/v8` are the same platform (v8 is arm64's only variant), and so are
//! `linux/arm` and `linux/arm/v7`. Everything that compares platforms goes through
//! [`Platform::normalized`], so an index never lists one platform twice under two spellings.

use std::fmt;
use std::str::FromStr;

/// A target platform such as `linux/amd64` or `linux/arm/v7`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// Why a platform string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid platform {input:?}: {reason} (expected os/arch[/variant], for example linux/arm64)"
)]
pub struct PlatformError {
    input: String,
    reason: &'static str,
}

fn is_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.filter(|v| !v.is_empty()).map(str::to_string),
        }
    }

    /// The canonical spelling used for comparisons: `arm64/v8` becomes `arm64`,
    /// `arm` with no variant becomes `arm/v7`.
    pub fn normalized(&self) -> Platform {
        let variant = match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", Some("v8")) => None,
            ("arm", None) => Some("v7".to_string()),
            (_, v) => v.map(str::to_string),
        };
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant,
        }
    }

    /// True when both name the same platform (see the module doc).
    pub fn matches(&self, other: &Platform) -> bool {
        self.normalized() == other.normalized()
    }

    /// The `kubernetes.io/arch` value of nodes that build this platform natively: every arm
    /// variant (32-bit `arm/v6`, `arm/v7` included) builds on arm64 nodes.
    pub fn node_arch(&self) -> &str {
        match self.architecture.as_str() {
            "arm" => "arm64",
            arch => arch,
        }
    }

    /// A DNS-label-safe slug, `os-arch[-variant]`, used in names and labels.
    pub fn slug(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}-{}-{}", self.os, self.architecture, v),
            None => format!("{}-{}", self.os, self.architecture),
        }
    }

    /// `<arch><variant>`, the suffix of per-platform tags and cache tags (`arm64`, `armv7`).
    pub fn tag_suffix(&self) -> String {
        format!(
            "{}{}",
            self.architecture,
            self.variant.as_deref().unwrap_or_default()
        )
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| PlatformError {
            input: s.to_string(),
            reason,
        };
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(err("it must have two or three parts separated by '/'"));
        }
        if !parts.iter().all(|p| is_component(p)) {
            return Err(err(
                "each part must be lowercase letters, digits, '_' or '-'",
            ));
        }
        Ok(Platform::new(parts[0], parts[1], parts.get(2).copied()))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_two_and_three_part_platforms() {
        let p: Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!(p.architecture, "arm");
        assert_eq!(p.variant.as_deref(), Some("v7"));
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert_eq!(
            "linux/amd64".parse::<Platform>().unwrap().slug(),
            "linux-amd64"
        );
    }

    #[test]
    fn rejects_malformed_platforms() {
        for bad in [
            "",
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "Linux/AMD64",
            "linux/am d64",
        ] {
            assert!(
                bad.parse::<Platform>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn arm64_v8_is_arm64_and_arm_is_arm_v7() {
        let a: Platform = "linux/arm64".parse().unwrap();
        let b: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(a.matches(&b));
        let c: Platform = "linux/arm".parse().unwrap();
        let d: Platform = "linux/arm/v7".parse().unwrap();
        assert!(c.matches(&d));
        assert!(!a.matches(&"linux/amd64".parse().unwrap()));
        assert!(!d.matches(&"linux/arm/v6".parse().unwrap()));
    }

    #[test]
    fn tag_suffix_joins_arch_and_variant() {
        assert_eq!(
            "linux/arm/v7".parse::<Platform>().unwrap().tag_suffix(),
            "armv7"
        );
        assert_eq!(
            "linux/amd64".parse::<Platform>().unwrap().tag_suffix(),
            "amd64"
        );
    }
}
