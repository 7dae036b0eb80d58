//! multiarch-operator: builds multi-architecture container images natively, one BuildKit builder
//! per CPU architecture on a node of that architecture, and publishes a verified OCI image index.
//!
//! The pure core (API types, validation, the build planner, builder rendering, index assembly) has
//! no client, no clock and no randomness; the controller and the registry adapter are the only
//! modules that do I/O.

pub mod api;
pub mod api_client;
pub mod builder;
pub mod config;
pub mod controller;
pub mod failpoint;
pub mod git;
pub mod health;
pub mod metrics;
pub mod plan;
pub mod platform;
pub mod publish;
pub mod reference;
pub mod telemetry;
pub mod validate;

/// Installs the process-wide TLS crypto provider (ring). Every binary and test that opens a TLS
/// connection calls this first; calling it twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
