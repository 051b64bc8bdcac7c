//! The secret stores Tollgate integrates with, for real: OpenBao (Vault's open-source fork,
//! same API) and AWS Secrets Manager through moto's server. `scripts/test` installs both into
//! `.venv` and starts one shared instance of each (`TOLLGATE_TEST_VAULT_ADDR` /
//! `TOLLGATE_TEST_VAULT_TOKEN`, `TOLLGATE_TEST_AWS_ENDPOINT`); tests isolate themselves with
//! a unique prefix. Tests that stop a store start their own (`spawn`). Without the variables
//! or binaries these tests fail — they never skip.

use aws_sdk_secretsmanager::Client as SmClient;
use aws_sdk_secretsmanager::types::Tag;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn env_or_fail(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the secret-store tests through scripts/test")
    })
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn venv_bin(name: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let p = format!("{root}/.venv/bin/{name}");
    if std::path::Path::new(&p).exists() {
        p
    } else {
        name.to_owned()
    }
}

async fn wait_http(url: &str) {
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http.get(url).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("peer did not come up at {url}");
}

/// A unique folder for one test.
pub fn unique_prefix() -> String {
    format!("tollgate-test/{}", uuid::Uuid::new_v4().simple())
}

/// An OpenBao server.
pub struct Bao {
    pub addr: String,
    pub token: String,
    /// The CA of a TLS server (`spawn_tls`).
    pub ca_cert: Option<std::path::PathBuf>,
    /// Namespace sent with API calls (`X-Vault-Namespace`), if any.
    pub namespace: Option<String>,
    child: Option<Child>,
    http: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

impl Bao {
    /// The shared dev server of this test run.
    pub fn shared() -> Bao {
        Bao {
            addr: env_or_fail("TOLLGATE_TEST_VAULT_ADDR"),
            token: env_or_fail("TOLLGATE_TEST_VAULT_TOKEN"),
            ca_cert: None,
            namespace: None,
            child: None,
            http: reqwest::Client::new(),
            _dir: None,
        }
    }

    /// A dev server of this test's own (it may be stopped).
    pub async fn spawn() -> Bao {
        Self::spawn_with(false).await
    }

    /// A dev server of this test's own serving TLS with a CA it generated (`ca_cert`).
    pub async fn spawn_tls() -> Bao {
        Self::spawn_with(true).await
    }

    async fn spawn_with(tls: bool) -> Bao {
        let port = free_port();
        let token = format!("root-{}", uuid::Uuid::new_v4().simple());
        let bin = std::env::var("TOLLGATE_TEST_BAO_BIN").unwrap_or_else(|_| venv_bin("bao"));
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "server".to_owned(),
            "-dev".to_owned(),
            format!("-dev-root-token-id={token}"),
            format!("-dev-listen-address=127.0.0.1:{port}"),
        ];
        if tls {
            args.push("-dev-tls".to_owned());
            args.push(format!("-dev-tls-cert-dir={}", dir.path().display()));
        }
        // The dev server prints its unseal key on stdout: kept so a test can seal and unseal.
        let out = std::fs::File::create(dir.path().join("bao.out")).unwrap();
        let child = Command::new(&bin)
            .args(&args)
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (OpenBao): {e}; run scripts/test"));
        let (addr, ca_cert, http) = if tls {
            let ca = dir.path().join("vault-ca.pem");
            for _ in 0..200 {
                if ca.exists() && std::fs::metadata(&ca).is_ok_and(|m| m.len() > 0) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let pem = std::fs::read(&ca).unwrap();
            let http = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
                .build()
                .unwrap();
            (format!("https://127.0.0.1:{port}"), Some(ca), http)
        } else {
            (
                format!("http://127.0.0.1:{port}"),
                None,
                reqwest::Client::new(),
            )
        };
        for _ in 0..200 {
            if http
                .get(format!("{addr}/v1/sys/health"))
                .send()
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Bao {
            addr,
            token,
            ca_cert,
            namespace: None,
            child: Some(child),
            http,
            _dir: Some(dir),
        }
    }

    /// Stop an own server.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Seal an own server: every read answers 503 "Vault is sealed" until [`Bao::unseal`].
    pub async fn seal(&self) {
        self.api(reqwest::Method::PUT, "sys/seal", None).await;
    }

    /// Unseal an own server with the key its dev mode printed.
    pub async fn unseal(&self) {
        let dir = self._dir.as_ref().expect("an own server");
        let out = std::fs::read_to_string(dir.path().join("bao.out")).unwrap();
        let key = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("Unseal Key: "))
            .unwrap_or_else(|| panic!("no unseal key in the dev server's output: {out}"));
        let r = self
            .http
            .put(format!("{}/v1/sys/unseal", self.addr))
            .json(&json!({ "key": key.trim() }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "unseal: {}", r.status());
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["sealed"], false, "{body}");
    }

    /// Call the HTTP API with the root token; panics on an error status.
    pub async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.token);
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    /// Write a new version of `secret/<path>` holding `api_key`; returns the version.
    pub async fn put_key(&self, path: &str, api_key: &str) -> u64 {
        let v = self
            .api(
                reqwest::Method::POST,
                &format!("secret/data/{path}"),
                Some(json!({"data": {"api_key": api_key}})),
            )
            .await;
        v["data"]["version"].as_u64().unwrap()
    }

