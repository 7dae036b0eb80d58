//! What kstatus says of an object: the verdict of the real library Flux's health checks use
//! (`github.com/fluxcd/cli-utils/pkg/kstatus/status`, built by `e2e/tools/build.sh` as the
//! `kstatus` program), on the object exactly as the apiserver serves it.

use crate::cmd::{kubectl, run_with_input};
use crate::env;

/// kstatus's verdict of one object: its status (`InProgress`, `Failed`, `Current`,
/// `Terminating`, ...) and message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Verdict {
    pub status: String,
    pub message: String,
    #[serde(default)]
    pub error: Option<String>,
}

/// kstatus's verdict of `MultiArchImage` `ns/name` as the apiserver serves it now.
pub fn of(ns: &str, name: &str) -> Verdict {
    let object = kubectl(&["get", "multiarchimage", "-n", ns, name, "-o", "json"]);
    let program = env().tools_bin.join("kstatus");
    let input = format!("[{object}]");
    let out = run_with_input(&program.display().to_string(), &[], Some(input.as_bytes()));
    let verdict: Verdict =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("kstatus printed {out:?}: {e}"));
    assert_eq!(verdict.error, None, "kstatus could not read {ns}/{name}");
    verdict
}

/// Asserts kstatus's verdict of `ns/name` is `status`, with the object in the message.
pub fn assert_status(ns: &str, name: &str, status: &str) {
    let verdict = of(ns, name);
    assert_eq!(
        verdict.status,
        status,
        "kstatus of {ns}/{name}: {verdict:?}; the object: {}",
        kubectl(&[
            "get",
            "multiarchimage",
            "-n",
            ns,
            name,
            "-o",
            "jsonpath={.status}"
        ])
    );
}
