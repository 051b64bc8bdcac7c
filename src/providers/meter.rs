//! Output metering of a stream as it runs, so a stream that goes past what was reserved for
//! it (a provider ignoring `max_tokens`, a runaway tool loop) is cut off cleanly: the client
//! gets the API's own "stopped at the length limit" ending, upstream is hung up on, and only
//! what was produced is charged.
//!
//! Counting is conservative: each text delta is tokenised on its own (never fewer tokens than
//! in context), and Anthropic's cumulative `output_tokens` is taken when it is higher.
//!
//! A binding's stop sequences are enforced the same way: they are sent upstream, and should a
//! provider not honour them (an OpenAI-compatible server that ignores `stop`, the Responses
//! API that has none), the stream is cut at the event whose text completes one, with the
//! API's own "stopped" ending.

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
    /// Stop sequences to cut at.
    stops: Vec<String>,
    /// The end of the output so far, as long as the longest stop sequence less one: a
    /// sequence split across deltas is still seen.
    recent: String,
    /// The stop sequence that cut the stream.
    stopped: Option<String>,
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
            stops: Vec::new(),
            recent: String::new(),
            stopped: None,
        }
    }

    /// Also cut at the first of `stops` in the output.
    pub fn with_stops(mut self, stops: &[String]) -> Self {
        self.stops = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        self
    }

    /// Output tokens counted so far.
    pub fn counted(&self) -> u64 {
        self.counted
    }

    /// Past the limit, or at a stop sequence?
    pub fn over(&self) -> bool {
        self.counted > self.limit || self.stopped.is_some()
    }

    fn text(&mut self, t: Option<&str>) {
        let Some(t) = t.filter(|t| !t.is_empty()) else {
            return;
        };
        self.counted += tokens::count(&self.model, t);
        if self.stops.is_empty() || self.stopped.is_some() {
            return;
        }
        self.recent.push_str(t);
        self.stopped = self
            .stops
            .iter()
            .find(|s| self.recent.contains(s.as_str()))
            .cloned();
        let keep = self.stops.iter().map(String::len).max().unwrap_or(1) - 1;
        if self.recent.len() > keep {
            let mut from = self.recent.len() - keep;
            while !self.recent.is_char_boundary(from) {
                from -= 1;
            }
            self.recent.drain(..from);
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

    /// The events that end the stream at the length limit (or a stop sequence), in the API's
    /// own format.
    pub fn tail(&self, api: Api) -> String {
        let stopped = self.stopped.is_some();
        let finish = if stopped { "stop" } else { "length" };
        let id = self.id.clone().unwrap_or_default();
        let model = self.upstream_model.clone().unwrap_or_default();
        let created = crate::clock::now_ms() / 1000;
        let data = |v: Value| format!("data: {v}\n\n");
        let event = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
        match api {
            Api::ChatCompletions => {
                data(
                    json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}),
                ) + "data: [DONE]\n\n"
            }
            Api::Completions => {
                data(
                    json!({"id": id, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": "", "logprobs": null, "finish_reason": finish}]}),
                ) + "data: [DONE]\n\n"
            }
            // The Responses API has no stop sequences of its own: a stop ends it as completed.
            Api::Responses if stopped => event(
                "response.completed",
                json!({"type": "response.completed", "response": {"id": id, "object": "response",
                    "model": model, "status": "completed"}}),
            ),
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
                    json!({"type": "message_delta", "delta": {
                        "stop_reason": if stopped { "stop_sequence" } else { "max_tokens" },
                        "stop_sequence": self.stopped},
                        "usage": {"output_tokens": self.counted}}),
                );
                out + &event("message_stop", json!({"type": "message_stop"}))
            }
            Api::Embeddings => String::new(),
        }
    }
}
