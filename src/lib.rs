//! multiarch-operator: builds multi-architecture container images natively, one BuildKit builder
//! per CPU architecture on a node of that architecture, and publishes a verified OCI image index.
//!
//! The pure core has no client, no clock and no randomness: `api` (the types, source of the CRD),
//! `validate`, `plan` (the build state machine), `builder` (builder Job rendering),
//! `publish::index` (index assembly), `provenance` (base images from BuildKit's provenance),
//! `reference`, `platform` and `config`.
//!
//! Where I/O happens:
//!
//! - `controller` is the only code that talks to the Kubernetes apiserver (watches, builder Jobs,
//!   status, Events, the leader-election Lease), with the client `api_client` builds;
//! - `publish::registry` is the only code that talks to registries, over its HTTP in
//!   `publish::transport` (the rest of `publish` and `controller::publishing` go through it);
//! - `git` talks to git servers, to resolve a revision to a commit;
//! - `publish::credentials` reads Docker config files and runs `docker-credential-*` helpers;
//! - `health` and `metrics` serve HTTP (`/healthz`, `/readyz`, `/metrics`);
//! - `telemetry` writes logs to standard error, and `failpoint` may end the process where an
//!   environment variable says (crash tests).

pub mod api;
pub mod api_client;
pub mod builder;
pub mod config;
pub mod controller;
pub mod failpoint;
pub mod git;
pub mod guardrails;
pub mod health;
pub mod metrics;
pub mod plan;
pub mod platform;
pub mod provenance;
pub mod publish;
pub mod reference;
pub mod secrets;
pub mod telemetry;
pub mod validate;

/// Installs the process-wide TLS crypto provider (ring). Every binary and test that opens a TLS
/// connection calls this first; calling it twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
