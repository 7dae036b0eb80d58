//! The Helm chart carries its own copy of the CRD (charts/multiarch-operator/files/crds/), rendered
//! by templates/crd.yaml; it must stay equal to crds/ (`make crds` refreshes both).

use std::path::Path;

#[test]
fn chart_crd_copy_equals_crds_dir() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = "multiarchimages.multiarch.dev.yaml";
    let crds = std::fs::read_to_string(root.join("crds").join(file)).unwrap();
    let chart =
        std::fs::read_to_string(root.join("charts/multiarch-operator/files/crds").join(file))
            .unwrap();
    assert!(
        crds == chart,
        "charts/multiarch-operator/files/crds/{file} differs from crds/{file}: run `make crds`"
    );
}

#[test]
fn chart_crd_copy_equals_generated_crd() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chart = std::fs::read_to_string(
        root.join("charts/multiarch-operator/files/crds/multiarchimages.multiarch.dev.yaml"),
    )
    .unwrap();
    assert_eq!(chart, multiarch_operator::api::crd_yaml());
}
