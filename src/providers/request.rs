//! Client request bodies: parsed once, checked for the fields Tollgate relies on, rewritten
//! for upstream. Everything else passes through untouched, byte for byte.
//!
//! The body is split into its top-level members without building a JSON tree: each member's
//! value stays a span of the client's bytes (`serde_json`'s `RawValue`), the few fields
//! Tollgate reads are parsed from their span, and the upstream body is the client's members
//! copied back with `model`, the output-token cap and `stream_options` replaced. The prompt
//! text for the token estimate is gathered by a visitor that walks the content without
//! allocating a tree either.
//!
//! A field Tollgate reads may appear only once: JSON parsers disagree on which duplicate wins,
//! and Tollgate must check the same `model`, `stream` and `max_tokens` the provider will use.

use super::{Api, tokens};
use bytes::Bytes;
use serde::de::{
    self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// Longest model name accepted.
const MAX_MODEL_LEN: usize = 256;
/// Tokens assumed for one image part: more than any provider charges for a high-detail tile
/// set, so the estimate stays an upper bound.
const IMAGE_TOKENS: u64 = 1_600;
/// Deepest JSON nesting accepted in a body (real requests nest a handful of levels). Bodies
/// nested deeper are refused, so the prompt walk, which may descend as far, sees every part
/// and no text can hide from the token estimate below it.
const MAX_NESTING: usize = 32;
/// The prompt walk's own guard: never reached within [`MAX_NESTING`].
const MAX_DEPTH: u8 = 40;
/// Top-level fields whose text is the prompt.
const PROMPT_FIELDS: [&str; 5] = ["system", "instructions", "messages", "prompt", "input"];
/// Top-level fields Tollgate reads: each may appear once.
const READ_FIELDS: [&str; 15] = [
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "system",
    "instructions",
    "messages",
    "prompt",
    "input",
    "tools",
    "functions",
    "stop",
    "stop_sequences",
];

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
    /// A field Tollgate reads appears more than once.
    #[error("`{0}` appears more than once")]
    Duplicate(&'static str),
    /// Nested past the limit.
    #[error("request body nests deeper than {0} levels")]
    TooDeep(usize),
}

/// The deepest `[`/`{` nesting of a JSON text (brackets inside strings do not count). Bytes
/// that are not JSON are left to the parser to refuse.
fn nesting(body: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn field(field: &'static str, reason: &'static str) -> RequestError {
    RequestError::Field { field, reason }
}

/// A top-level member name: a span of the body when it has no escapes, else unescaped.
#[derive(Debug, Clone)]
enum Key {
    At(Range<usize>),
    Owned(String),
}

#[derive(Debug, Clone)]
struct Member {
    key: Key,
    /// The value's span in the body.
    value: Range<usize>,
}

/// A parsed client request.
#[derive(Debug, Clone)]
pub struct InboundRequest {
    api: Api,
    raw: Bytes,
    members: Vec<Member>,
    model: String,
    stream: bool,
    client_wants_usage: bool,
    /// The smallest cap the client sent.
    max_tokens: Option<u32>,
    /// The cap Tollgate set (replaces the client's in the upstream body).
    new_max_tokens: Option<u32>,
    /// Stop sequences a binding adds (sent before the client's own).
    extra_stop: Vec<String>,
}

/// Parse and check a client body for `api`.
pub fn parse_request(api: Api, body: Bytes) -> Result<InboundRequest, RequestError> {
    if nesting(&body) > MAX_NESTING {
        return Err(RequestError::TooDeep(MAX_NESTING));
    }
    let members = split_members(&body)?;
    let mut req = InboundRequest {
        api,
        raw: body,
        members,
        model: String::new(),
        stream: false,
        client_wants_usage: false,
        max_tokens: None,
        new_max_tokens: None,
        extra_stop: Vec::new(),
    };
    req.check_duplicates()?;
    req.model = match req.member("model") {
        None => return Err(field("model", "is required")),
        Some(v) => match serde_json::from_str::<String>(v) {
            Ok(m) if !m.trim().is_empty() && m.len() <= MAX_MODEL_LEN => m,
            Ok(_) => {
                return Err(field(
                    "model",
                    "must be a non-empty string of at most 256 characters",
                ));
            }
            Err(_) => return Err(field("model", "must be a string")),
        },
    };
    req.stream = match req
        .member("stream")
        .map(serde_json::from_str::<Option<bool>>)
    {
        None | Some(Ok(None)) => false,
        Some(Ok(Some(b))) => b,
        Some(Err(_)) => return Err(field("stream", "must be a boolean")),
    };
    req.client_wants_usage = match req.member("stream_options").map(serde_json::from_str) {
        None | Some(Ok(Value::Null)) => false,
        Some(Ok(Value::Object(o))) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(field("stream_options", "include_usage must be a boolean")),
        },
        Some(_) => return Err(field("stream_options", "must be an object")),
    };
    for name in max_token_fields(api) {
        let Some(v) = req.member(name) else { continue };
        let n = match serde_json::from_str::<Option<u64>>(v) {
            Ok(None) => continue,
            Ok(Some(n)) if (1..=u64::from(u32::MAX)).contains(&n) => n,
            _ => return Err(field(name, "must be a positive integer")),
        };
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        req.max_tokens = Some(req.max_tokens.map_or(n, |m| m.min(n)));
    }
    let required: &[(&'static str, &[u8])] = match api {
        Api::ChatCompletions | Api::Messages => &[("messages", b"[")],
        Api::Completions => &[("prompt", b"\"[")],
        Api::Embeddings | Api::Responses => &[("input", b"\"[")],
    };
    for (name, starts) in required {
        match req.member(name).map(first_byte) {
            Some(b) if starts.contains(&b) => {}
            Some(_) => return Err(field(name, "has the wrong type")),
            None => return Err(field(name, "is required")),
        }
    }
    if api == Api::Messages
        && let Some(s) = req.member("system")
        && !(b"\"[".contains(&first_byte(s)) || s == "null")
    {
        return Err(field("system", "must be a string or an array of blocks"));
    }
    Ok(req)
}

fn first_byte(raw: &str) -> u8 {
    raw.as_bytes().first().copied().unwrap_or(0)
}

/// The field an API takes stop sequences in, and how many it accepts.
fn stop_field(api: Api) -> Option<(&'static str, Option<usize>)> {
    match api {
        // OpenAI accepts at most 4.
        Api::ChatCompletions | Api::Completions => Some(("stop", Some(4))),
        Api::Messages => Some(("stop_sequences", None)),
        Api::Responses | Api::Embeddings => None,
    }
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

    /// The output-token cap of the request (as Tollgate set it, else the client's smallest).
    pub fn max_tokens(&self) -> Option<u32> {
        self.new_max_tokens.or(self.max_tokens)
    }

    /// Set the output-token cap: every cap field the client sent carries it upstream (or,
    /// when it sent none, this API's usual field).
    pub fn set_max_tokens(&mut self, n: u32) {
        self.new_max_tokens = Some(n);
    }

    /// Send `stops` upstream as stop sequences, before the client's own (which are kept as far
    /// as the API's maximum allows). APIs without stop sequences get none.
    pub fn add_stop(&mut self, stops: &[String]) {
        self.extra_stop = stops.to_vec();
    }

    /// The stop sequences sent upstream: the binding's, then the client's (`raw`), each once.
    fn merged_stop(&self, raw: Option<&[u8]>, max: Option<usize>) -> Value {
        let mut out: Vec<String> = Vec::new();
        let client: Vec<String> = match raw.map(serde_json::from_slice::<Value>) {
            Some(Ok(Value::String(s))) => vec![s],
            Some(Ok(Value::Array(a))) => a
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        for s in self.extra_stop.iter().cloned().chain(client) {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        if let Some(max) = max {
            out.truncate(max);
        }
        Value::from(out)
    }

    /// Does the client want the OpenAI usage chunk in its stream?
    pub fn strip_usage_chunk(&self) -> bool {
        self.stream && self.openai_stream() && !self.client_wants_usage
    }

    fn openai_stream(&self) -> bool {
        matches!(self.api, Api::ChatCompletions | Api::Completions)
    }

    /// The body to send upstream: the upstream model name, Tollgate's output-token cap, and
    /// for OpenAI streams `stream_options.include_usage` forced on so the stream reports
    /// usage. Every other member is the client's bytes.
    pub fn upstream_body(&self, upstream_model: &str) -> Bytes {
        let force_usage = self.stream && self.openai_stream();
        let cap_fields = max_token_fields(self.api);
        let mut out = Vec::with_capacity(self.raw.len() + upstream_model.len() + 48);
        let mut cap_written = false;
        let mut usage_written = false;
        let stop = stop_field(self.api).filter(|_| !self.extra_stop.is_empty());
        let mut stop_written = false;
        out.push(b'{');
        for m in &self.members {
            let key = self.key(m);
            let raw = &self.raw[m.value.clone()];
            self.write_key(&mut out, m);
            match key {
                b"model" => write_str(&mut out, upstream_model),
                // A null cap is left null, unless it is the field the cap would be appended
                // as: the upstream body must never carry one name twice.
                k if self.new_max_tokens.is_some()
                    && cap_fields.iter().any(|f| f.as_bytes() == k)
                    && (raw != b"null"
                        || (self.max_tokens.is_none()
                            && cap_fields.first().is_some_and(|f| f.as_bytes() == k))) =>
                {
                    write_u32(&mut out, self.new_max_tokens.unwrap_or_default());
                    cap_written = true;
                }
                k if stop.is_some_and(|(f, _)| f.as_bytes() == k) => {
                    let merged = self.merged_stop(Some(raw), stop.and_then(|(_, max)| max));
                    let _ = serde_json::to_writer(&mut out, &merged);
                    stop_written = true;
                }
                b"stream_options" if force_usage => {
                    let mut opts = match serde_json::from_slice::<Value>(raw) {
                        Ok(Value::Object(o)) => o,
                        _ => Map::new(),
                    };
                    opts.insert("include_usage".into(), Value::Bool(true));
                    let _ = serde_json::to_writer(&mut out, &opts);
                    usage_written = true;
                }
                _ => out.extend_from_slice(raw),
            }
        }
        if let (Some(n), false, Some(f)) = (self.new_max_tokens, cap_written, cap_fields.first()) {
            out.push(b',');
            write_str(&mut out, f);
            out.push(b':');
            write_u32(&mut out, n);
        }
        if let (Some((f, max)), false) = (stop, stop_written) {
            out.push(b',');
            write_str(&mut out, f);
            out.push(b':');
            let _ = serde_json::to_writer(&mut out, &self.merged_stop(None, max));
        }
        if force_usage && !usage_written {
            out.extend_from_slice(br#","stream_options":{"include_usage":true}"#);
        }
        out.push(b'}');
        Bytes::from(out)
    }

    /// A top-level field as a JSON value (the mock provider reads the body this way).
    pub(crate) fn field(&self, name: &str) -> Value {
        self.member(name)
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or(Value::Null)
    }

    /// The body as received.
    pub(crate) fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// An upper-bound estimate of the input tokens.
    pub fn estimate_input_tokens(&self) -> u64 {
        let p = self.prompt();
        let mut n = tokens::count(&self.model, &p.text) + p.images * IMAGE_TOKENS + p.items * 4 + 3;
        if let Some(tools) = self.member("tools").or_else(|| self.member("functions")) {
            n += tokens::count(&self.model, tools);
        }
        if self.api == Api::Messages || !tokens::exact(&self.model) {
            n = n.saturating_mul(115).div_ceil(100);
        }
        n
    }

    /// SHA-256 (hex) of the prompt as sent: each prompt field's name and raw JSON,
    /// length-prefixed, so the same prompt gives the same hash whatever else the body holds
    /// (model, `max_tokens`, stream options) and two prompts cannot collide by concatenation.
    pub fn prompt_sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for name in PROMPT_FIELDS {
            if let Some(raw) = self.member(name) {
                for part in [name, raw] {
                    h.update((part.len() as u64).to_be_bytes());
                    h.update(part.as_bytes());
                }
            }
        }
        hex::encode(h.finalize())
    }

    /// The prompt's text parts, joined (what content logging logs, after redaction).
    pub fn prompt_text(&self) -> String {
        self.prompt().text
    }

    /// The exact tiktoken count of the prompt text (the mock provider's usage).
    pub(crate) fn prompt_tokens(&self) -> u64 {
        tokens::count(&self.model, &self.prompt().text)
    }

    /// The prompt text, image parts and messages/items.
    fn prompt(&self) -> Prompt {
        let mut p = Prompt::default();
        for name in PROMPT_FIELDS {
            if let Some(raw) = self.member(name) {
                p.collect(raw);
            }
        }
        p
    }

    /// How many messages (items with a role), image parts and tool definitions it has.
    pub fn shape(&self) -> Shape {
        let p = self.prompt();
        let tools = ["tools", "functions"]
            .iter()
            .filter_map(|k| self.member(k))
            .map(|raw| match serde_json::from_str::<Vec<IgnoredAny>>(raw) {
                Ok(v) => v.len() as u64,
                Err(_) => 0,
            })
            .sum();
        Shape {
            messages: p.items,
            images: p.images,
            tools,
        }
    }

    /// The body with every prompt text part passed through `f` (the parts the token estimate
    /// reads: strings of prompt fields, `text`/`content`/… of parts and messages, tool call
    /// arguments). `None` when `f` changed nothing. Other members keep the client's bytes.
    pub fn rewrite_prompt(&self, f: &mut dyn FnMut(&str) -> Option<String>) -> Option<Bytes> {
        let mut replaced: Vec<(usize, String)> = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            let key = self.key(m);
            if !PROMPT_FIELDS.iter().any(|p| p.as_bytes() == key) {
                continue;
            }
            let Ok(mut v) = serde_json::from_slice::<Value>(&self.raw[m.value.clone()]) else {
                continue;
            };
            if rewrite_text(&mut v, f, 0) {
                replaced.push((i, v.to_string()));
            }
        }
        if replaced.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(self.raw.len());
        out.push(b'{');
        for (i, m) in self.members.iter().enumerate() {
            self.write_key(&mut out, m);
            match replaced.iter().find(|(j, _)| *j == i) {
                Some((_, v)) => out.extend_from_slice(v.as_bytes()),
                None => out.extend_from_slice(&self.raw[m.value.clone()]),
            }
        }
        out.push(b'}');
        Some(Bytes::from(out))
    }

    /// The text of the last user turn (the mock echoes it).
    pub(crate) fn last_user_text(&self) -> String {
        let text_of = |v: &Value| {
            let mut p = Prompt::default();
            p.collect(&v.to_string());
            p.text
        };
        for name in ["messages", "input"] {
            if let Value::Array(items) = self.field(name)
                && let Some(last) = items.iter().rev().find(|m| {
                    m.get("role")
                        .and_then(Value::as_str)
                        .is_none_or(|r| r == "user")
                })
            {
                return text_of(last.get("content").unwrap_or(last));
            }
        }
        ["prompt", "input"]
            .iter()
            .map(|k| self.field(k))
            .find(|v| !v.is_null())
            .map(|v| text_of(&v))
            .unwrap_or_default()
    }

    /// `,` unless first, then a member's name and `:`.
    fn write_key(&self, out: &mut Vec<u8>, m: &Member) {
        if out.len() > 1 {
            out.push(b',');
        }
        match &m.key {
            // A key the parser borrowed has no escapes: its bytes are already valid JSON.
            Key::At(r) => {
                out.push(b'"');
                out.extend_from_slice(&self.raw[r.clone()]);
                out.push(b'"');
            }
            Key::Owned(k) => write_str(out, k),
        }
        out.push(b':');
    }

    /// A member's name, unescaped.
    fn key<'a>(&'a self, m: &'a Member) -> &'a [u8] {
        match &m.key {
            Key::At(r) => &self.raw[r.clone()],
            Key::Owned(k) => k.as_bytes(),
        }
    }

    /// The raw JSON of a top-level member.
    fn member(&self, name: &str) -> Option<&str> {
        let m = self
            .members
            .iter()
            .find(|m| self.key(m) == name.as_bytes())?;
        // The span is a whole JSON value of a body that parsed: valid UTF-8.
        std::str::from_utf8(&self.raw[m.value.clone()]).ok()
    }

    fn check_duplicates(&self) -> Result<(), RequestError> {
        for name in READ_FIELDS {
            let mut same = self
                .members
                .iter()
                .filter(|m| self.key(m) == name.as_bytes());
            if same.nth(1).is_some() {
                return Err(RequestError::Duplicate(name));
            }
        }
        Ok(())
    }
}

/// Pass the prompt text of `v` through `f`, where [`Collect`] reads it. True if any changed.
fn rewrite_text(v: &mut Value, f: &mut dyn FnMut(&str) -> Option<String>, depth: u8) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    match v {
        Value::String(s) => match f(s) {
            Some(new) => {
                *s = new;
                true
            }
            None => false,
        },
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, x| rewrite_text(x, f, depth + 1) | changed),
        Value::Object(o) => {
            let mut changed = false;
            for (k, x) in o.iter_mut() {
                match k.as_str() {
                    "text" | "content" | "input_text" | "output_text" | "arguments" | "output" => {
                        changed |= rewrite_text(x, f, depth + 1);
                    }
                    // Read whole by the estimate: every string in a tool call.
                    "tool_calls" => changed |= rewrite_all(x, f, depth + 1),
                    _ => {}
                }
            }
            changed
        }
        _ => false,
    }
}

fn rewrite_all(v: &mut Value, f: &mut dyn FnMut(&str) -> Option<String>, depth: u8) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    match v {
        Value::String(_) => rewrite_text(v, f, depth),
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, x| rewrite_all(x, f, depth + 1) | changed),
        Value::Object(o) => o
            .values_mut()
            .fold(false, |changed, x| rewrite_all(x, f, depth + 1) | changed),
        _ => false,
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(out, s);
}

