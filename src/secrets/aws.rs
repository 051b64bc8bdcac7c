//! AWS Secrets Manager. Provider keys are the secrets whose name starts with the configured
//! prefix (`tollgate/providers/openai/team-a`), tagged `billing_owner`, `allowed_models`
//! (space separated: tag values cannot hold commas), `provider` (else the name segment after
//! the prefix), optional `purpose`, `max_tokens_default`. The secret string is
//! `{"api_key": "…"}` or the bare key.
//!
//! Stages are AWS's own labels: `AWSCURRENT` serves, `AWSPENDING` is the rotation candidate,
//! `AWSPREVIOUS` the one before. The value is always read with `VersionStage=AWSCURRENT`
//! (never "the default version"), and only when the current version id changed, so a refresh
//! of an unchanged store is one paginated `ListSecrets`. Throttling and transient errors are
//! retried by the SDK's standard retry mode with exponential backoff.

use super::meta;
use super::{InvalidKey, KeyVersion, Listing, SecretStore, SecretStoreError, Stage};
use crate::config::AwsConfig;
use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueOutput;
use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType, SecretListEntry};
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use tokio::sync::Mutex;

/// The AWS Secrets Manager backend.
pub struct AwsStore {
    client: Client,
    prefix: String,
    /// Secrets already read, by name: (AWSCURRENT version id, value).
    secrets: Mutex<HashMap<String, (String, SecretString)>>,
}

