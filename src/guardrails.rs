//! The operator-wide guardrails ([`Guardrails`]) applied to a spec: which builder images and
//! ServiceAccounts it may name, whether it may add tolerations, node selectors and resources, and
//! how large. Pure checks, run by `validate`; a refusal names the rule and its flag, and the
//! chart's ValidatingAdmissionPolicy words the same rule the same way.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::MultiArchImageSpec;
use crate::config::{BuilderDefaults, Guardrails};
use crate::validate::InvalidSpec;

/// Whether `image` matches one of `patterns`: an exact reference (a digest reference
/// `repo@sha256:...` is matched exactly too), or a pattern ending in `*` that matches every
/// reference starting with what comes before the `*`.
pub fn image_allowed(image: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => image.starts_with(prefix),
        None => image == p,
    })
}

/// The images a spec may name: the operator's default builder image, then the allowed patterns.
pub fn allowed_images(defaults: &BuilderDefaults) -> Vec<String> {
    let mut all = vec![defaults.image.clone()];
    all.extend(
        defaults
            .guardrails
            .allowed_images
            .iter()
            .filter(|p| **p != defaults.image)
            .cloned(),
    );
    all
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// Checks `spec` against the guardrails in `defaults`.
pub fn check(spec: &MultiArchImageSpec, defaults: &BuilderDefaults) -> Result<(), InvalidSpec> {
    let rails = &defaults.guardrails;
    let builder = spec.builder.clone().unwrap_or_default();
    if let Some(image) = builder.image.as_deref() {
        let allowed = allowed_images(defaults);
        if !image_allowed(image, &allowed) {
            return Err(InvalidSpec(format!(
                "spec.builder.image: {image} is not allowed by the guardrail allowedBuilderImages (--allowed-builder-images; allowed: {})",
                list(&allowed)
            )));
        }
    }
    if let Some(scanner) = spec
        .attestations
        .as_ref()
        .and_then(|a| a.sbom_scanner.as_deref())
    {
        let mut allowed = vec![defaults.sbom_scanner.clone()];
        allowed.extend(allowed_images(defaults));
        if !image_allowed(scanner, &allowed) {
            return Err(InvalidSpec(format!(
                "spec.attestations.sbomScanner: {scanner} is not allowed by the guardrail allowedBuilderImages (--allowed-builder-images; allowed: {})",
                list(&allowed)
            )));
        }
    }
    if let Some(sa) = builder
        .service_account_name
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        let allowed = &rails.allowed_service_accounts;
        if !allowed.iter().any(|a| a == sa || a == "*") {
            return Err(InvalidSpec(format!(
                "spec.builder.serviceAccountName: {sa} is not allowed by the guardrail allowedServiceAccounts (--allowed-builder-service-accounts; allowed: {})",
                list(allowed)
            )));
        }
    }
    check_placement(
        "spec.builder",
        &builder.node_selector,
        &builder.tolerations,
        builder.resources.as_ref(),
        rails,
    )?;
    for (i, o) in spec.platform_overrides.iter().enumerate() {
        check_placement(
            &format!("spec.platformOverrides[{i}]"),
            &o.node_selector,
            &o.tolerations,
            o.resources.as_ref(),
            rails,
        )?;
    }
    Ok(())
}

