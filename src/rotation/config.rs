//! `[rotation]`: how a rotation's steps are paced and judged.

use super::issuer::IssuerConfig;
use crate::config::ConfigError;
use serde::Deserialize;
use std::time::Duration;

/// `[rotation]` settings (every field has a default).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RotationConfig {
    /// How often the driver looks at unfinished rotations (and the follower re-reads them
    /// when no change notification came).
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// How long a replica leads a rotation without renewing; a killed leader's rotation is
    /// resumed by another replica after this.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Live tests of a pending key that fail for a reason other than the provider refusing
    /// it (timeouts, 5xx) before the rotation is rolled back.
    pub test_attempts: u32,
    /// Share of the key's requests the pending version serves during the canary (0–1).
    pub canary_share: f64,
    /// How long the canary lasts.
    #[serde(with = "humantime_serde")]
    pub canary_duration: Duration,
    /// Requests the pending version must have served before its error rate is judged.
    pub canary_min_requests: u32,
    /// How far the pending version's error rate (401/403/5xx) may exceed the current one's.
    pub canary_max_error_rate_increase: f64,
    /// How long the old version stays usable after promotion.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    /// The drain of an emergency rotation (which also skips the canary).
    #[serde(with = "humantime_serde")]
    pub emergency_drain: Duration,
    /// How often the scheduler looks for keys whose policy schedule (`rotations:`) is due.
    #[serde(with = "humantime_serde")]
    pub schedule_tick: Duration,
    /// Provider admin APIs Tollgate creates new keys through (`[[rotation.issuers]]`).
    pub issuers: Vec<IssuerConfig>,
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            tick: Duration::from_secs(1),
            lease: Duration::from_secs(15),
            test_attempts: 3,
            canary_share: 0.1,
            canary_duration: Duration::from_secs(5 * 60),
            canary_min_requests: 20,
            canary_max_error_rate_increase: 0.05,
            drain: Duration::from_secs(10 * 60),
            emergency_drain: Duration::from_secs(30),
            schedule_tick: Duration::from_secs(30),
            issuers: Vec::new(),
        }
    }
}

impl RotationConfig {
    /// Check the settings; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |f: &str, why: &str| Err(ConfigError::invalid(format!("rotation.{f}"), why));
        if self.tick < Duration::from_millis(50) || self.tick > Duration::from_secs(60) {
            return bad("tick", "must be between 50ms and 1m");
        }
        if self.lease < self.tick * 3 {
            return bad("lease", "must be at least three rotation.tick");
        }
        if self.test_attempts == 0 {
            return bad("test_attempts", "must be at least 1");
        }
        if !(self.canary_share.is_finite() && self.canary_share > 0.0 && self.canary_share <= 1.0) {
            return bad("canary_share", "must be a number in (0, 1]");
        }
        if !(self.canary_max_error_rate_increase.is_finite()
            && (0.0..=1.0).contains(&self.canary_max_error_rate_increase))
        {
            return bad(
                "canary_max_error_rate_increase",
                "must be a number in [0, 1]",
            );
        }
        if self.schedule_tick < Duration::from_millis(50)
            || self.schedule_tick > Duration::from_secs(3600)
        {
            return bad("schedule_tick", "must be between 50ms and 1h");
        }
        for (i, c) in self.issuers.iter().enumerate() {
            c.validate(i)?;
            if self.issuers[..i].iter().any(|o| o.name == c.name) {
                return Err(ConfigError::invalid(
                    format!("rotation.issuers[{i}].name"),
                    format!("{:?} is used twice", c.name),
                ));
            }
        }
        Ok(())
    }

    /// The canary share in requests per million.
    pub fn share_ppm(&self) -> u64 {
        (self.canary_share * 1e6).round() as u64
    }
}
