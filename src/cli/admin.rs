//! `tollgate admin keys|pauses|unpause|break-glass-token`: the commands that can also work
//! without a running broker (`--config`: read and write the store directly); the commands
//! that only speak to the admin API, with roles, are in `admin_api`.
#![allow(clippy::print_stdout)] // a CLI command prints its result

use crate::config::Config;
use crate::store::{PauseKind, ProviderKeyInventory, Store};
use anyhow::Context;
use clap::Subcommand;
use secrecy::ExposeSecret;
use std::path::PathBuf;
use std::process::ExitCode;

/// Admin commands.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    #[command(flatten)]
    Api(super::admin_api::ApiCommand),
    /// Make a break-glass token for the admin API: prints the token (shown once: seal it
    /// where on-call can reach it in an outage) and its SHA-256, which is all Tollgate keeps
    /// (`[admin] break_glass_sha256`, a file for `break_glass_sha256_file`, or a secret-store
    /// entry for `break_glass_sha256_secret`).
    BreakGlassToken {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The provider-key inventory: every key the secret store holds (never the secret), its
    /// versions and stages, state (disabled, paused), last use and spend to date. Through the
    /// admin API; with --config, read from the store of that configuration instead (a host
    /// with no running broker).
    Keys {
        #[command(flatten)]
        remote: super::admin_api::Remote,
        /// Read the store of this configuration file instead of calling the admin API.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// With --config: list the secret store now and write the inventory before printing
        /// it (otherwise it shows what the running replicas last recorded).
        #[arg(long, requires = "config")]
        refresh: bool,
    },
    /// Workloads and provider keys the anomaly guard paused (and, with --lifted, those lifted
    /// in the last 7 days). Through the admin API, or the store of --config.
    Pauses {
        #[command(flatten)]
        remote: super::admin_api::Remote,
        /// Read the store of this configuration file instead of calling the admin API.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Include pauses lifted in the last 7 days.
        #[arg(long)]
        lifted: bool,
    },
    /// Lift a pause of the anomaly guard: the workload or key serves again on every replica
    /// within a second. Through the admin API (recorded as the caller), or the store of
    /// --config (recorded as --by).
    Unpause {
        #[command(flatten)]
        remote: super::admin_api::Remote,
        /// Write to the store of this configuration file instead of calling the admin API.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The paused workload's subject (`system:serviceaccount:<ns>:<sa>`).
        #[arg(long, conflicts_with = "key", required_unless_present = "key")]
        subject: Option<String>,
        /// The paused provider key's id.
        #[arg(long)]
        key: Option<String>,
        /// With --config: who lifts it, for the record (default: $USER).
        #[arg(long, env = "USER", default_value = "admin")]
        by: String,
    },
}

/// The columns of the key inventory, from the store or the admin API.
pub(super) const KEY_COLUMNS: [&str; 9] = [
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

/// The store of a configuration file, migrated.
pub(super) async fn open(config: &std::path::Path) -> anyhow::Result<Store> {
    let cfg = Config::load(config)?;
    let store = Store::connect(cfg.database_url.expose_secret(), 2)
        .await
        .context("database")?;
    store.migrate().await.context("database migrations")?;
    Ok(store)
}

/// Run an admin command.
pub async fn run(command: AdminCommand) -> anyhow::Result<ExitCode> {
    match command {
        AdminCommand::Api(c) => super::admin_api::run(c).await,
        AdminCommand::BreakGlassToken { json } => {
            let (token, hash) = crate::admin::new_break_glass_token();
            if json {
                println!("{}", serde_json::json!({"token": token, "sha256": hash}));
            } else {
                println!("token:  {token}");
                println!("sha256: {hash}");
                eprintln!(
                    "\nConfigure only the hash:  [admin] break_glass_sha256 = \"{hash}\"\n\
                     (or store it as field sha256 of a secret named by break_glass_sha256_secret)\n\
                     The token is shown once; every use is logged at WARN and counted in \
                     tollgate_admin_break_glass_uses_total."
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AdminCommand::Pauses {
            remote,
            config: None,
            lifted,
        } => super::admin_api::pauses(&remote, lifted).await,
        AdminCommand::Pauses {
            remote,
            config: Some(config),
            lifted,
        } => {
            let json = remote.json;
            let store = open(&config).await?;
            let since = lifted.then(|| crate::clock::now_ms() - 7 * crate::store::DAY_MS);
            let rows = store.pauses(since).await.context("pauses")?;
            if json {
                let v: Vec<serde_json::Value> = rows.iter().map(pause_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if rows.is_empty() {
                println!("nothing is paused");
            } else {
                let table = rows
                    .iter()
                    .map(|p| {
                        vec![
                            p.kind.as_str().to_owned(),
                            p.value.clone(),
                            format_ms(p.created_at),
                            match (&p.lifted_at, &p.lifted_by) {
                                (Some(at), by) => format!(
                                    "lifted {} by {}",
                                    format_ms(*at),
                                    by.as_deref().unwrap_or("-")
                                ),
                                (None, _) => "paused".to_owned(),
                            },
                            p.reason.clone(),
                        ]
                    })
                    .collect();
                print_rows(&["KIND", "ID", "SINCE", "STATE", "REASON"], table);
            }
            Ok(ExitCode::SUCCESS)
        }
        AdminCommand::Unpause {
            remote,
            config,
            subject,
            key,
            by,
        } => {
            let (kind, value) = match (subject, key) {
                (Some(s), _) => (PauseKind::Subject, s),
                (None, Some(k)) => (PauseKind::ProviderKey, k),
                (None, None) => anyhow::bail!("name the --subject or the --key to unpause"),
            };
            let Some(config) = config else {
                return super::admin_api::unpause(&remote, kind.as_str(), &value).await;
            };
            let store = open(&config).await?;
            if store
                .lift_pause(kind, &value, &by, crate::clock::now_ms())
                .await
                .context("pauses")?
            {
                crate::audit::Audit::record_once(
                    &store,
                    &by,
                    "pause.lifted",
                    &value,
                    serde_json::json!({"kind": kind.as_str(), "id": value, "via": "cli"}),
                )
                .await;
                println!("lifted the pause of {} {value}", kind.as_str());
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{} {value} is not paused", kind.as_str());
                Ok(ExitCode::from(1))
            }
        }
        AdminCommand::Keys {
            remote,
            config: None,
            ..
        } => super::admin_api::keys(&remote).await,
        AdminCommand::Keys {
            remote,
            config: Some(config),
            refresh,
        } => {
            let json = remote.json;
            let store = open(&config).await?;
            if refresh {
                let cfg = Config::load(&config)?;
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
    let table = rows
        .iter()
        .map(|r| {
            vec![
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
    print_rows(&KEY_COLUMNS, table);
}

fn pause_json(p: &crate::store::PauseRecord) -> serde_json::Value {
    serde_json::json!({
        "id": p.id,
        "kind": p.kind.as_str(),
        "value": p.value,
        "reason": p.reason,
        "paused_at_ms": p.created_at,
        "lifted_at_ms": p.lifted_at,
        "lifted_by": p.lifted_by,
    })
}

/// Columns padded to their widest cell.
pub(super) fn print_rows(header: &[&str], table: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    println!("{}", line(&header));
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
