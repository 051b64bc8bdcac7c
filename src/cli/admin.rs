//! `tollgate admin …`: operator commands that read the store directly (the admin API will
#![allow(clippy::print_stdout)] // a CLI command prints its result
//! serve the same data with role checks).

use crate::config::Config;
use crate::store::{ProviderKeyInventory, Store};
use anyhow::Context;
use clap::Subcommand;
use secrecy::ExposeSecret;
use std::path::PathBuf;
use std::process::ExitCode;

/// Admin commands.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// The provider-key inventory: every key the secret store holds (never the secret), its
    /// versions and stages, state, last use and spend to date.
    Keys {
        /// The configuration file (database and secret store).
        #[arg(long, short, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
        config: PathBuf,
        /// List the secret store now and write the inventory before printing it (otherwise
        /// it shows what the running replicas last recorded).
        #[arg(long)]
        refresh: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Run an admin command.
pub async fn run(command: AdminCommand) -> anyhow::Result<ExitCode> {
    match command {
        AdminCommand::Keys {
            config,
            refresh,
            json,
        } => {
            let cfg = Config::load(&config)?;
            let store = Store::connect(cfg.database_url.expose_secret(), 2)
                .await
                .context("database")?;
            store.migrate().await.context("database migrations")?;
            if refresh {
                let secret_store = crate::app::open_store(&cfg.secrets)
                    .await
                    .context("secret store")?;
                let cache = crate::secrets::KeyCache::load(secret_store, cfg.secrets.max_staleness)
                    .await
                    .context("secret store")?;
                crate::app::sync_inventory(&cache, &store).await;
            }
            let rows = store.provider_keys().await.context("inventory")?;
            if json {
                let v: Vec<serde_json::Value> = rows.iter().map(to_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_table(&rows);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn to_json(r: &ProviderKeyInventory) -> serde_json::Value {
    serde_json::json!({
        "id": r.key.id,
        "store": r.key.store,
        "provider": r.key.provider,
        "billing_owner": r.key.billing_owner,
        "allowed_models": r.key.allowed_models,
        "purpose": r.key.purpose,
        "version": r.key.version,
        "versions": serde_json::from_str::<serde_json::Value>(&r.key.versions).unwrap_or_default(),
        "state": r.key.state,
        "reason": r.key.reason,
        "first_seen_ms": r.first_seen,
        "last_seen_ms": r.last_seen,
        "last_used_ms": r.last_used,
        "requests": r.requests,
        "spend_usd": r.spend_micro_usd as f64 / 1e6,
    })
}

fn print_table(rows: &[ProviderKeyInventory]) {
    if rows.is_empty() {
        println!("no provider keys recorded yet (run with --refresh, or start tollgate serve)");
        return;
    }
    let header = [
        "ID",
        "PROVIDER",
        "OWNER",
        "MODELS",
        "VERSION",
        "STATE",
        "REQUESTS",
        "SPEND USD",
        "LAST USED",
    ];
    let table: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.key.id.clone(),
                r.key.provider.clone(),
                r.key.billing_owner.clone(),
                r.key.allowed_models.clone(),
                r.key.version.clone(),
                match &r.key.reason {
                    Some(why) => format!("{} ({why})", r.key.state),
                    None => r.key.state.clone(),
                },
                r.requests.to_string(),
                format!("{:.6}", r.spend_micro_usd as f64 / 1e6),
                r.last_used.map_or_else(|| "-".to_owned(), format_ms),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(&header.map(str::to_owned)));
    for row in &table {
        println!("{}", line(row));
    }
}

fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0)),
    )
    .to_string()
}