impl AwsStore {
    /// A client from the standard AWS credential chain (environment, profile, IRSA web
    /// identity, instance role), with the configured region and endpoint.
    pub async fn connect(config: AwsConfig) -> Result<AwsStore, SecretStoreError> {
        use aws_config::retry::RetryConfig;
        use aws_config::timeout::TimeoutConfig;
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts))
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(config.timeout)
                    .build(),
            );
        if let Some(r) = &config.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(ep) = &config.endpoint_url {
            loader = loader.endpoint_url(ep.as_str().trim_end_matches('/'));
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(SecretStoreError::Unavailable {
                store: "aws".into(),
                reason: "no AWS region: set secrets.aws.region or AWS_REGION".into(),
            });
        }
        Ok(AwsStore {
            client: Client::new(&sdk),
            prefix: config.prefix,
            secrets: Mutex::new(HashMap::new()),
        })
    }

    fn unavailable(&self, reason: String) -> SecretStoreError {
        SecretStoreError::Unavailable {
            store: "aws".into(),
            reason,
        }
    }

    /// Version id → staging labels of a secret.
    async fn labels(&self, id: &str) -> Result<HashMap<String, Vec<String>>, SecretStoreError> {
        match self.client.describe_secret().secret_id(id).send().await {
            Ok(d) => Ok(d.version_ids_to_stages().cloned().unwrap_or_default()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Err(invalid(id, "no such secret".into()))
            }
            Err(err) => Err(self.unavailable(describe("DescribeSecret", &err))),
        }
    }

    async fn remove_label(
        &self,
        id: &str,
        version: &str,
        label: &str,
    ) -> Result<(), SecretStoreError> {
        self.client
            .update_secret_version_stage()
            .secret_id(id)
            .version_stage(label)
            .remove_from_version_id(version)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(describe("UpdateSecretVersionStage", &e)))
    }

    /// The `AWSCURRENT` value of a secret; `None` when it does not exist (or is scheduled for
    /// deletion).
    async fn current_value(
        &self,
        id: &str,
    ) -> Result<Option<GetSecretValueOutput>, SecretStoreError> {
        let got = self
            .client
            .get_secret_value()
            .secret_id(id)
            .version_stage("AWSCURRENT")
            .send()
            .await;
        match got {
            Ok(v) => Ok(Some(v)),
            Err(err)
                if err.as_service_error().is_some_and(|s| {
                    s.is_resource_not_found_exception() || s.is_invalid_request_exception()
                }) =>
            {
                Ok(None)
            }
            Err(err) => Err(self.unavailable(describe("GetSecretValue", &err))),
        }
    }

    async fn entries(&self) -> Result<Vec<SecretListEntry>, SecretStoreError> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut req = self.client.list_secrets().max_results(100).filters(
                Filter::builder()
                    .key(FilterNameStringType::Name)
                    .values(self.prefix.clone())
                    .build(),
            );
            if let Some(t) = &next {
                req = req.next_token(t);
            }
            let page = req
                .send()
                .await
                .map_err(|e| self.unavailable(describe("ListSecrets", &e)))?;
            out.extend(
                page.secret_list()
                    .iter()
                    .filter(|s| s.deleted_date().is_none())
                    // The Name filter matches loosely; the prefix is exact here.
                    .filter(|s| s.name().is_some_and(|n| n.starts_with(&self.prefix)))
                    .cloned(),
            );
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl SecretStore for AwsStore {
    fn name(&self) -> &str {
        "aws"
    }

    async fn list(&self) -> Result<Listing, SecretStoreError> {
        let entries = self.entries().await?;
        let mut cache = self.secrets.lock().await;
        let mut out = Listing::default();
        let mut seen = Vec::new();
        for e in entries {
            let Some(name) = e.name().map(str::to_owned) else {
                continue;
            };
            let tags: HashMap<String, String> = e
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                .collect();
            let hint = provider_from_name(&self.prefix, &name);
            let invalid = |reason: String| InvalidKey {
                id: name.clone(),
                provider: tags
                    .get("provider")
                    .cloned()
                    .or_else(|| hint.clone())
                    .unwrap_or_default(),
                reason,
            };
            // The name segment only hints: a `provider` tag may legitimately differ from it.
            let location = if tags.contains_key("provider") {
                None
            } else {
                hint.as_deref()
            };
            let meta = match meta::parse(&tags, location) {
                Ok(m) => m,
                Err(reason) => {
                    out.invalid.push(invalid(reason));
                    continue;
                }
            };
            let versions = stages(e.secret_versions_to_stages());
            let Some(current) = versions
                .iter()
                .find(|v| v.stage == Stage::Current)
                .map(|v| v.id.clone())
            else {
                out.invalid
                    .push(invalid("no version is labelled AWSCURRENT".into()));
                continue;
            };
            let secret = match cache.get(&name) {
                Some((v, s)) if *v == current => s.clone(),
                _ => {
                    // None: deleted (or scheduled for deletion) since the listing.
                    let Some(value) = self.current_value(e.arn().unwrap_or(&name)).await? else {
                        continue;
                    };
                    let Some(text) = value.secret_string() else {
                        out.invalid
                            .push(invalid("the secret has no string value".into()));
                        continue;
                    };
                    match meta::api_key_from(text) {
                        Ok(s) => {
                            let id = value.version_id().unwrap_or(&current).to_owned();
                            cache.insert(name.clone(), (id, s.clone()));
                            s
                        }
                        Err(reason) => {
                            out.invalid.push(invalid(reason));
                            continue;
                        }
                    }
                }
            };
            seen.push(name.clone());
            let mut k = meta::key(name, meta, secret, current);
            k.versions = versions;
            out.keys.push(k);
        }
        cache.retain(|n, _| seen.contains(n));
        Ok(out)
    }

    async fn read_version(
        &self,
        id: &str,
        version: &str,
    ) -> Result<SecretString, SecretStoreError> {
        let got = self
            .client
            .get_secret_value()
            .secret_id(id)
            .version_id(version)
            .send()
            .await;
        let value = match got {
            Ok(v) => v,
            Err(err)
                if err.as_service_error().is_some_and(|s| {
                    s.is_resource_not_found_exception() || s.is_invalid_request_exception()
                }) =>
            {
                return Err(invalid(id, format!("version {version:.40} does not exist")));
            }
            Err(err) => return Err(self.unavailable(describe("GetSecretValue", &err))),
        };
        let text = value
            .secret_string()
            .ok_or_else(|| invalid(id, "the version has no string value".into()))?;
        meta::api_key_from(text).map_err(|reason| invalid(id, reason))
    }

    async fn set_current(&self, id: &str, version: &str) -> Result<(), SecretStoreError> {
        let labels = self.labels(id).await?;
        let Some(here) = labels.get(version) else {
            return Err(invalid(id, format!("version {version:.40} does not exist")));
        };
        if !here.iter().any(|l| l == "AWSCURRENT") {
            let mut req = self
                .client
                .update_secret_version_stage()
                .secret_id(id)
                .version_stage("AWSCURRENT")
                .move_to_version_id(version);
            if let Some((old, _)) = labels
                .iter()
                .find(|(_, l)| l.iter().any(|l| l == "AWSCURRENT"))
            {
                // AWS labels the version it leaves AWSPREVIOUS.
                req = req.remove_from_version_id(old);
            }
            req.send()
                .await
                .map_err(|e| self.unavailable(describe("UpdateSecretVersionStage", &e)))?;
        }
        if here.iter().any(|l| l == "AWSPENDING") {
            self.remove_label(id, version, "AWSPENDING").await?;
        }
        Ok(())
    }

    async fn write_pending(
        &self,
        id: &str,
        secret: &SecretString,
    ) -> Result<String, SecretStoreError> {
        let text = serde_json::json!({"api_key": secret.expose_secret()}).to_string();
        let out = self
            .client
            .put_secret_value()
            .secret_id(id)
            .secret_string(text)
            .version_stages("AWSPENDING")
            .send()
            .await
            .map_err(|e| self.unavailable(describe("PutSecretValue", &e)))?;
        out.version_id()
            .map(str::to_owned)
            .ok_or_else(|| invalid(id, "PutSecretValue returned no version id".into()))
    }

    async fn reject_pending(&self, id: &str, version: &str) -> Result<(), SecretStoreError> {
        let labels = self.labels(id).await?;
        let here = labels.get(version).cloned().unwrap_or_default();
        if here.iter().any(|l| l == "AWSCURRENT") {
            return Err(invalid(
                id,
                format!("version {version:.40} is AWSCURRENT; it cannot be rejected"),
            ));
        }
        if here.iter().any(|l| l == "AWSPENDING") {
            self.remove_label(id, version, "AWSPENDING").await?;
        }
        Ok(())
    }

    async fn read_secret(&self, name: &str, field: &str) -> Result<SecretString, SecretStoreError> {
        let invalid = |reason: String| SecretStoreError::Invalid {
            store: "aws".into(),
            entry: name.to_owned(),
            reason,
        };
        let Some(value) = self.current_value(name).await? else {
            return Err(invalid(
                "no such secret (or it is scheduled for deletion)".into(),
            ));
        };
        let text = value
            .secret_string()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid("the secret has no string value".into()))?;
        if !text.starts_with('{') {
            return Ok(SecretString::from(text.to_owned()));
        }
        let obj: serde_json::Value = serde_json::from_str(text)
            .map_err(|_| invalid("the secret string is neither JSON nor a bare value".into()))?;
        super::string_field(&obj, field)
            .ok_or_else(|| invalid(format!("the JSON secret has no {field:?} string")))
    }
}

