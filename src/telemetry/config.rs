//! `[telemetry]`: what metrics may carry beyond the bounded default labels, and where traces go.

use crate::config::ConfigError;
use serde::Deserialize;
use std::time::Duration;
use url::Url;

/// `[telemetry]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Also count requests, tokens and money per workload subject
    /// (`tollgate_subject_*` series). Off by default: one series per workload.
    pub metrics_subject_label: bool,
    /// OpenTelemetry trace export; absent means no spans are made.
    pub otlp: Option<OtlpConfig>,
}

/// `[telemetry.otlp]`: OTLP over HTTP (protobuf), as every OpenTelemetry collector accepts
/// on port 4318.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's base URL; spans are posted to `{endpoint}/v1/traces`.
    pub endpoint: Url,
    /// `service.name` of the spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Share of new traces recorded (0 to 1). A request that arrives with a sampled
    /// `traceparent` is recorded whatever this says.
    #[serde(default = "default_ratio")]
    pub sample_ratio: f64,
    /// How long one export may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_service_name() -> String {
    "tollgate".into()
}
fn default_ratio() -> f64 {
    1.0
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl OtlpConfig {
    /// Where spans are posted.
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.endpoint.as_str().trim_end_matches('/'))
    }
}

impl TelemetryConfig {
    /// Field by field, with the key that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let Some(o) = &self.otlp else {
            return Ok(());
        };
        if !matches!(o.endpoint.scheme(), "http" | "https") {
            return Err(ConfigError::invalid(
                "telemetry.otlp.endpoint",
                "must be an http(s) URL (OTLP over HTTP; gRPC is not supported)",
            ));
        }
        if !o.endpoint.username().is_empty() || o.endpoint.password().is_some() {
            return Err(ConfigError::invalid(
                "telemetry.otlp.endpoint",
                "must not carry credentials (set OTEL_EXPORTER_OTLP_HEADERS instead)",
            ));
        }
        if o.service_name.trim().is_empty() {
            return Err(ConfigError::invalid(
                "telemetry.otlp.service_name",
                "must not be empty",
            ));
        }
        if !(o.sample_ratio.is_finite() && (0.0..=1.0).contains(&o.sample_ratio)) {
            return Err(ConfigError::invalid(
                "telemetry.otlp.sample_ratio",
                "must be a number from 0 to 1",
            ));
        }
        if o.timeout < Duration::from_millis(100) || o.timeout > Duration::from_secs(60) {
            return Err(ConfigError::invalid(
                "telemetry.otlp.timeout",
                "must be between 100ms and 60s",
            ));
        }
        Ok(())
    }
}
