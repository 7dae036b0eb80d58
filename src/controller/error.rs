//! The errors of one reconcile: one variant per operation that failed (which apiserver call,
//! which registry step), each knowing whether retrying can help and which bounded category it is
//! counted under in `multiarch_reconcile_errors_total`.
//!
//! Outcomes that are expected (a builder refused at admission, an image missing from the registry,
//! a push Secret that does not work) are not errors: they are recorded in status.

use crate::metrics::ErrorCategory;

/// A failed reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("object has no namespace, name or uid")]
    MissingMetadata,
    #[error("reading Secret {name}: {source}")]
    GetSecret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading builder Job {name}: {source}")]
    GetJob {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("asking admission about builder {name}'s pod (dry run): {source}")]
    DryRunPod {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating builder Job {name}: {source}")]
    CreateJob {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("stopping builder Job {name}: {source}")]
    StopJob {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting builder Job {name}: {source}")]
    DeleteJob {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("patching the status: {source}")]
    PatchStatus {
        #[source]
        source: kube::Error,
    },
    /// A Job with a builder's name exists but belongs to another object (for example the
    /// predecessor of an object deleted and created again, not yet garbage-collected).
    #[error("builder {0} exists but is not owned by this object; waiting for it to go away")]
    BuilderNameTaken(String),
    /// The registry could not be asked whether a builder's image is there.
    #[error("checking {digest} in the registry: {message}")]
    CheckPushed { digest: String, message: String },
    /// The registry could not be read while verifying the platform images.
    #[error("verifying the platform images: {message}")]
    VerifyImages { message: String },
    /// The registry refused a per-platform tag for now.
    #[error("tagging the {platform} image: {message}")]
    TagImage { platform: String, message: String },
    /// The registry refused the index for now.
    #[error("pushing the index: {message}")]
    PushIndex { message: String },
}

impl Error {
    /// The category the error is counted under.
    pub fn category(&self) -> ErrorCategory {
        match self {
            Error::MissingMetadata => ErrorCategory::Metadata,
            Error::BuilderNameTaken(_) => ErrorCategory::BuilderNameTaken,
            Error::CheckPushed { .. }
            | Error::VerifyImages { .. }
            | Error::TagImage { .. }
            | Error::PushIndex { .. } => ErrorCategory::Registry,
            Error::GetSecret { .. }
            | Error::GetJob { .. }
            | Error::DryRunPod { .. }
            | Error::CreateJob { .. }
            | Error::StopJob { .. }
            | Error::DeleteJob { .. }
            | Error::PatchStatus { .. } => ErrorCategory::Kubernetes,
        }
    }

    /// True when trying again later can succeed with nothing changed: the apiserver, registry or
    /// git server was unreachable, overloaded or conflicting, or a Job name is still taken. False
    /// when the request itself was refused (for example forbidden by RBAC, or invalid).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::MissingMetadata => false,
            Error::BuilderNameTaken(_)
            | Error::CheckPushed { .. }
            | Error::VerifyImages { .. }
            | Error::TagImage { .. }
            | Error::PushIndex { .. } => true,
            Error::GetSecret { source, .. }
            | Error::GetJob { source, .. }
            | Error::DryRunPod { source, .. }
            | Error::CreateJob { source, .. }
            | Error::StopJob { source, .. }
            | Error::DeleteJob { source, .. }
            | Error::PatchStatus { source } => kube_transient(source),
        }
    }
}

/// An apiserver answer worth retrying: conflicts, rate limiting, server errors and timeouts; any
/// failure to get an answer at all.
fn kube_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(response) => {
            matches!(response.code, 408 | 409 | 429) || response.code >= 500
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("m", "r")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn apiserver_errors_are_transient_unless_the_request_was_refused() {
        for (code, transient) in [
            (403, false),
            (404, false),
            (422, false),
            (409, true),
            (429, true),
            (500, true),
            (503, true),
        ] {
            let e = Error::CreateJob {
                name: "b".into(),
                source: api(code),
            };
            assert_eq!(e.is_transient(), transient, "{code}");
            assert_eq!(e.category().as_str(), "kubernetes");
        }
    }

    #[test]
    fn categories_keep_their_metric_labels() {
        let cases = [
            (Error::MissingMetadata, "metadata", false),
            (
                Error::BuilderNameTaken("b".into()),
                "builder_name_taken",
                true,
            ),
            (
                Error::PushIndex {
                    message: "503".into(),
                },
                "registry",
                true,
            ),
        ];
        for (e, category, transient) in cases {
            assert_eq!(e.category().as_str(), category, "{e}");
            assert_eq!(e.is_transient(), transient, "{e}");
        }
    }
}
