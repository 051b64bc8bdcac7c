use super::*;

const MINIMAL: &str = r#"
public_url = "https://tollgate.example.com"
database_url = "sqlite://tollgate.db"
[signing]
key_encryption_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
[secrets]
path = "keys.yaml"
"#;

#[test]
fn minimal_config_gets_safe_defaults() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.listen.port(), 8080);
    assert_eq!(c.token.audience, "tollgate");
    assert!(c.migrate_on_start);
    assert_eq!(c.log_format, LogFormatConfig::Json);
    assert_eq!(c.signing.algorithm, SigningAlgorithm::EdDSA);
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (MINIMAL.replace("sqlite://", "mysql://"), "database_url"),
        (
            MINIMAL.replace("https://tollgate", "ftp://tollgate"),
            "public_url",
        ),
        (
            MINIMAL.replace(
                "key_encryption_key = ",
                "algorithm = \"RS256\"\nkey_encryption_key = ",
            ),
            "algorithm",
        ),
        (
            format!("{MINIMAL}\n[upstream]\nconnect_timeout = \"soon\"\n"),
            "connect_timeout",
        ),
        (
            format!("{MINIMAL}\n[providers.local]\nkind = \"openai-compatible\"\n"),
            "providers.local.base_url",
        ),
        (format!("{MINIMAL}\nunknown_field = 1\n"), "unknown_field"),
        (
            MINIMAL.replace(
                "[secrets]\npath = \"keys.yaml\"",
                "[secrets]\nbackend = \"vault\"\npath = \"x\"",
            ),
            "secrets.vault",
        ),
        (
            MINIMAL.replace(
                "key_encryption_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"",
                "",
            ),
            "signing.key_encryption_key",
        ),
    ];
    for (text, field) in cases {
        let err = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
}

#[test]
fn database_password_is_not_in_debug_output() {
    let text = MINIMAL.replace("sqlite://tollgate.db", "postgres://u:hunter2@db/tollgate");
    let c = Config::from_toml_str(&text).unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
#[allow(clippy::result_large_err)] // figment's Jail API fixes the closure's error type
fn environment_overrides_the_file_and_descends_into_tables() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("tollgate.toml", MINIMAL)?;
        jail.set_env("TOLLGATE_DATABASE_URL", "postgres://tollgate@db/tollgate");
        jail.set_env("TOLLGATE_SIGNING__ROTATE_EVERY", "48h");
        jail.set_env("TOLLGATE_TOKEN__AUDIENCE", "broker");
        jail.set_env("TOLLGATE_TELEMETRY__METRICS_SUBJECT_LABEL", "true");
        jail.set_env("TOLLGATE_ALERTS__CHECK_INTERVAL", "7s");
        // Not configuration: the CLI's own variable and the test suite's.
        jail.set_env("TOLLGATE_CONFIG", "elsewhere.toml");
        jail.set_env("TOLLGATE_TEST_DATABASE_URL", "postgres://x");
        let c = Config::load(std::path::Path::new("tollgate.toml")).map_err(|e| e.to_string())?;
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&c.database_url),
            "postgres://tollgate@db/tollgate"
        );
        assert_eq!(
            c.signing.rotate_every,
            std::time::Duration::from_secs(48 * 3600)
        );
        assert_eq!(c.token.audience, "broker");
        assert!(c.telemetry.metrics_subject_label);
        assert_eq!(c.alerts.check_interval, std::time::Duration::from_secs(7));
        jail.set_env("TOLLGATE_SIGNING__ROTATE_EVERY", "5m");
        let err = Config::load(std::path::Path::new("tollgate.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("signing.rotate_every"), "{err}");
        Ok(())
    });
}

#[test]
fn a_missing_file_is_named() {
    let err = Config::load(std::path::Path::new("/nonexistent/tollgate.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/tollgate.toml"), "{err}");
}

const BASE: &str = r#"
public_url = "https://tollgate.example.com"
database_url = "sqlite://tollgate.db"
[signing]
key_encryption_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
"#;

#[test]
fn secret_store_sections_parse_with_their_defaults() {
    let c = Config::from_toml_str(&format!(
        "{BASE}[secrets]\nbackend = \"vault\"\n[secrets.vault]\naddress = \"https://vault:8200\"\n[secrets.vault.auth]\nmethod = \"kubernetes\"\nrole = \"tollgate\"\n"
    ))
    .unwrap();
    assert_eq!(c.secrets.backend, SecretsBackend::Vault);
    assert_eq!(
        c.secrets.max_staleness,
        std::time::Duration::from_secs(3600)
    );
    let v = c.secrets.vault.unwrap();
    assert_eq!(
        (v.mount.as_str(), v.prefix.as_str()),
        ("secret", "tollgate/providers")
    );
    match v.auth {
        VaultAuthConfig::Kubernetes {
            mount, jwt_path, ..
        } => {
            assert_eq!(mount, "kubernetes");
            assert!(jwt_path.ends_with("serviceaccount/token"));
        }
        other => panic!("{other:?}"),
    }
    let c = Config::from_toml_str(&format!(
        "{BASE}[secrets]\nbackend = \"aws\"\n[secrets.aws]\nregion = \"eu-west-1\"\n"
    ))
    .unwrap();
    let a = c.secrets.aws.unwrap();
    assert_eq!(
        (a.prefix.as_str(), a.max_attempts),
        ("tollgate/providers/", 5)
    );
}

