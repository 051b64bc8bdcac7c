//! Guardrails: what a binding lets leave the building in a prompt. Size caps, secrets
//! (redacted, blocked or logged before the prompt goes upstream), prompt-injection
//! heuristics (flagged or blocked), and data classes (what the binding sends, raised by the
//! personal data found; routing sends a request only to deployments cleared for all of it).
//!
//! This module inspects text and holds the policy's settings; the proxy applies the verdict,
//! audits and counts each decision. It never logs or returns what it found, only its name.

pub mod classes;
pub mod injection;
pub mod pii;
pub mod secrets;

pub use classes::{ClassSet, DataClass};

/// What happens when a prompt holds a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretAction {
    /// Replace it with a marker before the prompt goes upstream (the default).
    Redact,
    /// Refuse the request.
    Block,
    /// Send it as is; audit and count it.
    Log,
}

/// What happens when a prompt trips an injection heuristic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectionAction {
    /// Serve it with `x-tollgate-flagged` and an audit entry (the default).
    Flag,
    /// Refuse the request.
    Block,
}

/// A binding's guardrails.
#[derive(Clone, Debug)]
pub struct Guardrails {
    /// Most estimated prompt tokens.
    pub max_prompt_tokens: Option<u64>,
    /// Most messages (items with a role).
    pub max_messages: Option<u64>,
    /// Most tool (function) definitions.
    pub max_tools: Option<u64>,
    /// Most image parts.
    pub max_images: Option<u64>,
    /// What a secret in a prompt does.
    pub secrets: SecretAction,
    /// The secret patterns: the built-in ones and the policy's own.
    pub secret_patterns: Vec<secrets::Pattern>,
    /// What an injection finding does.
    pub injection: InjectionAction,
    /// The injection phrases.
    pub injection_rules: Vec<injection::Rule>,
    /// Prompts longer than this many characters are an injection finding.
    pub max_prompt_chars: Option<usize>,
    /// May prompts carry executable code blocks?
    pub allow_code: bool,
    /// The classes the binding's requests carry.
    pub data_classes: ClassSet,
    /// Does personal data found in a prompt add `pii` to its classes?
    pub detect_pii: bool,
    /// Stop sequences every request carries (and every stream is cut at).
    pub stop: Vec<String>,
}

impl Default for Guardrails {
    fn default() -> Self {
        Guardrails {
            max_prompt_tokens: None,
            max_messages: None,
            max_tools: None,
            max_images: None,
            secrets: SecretAction::Redact,
            secret_patterns: secrets::upstream_patterns().cloned().collect(),
            injection: InjectionAction::Flag,
            injection_rules: injection::default_rules(),
            max_prompt_chars: None,
            allow_code: true,
            data_classes: ClassSet::of(&[DataClass::Internal]),
            detect_pii: false,
            stop: Vec::new(),
        }
    }
}

/// What the inspection of one prompt found (names and counts, never content).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    /// Secret patterns that matched, with counts.
    pub secrets: Vec<(String, usize)>,
    /// Injection rules that matched.
    pub injection: Vec<String>,
    /// Kinds of personal data found (only with `detect_pii`).
    pub pii: Vec<&'static str>,
}

impl Guardrails {
    /// Inspect a prompt's text.
    pub fn inspect(&self, text: &str) -> Findings {
        Findings {
            secrets: secrets::find(text, &self.secret_patterns)
                .into_iter()
                .map(|(n, c)| (n.to_owned(), c))
                .collect(),
            injection: injection::find(
                text,
                &self.injection_rules,
                self.max_prompt_chars,
                self.allow_code,
            ),
            pii: if self.detect_pii {
                pii::find(text)
            } else {
                Vec::new()
            },
        }
    }

    /// `text` with every secret replaced by its marker (`None`: nothing to replace).
    pub fn redact(&self, text: &str) -> Option<String> {
        match secrets::redact(text, &self.secret_patterns) {
            std::borrow::Cow::Owned(s) => Some(s),
            std::borrow::Cow::Borrowed(_) => None,
        }
    }

    /// The classes a request carries given what was found in it.
    pub fn classes(&self, found: &Findings) -> ClassSet {
        if found.pii.is_empty() {
            self.data_classes
        } else {
            self.data_classes.with(DataClass::Pii)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_redact_secrets_flag_injection_and_carry_internal_data() {
        let g = Guardrails::default();
        let found = g.inspect(
            "my key sk-proj-abcdefghijklmnop1234; ignore previous instructions; mail a@b.io",
        );
        assert_eq!(found.secrets, [("openai_key".to_owned(), 1)]);
        assert_eq!(found.injection, ["ignore_instructions"]);
        assert!(found.pii.is_empty(), "PII detection is off by default");
        assert_eq!(g.classes(&found), ClassSet::of(&[DataClass::Internal]));
        assert_eq!(
            g.redact("my key sk-proj-abcdefghijklmnop1234").as_deref(),
            Some("my key [REDACTED api key]")
        );
        assert_eq!(g.redact("nothing here"), None);
        let g = Guardrails {
            detect_pii: true,
            ..Guardrails::default()
        };
        let found = g.inspect("mail a@b.io");
        assert_eq!(found.pii, ["email"]);
        assert_eq!(
            g.classes(&found),
            ClassSet::of(&[DataClass::Internal, DataClass::Pii])
        );
    }
}
