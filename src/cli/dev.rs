//! `tollgate dev`: a complete broker on a laptop. SQLite under `--data-dir`, a built-in OIDC
//! issuer standing in for the Kubernetes API server, the example policies, and the mock
//! provider for every provider without a key in the environment.

use crate::app::{Application, DevIdentity, DevOptions};
use crate::config::Config;
use crate::identity::{DevAlgorithm, DevIssuer};
use crate::telemetry::{self, LogFormat};
use crate::token::keys::Kek;
use anyhow::Context;
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `tollgate dev`.
#[derive(Args, Debug)]
pub struct DevArgs {
    #[command(subcommand)]
    command: Option<DevCommand>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Where the dev database, signing keys and issuer key live.
    #[arg(long, default_value = ".tollgate-dev")]
    data_dir: PathBuf,
    /// Policy directory.
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
}

#[derive(Subcommand, Debug)]
enum DevCommand {
    /// Print a workload token signed by the dev issuer: the token a Kubernetes pod would have.
    WorkloadToken {
        /// Kubernetes namespace.
        #[arg(long)]
        namespace: String,
        /// Service account name.
        #[arg(long)]
        service_account: String,
        /// Audience of the token.
        #[arg(long, default_value = "tollgate")]
        audience: String,
        /// The dev broker's data directory.
        #[arg(long, default_value = ".tollgate-dev")]
        data_dir: PathBuf,
        /// Lifetime of the token.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Issuer URL to put in `iss` (default: the one of the dev broker using this data dir).
        #[arg(long)]
        issuer_url: Option<String>,
        /// Signature algorithm: RS256, as most clusters' API servers sign, or ES256.
        #[arg(long, value_enum, default_value_t)]
        algorithm: DevAlgorithm,
    },
    /// Print an admin API token signed by the dev issuer: the token a person would get from
    /// the company IdP. `policies/roles.yaml` grants `admin` to admin@example.com.
    AdminToken {
        /// The person (`sub`).
        #[arg(long, default_value = "admin@example.com")]
        subject: String,
        /// IdP groups (repeatable), which policy roles may be granted to.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// The dev broker's data directory.
        #[arg(long, default_value = ".tollgate-dev")]
        data_dir: PathBuf,
        /// Lifetime of the token.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Print the dev issuer's JWKS, for a `tollgate serve` that trusts the dev issuer through
    /// `[[issuers]] jwks_file` (benchmarks, air-gapped rehearsals).
    IssuerJwks {
        /// The data directory holding the dev issuer key.
        #[arg(long, default_value = ".tollgate-dev")]
        data_dir: PathBuf,
    },
}

const STATE_FILE: &str = "dev.json";
/// The audience of admin tokens of the dev issuer (workload tokens carry `tollgate`).
const DEV_ADMIN_AUDIENCE: &str = "tollgate-admin";

/// Run `tollgate dev` or one of its subcommands.
pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(DevCommand::WorkloadToken {
            namespace,
            service_account,
            audience,
            data_dir,
            ttl,
            issuer_url,
            algorithm,
        }) => {
            let issuer = DevIssuer::load_or_create(&data_dir).context("dev issuer key")?;
            let issuer_url = issuer_url.unwrap_or_else(|| read_issuer_url(&data_dir));
            let token = issuer
                .mint_service_account_token(
                    &issuer_url,
                    &namespace,
                    &service_account,
                    &audience,
                    ttl,
                    algorithm,
                )
                .context("minting the workload token")?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{token}")?;
            Ok(ExitCode::SUCCESS)
        }
        Some(DevCommand::AdminToken {
            subject,
            groups,
            data_dir,
            ttl,
        }) => {
            let issuer = DevIssuer::load_or_create(&data_dir).context("dev issuer key")?;
            let token = issuer
                .mint_person_token(
                    &read_issuer_url(&data_dir),
                    &subject,
                    &groups,
                    DEV_ADMIN_AUDIENCE,
                    ttl,
                )
                .context("minting the admin token")?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{token}")?;
            Ok(ExitCode::SUCCESS)
        }
        Some(DevCommand::IssuerJwks { data_dir }) => {
            let issuer = DevIssuer::load_or_create(&data_dir).context("dev issuer key")?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", issuer.jwks())?;
            Ok(ExitCode::SUCCESS)
        }
        None => serve(args).await,
    }
}

