//! Command-line parsing, shared options, logging and exit codes.
//!
//! Exit codes: 0 success; 1 the work failed (an event was not published, a publisher is
//! unhealthy); 2 bad input (command line, config file, component, backend options).

mod bench;
mod check;
mod event_flags;
mod health;
mod migrate;
mod output;
mod prune;
mod publish;
mod retry;
mod run;
mod send;
mod serve;
mod status;
mod tenants;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use broadcaster::config::{Config, ConfigError};
use broadcaster::outbox::{OutboxStore, StoreError};
use clap::{Parser, Subcommand};

/// Broadcaster: a transactional-outbox relay with sandboxed WebAssembly publishers.
///
/// Applications write CloudEvents into an outbox table inside their own transactions;
/// Broadcaster publishes each through the publisher it names: the native Redis Stream
/// backend or a WebAssembly component. Configuration lives in broadcaster.toml (see the
/// manual, docs/src/configuration.md); every value can be overridden with BROADCASTER_… environment variables.
#[derive(Debug, Parser)]
#[command(name = "broadcaster", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command that reads the configuration takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// The configuration file.
    #[arg(long, short = 'c', env = "BROADCASTER_CONFIG", default_value = broadcaster::config::DEFAULT_CONFIG_FILE, value_name = "FILE")]
    pub config: PathBuf,
}

impl ConfigArg {
    /// Loads the configuration, with a hint when the default file is missing.
    pub fn load(&self) -> anyhow::Result<Config> {
        load_config(&self.config)
    }
}

pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    match broadcaster::checks::load_config(path) {
        Err(ConfigError::Read { path, cause }) if cause.kind() == std::io::ErrorKind::NotFound => {
            Err(ConfigError::Read { path, cause }).context(
                "no configuration: pass --config <file>, or start from the example with \
                 `cp examples/broadcaster.toml broadcaster.toml`",
            )
        }
        other => Ok(other?),
    }
}

/// Connects to the configuration's outbox; a URL that is not a database URL is named with the
/// file and key it came from.
pub async fn connect_outbox(config: &Config) -> anyhow::Result<OutboxStore> {
    match OutboxStore::connect(&config.outbox.url).await {
        Err(err @ StoreError::Url { .. }) => {
            Err(err).with_context(|| format!("{}: `outbox.url`", config.path.display()))
        }
        other => Ok(other?),
    }
}

/// Connects to the configuration's outbox and checks that its table is there.
pub async fn open_outbox(config: &Config) -> anyhow::Result<OutboxStore> {
    let store = connect_outbox(config).await?;
    store.verify().await?;
    Ok(store)
}

/// Adds the publishers of the outbox database's tenant catalog to `config`, for commands that
/// build or name publishers (`health`, `send`). Nothing when the database keeps no catalog
/// yet, or is a SQLite file that does not exist (these commands do not need an outbox).
pub async fn add_catalog_publishers(config: &mut Config) -> anyhow::Result<()> {
    if let Some(file) = config.outbox.url.strip_prefix("sqlite://")
        && !Path::new(file.split('?').next().unwrap_or(file)).exists()
    {
        return Ok(());
    }
    let Ok(store) = OutboxStore::connect(&config.outbox.url).await else {
        return Ok(());
    };
    if let Some(catalog) = store.catalog()
        && catalog.is_present().await.unwrap_or(false)
    {
        broadcaster::tenants::start::load_catalog(&store, config).await?;
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay worker: claim due events, publish them, record the outcome.
    ///
    /// Stops on SIGINT/SIGTERM: claims nothing more, lets each call in flight finish (a
    /// backend's call is cut at its deadline at the latest), puts the rest of each batch back
    /// to waiting without spending a retry, and exits within the longest call_timeout + 5 s (a
    /// second signal exits at once; claimed events then return after the lease timeout).
    /// Several workers may share a PostgreSQL outbox. Logs at info by default (RUST_LOG to
    /// change).
    Run(run::RunArgs),
    /// Run the relay worker and an HTTP service: event ingest for tenants, metrics and probes.
    ///
    /// POST /v1/publishers/{name}/events takes CloudEvents over HTTP (structured
    /// application/cloudevents+json, binary ce-* headers, or a batch
    /// application/cloudevents-batch+json) with a bearer token from [tokens.<name>], and
    /// answers once they are committed to the outbox. GET /metrics is Prometheus text; GET
    /// /healthz says the process is up; GET /readyz says whether the outbox answers (503 if
    /// not) and how each publisher is. Stops like `run` on SIGINT/SIGTERM, finishing the
    /// requests in progress.
    Serve(serve::ServeArgs),
    /// Enqueue events into the outbox and print their ids.
    ///
    /// Describe one event with flags (--type and --source at least), or pipe CloudEvent
    /// JSON on stdin: one document, or JSON Lines for many (each gets an id if it has none).
    Publish(publish::PublishArgs),
    /// Publish one event straight through a publisher, without the outbox (to try a backend).
    ///
    /// Describe the event with flags (--type and --source at least), or pipe a CloudEvent
    /// JSON document (structured mode) on stdin. --publisher-config applies either way.
    /// Prints the event id; exits 1 if the publisher refused the event.
    Send(send::SendArgs),
    /// Check every publisher's health and print a table; exit 1 if any is unhealthy.
    Health(health::HealthArgs),
    /// Check that a .wasm file is a backend component for this Broadcaster, and say exactly
    /// why when it is not (exit 2).
    Check(check::CheckArgs),
    /// Create the outbox table and its indexes if missing (the same table django-broadcaster's
    /// migration creates); an existing table is checked and left alone.
    Migrate(migrate::MigrateArgs),
    /// Show how many events each publisher has in each status, and the oldest due one.
    Status(status::StatusArgs),
    /// Put failed events back to pending (by id, or all with --failed), retries reset.
    Retry(retry::RetryArgs),
    /// Delete published events older than an age, in bounded batches.
    Prune(prune::PruneArgs),
    /// Define tenants in the outbox database (every relay on it applies them within a
    /// second): upload components, put, list, get, remove and roll back publishers, make and
    /// revoke tokens. The admin API of `serve` does the same over HTTP.
    Tenants(tenants::TenantsArgs),
    /// Measure: `bench relay` (outbox → Redis throughput). Prints a table.
    Bench(bench::BenchArgs),
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Send(args) => send::run(args).await,
        Command::Health(args) => health::run(args).await,
        Command::Check(args) => check::run(args).await,
        Command::Run(args) => run::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Publish(args) => publish::run(args).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Retry(args) => retry::run(args).await,
        Command::Prune(args) => prune::run(args).await,
        Command::Tenants(args) => tenants::run(args).await,
        Command::Bench(args) => bench::run(args).await,
    }
}

/// Logs go to stderr; `RUST_LOG` chooses what (default: warnings, and `info` for the worker).
pub fn init_logging(command: &Command) {
    let default = if matches!(command, Command::Run(_) | Command::Serve(_)) { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let color = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(color).with_writer(std::io::stderr).init();
}

/// 2 for bad input, 1 for everything else. Each library error says whether it is bad input.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    let bad_input = err.chain().any(|cause| {
        broadcaster::is_bad_input(cause) || cause.is::<check::MissingGrant>() || cause.is::<clap::Error>()
    });
    if bad_input { 2 } else { 1 }
}
