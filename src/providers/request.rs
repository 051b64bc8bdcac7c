//! Client request bodies: parsed once, checked for the fields Tollgate relies on, rewritten
//! for upstream. Everything else in the body passes through untouched.

use super::{Api, tokens};
use bytes::Bytes;
use serde_json::{Map, Value};

/// Longest model name accepted.
const MAX_MODEL_LEN: usize = 256;
/// Tokens assumed for one image part: more than any provider charges for a high-detail tile
/// set, so the estimate stays an upper bound.
const IMAGE_TOKENS: u64 = 1_600;

/// A check of a required field's JSON shape.
type ShapeCheck = fn(&Value) -> bool;

/// A body Tollgate cannot serve. Messages never echo the body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// Not JSON.
    #[error("request body is not valid JSON: {0}")]
    Json(String),
    /// JSON, but not an object.
    #[error("request body must be a JSON object")]
    NotAnObject,
    /// A field is missing or has the wrong type.
    #[error("`{field}` {reason}")]
    Field {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

fn field(field: &'static str, reason: &'static str) -> RequestError {
    RequestError::Field { field, reason }
}

/// A parsed client request.
#[derive(Debug, Clone)]
pub struct InboundRequest {
    api: Api,
    body: Map<String, Value>,
    model: String,
    stream: bool,
    client_wants_usage: bool,
}

/// Parse and check a client body for `api`.
pub fn parse_request(api: Api, body: &[u8]) -> Result<InboundRequest, RequestError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| RequestError::Json(format!("line {} column {}", e.line(), e.column())))?;
    let Value::Object(body) = value else {
        return Err(RequestError::NotAnObject);
    };
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() && m.len() <= MAX_MODEL_LEN => m.clone(),
        Some(Value::String(_)) => {
            return Err(field(
                "model",
                "must be a non-empty string of at most 256 characters",
            ));
        }
        Some(_) => return Err(field("model", "must be a string")),
        None => return Err(field("model", "is required")),
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(field("stream", "must be a boolean")),
    };
    let client_wants_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(field("stream_options", "include_usage must be a boolean")),
        },
        Some(_) => return Err(field("stream_options", "must be an object")),
    };
    for name in max_token_fields(api) {
        if let Some(v) = body.get(*name)
            && !v.is_null()
            && v.as_u64()
                .filter(|n| (1..=u64::from(u32::MAX)).contains(n))
                .is_none()
        {
            return Err(field(name, "must be a positive integer"));
        }
    }
    let required: &[(&'static str, ShapeCheck)] = match api {
        Api::ChatCompletions | Api::Messages => &[("messages", Value::is_array)],
        Api::Completions => &[("prompt", |v| v.is_string() || v.is_array())],
        Api::Embeddings => &[("input", |v| v.is_string() || v.is_array())],
        Api::Responses => &[("input", |v| v.is_string() || v.is_array())],
    };
    for (name, ok) in required {
        match body.get(*name) {
            Some(v) if ok(v) => {}
            Some(_) => return Err(field(name, "has the wrong type")),
            None => return Err(field(name, "is required")),
        }
    }
    if api == Api::Messages
        && let Some(s) = body.get("system")
        && !(s.is_string() || s.is_array() || s.is_null())
    {
        return Err(field("system", "must be a string or an array of blocks"));
    }
    Ok(InboundRequest {
        api,
        body,
        model,
        stream,
        client_wants_usage,
    })
}

fn max_token_fields(api: Api) -> &'static [&'static str] {
    match api {
        Api::ChatCompletions => &["max_tokens", "max_completion_tokens"],
        Api::Completions | Api::Messages => &["max_tokens"],
        Api::Responses => &["max_output_tokens"],
        Api::Embeddings => &[],
    }
}

impl InboundRequest {
    /// The API.
    pub fn api(&self) -> Api {
        self.api
    }

    /// The requested model.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Streaming requested?
    pub fn stream(&self) -> bool {
        self.stream
    }