fn write_u32(out: &mut Vec<u8>, n: u32) {
    use std::io::Write;
    let _ = write!(out, "{n}");
}

/// `part`'s offset in `base`, when it lies inside it.
fn span(base: &[u8], part: &[u8]) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(base.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= base.len()).then_some(start..end)
}

/// The top-level members of a JSON object, in order, as spans of `body`.
fn split_members(body: &[u8]) -> Result<Vec<Member>, RequestError> {
    struct Top<'b> {
        base: &'b [u8],
    }
    impl<'de> Visitor<'de> for Top<'_> {
        type Value = Vec<Member>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Member>, A::Error> {
            let mut out = Vec::with_capacity(8);
            while let Some(key) = map.next_key_seed(KeySeed)? {
                let value: &'de RawValue = map.next_value()?;
                let value = span(self.base, value.get().as_bytes())
                    .ok_or_else(|| de::Error::custom("value outside the body"))?;
                let key = match key {
                    Cow::Borrowed(k) => span(self.base, k.as_bytes())
                        .map_or_else(|| Key::Owned(k.to_owned()), Key::At),
                    Cow::Owned(k) => Key::Owned(k),
                };
                out.push(Member { key, value });
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let members = (&mut de)
        .deserialize_map(Top { base: body })
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| match e.classify() {
            serde_json::error::Category::Data => RequestError::NotAnObject,
            _ => RequestError::Json(format!("line {} column {}", e.line(), e.column())),
        })?;
    Ok(members)
}

