//! Prompt hygiene: a request's prompt is recorded as its SHA-256 (in the log line and the
//! spend row), never as content — unless the workload's binding sets `log_prompts: true`, and
//! then only after every secret-shaped run is redacted: provider API keys, AWS access key ids
//! and secret keys, private keys, bearer tokens and JWTs, other well-known token formats, and
//! `key = value` assignments of things named like secrets.

use std::borrow::Cow;

/// The most prompt text one log line carries.
const MAX_LOGGED_BYTES: usize = 16 * 1024;

/// `text` with every secret-shaped run replaced.
pub fn redact(text: &str) -> Cow<'_, str> {
    crate::guardrails::secrets::redact_all(text)
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
