//! `broadcaster serve`: the relay worker and the HTTP service (ingest, the status page,
//! metrics, probes) in one process.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use broadcaster::metrics::Metrics;
use broadcaster::server::{ServerState, serve};
use broadcaster::tenants::{FileView, TenantCatalog};

use super::run::{Worker, WorkerArgs, reload_on_hangup, stop_on_signal};

/// How long requests in progress may take to finish once the worker has stopped.
const REQUESTS_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    /// The address to listen on [default: server.listen, 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = args.worker.config.load()?;
    if let Some(listen) = &args.listen {
        config.server.listen = listen.clone();
    }
    let addr = config.server.listen_addr().map_err(anyhow::Error::msg).context("--listen")?;
    // Bad tokens are bad input: say so before starting anything.
    let tokens = broadcaster::server::tokens::TokenTable::from_config(&config, &|name| std::env::var(name).ok())?;
    let mut worker = Worker::start(&mut config, &args.worker, Arc::new(Metrics::new())).await?;
    let tokens = tokens.with_catalog_tokens(worker.catalog_tokens());
    let state = ServerState::with_tokens(&config, &worker.relay, tokens);
    let listen = args.listen.clone();
    let reloader = worker.reloader(config, &args.worker, move |config| {
        if let Some(listen) = &listen {
            config.server.listen = listen.clone();
        }
    });
    reloader.attach_server(&state);
    state.set_reloader(reloader.clone());
    if let Some(catalog) = worker.follow_catalog(&reloader) {
        let tenants = TenantCatalog::new(catalog, FileView::Live(reloader.clone()));
        state.set_tenant_admin(Arc::new(tenants));
    }
    reload_on_hangup(reloader);
    if state.has_no_tokens() {
        tracing::warn!("no [tokens.<name>] configured: every ingest request is refused (401)");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (server.listen)"))?;
    let local = listener.local_addr()?;
    eprintln!(
        "broadcaster serve: listening on http://{local}: POST /v1/publishers/{{name}}/events, GET / (status page), \
         GET /v1/status, GET /metrics, GET /healthz, GET /readyz"
    );
    let stop = stop_on_signal(worker.relay.clone());
    // Stop serving at the signal (requests in progress finish), or when the worker is done.
    let (worker_done, mut worker_done_rx) = tokio::sync::watch::channel(false);
    let mut signalled = stop.clone();
    let http = tokio::spawn(serve(listener, state, async move {
        tokio::select! {
            _ = signalled.wait_for(|stop| *stop) => {}
            _ = worker_done_rx.wait_for(|done| *done) => {}
        }
    }));
    let report = worker.run(stop).await;
    let _ = worker_done.send(true);
    match tokio::time::timeout(REQUESTS_GRACE, http).await {
        Ok(Ok(Err(err))) => return Err(err).context("the HTTP server failed"),
        Ok(_) => {}
        Err(_) => eprintln!("broadcaster serve: requests still in progress after {REQUESTS_GRACE:?}; closing them"),
    }
    report.print();
    Ok(ExitCode::SUCCESS)
}
