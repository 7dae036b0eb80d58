//! Publishing: verify per-platform images and push a combined OCI image index to tags.
pub mod cli;
