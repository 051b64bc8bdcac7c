//! `tollgate audit verify|export`: read the audit log straight from the store, so an auditor
//! needs database read access and the configuration, not a running broker or an admin role.
#![allow(clippy::print_stdout)] // a CLI command prints its result

use super::admin::open;
use anyhow::Context;
use clap::Subcommand;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Audit log commands.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Walk every chain of the audit log and report the first broken link of each: exits 0
    /// when the log is intact, 1 when it is not.
    Verify {
        /// The configuration file (database).
        #[arg(long, short, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
        config: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the entries as JSON lines (one object per entry, in time order) for a SIEM.
    Export {
        /// The configuration file (database).
        #[arg(long, short, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
        config: PathBuf,
        /// From this time on (RFC 3339); the beginning by default.
        #[arg(long)]
        since: Option<String>,
        /// Before this time (RFC 3339); now by default.
        #[arg(long)]
        until: Option<String>,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

fn time_arg(flag: &str, v: Option<&str>, default: i64) -> anyhow::Result<i64> {
    match v {
        None => Ok(default),
        Some(s) => crate::clock::parse_rfc3339(s)
            .ok_or_else(|| anyhow::anyhow!("--{flag}: {s:?} is not an RFC 3339 time")),
    }
}

/// Run an audit command.
pub async fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify { config, json } => {
            let store = open(&config).await?;
            let report = crate::audit::verify(&store).await.context("audit log")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} chains, {} entries, {} anchors checked",
                    report.chains, report.entries, report.anchors
                );
                for p in &report.problems {
                    println!(
                        "BROKEN chain {} at entry {} ({}): {}",
                        p.chain_id,
                        p.seq,
                        serde_json::to_value(p.kind)?.as_str().unwrap_or("?"),
                        p.detail
                    );
                }
                if report.ok {
                    println!("ok: the audit log is intact");
                }
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCommand::Export {
            config,
            since,
            until,
            output,
        } => {
            let since = time_arg("since", since.as_deref(), i64::MIN)?;
            let until = time_arg("until", until.as_deref(), i64::MAX)?;
            let store = open(&config).await?;
            let mut out: Box<dyn Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut cursor: Option<(i64, String, i64)> = None;
            let mut n = 0u64;
            loop {
                let after = cursor.as_ref().map(|(a, c, s)| (*a, c.as_str(), *s));
                let page = store
                    .audit_entries(since, until, after, 1000)
                    .await
                    .context("audit log")?;
                let Some(last) = page.last() else { break };
                cursor = Some((last.at, last.chain_id.clone(), last.seq));
                for e in &page {
                    serde_json::to_writer(&mut out, &crate::audit::export_json(e))?;
                    out.write_all(b"\n")?;
                    n += 1;
                }
            }
            out.flush()?;
            if output.is_some() {
                eprintln!("wrote {n} entries");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
