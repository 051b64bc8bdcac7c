//! The metadata every backend reads next to a key — Vault `custom_metadata`, AWS tags — with
//! the same names and rules: `billing_owner` (required: a key without an owner would silently
//! bill everyone), `allowed_models` (commas and/or spaces; absent or `*`: every model of the
//! provider), `provider` (must agree with where the key lives, when both say), `purpose`,
//! `max_tokens_default`.

use super::{AllowedModels, ProviderKey};
use secrecy::SecretString;
use std::collections::HashMap;

/// Parsed metadata of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMeta {
    pub provider: String,
    pub billing_owner: String,
    pub allowed_models: AllowedModels,
    pub purpose: Option<String>,
    pub max_tokens_default: Option<u32>,
}

/// Read the metadata map. `provider_hint` is the provider the key's location names (Vault's
/// `<provider>/` folder, AWS's name segment), if any.
pub fn parse(
    map: &HashMap<String, String>,
    provider_hint: Option<&str>,
) -> Result<KeyMeta, String> {
    let get = |k: &str| {
        map.get(k)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let provider = match (get("provider"), provider_hint) {
        (Some(p), Some(h)) if p != h => {
            return Err(format!(
                "metadata provider {p:?} disagrees with its location ({h:?})"
            ));
        }
        (Some(p), _) => p,
        (None, Some(h)) if !h.is_empty() => h.to_owned(),
        (None, _) => return Err("no provider (set the provider metadata/tag)".into()),
    };
    let billing_owner = get("billing_owner")
        .ok_or_else(|| "no billing_owner (set it; \"*\" serves every owner)".to_owned())?;
    let allowed_models =
        get("allowed_models").map_or(AllowedModels::All, |t| AllowedModels::parse(&t));
    let max_tokens_default = match get("max_tokens_default") {
        None => None,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(format!(
                    "max_tokens_default {v:.40?} is not a positive integer"
                ));
            }
        },
    };
    Ok(KeyMeta {
        provider,
        billing_owner,
        allowed_models,
        purpose: get("purpose"),
        max_tokens_default,
    })
}

/// The API key inside a stored secret: a JSON object's `api_key`, or (AWS allows plain
/// strings) the whole trimmed value when it is not JSON.
pub fn api_key_from(text: &str) -> Result<SecretString, String> {
    let t = text.trim();
    if t.starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(t).map_err(|_| "secret is not valid JSON".to_owned())?;
        return match v.get("api_key").and_then(|k| k.as_str()).map(str::trim) {
            Some(k) if !k.is_empty() => Ok(SecretString::from(k.to_owned())),
            _ => Err("secret has no api_key string".into()),
        };
    }
    if t.is_empty() {
        return Err("secret is empty".into());
    }
    Ok(SecretString::from(t.to_owned()))
}

/// A key from its metadata and secret.
pub fn key(id: String, meta: KeyMeta, secret: SecretString, version: String) -> ProviderKey {
    let mut k = ProviderKey::new(id, meta.provider, secret, version);
    k.billing_owner = meta.billing_owner;
    k.allowed_models = meta.allowed_models;
    k.purpose = meta.purpose;
    k.max_tokens_default = meta.max_tokens_default;
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn metadata_is_read_with_its_defaults() {
        let m = parse(
            &map(&[
                ("billing_owner", "team-a"),
                ("allowed_models", "gpt-4o, gpt-4o-mini"),
                ("purpose", "chat"),
                ("max_tokens_default", "512"),
            ]),
            Some("openai"),
        )
        .unwrap();
        assert_eq!(m.provider, "openai");
        assert_eq!(
            m.allowed_models,
            AllowedModels::Only(vec!["gpt-4o".into(), "gpt-4o-mini".into()])
        );
        assert_eq!(m.purpose.as_deref(), Some("chat"));
        assert_eq!(m.max_tokens_default, Some(512));
        let m = parse(&map(&[("billing_owner", "*")]), Some("anthropic")).unwrap();
        assert_eq!(m.allowed_models, AllowedModels::All);
    }

    #[test]
    fn bad_metadata_is_refused_with_the_reason() {
        let e = parse(&map(&[]), Some("openai")).unwrap_err();
        assert!(e.contains("billing_owner"), "{e}");
        let e = parse(
            &map(&[("billing_owner", "a"), ("provider", "anthropic")]),
            Some("openai"),
        )
        .unwrap_err();
        assert!(e.contains("disagrees"), "{e}");
        let e = parse(&map(&[("billing_owner", "a")]), None).unwrap_err();
        assert!(e.contains("provider"), "{e}");
        let e = parse(
            &map(&[("billing_owner", "a"), ("max_tokens_default", "-3")]),
            Some("openai"),
        )
        .unwrap_err();
        assert!(e.contains("max_tokens_default"), "{e}");
    }

    #[test]
    fn api_keys_come_from_json_or_plain_text_and_errors_never_echo_them() {
        assert_eq!(
            api_key_from(r#"{"api_key": " sk-1 "}"#)
                .unwrap()
                .expose_secret(),
            "sk-1"
        );
        assert_eq!(
            api_key_from("sk-plain\n").unwrap().expose_secret(),
            "sk-plain"
        );
        for bad in [
            r#"{"key": "sk-secret-123"}"#,
            r#"{"api_key": "sk-secret-123""#,
            "  ",
        ] {
            let e = api_key_from(bad).unwrap_err();
            assert!(!e.contains("sk-secret-123"), "{e}");
        }
    }
}
