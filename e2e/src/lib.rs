//! The harness the end-to-end scenarios share: the environment `e2e/env.sh up` started (read from
//! the `env` file it writes), the operator process, kube clients with the product's own API types,
//! waits on watches with timeouts, and an independent registry client (skopeo, crane).
//!
//! Why a crate of its own: the scenarios need a running control plane, so they must not be picked
//! up by the unit step (`cargo test --all-targets` in the root package tests that package only);
//! `e2e/run.sh` (and so `make test`) brings the environment up and runs
//! `cargo test -p multiarch-e2e`. An environment that is not up fails every scenario with a
//! message saying how to start it; nothing is skipped.
//!
//! Scenarios run in their own namespaces. Those that stop the shared operator or delete shared
//! nodes take the environment's lock exclusively ([`Access::Exclusive`]); the others share it, so
//! the two kinds never overlap, whether they run in one test process or in several.

pub mod cmd;
pub mod env;
pub mod kstatus;
pub mod operator;
pub mod registry;
pub mod repo;
pub mod scenario;

pub use env::env;
pub use scenario::{mai, Access, Scenario};

use std::io::Write;

/// Progress for a person watching a long run: written straight to standard error, so the test
/// runner does not hold it back until the test ends.
pub fn progress(message: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "[e2e] {message}");
}
