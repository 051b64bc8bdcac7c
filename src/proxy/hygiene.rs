//! Prompt hygiene: a request's prompt is recorded as its SHA-256 (in the log line and the
//! spend row), never as content — unless the workload's binding sets `log_prompts: true`, and
//! then only after every secret-shaped run is redacted: provider API keys, AWS access key ids
//! and secret keys, private keys, bearer tokens and JWTs, other well-known token formats, and
//! `key = value` assignments of things named like secrets.

use regex::Regex;
use std::borrow::Cow;
use std::sync::LazyLock;

/// The most prompt text one log line carries.
const MAX_LOGGED_BYTES: usize = 16 * 1024;

static PATTERNS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        // A PEM private key, up to its end line (or the end of the text when cut off).
        (
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)",
            "[REDACTED private key]",
        ),
        (r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{8,}=*", "Bearer [REDACTED]"),
        (
            r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
            "[REDACTED jwt]",
        ),
        // OpenAI (sk-, sk-proj-, sk-svcacct-, sk-admin-), Anthropic (sk-ant-…) and look-alikes.
        (r"\bsk-[A-Za-z0-9_-]{16,}", "[REDACTED api key]"),
        (r"\btgbg_[A-Za-z0-9_-]{16,}", "[REDACTED api key]"),
        (r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b", "[REDACTED aws access key id]"),
        (
            r#"(?i)\b(aws_secret_access_key|secret_access_key|aws_secret_key)(["']?\s*[:=]\s*["']?)[A-Za-z0-9/+=]{40}"#,
            "${1}${2}[REDACTED]",
        ),
        (r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}", "[REDACTED token]"),
        (r"\bgithub_pat_[A-Za-z0-9_]{40,}", "[REDACTED token]"),
        (r"\bxox[abposr]-[A-Za-z0-9-]{10,}", "[REDACTED token]"),
        (r"\bAIza[0-9A-Za-z_-]{35}", "[REDACTED api key]"),
        (
            r#"(?i)\b([a-z0-9_.-]*(?:api[_-]?key|secret|passw(?:or)?d|token|credential)s?)(["']?\s*[:=]\s*["']?)[^\s"',;]{8,}"#,
            "${1}${2}[REDACTED]",
        ),
    ]
    .into_iter()
    // Constant patterns: `every_pattern_compiles` proves none is dropped here.
    .filter_map(|(re, with)| Regex::new(re).ok().map(|re| (re, with)))
    .collect()
});

/// `text` with every secret-shaped run replaced.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    for (re, with) in PATTERNS.iter() {
        if let Cow::Owned(s) = re.replace_all(&out, *with) {
            out = Cow::Owned(s);
        }
    }
    out
}

/// What a binding with `log_prompts` logs: the redacted prompt, cut at a character boundary.
pub(super) fn loggable(text: &str) -> String {
    let mut s = redact(text).into_owned();
    if s.len() > MAX_LOGGED_BYTES {
        let mut end = MAX_LOGGED_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(" […]");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        assert_eq!(PATTERNS.len(), 12);
    }

    #[test]
    fn secrets_are_redacted_and_prose_is_kept() {
        let cases = [
            (
                "my key is sk-proj-abcdefghijklmnop1234 ok",
                "my key is [REDACTED api key] ok",
            ),
            (
                "sk-ant-api03-AAAAAAAAAAAAAAAAAAAA-BBBB",
                "[REDACTED api key]",
            ),
            (
                "id AKIAIOSFODNN7EXAMPLE here",
                "id [REDACTED aws access key id] here",
            ),
            (
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "aws_secret_access_key = [REDACTED]",
            ),
            (
                "curl -H 'Authorization: Bearer abc.def-ghi_jkl' x",
                "curl -H 'Authorization: Bearer [REDACTED]' x",
            ),
            (
                "token eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl end",
                "token [REDACTED jwt] end",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nabc\n-----END RSA PRIVATE KEY-----\nafter",
                "[REDACTED private key]\nafter",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nMIIEvQ cut",
                "[REDACTED private key]",
            ),
            (
                "DB_PASSWORD=hunter2hunter2 next",
                "DB_PASSWORD=[REDACTED] next",
            ),
            (
                r#"{"api_key": "abcd1234efgh"}"#,
                r#"{"api_key": "[REDACTED]"}"#,
            ),
            (
                "ghp_0123456789abcdefghijABCDEFGHIJ012345",
                "[REDACTED token]",
            ),
            ("xoxb-123456789012-abcdefghij", "[REDACTED token]"),
            (
                "Summarise the quarterly report, please.",
                "Summarise the quarterly report, please.",
            ),
            (
                "the token budget is 5 and the password policy says 12",
                "the token budget is 5 and the password policy says 12",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
        }
    }

    #[test]
    fn long_prompts_are_cut_at_a_character_boundary() {
        let s = "é".repeat(MAX_LOGGED_BYTES);
        let out = loggable(&s);
        assert!(out.len() <= MAX_LOGGED_BYTES + " […]".len());
        assert!(out.ends_with(" […]"));
    }
}
