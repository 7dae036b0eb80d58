//! The `multiarch-operator publish` command.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {}

/// Runs the command and returns the process exit code.
pub async fn run(_args: PublishArgs) -> i32 {
    2
}
