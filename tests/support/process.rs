//! A real `tollgate serve` process on a fixed port (so it can be restarted in place), its
//! files in a directory of the test's, its stderr (the JSON log lines) in a file.

use super::app::{ANTHROPIC_KEY, OPENAI_KEY, Options, POLICY, config_text};
use super::peers::free_port;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// One `tollgate serve`.
pub struct Tollgate {
    pub url: String,
    pub config: PathBuf,
    pub log: PathBuf,
    /// Extra environment of the process (e.g. libfaketime's, to skew its clock).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Tollgate {
    /// Write the policy, a key file (team-a's OpenAI and Anthropic keys) and the config under
    /// `dir`, on a free port. Not started.
    pub fn prepare(dir: &Path, db: &str, issuer: &str, upstream: &str, opts: &Options) -> Tollgate {
        std::fs::create_dir(dir.join("policies")).unwrap();
        std::fs::write(
            dir.join("policies/policy.yaml"),
            opts.policy.as_deref().unwrap_or(POLICY),
        )
        .unwrap();
        std::fs::write(
            dir.join("keys.yaml"),
            format!(
                "keys:\n  - id: openai-team-a\n    provider: openai\n    api_key: {OPENAI_KEY}\n    billing_owner: team-a\n  - id: anthropic-team-a\n    provider: anthropic\n    api_key: {ANTHROPIC_KEY}\n    billing_owner: team-a\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let text = config_text(
            db,
            issuer,
            upstream,
            dir.join("policies"),
            &dir.join("keys.yaml"),
            opts,
        )
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        );
        std::fs::write(dir.join("tollgate.toml"), text).unwrap();
        Tollgate {
            url: format!("http://127.0.0.1:{port}"),
            config: dir.join("tollgate.toml"),
            log: dir.join("tollgate.log"),
            env: Vec::new(),
            child: None,
        }
    }

    /// Start it and wait for `/readyz`.
    pub async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_ok(&format!("{}/readyz", self.url), &self.log).await;
    }

    /// SIGTERM, as Kubernetes stops a pod, and wait for a clean exit.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        let pid = child.id().unwrap();
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .unwrap();
        let status = match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
            Ok(s) => s.unwrap(),
            Err(_) => panic!(
                "tollgate did not stop within 20 s of SIGTERM:\n{}",
                self.log_text()
            ),
        };
        assert!(status.success(), "{status:?}");
    }

    /// SIGKILL, as the kernel's OOM killer or a lost node ends a pod: nothing runs after it.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().await.unwrap();
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Wait until `url` answers 200 (30 s at most), showing `log` if it never does.
pub async fn wait_ok(url: &str, log: &Path) {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(url).await
            && r.status() == 200
        {
            return;
        }
        assert!(
            Instant::now() < end,
            "{url} never answered 200:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `/metrics` of the Tollgate at `url`.
pub async fn metrics(http: &reqwest::Client, url: &str) -> super::app::Metrics {
    let r = http.get(format!("{url}/metrics")).send().await.unwrap();
    super::app::Metrics(r.text().await.unwrap())
}

/// Exchange a workload token at `url` for a Tollgate token (the exchange must succeed).
pub async fn exchange(http: &reqwest::Client, url: &str, subject_token: &str) -> String {
    let r = exchange_response(http, url, subject_token).await;
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    assert_eq!(status, 200, "the exchange at {url} is refused: {v}");
    v["access_token"].as_str().unwrap().to_owned()
}

/// The answer of `POST /v1/token` for a workload token, whatever it is.
pub async fn exchange_response(
    http: &reqwest::Client,
    url: &str,
    subject_token: &str,
) -> reqwest::Response {
    http.post(format!("{url}/v1/token"))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("subject_token", subject_token),
        ])
        .send()
        .await
        .unwrap()
}