/// Node selector, tolerations and resources of `spec.builder` or one platform override.
fn check_placement(
    at: &str,
    node_selector: &BTreeMap<String, String>,
    tolerations: &[Toleration],
    resources: Option<&ResourceRequirements>,
    rails: &Guardrails,
) -> Result<(), InvalidSpec> {
    if !node_selector.is_empty() {
        if !rails.allow_node_selector {
            return Err(InvalidSpec(format!(
                "{at}.nodeSelector: node selectors are not allowed by the guardrail nodeSelector.allowed (--allow-builder-node-selector=false)"
            )));
        }
        let keys = &rails.allowed_node_selector_keys;
        if let Some(k) = node_selector
            .keys()
            .find(|k| !keys.is_empty() && !keys.contains(k))
        {
            return Err(InvalidSpec(format!(
                "{at}.nodeSelector: key {k} is not allowed by the guardrail nodeSelector.allowedKeys (--allowed-node-selector-keys; allowed: {})",
                list(keys)
            )));
        }
    }
    if !tolerations.is_empty() {
        if !rails.allow_tolerations {
            return Err(InvalidSpec(format!(
                "{at}.tolerations: tolerations are not allowed by the guardrail tolerations.allowed (--allow-builder-tolerations=false)"
            )));
        }
        let keys = &rails.allowed_toleration_keys;
        for (i, t) in tolerations.iter().enumerate() {
            let key = t.key.as_deref().unwrap_or_default();
            if !keys.is_empty() && !keys.iter().any(|k| k == key) {
                let shown = if key.is_empty() {
                    "(empty: tolerates every taint)"
                } else {
                    key
                };
                return Err(InvalidSpec(format!(
                    "{at}.tolerations[{i}]: key {shown} is not allowed by the guardrail tolerations.allowedKeys (--allowed-toleration-keys; allowed: {})",
                    list(keys)
                )));
            }
        }
    }
    let Some(r) = resources else { return Ok(()) };
    let set = |m: &Option<BTreeMap<String, Quantity>>| m.as_ref().is_some_and(|m| !m.is_empty());
    if !(set(&r.requests) || set(&r.limits)) {
        return Ok(());
    }
    if !rails.allow_resources {
        return Err(InvalidSpec(format!(
            "{at}.resources: resources are not allowed by the guardrail resources.allowed (--allow-builder-resources=false)"
        )));
    }
    for (kind, m) in [("requests", &r.requests), ("limits", &r.limits)] {
        for (name, q) in m.iter().flatten() {
            let Some(max) = rails.max_resources.get(name) else {
                continue;
            };
            let value = parse_quantity(&q.0).ok_or_else(|| {
                InvalidSpec(format!(
                    "{at}.resources.{kind}.{name}: {:?} is not a quantity",
                    q.0
                ))
            })?;
            if parse_quantity(&max.0).is_some_and(|m| value > m) {
                return Err(InvalidSpec(format!(
                    "{at}.resources.{kind}.{name}: {} is over the guardrail resources.max ({name} at most {}; --max-builder-resources)",
                    q.0, max.0
                )));
            }
        }
    }
    Ok(())
}

