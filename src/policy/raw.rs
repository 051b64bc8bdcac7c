//! The YAML shape of policy files, as written (before validation).

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
    #[serde(default)]
    pub pools: BTreeMap<String, RawPool>,
    #[serde(default)]
    pub bindings: Vec<RawBinding>,
    #[serde(default)]
    pub roles: Vec<RawRole>,
    #[serde(default)]
    pub rotations: Vec<RawRotation>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRotation {
    pub name: String,
    pub keys: Vec<String>,
    pub billing_owner: Option<String>,
    pub every: Option<RawDuration>,
    pub cron: Option<String>,
    pub retry_after: Option<RawDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub provider: Option<String>,
    pub upstream_model: Option<String>,
    pub price: RawPrice,
    pub fallback: Option<String>,
    pub deployments: Option<Vec<RawDeployment>>,
    pub routing: Option<RawRouting>,
    pub data_classes: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeployment {
    pub name: String,
    pub provider: String,
    pub upstream_model: Option<String>,
    pub billing_owner: Option<String>,
    pub weight: Option<i64>,
    pub tier: Option<i64>,
    pub limits: Option<RawLimits>,
    pub price: Option<RawPrice>,
    pub data_classes: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouting {
    pub retries: Option<i64>,
    pub deadline: Option<RawDuration>,
    pub breaker: Option<RawBreaker>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    pub failures: Option<i64>,
    pub cooldown: Option<RawDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrice {
    pub input: Decimal,
    pub output: Decimal,
    pub cached_input: Option<Decimal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub budget: Option<RawBudget>,
    pub alerts: Option<Vec<i64>>,
    pub fallback_at: Option<i64>,
    pub at_cap: Option<String>,
    pub queue_timeout: Option<String>,
    pub queue_max: Option<i64>,
    pub overdraft_usd: Option<Decimal>,
    pub limits: Option<RawLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    pub usd: Decimal,
    pub window: String,
    /// Where a calendar window starts: a day of the month (monthly) or a weekday (weekly).
    /// Read as text whether written as a number or a word.
    pub anchor: Option<Decimal>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub concurrency: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBinding {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    pub team: String,
    pub pool: String,
    pub billing_owner: Option<String>,
    pub shared_keys: Option<bool>,
    pub models: Vec<String>,
    pub limits: Option<RawLimits>,
    pub token_ttl: Option<RawDuration>,
    pub max_tokens: Option<RawMaxTokens>,
    pub max_request_usd: Option<Decimal>,
    pub log_prompts: Option<bool>,
    pub guardrails: Option<RawGuardrails>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGuardrails {
    pub max_prompt_tokens: Option<i64>,
    pub max_messages: Option<i64>,
    pub max_tools: Option<i64>,
    pub max_images: Option<i64>,
    pub secrets: Option<RawSecrets>,
    pub injection: Option<RawInjection>,
    pub data_classes: Option<Vec<String>>,
    pub detect_pii: Option<bool>,
    pub stop: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecrets {
    pub action: Option<String>,
    pub patterns: Option<Vec<RawNamedPattern>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInjection {
    pub action: Option<String>,
    pub patterns: Option<Vec<RawNamedPattern>>,
    pub builtin_patterns: Option<bool>,
    pub max_prompt_chars: Option<i64>,
    pub allow_code: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNamedPattern {
    pub name: String,
    pub regex: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMatch {
    pub issuer: Option<String>,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    pub subject: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMaxTokens {
    pub default: Option<i64>,
    pub max: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRole {
    pub role: String,
    #[serde(default)]
    pub subjects: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A duration as seconds or humantime text (`15m`).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawDuration {
    Secs(u64),
    Text(String),
}

/// A decimal amount kept as text, so money never goes through binary floating point
/// arithmetic: `0.15` is parsed from its written digits.
pub(super) struct Decimal(pub String);

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Decimal;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal number such as 0.15")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
                Ok(Decimal(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
                Ok(Decimal(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
                // Rust prints the shortest text that round-trips: 0.15 -> "0.15".
                Ok(Decimal(format!("{v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
                Ok(Decimal(v.trim().to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parse a decimal of dollars into micro-dollars, exactly.
pub(super) fn micro_usd(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("{text:?} is not a dollar amount (a non-negative decimal with at most 6 decimals)")
    };
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if int.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    if !int.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
        || frac.len() > 6
    {
        return Err(bad());
    }
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    if int > 1_000_000 {
        return Err(format!("{text} is larger than 1000000 USD"));
    }
    let frac_micro: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().map_err(|_| bad())?
    };
    Ok(int * 1_000_000 + frac_micro)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decimals_parse_exactly() {
        assert_eq!(micro_usd("0.15"), Ok(150_000));
        assert_eq!(micro_usd("25"), Ok(25_000_000));
        assert_eq!(micro_usd("0.000001"), Ok(1));
        assert_eq!(micro_usd(".5"), Ok(500_000));
        for bad in [
            "-1",
            "1e3",
            "0.0000001",
            "abc",
            "",
            ".",
            "1.2.3",
            "NaN",
            "2000000",
        ] {
            assert!(micro_usd(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn any_six_decimal_amount_round_trips(a in 0u64..1_000_000, b in 0u64..1_000_000) {
            prop_assert_eq!(micro_usd(&format!("{a}.{b:06}")), Ok(a * 1_000_000 + b));
        }
    }
}
