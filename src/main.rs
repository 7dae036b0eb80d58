//! The `multiarch-operator` binary: `run` (the controller), `crd` (print the CRD) and `publish`.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "multiarch-operator",
    version,
    about = "Native multi-architecture image builds for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the MultiArchImage CustomResourceDefinition (YAML).
    Crd,
    /// Assemble per-platform images into a verified OCI image index and push it to tags.
    Publish(multiarch_operator::publish::cli::PublishArgs),
}

#[tokio::main]
async fn main() {
    multiarch_operator::install_crypto_provider();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Crd => {
            print!("{}", multiarch_operator::api::crd_yaml());
            0
        }
        Command::Publish(args) => multiarch_operator::publish::cli::run(args).await,
    };
    std::process::exit(code);
}
