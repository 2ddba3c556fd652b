//! `broadcaster tenants`: the tenants' catalog in the outbox database, from the command line,
//! with the checks of the admin API (`docs/src/operators/tenant-api.md`). Every relay on the
//! database applies a change within a second.

use std::process::ExitCode;

use anyhow::Context;
use broadcaster::outbox::catalog::PutOutcome;
use broadcaster::tenants::{FileView, TenantCatalog, TenantError};
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct TenantsArgs {
    #[command(subcommand)]
    command: TenantsCommand,
    /// The configuration file: the outbox database, and the publishers and tokens the file
    /// defines (which the catalog does not manage).
    #[arg(long, short = 'c', global = true, env = "BROADCASTER_CONFIG", default_value = broadcaster::config::DEFAULT_CONFIG_FILE, value_name = "FILE")]
    config: std::path::PathBuf,
    /// Print the answer as JSON (the admin API's shape).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum TenantsCommand {
    /// Define (or change) a publisher: a component with its options, grants and limits, or
    /// the native backend with its options. Checked as strictly as a reload (the instance
    /// made and `init` run) before it is stored as a new version.
    Put {
        /// The publisher's name.
        name: String,
        /// A component file (uploaded as by `upload`), or the SHA-256 of a stored one.
        #[arg(long, value_name = "FILE.wasm|SHA256", conflicts_with = "backend", required_unless_present = "backend")]
        component: Option<String>,
        /// A native backend instead of a component: `redis-stream`.
        #[arg(long, value_name = "NAME")]
        backend: Option<String>,
        /// The publisher's options, a JSON object.
        #[arg(long, value_name = "JSON")]
        options: Option<String>,
        /// The capabilities granted to its component, a JSON object (`{"redis": {…}}`).
        #[arg(long, value_name = "JSON")]
        grants: Option<String>,
        /// Its component's limits, a JSON object (`{"memory": "32MiB"}`).
        #[arg(long, value_name = "JSON")]
        limits: Option<String>,
        /// Refuse unless the version in force is this one (0: no publisher of that name).
        #[arg(long, value_name = "N")]
        if_version: Option<i64>,
    },
    /// Check a component and store it; prints its SHA-256.
    Upload {
        /// The component file.
        #[arg(value_name = "FILE.wasm")]
        file: std::path::PathBuf,
    },
    /// Put every `[publishers.<name>]` of a configuration file in force in the catalog, in one
    /// transaction (components uploaded, each section checked as a file load checks it): how
    /// a platform moves its tenants from the file to the API. Each becomes a new version when
    /// it differs from the one in force.
    Import {
        /// The configuration file whose publishers to import.
        #[arg(value_name = "FILE.toml")]
        file: std::path::PathBuf,
    },
    /// List every publisher, the file's and the catalog's.
    List {
        /// Start after this name (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// How many at most.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Show a publisher: its definition in force and its versions.
    Get {
        /// The publisher's name.
        name: String,
    },
    /// Remove a publisher (its events wait; its versions are kept for a rollback).
    Rm {
        /// The publisher's name.
        name: String,
    },
    /// Put an earlier version back in force (as a new version).
    Rollback {
        /// The publisher's name.
        name: String,
        /// The version to go back to [default: the one before the version in force].
        #[arg(long)]
        version: Option<i64>,
    },
    /// Make a tenant's token for its publishers; printed once, stored only as its hash.
    Token {
        /// The token's name.
        name: String,
        /// The publishers it may send to (names or patterns like `tenant-a-*`).
        #[arg(long, num_args = 1.., required = true, value_name = "GLOB")]
        publishers: Vec<String>,
        /// Events per second, on average.
        #[arg(long)]
        rate: Option<f64>,
        /// Events at once above the rate.
        #[arg(long)]
        burst: Option<u32>,
    },
    /// Revoke a token made through the API or this command.
    Revoke {
        /// The token's name.
        name: String,
    },
    /// Drop all but the newest N versions of each publisher (the one in force is kept), and
    /// the stored components no version runs.
    Prune {
        /// Versions to keep per publisher.
        #[arg(long, value_name = "N")]
        keep: u32,
    },
}

fn json_object(flag: &str, text: Option<&str>) -> anyhow::Result<Option<Value>> {
    let Some(text) = text else { return Ok(None) };
    match serde_json::from_str::<Value>(text) {
        Ok(value @ Value::Object(_)) => Ok(Some(value)),
        Ok(_) => {
            Err(TenantError::BadRequest(format!("--{flag} is a JSON object, like '{{\"key\": \"value\"}}'")).into())
        }
        Err(err) => Err(TenantError::BadRequest(format!("--{flag} is not JSON: {err}")).into()),
    }
}

pub async fn run(args: TenantsArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&args.config)?;
    let store = super::connect_outbox(&config).await?;
    let catalog = store.catalog().context("this outbox database keeps no tenant catalog")?;
    if !catalog.is_present().await? {
        return Err(TenantError::CatalogMissing(format!(
            "{} has no tenant catalog: run `broadcaster migrate`",
            store.display_url()
        ))
        .into());
    }
    let tenants = TenantCatalog::new(catalog.clone(), FileView::Loaded(Box::new(config)));
    let by = format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()));
    let (answer, text) = match args.command {
        TenantsCommand::Put { name, component, backend, options, grants, limits, if_version } => {
            let mut definition = serde_json::Map::new();
            match (component, backend) {
                (Some(component), _) => {
                    definition.insert("component".into(), tenants.component_reference(&component, &by).await?.into());
                }
                (None, Some(backend)) => {
                    definition.insert("backend".into(), backend.into());
                }
                (None, None) => unreachable!("clap requires one"),
            }
            for (key, value) in [("options", options), ("grants", grants), ("limits", limits)] {
                if let Some(value) = json_object(key, value.as_deref())? {
                    definition.insert(key.into(), value);
                }
            }
            let outcome = tenants.put_publisher(&name, Value::Object(definition), if_version, &by).await?;
            let said = match outcome {
                PutOutcome::Created(v) => format!("{name}: created, version {v}"),
                PutOutcome::Changed(v) => format!("{name}: changed, version {v}"),
                PutOutcome::Unchanged(v) => format!("{name}: unchanged (version {v} has that definition)"),
            };
            (json!({"name": name, "version": outcome.version()}), said)
        }
        TenantsCommand::Upload { file } => {
            let bytes = std::fs::read(&file)
                .map_err(|err| TenantError::BadRequest(format!("cannot read {}: {err}", file.display())))?;
            let (info, created) = tenants.put_component(&bytes, &by).await?;
            let said = format!(
                "{} {} ({} bytes, contract {})",
                info.sha256,
                if created { "stored" } else { "was already stored" },
                info.size,
                info.contract
            );
            (serde_json::to_value(info)?, said)
        }
        TenantsCommand::Import { file } => {
            let (written, unchanged) = tenants.import_file(&file, &by).await?;
            (
                json!({"written": written, "unchanged": unchanged}),
                format!("{written} publisher(s) written, {unchanged} already in force as given"),
            )
        }
        TenantsCommand::List { after, limit } => {
            let page = tenants.publishers(after.as_deref(), limit.clamp(1, 10_000)).await?;
            let mut lines: Vec<String> = page
                .publishers
                .iter()
                .map(|p| match p.version {
                    Some(v) => format!("{}\tapi v{v}\t{}", p.name, p.kind),
                    None => format!("{}\tfile\t{}", p.name, p.kind),
                })
                .collect();
            if let Some(next) = &page.next {
                lines.push(format!("(more: --after {next})"));
            }
            (serde_json::to_value(&page)?, lines.join("\n"))
        }
        TenantsCommand::Get { name } => {
            let shown = tenants.publisher(&name).await?;
            (shown.clone(), serde_json::to_string_pretty(&shown)?)
        }
        TenantsCommand::Rm { name } => {
            let version = tenants.remove_publisher(&name).await?;
            (
                json!({"name": name, "version": version}),
                format!("{name}: removed (was version {version}); its events wait"),
            )
        }
        TenantsCommand::Rollback { name, version } => {
            let (version, from) = tenants.rollback(&name, version, &by).await?;
            (
                json!({"name": name, "version": version, "from": from}),
                format!("{name}: version {version} (a copy of {from})"),
            )
        }
        TenantsCommand::Token { name, publishers, rate, burst } => {
            let token = tenants.make_token(&name, publishers, rate, burst, &by).await?;
            (json!({"name": name, "token": token}), token)
        }
        TenantsCommand::Revoke { name } => {
            tenants.revoke_token(&name).await?;
            (json!({"name": name}), format!("{name}: revoked"))
        }
        TenantsCommand::Prune { keep } => {
            let (versions, components) = catalog.prune_versions(keep).await?;
            (
                json!({"versions": versions, "components": components}),
                format!("removed {versions} version(s) and {components} component(s) no version runs"),
            )
        }
    };
    if args.json {
        println!("{answer}");
    } else {
        println!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}
