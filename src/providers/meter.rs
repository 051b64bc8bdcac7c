//! Output metering of a stream as it runs, so a stream that goes past what was reserved for
//! it (a provider ignoring `max_tokens`, a runaway tool loop) is cut off cleanly: the client
//! gets the API's own "stopped at the length limit" ending, upstream is hung up on, and only
//! what was produced is charged.
//!
//! Counting is conservative: each text delta is tokenised on its own (never fewer tokens than
//! in context), and Anthropic's cumulative `output_tokens` is taken when it is higher.

use super::Api;
use super::tokens;
use serde_json::{Value, json};

/// The meter of one stream.
pub struct OutputMeter {
    limit: u64,
    counted: u64,
    model: String,
    id: Option<String>,
    upstream_model: Option<String>,
    open_block: Option<u64>,
}

impl OutputMeter {
    /// Cut past `limit` output tokens; `model` picks the tokenizer.
    pub fn new(limit: u64, model: &str) -> Self {
        OutputMeter {
            limit,
            counted: 0,
            model: model.to_owned(),
            id: None,
            upstream_model: None,
            open_block: None,
        }
    }

    /// Output tokens counted so far.
    pub fn counted(&self) -> u64 {
        self.counted
    }

    /// Past the limit?
    pub fn over(&self) -> bool {
        self.counted > self.limit
    }

    fn text(&mut self, t: Option<&str>) {
        if let Some(t) = t.filter(|t| !t.is_empty()) {
            self.counted += tokens::count(&self.model, t);
        }
    }

    /// Account for one parsed event.
    pub fn see(&mut self, api: Api, v: &Value) {
        if self.id.is_none() {
            let (id, model) = match api {
                Api::Messages => (&v["message"]["id"], &v["message"]["model"]),
                Api::Responses => (&v["response"]["id"], &v["response"]["model"]),
                _ => (&v["id"], &v["model"]),
            };
            self.id = id.as_str().map(str::to_owned);
            self.upstream_model = model.as_str().map(str::to_owned);
        }
        match api {
            Api::ChatCompletions => {
                for c in v["choices"].as_array().into_iter().flatten() {
                    let d = &c["delta"];
                    self.text(d["content"].as_str());
                    self.text(d["reasoning_content"].as_str());
                    for call in d["tool_calls"].as_array().into_iter().flatten() {
                        self.text(call["function"]["arguments"].as_str());
                    }
                }
            }
            Api::Completions => {
                for c in v["choices"].as_array().into_iter().flatten() {
                    self.text(c["text"].as_str());
                }
            }
            Api::Responses => {
                if matches!(
                    v["type"].as_str(),
                    Some("response.output_text.delta" | "response.function_call_arguments.delta")
                ) {
                    self.text(v["delta"].as_str());
                }
            }
            Api::Messages => match v["type"].as_str() {
                Some("content_block_start") => self.open_block = v["index"].as_u64(),
                Some("content_block_stop") => self.open_block = None,
                Some("content_block_delta") => {
                    let d = &v["delta"];
                    self.text(d["text"].as_str());
                    self.text(d["partial_json"].as_str());
                    self.text(d["thinking"].as_str());
                }
                Some("message_delta") => {
                    if let Some(n) = v["usage"]["output_tokens"].as_u64() {
                        self.counted = self.counted.max(n);
                    }
                }
                _ => {}
            },
            Api::Embeddings => {}
        }
    }

    /// The events that end the stream at the length limit, in the API's own format.
    pub fn tail(&self, api: Api) -> String {
        let id = self.id.clone().unwrap_or_default();
        let model = self.upstream_model.clone().unwrap_or_default();
        let created = crate::clock::now_ms() / 1000;
        let data = |v: Value| format!("data: {v}\n\n");
        let event = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
        match api {
            Api::ChatCompletions => {
                data(
                    json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}),
                ) + "data: [DONE]\n\n"
            }
            Api::Completions => {
                data(
                    json!({"id": id, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": "", "logprobs": null, "finish_reason": "length"}]}),
                ) + "data: [DONE]\n\n"
            }
            Api::Responses => event(
                "response.incomplete",
                json!({"type": "response.incomplete", "response": {"id": id, "object": "response",
                    "model": model, "status": "incomplete",
                    "incomplete_details": {"reason": "max_output_tokens"}}}),
            ),
            Api::Messages => {
                let mut out = String::new();
                if let Some(i) = self.open_block {
                    out += &event(
                        "content_block_stop",
                        json!({"type": "content_block_stop", "index": i}),
                    );
                }
                out += &event(
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
                        "usage": {"output_tokens": self.counted}}),
                );
                out + &event("message_stop", json!({"type": "message_stop"}))
            }
            Api::Embeddings => String::new(),
        }
    }
}
