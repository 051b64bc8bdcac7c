//! The guardrails of the workload's binding, applied to a parsed request before it is priced
//! and routed: size caps, secrets (redact, block or log), prompt-injection heuristics (flag or
//! block) and data classes (what the request carries, for routing). Each decision is on the
//! audit log and counted — by the names of what was found, never its content.

use crate::app::AppState;
use crate::error::{ApiError, Code};
use crate::guardrails::{ClassSet, Guardrails, InjectionAction, SecretAction};
use crate::providers::{self, Api, InboundRequest};
use serde_json::json;

/// What the guardrails decided for a request that may go on.
pub(super) struct Guarded {
    /// The data classes it carries.
    pub classes: ClassSet,
    /// Injection rules it tripped (flagged, not blocked).
    pub flagged: Vec<String>,
    /// Secret patterns redacted from it.
    pub redacted: Vec<String>,
}

/// Who and what a decision is about, for the audit log.
pub(super) struct Subject<'a> {
    pub subject: &'a str,
    pub binding: &'a str,
    pub request_id: &'a str,
    pub model: &'a str,
}

/// Apply `g` to `req` (replaced by its redacted form when secrets are redacted).
pub(super) fn apply(
    state: &AppState,
    who: &Subject<'_>,
    g: &Guardrails,
    api: Api,
    req: &mut InboundRequest,
) -> Result<Guarded, ApiError> {
    let decide = |action: &'static str, rules: &[String], extra: serde_json::Value| {
        for r in rules {
            state.requests.guardrail(who.binding, r, action);
        }
        let mut detail = json!({"request_id": who.request_id, "model": who.model, "rules": rules});
        if let (Some(d), serde_json::Value::Object(x)) = (detail.as_object_mut(), extra) {
            d.extend(x);
        }
        state.audit.record(
            who.subject,
            &format!("guardrail.{action}"),
            who.binding,
            detail,
        );
    };

    size_caps(g, req).map_err(|(rule, e)| {
        decide("block", &[rule.to_owned()], json!({"reason": e.message}));
        e
    })?;

    let found = g.inspect(&req.prompt_text());
    let mut redacted = Vec::new();
    if !found.secrets.is_empty() {
        let names: Vec<String> = found.secrets.iter().map(|(n, _)| n.clone()).collect();
        let counts: serde_json::Map<String, serde_json::Value> = found
            .secrets
            .iter()
            .map(|(n, c)| (n.clone(), json!(c)))
            .collect();
        match g.secrets {
            SecretAction::Block => {
                decide("block", &names, json!({"counts": counts}));
                return Err(ApiError::new(
                    Code::ContentBlocked,
                    format!(
                        "the prompt contains what looks like a secret ({}); remove it before sending",
                        names.join(", ")
                    ),
                ));
            }
            SecretAction::Log => decide("log", &names, json!({"counts": counts})),
            SecretAction::Redact => {
                if let Some(body) = req.rewrite_prompt(&mut |s| g.redact(s)) {
                    // The rewrite only replaced text inside strings of a body that parsed.
                    *req = providers::parse_request(api, body)
                        .map_err(|e| ApiError::new(Code::InvalidRequest, e.to_string()))?;
                }
                decide("redact", &names, json!({"counts": counts}));
                redacted = names;
            }
        }
    }
    if !found.injection.is_empty() {
        match g.injection {
            InjectionAction::Block => {
                decide("block", &found.injection, json!({}));
                return Err(ApiError::new(
                    Code::ContentBlocked,
                    format!(
                        "the prompt was refused by this workload's prompt-injection guardrail ({})",
                        found.injection.join(", ")
                    ),
                ));
            }
            InjectionAction::Flag => decide("flag", &found.injection, json!({})),
        }
    }
    let classes = g.classes(&found);
    if !found.pii.is_empty() {
        let kinds: Vec<String> = found.pii.iter().map(|k| (*k).to_owned()).collect();
        decide("classify", &kinds, json!({"classes": classes.to_string()}));
    }
    Ok(Guarded {
        classes,
        flagged: found.injection,
        redacted,
    })
}

/// The binding's size caps; a refusal names the cap it broke.
fn size_caps(g: &Guardrails, req: &InboundRequest) -> Result<(), (&'static str, ApiError)> {
    // Counting walks the prompt: only for a binding that caps something.
    if g.max_messages.is_none() && g.max_tools.is_none() && g.max_images.is_none() {
        return check_prompt_tokens(g, req);
    }
    let shape = req.shape();
    let checks = [
        ("max_messages", "messages", shape.messages, g.max_messages),
        ("max_tools", "tool definitions", shape.tools, g.max_tools),
        ("max_images", "image parts", shape.images, g.max_images),
    ];
    for (rule, what, n, max) in checks {
        if let Some(max) = max
            && n > max
        {
            return Err((
                rule,
                ApiError::new(
                    Code::RequestTooLarge,
                    format!("the request has {n} {what}; this workload may send at most {max}"),
                ),
            ));
        }
    }
    check_prompt_tokens(g, req)
}

fn check_prompt_tokens(
    g: &Guardrails,
    req: &InboundRequest,
) -> Result<(), (&'static str, ApiError)> {
    if let Some(max) = g.max_prompt_tokens {
        let n = req.estimate_input_tokens();
        if n > max {
            return Err((
                "max_prompt_tokens",
                ApiError::new(
                    Code::RequestTooLarge,
                    format!("the prompt is about {n} tokens; this workload may send at most {max}"),
                ),
            ));
        }
    }
    Ok(())
}