#[test]
fn secret_store_mistakes_name_the_field() {
    let cases = [
        ("[secrets]\nbackend = \"vault\"\n", "secrets.vault"),
        ("[secrets]\nbackend = \"aws\"\n", "secrets.aws"),
        ("[secrets]\nbackend = \"file\"\n", "secrets.path"),
        ("[secrets]\nbackend = \"gcp\"\n", "backend"),
        (
            "[secrets]\nbackend = \"vault\"\n[secrets.vault]\naddress = \"https://v\"\n[secrets.vault.auth]\nmethod = \"approle\"\nrole_id = \"r\"\n",
            "secrets.vault.auth.secret_id",
        ),
        (
            "[secrets]\nbackend = \"vault\"\n[secrets.vault]\naddress = \"https://v\"\n[secrets.vault.auth]\nmethod = \"password\"\n",
            "method",
        ),
        (
            "[secrets]\npath = \"k.yaml\"\nrefresh_interval = \"1m\"\nmax_staleness = \"10s\"\n",
            "secrets.max_staleness",
        ),
    ];
    for (text, field) in cases {
        let e = Config::from_toml_str(&format!("{BASE}{text}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{text}: {e}");
    }
}

#[test]
fn the_example_configuration_is_valid() {
    let text = include_str!("../../tollgate.example.toml");
    Config::from_toml_str(text).unwrap();
}

#[test]
fn alert_webhooks_parse_and_bad_ones_name_the_field() {
    let c = Config::from_toml_str(&format!(
        "{MINIMAL}[[alerts.webhooks]]\nurl = \"https://hooks.example.com/a\"\n[[alerts.webhooks]]\nurl = \"https://hooks.slack.com/x\"\nformat = \"slack\"\n"
    ))
    .unwrap();
    assert_eq!(c.alerts.webhooks.len(), 2);
    assert_eq!(c.alerts.webhooks[1].format, WebhookFormat::Slack);
    assert_eq!(c.alerts.check_interval, std::time::Duration::from_secs(5));
    let e = Config::from_toml_str(&format!(
        "{MINIMAL}[[alerts.webhooks]]\nurl = \"ftp://hooks.example.com/a\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("alerts.webhooks[0].url"), "{e}");
}

#[test]
fn the_anomaly_guard_is_on_by_default_and_bad_settings_name_the_field() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert!(c.anomaly.enabled);
    assert_eq!(c.anomaly.window, std::time::Duration::from_secs(300));
    let c = Config::from_toml_str(&format!(
        "{MINIMAL}[anomaly]\nwindow = \"1m\"\nbaseline = \"1h\"\nkey_max_spend_usd = 50\n"
    ))
    .unwrap();
    assert_eq!(c.anomaly.key_max_spend_usd, Some(50.0));
    for (bad, field) in [
        ("multiple = 1", "anomaly.multiple"),
        ("window = \"1h\"\nbaseline = \"5m\"", "anomaly.baseline"),
        ("min_spend_usd = -1", "anomaly.min_spend_usd"),
        (
            "subject_max_spend_usd = nan",
            "anomaly.subject_max_spend_usd",
        ),
        ("check_interval = \"1ms\"", "anomaly.check_interval"),
    ] {
        let e = Config::from_toml_str(&format!("{MINIMAL}[anomaly]\n{bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{bad}: {e}");
    }
    let e = Config::from_toml_str(&format!("{MINIMAL}[anomaly]\nmultiplier = 3\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiplier"), "{e}");
}

#[test]
fn rotation_has_safe_defaults_and_bad_settings_name_the_field() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.rotation.canary_share, 0.1);
    assert_eq!(c.rotation.share_ppm(), 100_000);
    assert_eq!(c.rotation.drain, std::time::Duration::from_secs(600));
    for (bad, field) in [
        ("canary_share = 0", "rotation.canary_share"),
        ("canary_share = 1.5", "rotation.canary_share"),
        ("tick = \"1ms\"", "rotation.tick"),
        ("tick = \"1s\"\nlease = \"2s\"", "rotation.lease"),
        ("test_attempts = 0", "rotation.test_attempts"),
        (
            "canary_max_error_rate_increase = 2",
            "rotation.canary_max_error_rate_increase",
        ),
        ("canary = 1", "canary"),
    ] {
        let e = Config::from_toml_str(&format!("{MINIMAL}[rotation]\n{bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{bad}: {e}");
    }
}

#[test]
fn key_issuers_are_checked_field_by_field() {
    let good = "[[rotation.issuers]]\nname = \"openai-prod\"\nkind = \"openai\"\nkeys = [\"tollgate/openai/*\"]\nproject_id = \"proj_abc\"\nadmin_key_secret = \"tollgate-admin/openai\"\n";
    let c = Config::from_toml_str(&format!("{MINIMAL}{good}")).unwrap();
    let i = &c.rotation.issuers[0];
    assert_eq!(i.base_url, "https://api.openai.com/v1");
    assert_eq!(i.timeout, std::time::Duration::from_secs(30));
    assert_eq!(c.rotation.schedule_tick, std::time::Duration::from_secs(30));
    for (edit, field) in [
        (("kind = \"openai\"", "kind = \"anthropic\""), "kind"),
        (
            ("keys = [\"tollgate/openai/*\"]", "keys = []"),
            "rotation.issuers[0].keys",
        ),
        (
            ("keys = [\"tollgate/openai/*\"]", "keys = [\"a/[\"]"),
            "rotation.issuers[0].keys",
        ),
        (
            ("project_id = \"proj_abc\"", "project_id = \"\""),
            "rotation.issuers[0].project_id",
        ),
        (
            (
                "admin_key_secret = \"tollgate-admin/openai\"",
                "admin_key_secret = \" \"",
            ),
            "rotation.issuers[0].admin_key_secret",
        ),
        (
            ("name = \"openai-prod\"", "name = \"\""),
            "rotation.issuers[0].name",
        ),
        (
            (
                "project_id = \"proj_abc\"",
                "project_id = \"proj_abc\"\nbase_url = \"ftp://x\"",
            ),
            "rotation.issuers[0].base_url",
        ),
        (
            (
                "project_id = \"proj_abc\"",
                "project_id = \"proj_abc\"\nadmin_key = \"sk-admin\"",
            ),
            "admin_key",
        ),
    ] {
        let text = format!("{MINIMAL}{}", good.replace(edit.0, edit.1));
        let e = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(e.contains(field), "{edit:?}: {e}");
    }
    let e = Config::from_toml_str(&format!("{MINIMAL}{good}{good}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("rotation.issuers[1].name"), "{e}");
}

#[test]
fn telemetry_is_off_by_default_and_bad_settings_name_the_field() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert!(!c.telemetry.metrics_subject_label);
    assert!(c.telemetry.otlp.is_none());
    let c = Config::from_toml_str(&format!(
        "{MINIMAL}[telemetry.otlp]\nendpoint = \"http://otel-collector.monitoring:4318/\"\n"
    ))
    .unwrap();
    let o = c.telemetry.otlp.unwrap();
    assert_eq!(
        o.traces_url(),
        "http://otel-collector.monitoring:4318/v1/traces"
    );
    assert_eq!(o.service_name, "tollgate");
    assert!((o.sample_ratio - 1.0).abs() < f64::EPSILON);
    for (bad, field) in [
        ("endpoint = \"grpc://c:4317\"", "telemetry.otlp.endpoint"),
        (
            "endpoint = \"https://user:pw@c:4318\"",
            "telemetry.otlp.endpoint",
        ),
        (
            "endpoint = \"http://c:4318\"\nsample_ratio = 1.5",
            "telemetry.otlp.sample_ratio",
        ),
        (
            "endpoint = \"http://c:4318\"\nservice_name = \" \"",
            "telemetry.otlp.service_name",
        ),
        (
            "endpoint = \"http://c:4318\"\ntimeout = \"5m\"",
            "telemetry.otlp.timeout",
        ),
        ("endpoint = \"http://c:4318\"\nheaders = 1", "headers"),
    ] {
        let e = Config::from_toml_str(&format!("{MINIMAL}[telemetry.otlp]\n{bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{bad}: {e}");
        assert!(!e.contains("pw@"), "credentials echoed: {e}");
    }
}

#[test]
fn connection_limits_have_safe_defaults_and_bad_ones_name_the_field() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(
        c.limits.header_read_timeout,
        std::time::Duration::from_secs(10)
    );
    assert_eq!(c.limits.max_connections, 10_000);
    for (bad, field) in [
        (
            "header_read_timeout = \"1ms\"",
            "limits.header_read_timeout",
        ),
        ("header_read_timeout = \"1h\"", "limits.header_read_timeout"),
        ("max_connections = 0", "limits.max_connections"),
    ] {
        let e = Config::from_toml_str(&format!("{MINIMAL}[limits]\n{bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{bad}: {e}");
    }
}
