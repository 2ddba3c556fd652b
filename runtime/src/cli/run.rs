//! `broadcaster run`: the relay worker (the seed's `manage.py outbox_worker`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use broadcaster::config::Config;
use broadcaster::config::units::parse_duration;
use broadcaster::metrics::Metrics;
use broadcaster::outbox::catalog::Catalog;
use broadcaster::registry::{BuildOptions, PublisherRegistry};
use broadcaster::relay::{Relay, RunOptions};
use broadcaster::reload::Reloader;
use broadcaster::tenants::start::CatalogStart;

use super::ConfigArg;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// The worker's options, shared by `run` and `serve`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Most events claimed per batch [default: relay.batch_size, 100].
    #[arg(long)]
    batch_size: Option<u32>,
    /// Wait between polls when nothing is due: 250ms, 5s, or a number of seconds
    /// [default: relay.interval, 5s]. Never waits after a full batch.
    #[arg(long, value_parser = parse_duration)]
    interval: Option<std::time::Duration>,
    /// Stop after this many iterations (0: run until SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0)]
    max_iterations: u64,
    /// Refuse to start unless every publisher starts (for deploy pipelines). Without it, a
    /// component whose start fails (its init refuses the options, traps, or misses its
    /// deadline) starts down, says why in the log and `broadcaster health`, keeps its events
    /// waiting, and is started again with backoff while the others publish. With more
    /// component publishers than `[wasm] live_instances`, `--strict` makes (and `init`s) every
    /// one's instance once, dropping the least recently made ones for room as it goes.
    #[arg(long)]
    strict: bool,
}

/// Time allowed after the longest call for the last outcomes to be written when stopping.
const STOP_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut config = args.worker.config.load()?;
    let mut worker = Worker::start(&mut config, &args.worker, Arc::default()).await?;
    let reloader = worker.reloader(config, &args.worker, |_| {});
    worker.follow_catalog(&reloader);
    reload_on_hangup(reloader);
    let stop = stop_on_signal(worker.relay.clone());
    let report = worker.run(stop).await;
    report.print();
    Ok(ExitCode::SUCCESS)
}

/// A relay worker, started.
pub struct Worker {
    pub relay: Arc<Relay>,
    options: RunOptions,
    /// The tenants' catalog as read at start, until it is followed.
    catalog: Option<CatalogStart>,
}

impl Worker {
    /// Opens the outbox, starts the publishers, and says so on stderr.
    pub async fn start(config: &mut Config, args: &WorkerArgs, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let options = RunOptions {
            batch_size: args.batch_size.unwrap_or(config.relay.batch_size).max(1),
            interval: args.interval.unwrap_or(config.relay.interval.0),
            max_iterations: args.max_iterations,
        };
        let store = super::open_outbox(config).await?;
        let catalog = broadcaster::tenants::start::load_catalog(&store, config).await?;
        if let Some(catalog) = catalog.as_ref().filter(|c| c.publishers > 0 || !c.tokens.is_empty()) {
            tracing::info!(publishers = catalog.publishers, tokens = catalog.tokens.len(), "tenant catalog read");
        }
        let registry =
            Arc::new(PublisherRegistry::build_with(config, None, BuildOptions { strict: args.strict }).await?);
        let mut names: Vec<&str> = registry.iter().map(|(name, _)| name).take(20).collect();
        let more = registry.len().saturating_sub(names.len());
        let more_text = format!("and {more} more");
        if more > 0 {
            names.push(&more_text);
        }
        tracing::info!(
            outbox = %store.display_url(),
            publishers = %names.join(", "),
            batch_size = options.batch_size,
            interval = ?options.interval,
            "worker started"
        );
        eprintln!(
            "broadcaster worker: outbox {} → publishers {} (batch {}, interval {:?}{})",
            store.display_url(),
            names.join(", "),
            options.batch_size,
            options.interval,
            if options.max_iterations > 0 { format!(", {} iterations", options.max_iterations) } else { String::new() }
        );
        let mut relay = Relay::new(store, registry, &config.relay).with_metrics(metrics);
        if let Some(endpoint) = &config.telemetry.otlp_endpoint {
            let exporter = broadcaster::otlp::OtlpExporter::start(endpoint, config.telemetry.service_name())?;
            tracing::info!(%endpoint, "exporting publish spans over OTLP");
            relay = relay.with_span_export(exporter);
        }
        let relay = Arc::new(relay);
        Ok(Self { relay, options, catalog })
    }

