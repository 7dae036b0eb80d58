//! Operator-wide defaults for builders and the build lifecycle, set by flags or environment
//! variables of `multiarch-operator run` (and by the Helm chart's values).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The BuildKit image builders run when neither the object nor the operator names one.
pub const DEFAULT_BUILDER_IMAGE: &str = "moby/buildkit:v0.29.0-rootless";
/// BuildKit's own default SBOM scanner (`attest:sbom` without a generator), multi-arch.
pub const DEFAULT_SBOM_SCANNER_IMAGE: &str = "docker/buildkit-syft-scanner:stable-1";

/// Defaults applied to every builder and build.
#[derive(Clone, Debug, PartialEq)]
pub struct BuilderDefaults {
    /// The BuildKit image (rootless).
    pub image: String,
    /// Resource requests of the builder container.
    pub requests: BTreeMap<String, Quantity>,
    /// Resource limits of the builder container.
    pub limits: BTreeMap<String, Quantity>,
    /// Per-attempt build timeout, from the builder's start.
    pub timeout: Duration,
    /// How long a builder may wait for a node.
    pub provisioning_timeout: Duration,
    /// Node labels added to every builder's selector.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations added to every builder.
    pub tolerations: Vec<Toleration>,
    /// Builder pods lost to disruptions that are retried per attempt before the platform fails.
    pub max_disruptions: i32,
    /// How long finished builders are kept before they are deleted (the most recent failed one of
    /// each object is kept until the next build).
    pub finished_ttl: Duration,
    /// What a spec may choose about its builders; checked by `validate`.
    pub guardrails: Guardrails,
    /// The SBOM scanner image of `spec.attestations.sbom` when the spec names none.
    pub sbom_scanner: String,
}

impl Default for BuilderDefaults {
    fn default() -> Self {
        let q = |s: &str| Quantity(s.to_string());
        BuilderDefaults {
            image: DEFAULT_BUILDER_IMAGE.to_string(),
            requests: BTreeMap::from([
                ("cpu".to_string(), q("1")),
                ("memory".to_string(), q("2Gi")),
                ("ephemeral-storage".to_string(), q("10Gi")),
            ]),
            limits: BTreeMap::new(),
            timeout: Duration::from_secs(45 * 60),
            provisioning_timeout: Duration::from_secs(15 * 60),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            max_disruptions: 3,
            finished_ttl: Duration::from_secs(60 * 60),
            guardrails: Guardrails::default(),
            sbom_scanner: DEFAULT_SBOM_SCANNER_IMAGE.to_string(),
        }
    }
}

/// Operator-wide limits on what a `MultiArchImage` may choose about its builders, so that one
/// namespace's user cannot pick another team's credentials (a ServiceAccount), an arbitrary
/// image to run with seccomp `Unconfined`, or nodes and sizes the platform team did not offer.
/// Set by the `--allowed-*`/`--allow-*`/`--max-builder-resources` flags (the chart's
/// `guardrails:` values); the chart's ValidatingAdmissionPolicy enforces the same rules at
/// admission. The defaults keep every spec that uses the operator's defaults working.
#[derive(Clone, Debug, PartialEq)]
pub struct Guardrails {
    /// Images `spec.builder.image` may name: exact references, `repo@sha256:...` digests, or
    /// patterns ending in `*` (a prefix: `registry.example.com/buildkit/*`). Empty: only the
    /// operator's default builder image. Covers every image a spec can name.
    pub allowed_images: Vec<String>,
    /// ServiceAccounts `spec.builder.serviceAccountName` may name (`*`: any). Empty: none.
    pub allowed_service_accounts: Vec<String>,
    /// Whether specs may add tolerations (`spec.builder`, `spec.platformOverrides[]`).
    pub allow_tolerations: bool,
    /// Toleration keys a spec may use when tolerations are allowed; empty: any key.
    pub allowed_toleration_keys: Vec<String>,
    /// Whether specs may add node selector entries.
    pub allow_node_selector: bool,
    /// Node selector keys a spec may use when node selectors are allowed; empty: any key.
    pub allowed_node_selector_keys: Vec<String>,
    /// Whether specs may set builder resources.
    pub allow_resources: bool,
    /// The largest request or limit a spec may set, per resource name (`cpu`, `memory`,
    /// `ephemeral-storage`); resources not listed are not bounded.
    pub max_resources: BTreeMap<String, Quantity>,
}

impl Default for Guardrails {
    fn default() -> Self {
        Guardrails {
            allowed_images: Vec::new(),
            allowed_service_accounts: vec!["default".to_string()],
            allow_tolerations: false,
            allowed_toleration_keys: Vec::new(),
            allow_node_selector: true,
            allowed_node_selector_keys: Vec::new(),
            allow_resources: true,
            max_resources: BTreeMap::new(),
        }
    }
}

/// Why a duration could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected a whole number of hours, minutes and seconds such as 45m, 1h30m or 90s")]
pub struct DurationError(pub String);

/// Parses a duration with jiff: its friendly format (`1h30m`, `45m`, `90s`, also `1h 30m` or
/// `2 hours`) or ISO 8601 (`PT1H30M`). Hours, minutes and seconds in that order, each at most
/// once; whole seconds only, not negative. Days are refused (not every day has 24 hours).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(s.to_string());
    // jiff reads fractions (`1.5h`); a duration here is a whole number of each unit
    if s.contains(['.', ',']) {
        return Err(err());
    }
    let parsed: jiff::SignedDuration = s.parse().map_err(|_| err())?;
    if parsed.subsec_nanos() != 0 {
        return Err(err());
    }
    Duration::try_from(parsed).map_err(|_| err())
}

/// Parses a duration of a spec field, in the compact form the CRD's validation rule allows
/// (`1h30m`, `45m`, `90s`: no spaces, no other units), so that the controller accepts exactly
/// what admission does.
pub fn parse_compact_duration(s: &str) -> Result<Duration, DurationError> {
    let compact = s
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'h' | b'm' | b's'))
        && !s.contains("ms");
    if !compact {
        return Err(DurationError(s.to_string()));
    }
    parse_duration(s)
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if sec > 0 || out.is_empty() {
        out.push_str(&format!("{sec}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_unit_order() {
        assert_eq!(parse_duration("45m").unwrap(), Duration::from_secs(2700));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        for bad in ["", "m", "10", "1m1h", "1d", "1.5h", "1h1h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_accept_jiffs_spellings_but_nothing_negative_fractional_or_in_days() {
        for (text, secs) in [
            ("0s", 0),
            ("2h", 7200),
            ("1h30m15s", 5415),
            ("1h 30m", 5400),
            ("2 hours", 7200),
            ("PT1H30M", 5400),
            ("3000ms", 3),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        for bad in ["-5m", "1500ms", "1,5h", "2d", "1w", "P1D", "45", " "] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn spec_durations_are_only_the_compact_form() {
        assert_eq!(
            parse_compact_duration("1h30m"),
            Ok(Duration::from_secs(5400))
        );
        for bad in [
            "45 minutes",
            "1h 30m",
            "PT1H",
            "1000ms",
            "2hours",
            "",
            "1m1h",
            "1.5h",
        ] {
            assert!(parse_compact_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_format_round_trip() {
        for s in ["45m", "1h30m", "90s".replace("90s", "1m30s").as_str(), "2h"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
