//! `broadcaster check <file.wasm>`: is this a backend this Broadcaster can run, and (with
//! `--publisher`) does that publisher grant everything it needs?

use std::path::PathBuf;
use std::process::ExitCode;

use broadcaster::host::{HostEngine, LoadedComponent, SUPPORTED_VERSIONS};
use broadcaster::registry::UnknownPublisher;

use super::load_config;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The component file to check.
    #[arg(value_name = "FILE.wasm")]
    file: PathBuf,
    /// Also check it against this publisher's grants in the configuration.
    #[arg(long, short = 'p')]
    publisher: Option<String>,
    /// The configuration file (with --publisher).
    #[arg(long, short = 'c', env = "BROADCASTER_CONFIG", default_value = broadcaster::config::DEFAULT_CONFIG_FILE, value_name = "FILE")]
    config: PathBuf,
}

/// A component needs a capability the publisher does not grant.
#[derive(Debug, thiserror::Error)]
#[error(
    "publisher `{publisher}` does not grant `{grant}`, which {file} needs for its import `{import}`; grant it with {example}"
)]
pub struct MissingGrant {
    publisher: String,
    grant: String,
    file: String,
    import: String,
    example: String,
}

pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let engine = HostEngine::new()?;
    let file = args.file.clone();
    let loaded = tokio::task::spawn_blocking(move || LoadedComponent::load(&engine, &file)).await??;
    let batches = if loaded.version.has_batches() { "a batch per call" } else { "one event per call" };
    println!(
        "ok: {} is a backend for broadcaster:backend@{} ({batches}; this Broadcaster supports {})",
        args.file.display(),
        loaded.version,
        SUPPORTED_VERSIONS.join(", ")
    );
    let needs = loaded.required_grants();
    if needs.is_empty() {
        println!("needs no grants");
    } else {
        let list: Vec<String> = needs.iter().map(|n| format!("{} (for {})", n.key(), n.import)).collect();
        println!("needs grants: {}", list.join(", "));
    }
    for import in &loaded.imports {
        println!("  imports {import}");
    }
    if let Some(name) = &args.publisher {
        let config = load_config(&args.config)?;
        let publisher =
            config.publishers.get(name).ok_or_else(|| UnknownPublisher::new(name, config.publishers.keys()))?;
        if let Some(missing) = needs.iter().find(|needed| !publisher.grants.contains(needed.key())) {
            return Err(MissingGrant {
                publisher: name.clone(),
                grant: missing.key().to_string(),
                file: args.file.display().to_string(),
                import: missing.import.to_string(),
                example: missing.example(name),
            }
            .into());
        }
        println!("ok: publisher `{name}` grants everything it needs");
    }
    Ok(ExitCode::SUCCESS)
}