fn invalid(id: &str, reason: String) -> SecretStoreError {
    SecretStoreError::Invalid {
        store: "aws".into(),
        entry: id.to_owned(),
        reason,
    }
}

/// `<prefix><provider>/<name>` → `provider`.
fn provider_from_name(prefix: &str, name: &str) -> Option<String> {
    let rest = name.strip_prefix(prefix)?;
    let (provider, key) = rest.split_once('/')?;
    (!provider.is_empty() && !key.is_empty()).then(|| provider.to_owned())
}

/// AWS staging labels → stages (versions without one of the three labels are left out).
fn stages(map: Option<&HashMap<String, Vec<String>>>) -> Vec<KeyVersion> {
    let mut out: Vec<KeyVersion> = map
        .into_iter()
        .flatten()
        .filter_map(|(id, labels)| {
            let stage = if labels.iter().any(|l| l == "AWSCURRENT") {
                Stage::Current
            } else if labels.iter().any(|l| l == "AWSPENDING") {
                Stage::Pending
            } else if labels.iter().any(|l| l == "AWSPREVIOUS") {
                Stage::Previous
            } else {
                return None;
            };
            Some(KeyVersion {
                id: id.clone(),
                stage,
            })
        })
        .collect();
    out.sort_by_key(|v| match v.stage {
        Stage::Previous => 0,
        Stage::Current => 1,
        Stage::Pending => 2,
    });
    out
}

fn describe<E, R>(call: &str, e: &aws_sdk_secretsmanager::error::SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_secretsmanager::error::SdkError;
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            format!(
                "{call}: {}: {:.200}",
                err.code().unwrap_or("error"),
                err.message().unwrap_or("")
            )
        }
        SdkError::TimeoutError(_) => format!("{call}: timed out"),
        SdkError::DispatchFailure(_) => format!("{call}: cannot reach Secrets Manager"),
        other => format!("{call}: {:.300}", DisplayErrorContext(other).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_comes_from_the_name_after_the_prefix() {
        assert_eq!(
            provider_from_name("tollgate/providers/", "tollgate/providers/openai/team-a"),
            Some("openai".into())
        );
        assert_eq!(
            provider_from_name("tollgate/providers/", "tollgate/providers/openai"),
            None
        );
        assert_eq!(provider_from_name("tollgate/", "other/openai/x"), None);
    }

    #[test]
    fn staging_labels_become_stages() {
        let map: HashMap<String, Vec<String>> = [
            ("v3".to_owned(), vec!["AWSPENDING".to_owned()]),
            (
                "v2".to_owned(),
                vec!["AWSCURRENT".to_owned(), "custom".to_owned()],
            ),
            ("v1".to_owned(), vec!["AWSPREVIOUS".to_owned()]),
            ("v0".to_owned(), vec![]),
        ]
        .into();
        let got: Vec<(String, Stage)> = stages(Some(&map))
            .into_iter()
            .map(|v| (v.id, v.stage))
            .collect();
        assert_eq!(
            got,
            [
                ("v1".to_owned(), Stage::Previous),
                ("v2".to_owned(), Stage::Current),
                ("v3".to_owned(), Stage::Pending)
            ]
        );
    }
}