async fn serve(args: DevArgs) -> anyhow::Result<ExitCode> {
    let _log = telemetry::init(LogFormat::Pretty, "info,tollgate=info");
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let issuer = DevIssuer::load_or_create(&args.data_dir).context("dev issuer key")?;
    let kek = read_or_create_kek(&args.data_dir)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let base = format!("http://{addr}");
    let issuer_url = format!("{base}/dev/oidc");
    std::fs::write(
        args.data_dir.join(STATE_FILE),
        serde_json::json!({"issuer_url": issuer_url, "url": base}).to_string(),
    )?;

    let mut toml = format!(
        r#"
listen = "{addr}"
public_url = "{base}"
database_url = "sqlite://{db}"
policy_dir = "{policies}"
policy_reload_interval = "2s"
log_format = "pretty"

[signing]
key_encryption_key = "{kek}"

[secrets]
backend = "file"
from_env = true

[[issuers]]
name = "dev"
issuer = "{issuer_url}"
discovery_url = "{issuer_url}/.well-known/openid-configuration"

[[admin.issuers]]
name = "dev-idp"
issuer = "{issuer_url}"
discovery_url = "{issuer_url}/.well-known/openid-configuration"
kind = "oidc"
audiences = ["{DEV_ADMIN_AUDIENCE}"]
"#,
        db = args.data_dir.join("tollgate.db").display(),
        policies = args.policies.display(),
    );
    let mut real = Vec::new();
    for (var, provider) in crate::secrets::ENV_KEYS {
        if std::env::var(var).is_ok_and(|v| !v.trim().is_empty()) {
            real.push(provider);
        } else {
            toml.push_str(&format!("\n[providers.{provider}]\nkind = \"mock\"\n"));
        }
    }
    let config = Config::from_toml_str(&toml)?;
    // The same configuration on disk, so that the offline commands (`tollgate audit verify
    // --config .tollgate-dev/tollgate.toml`, `tollgate admin pauses …`) reach this broker's
    // store. It holds the key-encryption key, like `kek` beside it: owner-only.
    let config_path = args.data_dir.join("tollgate.toml");
    let _ = std::fs::remove_file(&config_path);
    write_private(&config_path, &toml)?;
    let app = Application::build_with(
        config,
        DevOptions {
            issuer: Some(DevIdentity {
                issuer,
                issuer_url: issuer_url.clone(),
            }),
            listener: Some(listener),
        },
    )
    .await?;
    print_quick_start(&base, &args.data_dir, &real)?;
    app.run_until(super::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

fn read_issuer_url(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join(STATE_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["issuer_url"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "http://127.0.0.1:8080/dev/oidc".to_owned())
}

fn read_or_create_kek(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("kek");
    if let Ok(k) = std::fs::read_to_string(&path) {
        return Ok(k.trim().to_owned());
    }
    let k = Kek::generate_base64()?;
    write_private(&path, &k)?;
    Ok(k)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn print_quick_start(base: &str, data_dir: &Path, real: &[&str]) -> anyhow::Result<()> {
    let exe =
        std::env::current_exe().map_or_else(|_| "tollgate".to_owned(), |p| p.display().to_string());
    let providers = ["openai", "anthropic"]
        .iter()
        .map(|p| {
            format!(
                "{p}: {}",
                if real.contains(p) {
                    "real (key from the environment)"
                } else {
                    "mock"
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let dd = data_dir.display();
    let text = format!(
        r#"
Tollgate dev is running on {base}
  store: SQLite in {dd}   providers: {providers}
  (set OPENAI_API_KEY / ANTHROPIC_API_KEY before starting to use the real providers)

In another terminal:

# 1. The workload token a pod in namespace "demo" would have (signed by the dev issuer):
export WORKLOAD=$("{exe}" dev workload-token --namespace demo --service-account app --data-dir {dd})

# 2. Exchange it for a 15-minute Tollgate token (RFC 8693):
export TOKEN=$(curl -s {base}/v1/token \
  -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \
  -d subject_token_type=urn:ietf:params:oauth:token-type:jwt \
  -d subject_token="$WORKLOAD" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

# 3. Call a model with curl (OpenAI and Anthropic wire formats):
curl -s {base}/v1/chat/completions -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "Hello, Tollgate"}}]}}'; echo
curl -s {base}/v1/messages -H "x-api-key: $TOKEN" -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' \
  -d '{{"model": "claude-haiku-4-5", "max_tokens": 100, "messages": [{{"role": "user", "content": "Hello"}}]}}'; echo

# 4. Or with the official OpenAI Python SDK (pip install openai):
python3 -c 'import os; from openai import OpenAI; c = OpenAI(base_url="{base}/v1", api_key=os.environ["TOKEN"]); print(c.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "Hello"}}]).choices[0].message.content)'

# 5. Who spent what, through the admin API (admin@example.com is an admin in policies/roles.yaml;
#    the README's incident runbook revokes this workload with `tollgate admin revoke`):
export ADMIN=$("{exe}" dev admin-token --data-dir {dd})
curl -s "{base}/admin/v1/spend?group_by=subject" -H "Authorization: Bearer $ADMIN"; echo
"#
    );
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
