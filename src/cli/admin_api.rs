//! `tollgate admin whoami|revoke|revocations|lift|tokens|spend|budgets|increase|increases|approve|deny`: the admin API from a terminal, with
//! the caller's own credential (so roles apply and the record names the person). Tables by
//! default, `--json` prints the API's JSON for scripts; a problem is printed as its detail and
//! exits 1 (2 when the credential is missing or refused).
#![allow(clippy::print_stdout)] // a CLI command prints its result

use super::admin::print_rows;
use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;

/// Where the admin API is and who calls it.
#[derive(Args, Debug)]
pub struct Remote {
    /// The Tollgate base URL.
    #[arg(long, env = "TOLLGATE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A file holding the admin token (an OIDC token of an admin issuer, or break-glass).
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// The admin token itself (prefer the environment variable: argv is visible to others).
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub(super) json: bool,
}

/// Admin API commands.
#[derive(Subcommand, Debug)]
pub enum ApiCommand {
    /// Who the admin API takes you for, and your roles.
    Whoami {
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke a token, workload, team, pool, issuer, pod or provider key on every replica.
    Revoke {
        #[command(flatten)]
        remote: Remote,
        /// jti, subject, team, pool, issuer, pod_uid or provider_key.
        #[arg(long)]
        kind: String,
        /// What to revoke (a subject is `system:serviceaccount:<ns>:<sa>`).
        #[arg(long)]
        id: String,
        /// Why (kept with the record).
        #[arg(long)]
        reason: String,
        /// When the revocation lapses (RFC 3339); never by default.
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// The revocations in force.
    Revocations {
        #[command(flatten)]
        remote: Remote,
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
    },
    /// Lift a revocation (not a jti one) by its id.
    Lift {
        #[command(flatten)]
        remote: Remote,
        /// The revocation id (`tollgate admin revocations` lists them).
        revocation_id: i64,
    },
    /// Tollgate tokens issued, newest first.
    Tokens {
        #[command(flatten)]
        remote: Remote,
        /// Only this workload subject.
        #[arg(long)]
        subject: Option<String>,
        /// Include expired tokens.
        #[arg(long)]
        all: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// What the fleet spent, grouped (the current UTC month by default).
    Spend {
        #[command(flatten)]
        remote: Remote,
        /// team, pool, subject, key, model, deployment or day.
        #[arg(long, default_value = "team")]
        group_by: String,
        /// From (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Until (RFC 3339, exclusive).
        #[arg(long)]
        until: Option<String>,
        /// Print CSV (for a spreadsheet) instead of a table.
        #[arg(long, conflicts_with = "json")]
        csv: bool,
    },
    /// Every pool's budget window, spend, what is left and its alert level.
    Budgets {
        #[command(flatten)]
        remote: Remote,
    },
    /// Ask for more budget for a pool's current window (someone else approves it).
    Increase {
        #[command(flatten)]
        remote: Remote,
        /// The pool.
        #[arg(long)]
        pool: String,
        /// How much to add, USD.
        #[arg(long)]
        amount_usd: f64,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Budget increase requests waiting for approval (with --all: the last 31 days').
    Increases {
        #[command(flatten)]
        remote: Remote,
        /// Also decided and expired requests.
        #[arg(long)]
        all: bool,
    },
    /// Take a provider key out of service on every replica (a `provider_key` revocation): the
    /// owner's next key serves, none left is `503 no_provider_key`.
    DisableKey {
        #[command(flatten)]
        remote: Remote,
        /// The key id (`tollgate admin keys` lists them).
        id: String,
        /// Why (kept with the revocation).
        #[arg(long)]
        reason: String,
        /// Replace the key by an emergency rotation instead (no canary, short drain, no
        /// moment without a usable key).
        #[arg(long)]
        rotate: bool,
    },
    /// Put a disabled provider key back in service (lifts its revocations).
    EnableKey {
        #[command(flatten)]
        remote: Remote,
        /// The key id.
        id: String,
    },
    /// Rotate a provider key to the pending version its secret store holds: tested with a
    /// live call, canaried, promoted, drained, retired (or rolled back). Returns at once;
    /// `tollgate admin rotations` follows it.
    Rotate {
        #[command(flatten)]
        remote: Remote,
        /// The key id.
        id: String,
        /// The key leaked: skip the canary and drain briefly.
        #[arg(long)]
        emergency: bool,
    },
    /// Rotations, newest first; with an id, that rotation and its steps.
    Rotations {
        #[command(flatten)]
        remote: Remote,
        /// One rotation's id.
        rotation_id: Option<i64>,
        /// Only this key's rotations.
        #[arg(long)]
        key: Option<String>,
    },
    /// Abort a rotation: the leader rolls it back (the old version serves, the pending one is
    /// withdrawn).
    AbortRotation {
        #[command(flatten)]
        remote: Remote,
        /// The rotation's id.
        rotation_id: i64,
    },
    /// Approve a budget increase request (not your own).
    Approve {
        #[command(flatten)]
        remote: Remote,
        /// The request id (`tollgate admin increases` lists them).
        increase_id: i64,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a budget increase request.
    Deny {
        #[command(flatten)]
        remote: Remote,
        /// The request id.
        increase_id: i64,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: SecretString,
}

/// A refused call: the API's problem detail and the exit code it maps to.
struct Refused(String, u8);

impl Client {
    fn new(r: &Remote) -> anyhow::Result<Client> {
        let token = match (&r.token_file, &r.token) {
            (Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim()
                .to_owned(),
            (None, Some(t)) => t.trim().to_owned(),
            (None, None) => anyhow::bail!(
                "no admin token: pass --token-file or set TOLLGATE_ADMIN_TOKEN \
                 (with tollgate dev: export TOLLGATE_ADMIN_TOKEN=$(tollgate dev admin-token))"
            ),
        };
        Ok(Client {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?,
            base: r.url.trim_end_matches('/').to_owned(),
            token: SecretString::from(token),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<Result<Value, Refused>> {
        Ok(self
            .call_text(method, path, query, body)
            .await?
            .map(|text| serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// The body of a successful call as text (CSV), or the problem.
    async fn call_text(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<Result<String, Refused>> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.expose_secret())
            .query(query);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("calling {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(Ok(text));
        }
        let detail = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["detail"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {status}"));
        let code = if status.as_u16() == 401 || status.as_u16() == 403 {
            2
        } else {
            1
        };
        Ok(Err(Refused(format!("{status}: {detail}"), code)))
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn revocation_rows(list: &[Value]) {
    let rows = list
        .iter()
        .map(|r| {
            [
                "revocation_id",
                "kind",
                "id",
                "created_at",
                "expires_at",
                "created_by",
                "reason",
            ]
            .iter()
            .map(|f| s(&r[*f]))
            .collect()
        })
        .collect();
    print_rows(
        &["ID", "KIND", "TARGET", "SINCE", "EXPIRES", "BY", "REASON"],
        rows,
    );
}

/// Run an admin API command.
pub async fn run(command: ApiCommand) -> anyhow::Result<ExitCode> {
    if let ApiCommand::Spend {
        remote, csv: true, ..
    } = &command
    {
        let query = spend_query(&command);
        return match Client::new(remote)?
            .call_text(Method::GET, "/admin/v1/spend", &query, None)
            .await?
        {
            Ok(text) => {
                print!("{text}");
                Ok(ExitCode::SUCCESS)
            }
            Err(Refused(message, code)) => {
                eprintln!("tollgate admin: {message}");
                Ok(ExitCode::from(code))
            }
        };
    }
    let (remote, outcome) = match &command {
        ApiCommand::Whoami { remote } => (
            remote,
            Client::new(remote)?
                .call(Method::GET, "/admin/v1/whoami", &[], None)
                .await?,
        ),
        ApiCommand::Revoke {
            remote,
            kind,
            id,
            reason,
            expires_at,
        } => {
            let mut body = json!({"kind": kind, "id": id, "reason": reason});
            if let Some(at) = expires_at {
                body["expires_at"] = json!(at);
            }
            (
                remote,
                Client::new(remote)?
                    .call(Method::POST, "/admin/v1/revocations", &[], Some(body))
                    .await?,
            )
        }
        ApiCommand::Revocations { remote, kind } => {
            let query: Vec<(&str, String)> = kind.iter().map(|k| ("kind", k.clone())).collect();
            (
                remote,
                Client::new(remote)?
                    .call(Method::GET, "/admin/v1/revocations", &query, None)
                    .await?,
            )
        }
        ApiCommand::Lift {
            remote,
            revocation_id,
        } => (
            remote,
            Client::new(remote)?
                .call(
                    Method::DELETE,
                    &format!("/admin/v1/revocations/{revocation_id}"),
                    &[],
                    None,
                )
                .await?,
        ),
        ApiCommand::Tokens {
            remote,
            subject,
            all,
            limit,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(sub) = subject {
                query.push(("subject", sub.clone()));
            }
            if *all {
                query.push(("include_expired", "true".to_owned()));
            }
            (
                remote,
                Client::new(remote)?
                    .call(Method::GET, "/admin/v1/tokens", &query, None)
                    .await?,
            )
        }
        ApiCommand::Spend { remote, .. } => (
            remote,
            Client::new(remote)?
                .call(Method::GET, "/admin/v1/spend", &spend_query(&command), None)
                .await?,
        ),
        ApiCommand::Budgets { remote } => (
            remote,
            Client::new(remote)?
                .call(Method::GET, "/admin/v1/budgets", &[], None)
                .await?,
        ),
        ApiCommand::Increase {
            remote,
            pool,
            amount_usd,
            reason,
        } => (
            remote,
            Client::new(remote)?
                .call(
                    Method::POST,
                    &format!("/admin/v1/budgets/{}/increases", segment(pool)),
                    &[],
                    Some(json!({"amount_usd": amount_usd, "reason": reason})),
                )
                .await?,
        ),
        ApiCommand::Increases { remote, all } => {
            let query: Vec<(&str, String)> = if *all {
                vec![("all", "true".to_owned())]
            } else {
                Vec::new()
            };
            (
                remote,
                Client::new(remote)?
                    .call(Method::GET, "/admin/v1/budgets/increases", &query, None)
                    .await?,
            )
        }
        ApiCommand::DisableKey {
            remote,
            id,
            reason,
            rotate,
        } => (
            remote,
            Client::new(remote)?
                .call(
                    Method::POST,
                    &format!("/admin/v1/keys/{}/disable", segment(id)),
                    &[],
                    Some(json!({"reason": reason, "rotate": rotate})),
                )
                .await?,
        ),
        ApiCommand::EnableKey { remote, id } => (
            remote,
            Client::new(remote)?
                .call(
                    Method::POST,
                    &format!("/admin/v1/keys/{}/enable", segment(id)),
                    &[],
                    None,
                )
                .await?,
        ),
        ApiCommand::Rotate {
            remote,
            id,
            emergency,
        } => (
            remote,
            Client::new(remote)?
                .call(
                    Method::POST,
                    &format!("/admin/v1/keys/{}/rotate", segment(id)),
                    &[],
                    Some(json!({"emergency": emergency})),
                )
                .await?,
        ),
        ApiCommand::Rotations {
            remote,
            rotation_id,
            key,
        } => {
            let path = match rotation_id {
                Some(id) => format!("/admin/v1/rotations/{id}"),
                None => "/admin/v1/rotations".to_owned(),
            };
            let query: Vec<(&str, String)> = key.iter().map(|k| ("key", k.clone())).collect();
            (
                remote,
                Client::new(remote)?
                    .call(Method::GET, &path, &query, None)
                    .await?,
            )
        }
        ApiCommand::AbortRotation {
            remote,
            rotation_id,
        } => (
            remote,
            Client::new(remote)?
                .call(
                    Method::POST,
                    &format!("/admin/v1/rotations/{rotation_id}/abort"),
                    &[],
                    None,
                )
                .await?,
        ),
        ApiCommand::Approve {
            remote,
            increase_id,
            reason,
        } => (
            remote,
            Client::new(remote)?
                .call(
                    Method::POST,
                    &format!("/admin/v1/budgets/increases/{increase_id}/approve"),
                    &[],
                    Some(json!({"reason": reason})),
                )
                .await?,
        ),
        ApiCommand::Deny {
            remote,
            increase_id,
            reason,
        } => (
            remote,
            Client::new(remote)?
                .call(
                    Method::POST,
                    &format!("/admin/v1/budgets/increases/{increase_id}/deny"),
                    &[],
                    Some(json!({"reason": reason})),
                )
                .await?,
        ),
    };
    let v = match outcome {
        Ok(v) => v,
        Err(Refused(message, code)) => {
            eprintln!("tollgate admin: {message}");
            return Ok(ExitCode::from(code));
        }
    };
    if remote.json {
        if !v.is_null() {
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    match &command {
        ApiCommand::Whoami { .. } => {
            println!("subject: {}", s(&v["subject"]));
            println!("via:     {} {}", s(&v["via"]), s(&v["issuer"]));
            println!("roles:   {}", s(&json!(v["roles"])));
            println!("groups:  {}", s(&json!(v["groups"])));
        }
        ApiCommand::Revoke { .. } => revocation_rows(std::slice::from_ref(&v)),
        ApiCommand::Revocations { .. } => {
            let list = v["revocations"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("nothing is revoked");
            } else {
                revocation_rows(&list);
            }
        }
        ApiCommand::Lift { revocation_id, .. } => println!("lifted revocation {revocation_id}"),
        ApiCommand::Tokens { .. } => {
            let rows = v["tokens"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let state = match (&t["revoked"], &t["expired"]) {
                        (Value::String(k), _) => format!("revoked ({k})"),
                        (_, Value::Bool(true)) => "expired".to_owned(),
                        _ => "valid".to_owned(),
                    };
                    vec![
                        s(&t["jti"]),
                        s(&t["subject"]),
                        s(&t["team"]),
                        s(&t["pool"]),
                        s(&t["issued_at"]),
                        s(&t["expires_at"]),
                        state,
                    ]
                })
                .collect();
            print_rows(
                &[
                    "JTI", "SUBJECT", "TEAM", "POOL", "ISSUED", "EXPIRES", "STATE",
                ],
                rows,
            );
        }
        ApiCommand::Spend { .. } => {
            println!("{} to {}", s(&v["since"]), s(&v["until"]));
            let groups = v["groups"].as_array().cloned().unwrap_or_default();
            let rows = groups
                .iter()
                .chain(std::iter::once(&v["total"]))
                .map(|g| {
                    vec![
                        s(&g["key"]),
                        s(&g["requests"]),
                        s(&g["input_tokens"]),
                        s(&g["output_tokens"]),
                        dollars(&g["cost_usd"]),
                    ]
                })
                .collect();
            let by = s(&v["group_by"]).to_uppercase();
            print_rows(&[&by, "REQUESTS", "INPUT", "OUTPUT", "COST"], rows);
        }
        ApiCommand::DisableKey { rotate: true, .. } => {
            rotation_rows(std::slice::from_ref(&v));
        }
        ApiCommand::DisableKey { id, .. } => {
            println!(
                "disabled {id} on every replica (revocation {})",
                s(&v["revocation_id"])
            );
        }
        ApiCommand::Rotate { .. } | ApiCommand::AbortRotation { .. } => {
            rotation_rows(std::slice::from_ref(&v));
        }
        ApiCommand::Rotations {
            rotation_id: Some(_),
            ..
        } => {
            rotation_rows(std::slice::from_ref(&v));
            let events = v["events"].as_array().cloned().unwrap_or_default();
            let rows = events
                .iter()
                .map(|e| {
                    vec![
                        s(&e["at"]),
                        s(&e["from_state"]),
                        s(&e["to_state"]),
                        s(&e["actor"]),
                        s(&e["detail"]),
                    ]
                })
                .collect();
            println!();
            print_rows(&["AT", "FROM", "TO", "BY", "DETAIL"], rows);
        }
        ApiCommand::Rotations { .. } => {
            let list = v["rotations"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no rotations");
            } else {
                rotation_rows(&list);
            }
        }
        ApiCommand::EnableKey { id, .. } => match v["lifted"].as_u64() {
            Some(0) => println!("{id} was not disabled"),
            _ => println!("enabled {id}"),
        },
        ApiCommand::Increase { .. } | ApiCommand::Approve { .. } | ApiCommand::Deny { .. } => {
            increase_rows(std::slice::from_ref(&v))
        }
        ApiCommand::Increases { .. } => {
            let list = v["increases"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no budget increase requests");
            } else {
                increase_rows(&list);
            }
        }
        ApiCommand::Budgets { .. } => {
            let rows = v["budgets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    let percent = match b["percent"].as_f64() {
                        Some(p) => format!("{p:.1}%"),
                        None => "-".to_owned(),
                    };
                    vec![
                        s(&b["pool"]),
                        s(&b["window"]),
                        dollars(&b["cap_usd"]),
                        dollars(&b["spent_usd"]),
                        percent,
                        dollars(&b["remaining_usd"]),
                        s(&b["at_cap"]),
                    ]
                })
                .collect();
            print_rows(
                &["POOL", "WINDOW", "CAP", "SPENT", "USED", "LEFT", "AT CAP"],
                rows,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Print a refused call and map it to the exit code.
fn refused(Refused(message, code): Refused) -> ExitCode {
    eprintln!("tollgate admin: {message}");
    ExitCode::from(code)
}

/// The `field` list of a listing to print as a table, or `None` when it was printed as JSON
/// (`--json`) or was empty (then `empty` is printed).
fn table_rows(
    remote: &Remote,
    v: &Value,
    field: &str,
    empty: &str,
) -> anyhow::Result<Option<Vec<Value>>> {
    if remote.json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(None);
    }
    let list = v[field].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("{empty}");
        return Ok(None);
    }
    Ok(Some(list))
}

/// `tollgate admin keys` through the admin API.
pub(super) async fn keys(remote: &Remote) -> anyhow::Result<ExitCode> {
    let v = match Client::new(remote)?
        .call(Method::GET, "/admin/v1/keys", &[], None)
        .await?
    {
        Ok(v) => v,
        Err(r) => return Ok(refused(r)),
    };
    let Some(list) = table_rows(
        remote,
        &v,
        "keys",
        "the secret store holds no provider keys",
    )?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    let rows = list
        .iter()
        .map(|k| {
            let mut state = s(&k["state"]);
            if k["disabled"] == json!(true) {
                state = format!("{state}, disabled");
            }
            if k["paused"] == json!(true) {
                state = format!("{state}, paused");
            }
            if let Value::String(why) = &k["reason"] {
                state = format!("{state} ({why})");
            }
            vec![
                s(&k["id"]),
                s(&k["provider"]),
                s(&k["billing_owner"]),
                k["allowed_models"]
                    .as_array()
                    .map(|m| m.iter().map(s).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default(),
                s(&k["version"]),
                state,
                s(&k["requests"]),
                format!("{:.6}", k["spend_micro_usd"].as_f64().unwrap_or(0.0) / 1e6),
                s(&k["last_used"]),
            ]
        })
        .collect();
    print_rows(&super::admin::KEY_COLUMNS, rows);
    Ok(ExitCode::SUCCESS)
}

async fn pause_list(client: &Client, lifted: bool) -> anyhow::Result<Result<Value, Refused>> {
    let query: Vec<(&str, String)> = if lifted {
        vec![("lifted", "true".to_owned())]
    } else {
        Vec::new()
    };
    client
        .call(Method::GET, "/admin/v1/pauses", &query, None)
        .await
}

/// `tollgate admin pauses` through the admin API.
pub(super) async fn pauses(remote: &Remote, lifted: bool) -> anyhow::Result<ExitCode> {
    let v = match pause_list(&Client::new(remote)?, lifted).await? {
        Ok(v) => v,
        Err(r) => return Ok(refused(r)),
    };
    let Some(list) = table_rows(remote, &v, "pauses", "nothing is paused")? else {
        return Ok(ExitCode::SUCCESS);
    };
    let rows = list
        .iter()
        .map(|p| {
            let state = match &p["lifted_at"] {
                Value::String(at) => format!("lifted {at} by {}", s(&p["lifted_by"])),
                _ => "paused".to_owned(),
            };
            vec![
                s(&p["pause_id"]),
                s(&p["kind"]),
                s(&p["id"]),
                s(&p["created_at"]),
                state,
                s(&p["reason"]),
            ]
        })
        .collect();
    print_rows(
        &["PAUSE", "KIND", "TARGET", "SINCE", "STATE", "REASON"],
        rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// `tollgate admin unpause --subject|--key` through the admin API: finds the active pause.
pub(super) async fn unpause(remote: &Remote, kind: &str, value: &str) -> anyhow::Result<ExitCode> {
    let client = Client::new(remote)?;
    let v = match pause_list(&client, false).await? {
        Ok(v) => v,
        Err(r) => return Ok(refused(r)),
    };
    let Some(pause_id) = v["pauses"].as_array().into_iter().flatten().find_map(|p| {
        (p["kind"] == kind && p["id"] == value && p["lifted_at"].is_null())
            .then(|| s(&p["pause_id"]))
    }) else {
        eprintln!("{kind} {value} is not paused");
        return Ok(ExitCode::from(1));
    };
    match client
        .call(
            Method::DELETE,
            &format!("/admin/v1/pauses/{pause_id}"),
            &[],
            None,
        )
        .await?
    {
        Ok(v) if remote.json => println!("{}", serde_json::to_string_pretty(&v)?),
        Ok(_) => println!("lifted the pause of {kind} {value}"),
        Err(r) => return Ok(refused(r)),
    }
    Ok(ExitCode::SUCCESS)
}

fn rotation_rows(list: &[Value]) {
    let rows = list
        .iter()
        .map(|r| {
            vec![
                s(&r["id"]),
                s(&r["key_id"]),
                format!("{} -> {}", s(&r["from_version"]), s(&r["to_version"])),
                s(&r["state"]),
                s(&r["trigger"]),
                s(&r["updated_at"]),
                s(&r["outcome"]),
            ]
        })
        .collect();
    print_rows(
        &[
            "ID", "KEY", "VERSIONS", "STATE", "TRIGGER", "SINCE", "OUTCOME",
        ],
        rows,
    );
}

fn increase_rows(list: &[Value]) {
    let rows = list
        .iter()
        .map(|i| {
            vec![
                s(&i["increase_id"]),
                s(&i["pool"]),
                dollars(&i["amount_usd"]),
                s(&i["state"]),
                s(&i["requested_by"]),
                s(&i["expires_at"]),
                s(&json!(i["approvable_by"])),
                s(&i["reason"]),
            ]
        })
        .collect();
    print_rows(
        &[
            "ID",
            "POOL",
            "AMOUNT",
            "STATE",
            "BY",
            "EXPIRES",
            "APPROVERS",
            "REASON",
        ],
        rows,
    );
}

/// A path segment, percent-encoded.
fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn dollars(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |d| format!("${d:.2}"))
}

fn spend_query(command: &ApiCommand) -> Vec<(&'static str, String)> {
    let ApiCommand::Spend {
        group_by,
        since,
        until,
        csv,
        ..
    } = command
    else {
        return Vec::new();
    };
    let mut q = vec![("group_by", group_by.clone())];
    if let Some(t) = since {
        q.push(("since", t.clone()));
    }
    if let Some(t) = until {
        q.push(("until", t.clone()));
    }
    if *csv {
        q.push(("format", "csv".to_owned()));
    }
    q
}