    /// The output-token cap in the request, if any.
    pub fn max_tokens(&self) -> Option<u32> {
        max_token_fields(self.api)
            .iter()
            .filter_map(|f| self.body.get(*f).and_then(Value::as_u64))
            .min()
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Set the output-token cap in the field the client used (or this API's usual one).
    pub fn set_max_tokens(&mut self, n: u32) {
        let fields = max_token_fields(self.api);
        let present: Vec<&str> = fields
            .iter()
            .copied()
            .filter(|f| self.body.get(*f).is_some_and(|v| !v.is_null()))
            .collect();
        if present.is_empty() {
            if let Some(f) = fields.first() {
                self.body.insert((*f).to_owned(), Value::from(n));
            }
        } else {
            for f in present {
                self.body.insert(f.to_owned(), Value::from(n));
            }
        }
    }

    /// Does the client want the OpenAI usage chunk in its stream?
    pub fn strip_usage_chunk(&self) -> bool {
        self.stream
            && matches!(self.api, Api::ChatCompletions | Api::Completions)
            && !self.client_wants_usage
    }

    /// The body to send upstream: the upstream model name, and for OpenAI streams
    /// `stream_options.include_usage` forced on so the stream reports usage.
    pub fn upstream_body(&self, upstream_model: &str) -> Bytes {
        let mut body = self.body.clone();
        body.insert("model".into(), Value::from(upstream_model));
        if self.stream && matches!(self.api, Api::ChatCompletions | Api::Completions) {
            let opts = body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if !opts.is_object() {
                *opts = Value::Object(Map::new());
            }
            if let Some(o) = opts.as_object_mut() {
                o.insert("include_usage".into(), Value::Bool(true));
            }
        }
        Bytes::from(serde_json::to_vec(&Value::Object(body)).unwrap_or_default())
    }

    /// The body as parsed (the mock provider reads it).
    pub(crate) fn body(&self) -> &Map<String, Value> {
        &self.body
    }

    /// An upper-bound estimate of the input tokens.
    pub fn estimate_input_tokens(&self) -> u64 {
        let (text, images, items) = self.prompt_parts();
        let mut n = tokens::count(&self.model, &text) + images * IMAGE_TOKENS + items * 4 + 3;
        if let Some(tools) = self
            .body
            .get("tools")
            .or_else(|| self.body.get("functions"))
        {
            n += tokens::count(&self.model, &tools.to_string());
        }
        if self.api == Api::Messages || !tokens::exact(&self.model) {
            n = n.saturating_mul(115).div_ceil(100);
        }
        n
    }

    /// The exact tiktoken count of the prompt text (the mock provider's usage).
    pub(crate) fn prompt_tokens(&self) -> u64 {
        tokens::count(&self.model, &self.prompt_parts().0)
    }

    /// All prompt text joined, the number of image parts and of messages/items.
    pub(crate) fn prompt_parts(&self) -> (String, u64, u64) {
        let mut text = String::new();
        let mut images = 0;
        let mut items = 0;
        for key in ["system", "instructions", "messages", "prompt", "input"] {
            if let Some(v) = self.body.get(key) {
                collect(v, &mut text, &mut images, &mut items, 0);
            }
        }
        (text, images, items)
    }

    /// The text of the last user turn (the mock echoes it).
    pub(crate) fn last_user_text(&self) -> String {
        let pick = |v: &Value| {
            let mut t = String::new();
            let (mut i, mut n) = (0, 0);
            collect(v, &mut t, &mut i, &mut n, 0);
            t
        };
        for key in ["messages", "input"] {
            if let Some(Value::Array(items)) = self.body.get(key)
                && let Some(last) = items.iter().rev().find(|m| {
                    m.get("role")
                        .and_then(Value::as_str)
                        .is_none_or(|r| r == "user")
                })
            {
                return pick(last.get("content").unwrap_or(last));
            }
        }
        ["prompt", "input"]
            .iter()
            .find_map(|k| self.body.get(*k))
            .map(pick)
            .unwrap_or_default()
    }
}

/// Collect text from the content shapes of both families: strings, arrays of strings, parts
/// with `text`, messages with `content`, nested items. Depth-limited.
fn collect(v: &Value, text: &mut String, images: &mut u64, items: &mut u64, depth: u8) {
    if depth > 16 {
        return;
    }
    match v {
        Value::String(s) => {
            text.push_str(s);
            text.push('\n');
        }
        Value::Array(a) => {
            for x in a {
                collect(x, text, images, items, depth + 1);
            }
        }
        Value::Object(o) => {
            if o.contains_key("role") {
                *items += 1;
            }
            let kind = o.get("type").and_then(Value::as_str).unwrap_or("");
            if kind.contains("image") || o.contains_key("image_url") {
                *images += 1;
            }
            for k in [
                "text",
                "content",
                "input_text",
                "output_text",
                "arguments",
                "output",
            ] {
                if let Some(x) = o.get(k) {
                    collect(x, text, images, items, depth + 1);
                }
            }
            if let Some(tc) = o.get("tool_calls") {
                text.push_str(&tc.to_string());
            }
        }
        _ => {}
    }
}