    /// Replace the custom metadata of `secret/<path>`.
    pub async fn put_metadata(&self, path: &str, meta: &[(&str, &str)]) {
        let map: serde_json::Map<String, Value> = meta
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect();
        self.api(
            reqwest::Method::POST,
            &format!("secret/metadata/{path}"),
            Some(json!({"custom_metadata": map})),
        )
        .await;
    }

    /// A key with its metadata in one go.
    pub async fn put_key_with(&self, path: &str, api_key: &str, meta: &[(&str, &str)]) -> u64 {
        let v = self.put_key(path, api_key).await;
        self.put_metadata(path, meta).await;
        v
    }

    /// Delete every version and the metadata of `secret/<path>`.
    pub async fn delete_key(&self, path: &str) {
        self.api(
            reqwest::Method::DELETE,
            &format!("secret/metadata/{path}"),
            None,
        )
        .await;
    }

    /// Enable AppRole (once per server), write `policy` as `name`, and create a role using it;
    /// returns (role_id, secret_id).
    pub async fn approle(&self, name: &str, policy: &str) -> (String, String) {
        self.approle_with_ttl(name, policy, "2m", "10m").await
    }

    /// [`Bao::approle`] with the login token's TTL and maximum TTL.
    pub async fn approle_with_ttl(
        &self,
        name: &str,
        policy: &str,
        ttl: &str,
        max_ttl: &str,
    ) -> (String, String) {
        let mounts = self.api(reqwest::Method::GET, "sys/auth", None).await;
        if mounts["data"].get("approle/").is_none() && mounts.get("approle/").is_none() {
            self.api(
                reqwest::Method::POST,
                "sys/auth/approle",
                Some(json!({"type": "approle"})),
            )
            .await;
        }
        self.api(
            reqwest::Method::PUT,
            &format!("sys/policies/acl/{name}"),
            Some(json!({"policy": policy})),
        )
        .await;
        self.api(
            reqwest::Method::POST,
            &format!("auth/approle/role/{name}"),
            Some(json!({"token_policies": [name], "token_ttl": ttl, "token_max_ttl": max_ttl})),
        )
        .await;
        let role = self
            .api(
                reqwest::Method::GET,
                &format!("auth/approle/role/{name}/role-id"),
                None,
            )
            .await;
        let secret = self
            .api(
                reqwest::Method::POST,
                &format!("auth/approle/role/{name}/secret-id"),
                None,
            )
            .await;
        (
            role["data"]["role_id"].as_str().unwrap().to_owned(),
            secret["data"]["secret_id"].as_str().unwrap().to_owned(),
        )
    }

    /// `[secrets]` TOML for this server with token auth under `prefix`.
    pub fn secrets_toml(&self, prefix: &str) -> String {
        format!(
            "[secrets]\nbackend = \"vault\"\nrefresh_interval = \"1h\"\n[secrets.vault]\naddress = \"{}\"\nprefix = \"{prefix}\"\n[secrets.vault.auth]\nmethod = \"token\"\ntoken = \"{}\"\n",
            self.addr, self.token
        )
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A moto server standing in for AWS Secrets Manager.
pub struct Moto {
    pub endpoint: String,
    child: Option<Child>,
}

impl Moto {
    /// The shared server of this test run.
    pub fn shared() -> Moto {
        Moto {
            endpoint: env_or_fail("TOLLGATE_TEST_AWS_ENDPOINT"),
            child: None,
        }
    }

    /// A server of this test's own (it may be stopped).
    pub async fn spawn() -> Moto {
        let port = free_port();
        let bin =
            std::env::var("TOLLGATE_TEST_MOTO_BIN").unwrap_or_else(|_| venv_bin("moto_server"));
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (moto): {e}; run scripts/test"));
        let endpoint = format!("http://127.0.0.1:{port}");
        wait_http(&format!("{endpoint}/moto-api/")).await;
        Moto {
            endpoint,
            child: Some(child),
        }
    }

    /// Stop an own server.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freeze an own server (SIGSTOP): it accepts connections and never answers, the way a
    /// hung endpoint does.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Let a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("an own server").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill {sig} {pid}");
    }

    /// A Secrets Manager client for seeding (moto accepts any credentials).
    pub fn client(&self) -> SmClient {
        let conf = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
            .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
                "testing", "testing", None, None, "tests",
            ))
            .build();
        SmClient::from_conf(conf)
    }

    /// Create a secret with tags; returns its ARN.
    pub async fn create(&self, name: &str, value: &str, tags: &[(&str, &str)]) -> String {
        let mut req = self
            .client()
            .create_secret()
            .name(name)
            .secret_string(value);
        for (k, v) in tags {
            req = req.tags(Tag::builder().key(*k).value(*v).build());
        }
        req.send().await.unwrap().arn().unwrap().to_owned()
    }

    /// `[secrets]` TOML for this server under `prefix`.
    pub fn secrets_toml(&self, prefix: &str) -> String {
        format!(
            "[secrets]\nbackend = \"aws\"\nrefresh_interval = \"1h\"\n[secrets.aws]\nregion = \"us-east-1\"\nprefix = \"{prefix}\"\nendpoint_url = \"{}\"\nmax_attempts = 2\ntimeout = \"2s\"\n",
            self.endpoint
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}