/// A map key, borrowed from the input when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s))
    }
}

/// The size of a request's prompt, for a binding's caps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// Messages / items (anything with a `role`).
    pub messages: u64,
    /// Image parts.
    pub images: u64,
    /// Tool (function) definitions.
    pub tools: u64,
}

/// What the token estimate reads of a prompt.
#[derive(Default)]
struct Prompt {
    /// Every text part, one per line.
    text: String,
    /// Image parts.
    images: u64,
    /// Messages / items (anything with a `role`).
    items: u64,
}

impl Prompt {
    /// Gather the text of one JSON value (already validated by the top-level parse): strings,
    /// arrays of strings, parts with `text`, messages with `content`, nested items, tool calls.
    fn collect(&mut self, raw: &str) {
        let mut de = serde_json::Deserializer::from_str(raw);
        let _ = Collect { p: self, depth: 0 }.deserialize(&mut de);
    }
}

struct Collect<'p> {
    p: &'p mut Prompt,
    depth: u8,
}

impl Collect<'_> {
    fn deeper(&mut self) -> Collect<'_> {
        Collect {
            p: &mut *self.p,
            depth: self.depth + 1,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Collect<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.depth > MAX_DEPTH {
            return d.deserialize_ignored_any(IgnoredAny).map(|_| ());
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Collect<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("prompt content")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.p.text.push_str(s);
        self.p.text.push('\n');
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self.deeper())?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        let mut image = false;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match &*key {
                "role" => {
                    self.p.items += 1;
                    map.next_value::<IgnoredAny>()?;
                }
                "type" => image |= map.next_value_seed(ImageType)?,
                "image_url" => {
                    image = true;
                    map.next_value::<IgnoredAny>()?;
                }
                "text" | "content" | "input_text" | "output_text" | "arguments" | "output" => {
                    map.next_value_seed(self.deeper())?;
                }
                "tool_calls" => {
                    let calls: &RawValue = map.next_value()?;
                    self.p.text.push_str(calls.get());
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if image {
            self.p.images += 1;
        }
        Ok(())
    }
}

/// Is a part's `type` an image type? (Any non-string `type` is not.)
struct ImageType;

impl<'de> DeserializeSeed<'de> for ImageType {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ImageType {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a part type")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<bool, E> {
        Ok(s.contains("image"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}
