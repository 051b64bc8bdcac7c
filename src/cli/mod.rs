//! The `tollgate` command line. Parses arguments and calls into the library; `anyhow` is
//! used here, at the edge, and nowhere else.

mod admin;
mod admin_api;
mod agent;
mod audit;
mod dev;

use crate::app::Application;
use crate::config::{Config, LogFormatConfig};
use crate::telemetry::{self, LogFormat};
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// A secrets broker for LLM APIs.
#[derive(Parser, Debug)]
#[command(name = "tollgate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker in production: PostgreSQL or SQLite, trusted issuers, real providers.
    Serve {
        /// The configuration file (TOML); `TOLLGATE_*` variables override it.
        #[arg(long, short, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
        config: PathBuf,
        /// Do not apply database migrations on start.
        #[arg(long)]
        no_migrate: bool,
        /// Validate the configuration and policies, then exit.
        #[arg(long)]
        check_config: bool,
    },
    /// Run a self-contained development broker (SQLite, a built-in OIDC issuer, the example
    /// policies, the mock provider unless OPENAI_API_KEY / ANTHROPIC_API_KEY are set).
    Dev(dev::DevArgs),
    /// Apply database migrations and exit.
    Migrate {
        /// The configuration file (for `database_url`).
        #[arg(long, short, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
        config: PathBuf,
    },
    /// Operator commands (provider-key inventory, …).
    Admin {
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
    /// The hash-chained audit log: verify it, export it.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The workload's sidecar: swaps the pod's service-account token for a Tollgate token,
    /// keeps it fresh, and serves it through a loopback proxy or a token file.
    Agent(agent::AgentArgs),
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Validate a policy directory: prints `file:line: reason` per problem, exits 1 on any.
    Check {
        /// The directory of `*.yaml` policy files.
        #[arg(default_value = "policies")]
        dir: PathBuf,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            no_migrate,
            check_config,
        } => {
            let mut cfg = Config::load(&config)?;
            if no_migrate {
                cfg.migrate_on_start = false;
            }
            if check_config {
                crate::identity::check_issuers(&cfg.issuers)?;
                crate::identity::check_issuers(&cfg.admin.issuers)
                    .map_err(|e| anyhow::anyhow!("admin.{e}"))?;
                crate::policy::load_dir(&cfg.policy_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
                eprintln!("configuration and policies are valid");
                return Ok(ExitCode::SUCCESS);
            }
            let log = telemetry::init_with(
                log_format(cfg.log_format),
                "info",
                cfg.telemetry.otlp.as_ref(),
            );
            let app = Application::build(cfg).await?;
            tracing::info!(addr = %app.local_addr()?, "tollgate serving");
            app.run_until(shutdown_signal()).await?;
            log.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev(args) => dev::run(args).await,
        Command::Agent(args) => {
            let _log = telemetry::init(LogFormat::Json, "info");
            agent::run(args).await
        }
        Command::Migrate { config } => {
            let _log = telemetry::init(LogFormat::Pretty, "info");
            let cfg = Config::load(&config)?;
            let store = crate::store::Store::connect(
                secrecy::ExposeSecret::expose_secret(&cfg.database_url),
                2,
            )
            .await
            .context("database")?;
            store.migrate().await.context("migrations")?;
            eprintln!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin { command } => {
            let _log = telemetry::init(LogFormat::Pretty, "warn");
            admin::run(command).await
        }
        Command::Audit { command } => {
            let _log = telemetry::init(LogFormat::Pretty, "warn");
            audit::run(command).await
        }
        Command::Policy {
            command: PolicyCommand::Check { dir },
        } => Ok(policy_check(&dir)),
    }
}

#[allow(clippy::print_stdout)]
fn policy_check(dir: &std::path::Path) -> ExitCode {
    match crate::policy::load_dir(dir) {
        Ok(set) => {
            println!(
                "{}: ok ({} models, {} bindings)",
                dir.display(),
                set.models().count(),
                set.bindings().len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn log_format(f: LogFormatConfig) -> LogFormat {
    match f {
        LogFormatConfig::Json => LogFormat::Json,
        LogFormatConfig::Pretty => LogFormat::Pretty,
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
