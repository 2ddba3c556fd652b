//! `broadcaster bench`: measurements that print a table (speed targets live here, not in
//! timed tests). One file per measurement.

mod control;
mod ingest;
mod isolation;
mod latency;
mod relay;
mod startup;
mod tenants;

use std::process::ExitCode;

use anyhow::{Context, bail};
use sqlx::Connection;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BenchCommand {
    /// Relay throughput, outbox → Redis: enqueue N events of about 300 bytes, then time one
    /// worker (as `broadcaster run` runs it) publishing all of them, for each outbox ×
    /// publisher combination.
    Relay(relay::RelayBench),
    /// Start-up of many publishers built from one component (each with its own options),
    /// with an empty compile cache and with a warm one, and resident memory per idle
    /// publisher. Each measurement runs in a fresh process.
    Startup(startup::StartupBench),
    /// Isolation: a well-behaved component tenant (the shipped redis-stream.wasm) beside
    /// hostile and slow ones (the test attacker component): its throughput beside each
    /// attacker as a fraction of alone, the time to its first published event, the time to
    /// stop, and the relay's resident memory.
    Isolation(isolation::IsolationBench),
    /// Latency, commit → entry a consumer reads, at fixed offered rates (open loop), per
    /// outbox, with the relay's default configuration; and the relay's CPU when idle.
    Latency(latency::LatencyBench),
    /// HTTP ingest (`broadcaster serve`): events/s accepted per outbox × mode (single, batch)
    /// × concurrent clients, request p50/p99, and p50/p99 at half the best load (open loop);
    /// beside `broadcaster publish` and the seed's `publish_event` writing the same events.
    Ingest(ingest::IngestBench),
    /// Tenant scale: a relay with many configured component tenants (100,000 by default) of
    /// which a few (1,000) receive events in turn, beside a relay with only those few: start-up,
    /// throughput (and its ratio to the few alone), resident memory (peak), live instances,
    /// instances made. Each run in a fresh process.
    Tenants(tenants::TenantsBench),
    /// The tenants' control plane: start-up and memory of a relay with many tenants from the
    /// catalog beside the same tenants from a TOML file; then the time from a tenant put
    /// through the catalog to its first event published by another relay process.
    Control(control::ControlBench),
    /// One start-up measurement (run by `bench startup` in a child process).
    #[command(hide = true)]
    StartupOnce(startup::StartupOnce),
    /// One tenant-scale run (run by `bench tenants` in a child process).
    #[command(hide = true)]
    TenantsOnce(tenants::TenantsOnce),
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.what {
        BenchCommand::Relay(bench) => relay::run(bench).await,
        BenchCommand::Startup(bench) => startup::run(bench).await,
        BenchCommand::StartupOnce(once) => startup::run_once(once).await,
        BenchCommand::Tenants(bench) => tenants::run(bench).await,
        BenchCommand::TenantsOnce(once) => tenants::run_once(once).await,
        BenchCommand::Isolation(bench) => isolation::run(bench).await,
        BenchCommand::Latency(bench) => latency::run(bench).await,
        BenchCommand::Ingest(bench) => ingest::run(bench).await,
        BenchCommand::Control(bench) => control::run(bench).await,
    }
}

/// A scratch outbox: a temporary SQLite file, or a temporary PostgreSQL database.
pub(super) struct Scratch {
    pub(super) url: String,
    server: Option<String>,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

impl Scratch {
    pub(super) async fn create(kind: &str, postgres: &str) -> anyhow::Result<Self> {
        match kind {
            "sqlite" => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                Ok(Self { url, server: None, name: String::new(), _dir: Some(dir) })
            }
            "postgres" => {
                let name = format!("broadcaster_bench_{}", std::process::id());
                let mut conn = sqlx::PgConnection::connect(postgres)
                    .await
                    .with_context(|| format!("connecting to {postgres} (--postgres)"))?;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\"")))
                    .execute(&mut conn)
                    .await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\""))).execute(&mut conn).await?;
                let base = postgres.rsplit_once('/').map(|(b, _)| b).context("--postgres needs a database")?;
                Ok(Self { url: format!("{base}/{name}"), server: Some(postgres.to_string()), name, _dir: None })
            }
            other => bail!("unknown --outbox {other:?} (sqlite, postgres)"),
        }
    }

    pub(super) async fn drop(self) {
        if let Some(server) = &self.server
            && let Ok(mut conn) = sqlx::PgConnection::connect(server).await
        {
            let drop = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut conn).await;
        }
    }
}

/// The seed (django-broadcaster 0.1.1) run through the Django project of the tests, for the
/// rows that compare with it.
#[derive(Debug, clap::Args)]
pub(super) struct SeedApp {
    /// A Python with Django and django-broadcaster 0.1.1 installed, for the seed's rows
    /// (`scripts/setup --for-tests` installs one).
    #[arg(
        long = "seed-python",
        env = "PYTHON_FOR_TESTS",
        default_value = "/var/tmp/broadcaster-cache/venv/bin/python",
        value_name = "PYTHON"
    )]
    python: std::path::PathBuf,
}

impl SeedApp {
    /// The Django project that runs the seed (from the repository root, as `components/dist`).
    const SCRIPT: &str = "tests/django_app/outbox_app.py";

    /// Why the seed cannot run here, if it cannot.
    pub(super) fn missing(&self) -> Option<String> {
        (!self.python.exists() || !std::path::Path::new(Self::SCRIPT).exists()).then(|| {
            format!(
                "{} or {} is missing (scripts/setup --for-tests, run from the repository root)",
                self.python.display(),
                Self::SCRIPT
            )
        })
    }

    /// Starts one of the script's long-running commands (`seed-worker`) on the outbox at `url`;
    /// killed when dropped. Its output goes to this process's stderr.
    pub(super) fn spawn(&self, url: &str, command: &[&str]) -> anyhow::Result<tokio::process::Child> {
        let database = url.strip_prefix("sqlite://").unwrap_or(url);
        tokio::process::Command::new(&self.python)
            .arg(Self::SCRIPT)
            .arg(database)
            .args(command)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("running {}", self.python.display()))
    }

    /// Runs one of the script's timed commands on the outbox at `url` (`seed-relay`,
    /// `seed-enqueue`): the events it handled and the seconds it took, as it prints them.
    pub(super) async fn timed(&self, url: &str, command: &[&str]) -> anyhow::Result<(u64, f64)> {
        let database = url.strip_prefix("sqlite://").unwrap_or(url);
        let output = tokio::process::Command::new(&self.python)
            .arg(Self::SCRIPT)
            .arg(database)
            .args(command)
            .output()
            .await
            .with_context(|| format!("running {}", self.python.display()))?;
        if !output.status.success() {
            bail!("the seed's `{}` failed:\n{}", command[0], String::from_utf8_lossy(&output.stderr));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let mut words = text.split_whitespace();
        match (words.next().and_then(|n| n.parse().ok()), words.next().and_then(|s| s.parse().ok())) {
            (Some(events), Some(seconds)) => Ok((events, seconds)),
            _ => bail!("the seed's `{}` printed {text:?}, expected `<events> <seconds>`", command[0]),
        }
    }
}

/// Resident memory of this process, in bytes (Linux `/proc/self/status`).
pub(super) fn resident_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// The most resident memory this process has had, in bytes.
pub(super) fn peak_resident_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
