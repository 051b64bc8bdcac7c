//! Secret-shaped runs of text: provider API keys, AWS access key ids and secret keys, private
//! keys, bearer tokens and JWTs, other well-known token formats, and `key = value`
//! assignments of things named like secrets. Each pattern has a name (what audit entries and
//! metrics say was found: never the secret) and the marker it is replaced with.
//!
//! Two uses: prompt logging redacts with every pattern; the guardrail that runs before a
//! prompt leaves Tollgate uses the specific ones (the generic `name = value` pattern would
//! rewrite too much prose and code that is not a secret) plus the binding's own.

use regex::Regex;
use std::borrow::Cow;
use std::sync::LazyLock;

/// A named pattern.
#[derive(Clone, Debug)]
pub struct Pattern {
    /// What was found (`openai_key`, `aws_access_key_id`, …, or a policy's own name).
    pub name: String,
    re: Regex,
    with: String,
}

impl Pattern {
    /// The regex's source.
    pub fn source(&self) -> &str {
        self.re.as_str()
    }

    /// A policy's own pattern, replaced by `[REDACTED <name>]`.
    pub fn custom(name: &str, re: &str) -> Result<Pattern, regex::Error> {
        Ok(Pattern {
            name: name.to_owned(),
            re: regex::RegexBuilder::new(re).size_limit(1 << 20).build()?,
            with: format!("[REDACTED {name}]"),
        })
    }
}

/// Built-in patterns: (name, regex, marker, sent-upstream guardrail uses it).
const BUILT_IN: [(&str, &str, &str, bool); 13] = [
    // A PEM private key, up to its end line (or the end of the text when cut off).
    (
        "private_key",
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)",
        "[REDACTED private key]",
        true,
    ),
    (
        "bearer_token",
        r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{8,}=*",
        "Bearer [REDACTED]",
        true,
    ),
    (
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
        "[REDACTED jwt]",
        true,
    ),
    // Anthropic (sk-ant-…) before the generic sk- form, so it is named for what it is.
    (
        "anthropic_key",
        r"\bsk-ant-[A-Za-z0-9_-]{16,}",
        "[REDACTED api key]",
        true,
    ),
    // OpenAI (sk-, sk-proj-, sk-svcacct-, sk-admin-) and look-alikes.
    (
        "openai_key",
        r"\bsk-[A-Za-z0-9_-]{16,}",
        "[REDACTED api key]",
        true,
    ),
    (
        "tollgate_token",
        r"\btgbg_[A-Za-z0-9_-]{16,}",
        "[REDACTED api key]",
        true,
    ),
    (
        "aws_access_key_id",
        r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b",
        "[REDACTED aws access key id]",
        true,
    ),
    (
        "aws_secret_access_key",
        r#"(?i)\b(aws_secret_access_key|secret_access_key|aws_secret_key)(["']?\s*[:=]\s*["']?)[A-Za-z0-9/+=]{40}"#,
        "${1}${2}[REDACTED]",
        true,
    ),
    (
        "github_token",
        r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}",
        "[REDACTED token]",
        true,
    ),
    (
        "github_token",
        r"\bgithub_pat_[A-Za-z0-9_]{40,}",
        "[REDACTED token]",
        true,
    ),
    (
        "slack_token",
        r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
        "[REDACTED token]",
        true,
    ),
    (
        "google_api_key",
        r"\bAIza[0-9A-Za-z_-]{35}",
        "[REDACTED api key]",
        true,
    ),
    (
        "secret_assignment",
        r#"(?i)\b([a-z0-9_.-]*(?:api[_-]?key|secret|passw(?:or)?d|token|credential)s?)(["']?\s*[:=]\s*["']?)[^\s"',;]{8,}"#,
        "${1}${2}[REDACTED]",
        false,
    ),
];

static ALL: LazyLock<Vec<(Pattern, bool)>> = LazyLock::new(|| {
    BUILT_IN
        .iter()
        // Constant patterns: `every_pattern_compiles` proves none is dropped here.
        .filter_map(|(name, re, with, upstream)| {
            Regex::new(re).ok().map(|re| {
                (
                    Pattern {
                        name: (*name).to_owned(),
                        re,
                        with: (*with).to_owned(),
                    },
                    *upstream,
                )
            })
        })
        .collect()
});

/// The built-in patterns the guardrail applies before a prompt goes upstream.
pub fn upstream_patterns() -> impl Iterator<Item = &'static Pattern> {
    ALL.iter().filter(|(_, up)| *up).map(|(p, _)| p)
}

/// `text` with every secret-shaped run replaced, by every built-in pattern (prompt logging).
pub fn redact_all(text: &str) -> Cow<'_, str> {
    redact(text, ALL.iter().map(|(p, _)| p))
}

/// `text` with every match of `patterns` replaced by its marker.
pub fn redact<'p>(text: &str, patterns: impl IntoIterator<Item = &'p Pattern>) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    for p in patterns {
        if let Cow::Owned(s) = p.re.replace_all(&out, p.with.as_str()) {
            out = Cow::Owned(s);
        }
    }
    out
}

/// The names of `patterns` that match in `text`, with their match counts (a pattern matched
/// by what an earlier one will replace is counted where it is not overlapped in practice;
/// the counts are for audit and metrics).
pub fn find<'p>(
    text: &str,
    patterns: impl IntoIterator<Item = &'p Pattern>,
) -> Vec<(&'p str, usize)> {
    let mut out: Vec<(&'p str, usize)> = Vec::new();
    let mut rest = Cow::Borrowed(text);
    for p in patterns {
        let n = p.re.find_iter(&rest).count();
        if n == 0 {
            continue;
        }
        match out.iter_mut().find(|(name, _)| *name == p.name) {
            Some((_, c)) => *c += n,
            None => out.push((p.name.as_str(), n)),
        }
        // What this pattern matched is not counted again by a later, wider one.
        if let Cow::Owned(s) = p.re.replace_all(&rest, "") {
            rest = Cow::Owned(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        assert_eq!(ALL.len(), BUILT_IN.len());
        assert_eq!(upstream_patterns().count(), BUILT_IN.len() - 1);
    }

    #[test]
    fn each_secret_is_named_for_what_it_is() {
        let text = "a sk-ant-api03-AAAAAAAAAAAAAAAAAAAA and sk-proj-abcdefghijklmnop1234 and AKIAIOSFODNN7EXAMPLE and ghp_0123456789abcdefghijABCDEFGHIJ012345";
        assert_eq!(
            find(text, upstream_patterns()),
            [
                ("anthropic_key", 1),
                ("openai_key", 1),
                ("aws_access_key_id", 1),
                ("github_token", 1)
            ]
        );
        let custom = Pattern::custom("ticket", r"TT-[0-9a-f]{8}").unwrap();
        assert_eq!(
            redact("see TT-deadbeef", [&custom]),
            "see [REDACTED ticket]"
        );
        assert!(find("Summarise the quarterly report.", upstream_patterns()).is_empty());
    }
}
