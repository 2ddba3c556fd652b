//! `broadcaster check <file.wasm>`: is this a backend this Broadcaster can run?

use std::path::PathBuf;
use std::process::ExitCode;

use broadcaster::host::{HostEngine, LoadedComponent, SUPPORTED_VERSIONS};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The component file to check.
    #[arg(value_name = "FILE.wasm")]
    file: PathBuf,
}

pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let engine = HostEngine::new()?;
    let file = args.file.clone();
    let loaded = tokio::task::spawn_blocking(move || LoadedComponent::load(&engine, &file)).await??;
    println!("ok: {} is a backend for broadcaster:backend@{}", args.file.display(), SUPPORTED_VERSIONS.join(", "));
    for import in &loaded.imports {
        println!("  imports {import}");
    }
    Ok(ExitCode::SUCCESS)
}