/// A Kubernetes quantity (`500m`, `2`, `4Gi`, `1e3`, `1.5k`) in nano-units, rounded up; `None` for
/// text that is not a quantity or a value too large to hold. Negative values read as zero.
pub fn parse_quantity(s: &str) -> Option<u128> {
    let s = s.trim();
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return None;
    }
    let (exp10, binary): (i64, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        e if e.starts_with(['e', 'E']) => (e[1..].parse().ok()?, 0),
        _ => return None,
    };
    if negative {
        return Some(0);
    }
    let digits: u128 = format!("{int}{frac}").parse().ok()?;
    let exp = exp10 + 9 - frac.len() as i64;
    let scaled = if exp >= 0 {
        digits.checked_mul(10u128.checked_pow(u32::try_from(exp).ok()?)?)?
    } else {
        let div = 10u128.checked_pow(u32::try_from(-exp).ok()?)?;
        digits.div_ceil(div)
    };
    scaled.checked_mul(1u128 << binary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_BUILDER_IMAGE;
    use crate::validate::tests::object;
    use crate::validate::validate;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn image_patterns_match_exact_references_digests_and_prefixes() {
        let patterns = strings(&[
            "moby/buildkit:v0.29.0-rootless",
            "registry.example.com/buildkit/*",
            "ghcr.io/team/buildkit@sha256:aaaa",
        ]);
        for ok in [
            "moby/buildkit:v0.29.0-rootless",
            "registry.example.com/buildkit/buildkit:v1",
            "registry.example.com/buildkit/nested/b@sha256:bbbb",
            "ghcr.io/team/buildkit@sha256:aaaa",
        ] {
            assert!(image_allowed(ok, &patterns), "{ok} should be allowed");
        }
        for refused in [
            "moby/buildkit:latest",
            "moby/buildkit:v0.29.0-rootless-evil",
            "docker.io/moby/buildkit:v0.29.0-rootless",
            "registry.example.com/buildkit-evil/x:v1",
            "registry.example.com/buildkit",
            "evil.example.com/registry.example.com/buildkit/x",
            "ghcr.io/team/buildkit@sha256:cccc",
            "ghcr.io/team/buildkit:v1",
        ] {
            assert!(
                !image_allowed(refused, &patterns),
                "{refused} should be refused"
            );
        }
        assert!(image_allowed("anything/at:all", &strings(&["*"])));
        assert!(!image_allowed("moby/buildkit:v1", &[]));
    }

    #[test]
    fn quantities_compare_across_units() {
        let q = |s: &str| parse_quantity(s).unwrap_or_else(|| panic!("{s}"));
        assert_eq!(q("16"), q("16000m"));
        assert_eq!(q("1Gi"), q("1024Mi"));
        assert_eq!(q("1k"), q("1e3"));
        assert_eq!(q("1.5"), q("1500m"));
        assert_eq!(q("0.1n"), 1, "rounded up");
        assert!(q("64Gi") > q("64G"));
        assert!(q("17") > q("16"));
        assert_eq!(q("-1"), 0);
        for bad in ["", "abc", "1x", "1.2.3", "Gi", "1e", "1Ei1"] {
            assert_eq!(parse_quantity(bad), None, "{bad:?}");
        }
    }

    fn with(rails: Guardrails) -> BuilderDefaults {
        BuilderDefaults {
            guardrails: rails,
            ..BuilderDefaults::default()
        }
    }

    fn outcome(spec: serde_json::Value, defaults: &BuilderDefaults) -> Result<(), String> {
        validate(&object(spec), defaults)
            .map(|_| ())
            .map_err(|e| e.0)
    }

    /// Every rule: the spec it refuses with the rule's name, and one it admits.
    #[test]
    fn every_guardrail_refuses_naming_the_rule_and_admits_what_it_allows() {
        let default = BuilderDefaults::default();
        let open = with(Guardrails {
            allowed_images: strings(&["registry.example.com/buildkit/*"]),
            allowed_service_accounts: strings(&["default", "builder"]),
            allow_tolerations: true,
            allowed_toleration_keys: strings(&["builds"]),
            allowed_node_selector_keys: strings(&["pool", "karpenter.sh/capacity-type"]),
            max_resources: BTreeMap::from([
                ("cpu".to_string(), Quantity("16".into())),
                ("memory".to_string(), Quantity("64Gi".into())),
            ]),
            ..Guardrails::default()
        });
        let closed = with(Guardrails {
            allow_node_selector: false,
            allow_resources: false,
            ..Guardrails::default()
        });
        let toleration = |key: &str| serde_json::json!([{"key": key, "operator": "Exists"}]);
        let cases: Vec<(serde_json::Value, &BuilderDefaults, Option<&str>)> = vec![
            // builder image: the operator's default only, by default
            (serde_json::json!({"builder": {"image": DEFAULT_BUILDER_IMAGE}}), &default, None),
            (serde_json::json!({"builder": {"image": "ghcr.io/x/y:1"}}), &default, Some("spec.builder.image: ghcr.io/x/y:1 is not allowed by the guardrail allowedBuilderImages (--allowed-builder-images; allowed: moby/buildkit:v0.29.0-rootless)")),
            (serde_json::json!({"builder": {"image": "registry.example.com/buildkit/b:1"}}), &open, None),
            (serde_json::json!({"builder": {"image": DEFAULT_BUILDER_IMAGE}}), &open, None),
            (serde_json::json!({"builder": {"image": "registry.example.com/other/b:1"}}), &open, Some("allowedBuilderImages")),
            // the SBOM scanner: the operator's default scanner, or an allowed builder image
            (serde_json::json!({"attestations": {"sbom": true, "sbomScanner": crate::config::DEFAULT_SBOM_SCANNER_IMAGE}}), &default, None),
            (serde_json::json!({"attestations": {"sbom": true, "sbomScanner": "evil.example/scanner:1"}}), &default, Some("spec.attestations.sbomScanner: evil.example/scanner:1 is not allowed by the guardrail allowedBuilderImages (--allowed-builder-images; allowed: docker/buildkit-syft-scanner:stable-1, moby/buildkit:v0.29.0-rootless)")),
            (serde_json::json!({"attestations": {"sbom": true, "sbomScanner": "registry.example.com/buildkit/syft:1"}}), &open, None),
            // ServiceAccounts: the namespace's default only, by default
            (serde_json::json!({"builder": {"serviceAccountName": "default"}}), &default, None),
            (serde_json::json!({"builder": {"serviceAccountName": "ci-admin"}}), &default, Some("spec.builder.serviceAccountName: ci-admin is not allowed by the guardrail allowedServiceAccounts (--allowed-builder-service-accounts; allowed: default)")),
            (serde_json::json!({"builder": {"serviceAccountName": "builder"}}), &open, None),
            // tolerations: refused by default, keys bounded when allowed
            (serde_json::json!({"builder": {"tolerations": toleration("builds")}}), &default, Some("spec.builder.tolerations: tolerations are not allowed by the guardrail tolerations.allowed")),
            (serde_json::json!({"platformOverrides": [{"platform": "linux/arm64", "tolerations": toleration("builds")}]}), &default, Some("spec.platformOverrides[0].tolerations: tolerations are not allowed by the guardrail tolerations.allowed")),
            (serde_json::json!({"builder": {"tolerations": toleration("builds")}}), &open, None),
            (serde_json::json!({"builder": {"tolerations": toleration("gpu")}}), &open, Some("spec.builder.tolerations[0]: key gpu is not allowed by the guardrail tolerations.allowedKeys")),
            (serde_json::json!({"builder": {"tolerations": [{"operator": "Exists"}]}}), &open, Some("key (empty: tolerates every taint) is not allowed by the guardrail tolerations.allowedKeys")),
            // node selectors: allowed by default, switchable, keys bounded
            (serde_json::json!({"builder": {"nodeSelector": {"pool": "builds"}}}), &default, None),
            (serde_json::json!({"builder": {"nodeSelector": {"pool": "builds"}}}), &closed, Some("spec.builder.nodeSelector: node selectors are not allowed by the guardrail nodeSelector.allowed")),
            (serde_json::json!({"platformOverrides": [{"platform": "linux/arm64", "nodeSelector": {"karpenter.sh/capacity-type": "on-demand"}}]}), &open, None),
            (serde_json::json!({"platformOverrides": [{"platform": "linux/arm64", "nodeSelector": {"team": "a"}}]}), &open, Some("spec.platformOverrides[0].nodeSelector: key team is not allowed by the guardrail nodeSelector.allowedKeys (--allowed-node-selector-keys; allowed: pool, karpenter.sh/capacity-type)")),
            // resources: allowed by default, switchable, bounded per resource
            (serde_json::json!({"builder": {"resources": {"requests": {"cpu": "64"}}}}), &default, None),
            (serde_json::json!({"builder": {"resources": {"requests": {"cpu": "1"}}}}), &closed, Some("spec.builder.resources: resources are not allowed by the guardrail resources.allowed")),
            (serde_json::json!({"builder": {"resources": {"requests": {"cpu": "16000m", "memory": "64Gi", "ephemeral-storage": "1Ti"}}}}), &open, None),
            (serde_json::json!({"builder": {"resources": {"limits": {"cpu": "17"}}}}), &open, Some("spec.builder.resources.limits.cpu: 17 is over the guardrail resources.max (cpu at most 16; --max-builder-resources)")),
            (serde_json::json!({"platformOverrides": [{"platform": "linux/arm64", "resources": {"requests": {"memory": "65Gi"}}}]}), &open, Some("spec.platformOverrides[0].resources.requests.memory: 65Gi is over the guardrail resources.max")),
        ];
        for (spec, defaults, want) in cases {
            let got = outcome(spec.clone(), defaults);
            match want {
                None => assert!(got.is_ok(), "{spec} should be admitted: {got:?}"),
                Some(want) => {
                    let err = got.expect_err(&format!("{spec} should be refused"));
                    assert!(err.contains(want), "{spec}: {err}\nshould contain: {want}");
                }
            }
        }
    }

    #[test]
    fn the_defaults_admit_a_spec_that_uses_the_operators_defaults() {
        assert!(outcome(serde_json::json!({}), &BuilderDefaults::default()).is_ok());
        let resources = serde_json::json!({"builder": {"resources": {"requests": {"cpu": "4", "memory": "8Gi"}}, "timeout": "60m"},
            "platformOverrides": [{"platform": "linux/arm64", "nodeSelector": {"karpenter.sh/capacity-type": "on-demand"}}]});
        assert!(outcome(resources, &BuilderDefaults::default()).is_ok());
    }
}