    /// What applies configuration changes to this worker: `config` is the one it runs, and
    /// the file is read again from the same place, with `adjust` applied (command-line
    /// settings that override the file).
    pub fn reloader(
        &self,
        config: Config,
        args: &WorkerArgs,
        adjust: impl Fn(&mut Config) + Send + Sync + 'static,
    ) -> Arc<Reloader> {
        let path = args.config.config.clone();
        let load = move || {
            let mut config = broadcaster::checks::load_config(&path)?;
            adjust(&mut config);
            Ok(config)
        };
        Reloader::new(config, self.relay.clone(), Box::new(load))
    }

    /// Runs until `stop` turns true (or the iterations are done).
    /// Follows the catalog read at start (when the database has one), applying its changes
    /// through `reloader`; returns it, for the admin API.
    pub fn follow_catalog(&mut self, reloader: &Arc<Reloader>) -> Option<Catalog> {
        let start = self.catalog.take()?;
        // Another relay may run a tenant this one has not applied yet: its events wait here.
        self.relay.hold_unknown_publishers();
        reloader.set_catalog_tokens(start.tokens);
        broadcaster::tenants::start::follow_catalog(reloader.clone(), start.catalog.clone(), start.after);
        Some(start.catalog)
    }

    /// The catalog's tokens read at start.
    pub fn catalog_tokens(&self) -> &[broadcaster::outbox::catalog::StoredToken] {
        self.catalog.as_ref().map_or(&[], |c| c.tokens.as_slice())
    }

    pub async fn run(self, stop: tokio::sync::watch::Receiver<bool>) -> WorkerReport {
        let started = Instant::now();
        let report = self.relay.run(self.options, stop).await;
        WorkerReport { report, seconds: started.elapsed().as_secs_f64() }
    }
}

/// What a worker did.
pub struct WorkerReport {
    report: broadcaster::relay::RelayReport,
    seconds: f64,
}

impl WorkerReport {
    /// Prints the one-line summary to stderr.
    pub fn print(&self) {
        let (report, seconds) = (&self.report, self.seconds);
        let totals = report.totals;
        eprintln!(
            "broadcaster worker: stopped after {} iteration(s) in {seconds:.1}s: {} published, {} retried, {} failed, \
             {} left waiting for an unhealthy publisher, {} taken back from expired leases{}",
            report.iterations,
            totals.published,
            totals.retried,
            totals.failed,
            totals.released,
            report.reclaimed,
            if report.errors > 0 {
                format!(", {} iteration(s) failed on the database", report.errors)
            } else {
                String::new()
            }
        );
    }
}

/// Reloads the configuration at every SIGHUP, saying on stderr what changed or why the
/// reload was refused.
pub fn reload_on_hangup(reloader: Arc<Reloader>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).expect("installing the SIGHUP handler");
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match reloader.reload_and_log().await {
                Ok(report) => eprintln!("broadcaster: {report}"),
                Err(err) => eprintln!("broadcaster: reload refused, nothing changed: {err}"),
            }
        }
    });
}

/// Turns true on SIGINT/SIGTERM; a second signal, or a stop that takes longer than the
/// longest call of `relay`'s publishers then plus a margin to record outcomes, exits the
/// process at once.
pub fn stop_on_signal(relay: Arc<Relay>) -> tokio::sync::watch::Receiver<bool> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        // However the backends behave, a stop takes no longer than their longest call and a
        // few seconds to record outcomes.
        let stop_within = relay.registry().longest_call() + STOP_MARGIN;
        eprintln!(
            "broadcaster worker: stopping: no new events; calls in flight finish or are cut within {stop_within:?} \
             (signal again to exit at once)"
        );
        let _ = stop_tx.send(true);
        tokio::select! {
            _ = wait_for_signal() => {
                eprintln!("broadcaster worker: exiting now; claimed events return after the lease timeout");
            }
            _ = tokio::time::sleep(stop_within) => {
                eprintln!(
                    "broadcaster worker: still not stopped after {stop_within:?}; exiting now, claimed events \
                     return after the lease timeout"
                );
            }
        }
        std::process::exit(130);
    });
    stop_rx
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
