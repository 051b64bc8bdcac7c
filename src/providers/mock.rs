//! The mock provider of `tollgate dev`: deterministic answers in the wire format of the API
//! called, streams included, with real token counts (tiktoken) in their usage. It answers the
//! body a real provider would receive (the upstream body), so `stream_options.include_usage`
//! forced on by Tollgate is honoured exactly as OpenAI would.

use super::{Api, InboundRequest, tokens};
use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// What the mock answers.
pub enum MockReply {
    /// A complete JSON body.
    Json(Bytes),
    /// Server-sent events, one item per event.
    Sse(Vec<Bytes>),
}

/// Answer `req` (already rewritten for upstream) as model `upstream_model`.
pub fn mock_reply(req: &InboundRequest, upstream_model: &str) -> MockReply {
    let seed = hex::encode(&Sha256::digest(req.raw())[..6]);
    let said: Vec<String> = req
        .last_user_text()
        .split_whitespace()
        .take(12)
        .map(str::to_owned)
        .collect();
    let mut text = format!(
        "Mock reply from Tollgate ({upstream_model}): you said: {}",
        said.join(" ")
    );
    if let Some(max) = req.max_tokens() {
        let words: Vec<&str> = text.split(' ').collect();
        if words.len() > max as usize {
            text = words[..max as usize].join(" ");
        }
    }
    let m = Mock {
        model: upstream_model,
        id: seed,
        input: req.prompt_tokens(),
        output: tokens::count(upstream_model, &text),
        text,
        created: crate::clock::now_secs(),
        include_usage: field(req, "stream_options")["include_usage"].as_bool() == Some(true),
    };
    match (req.api(), req.stream()) {
        (Api::ChatCompletions, false) => json_reply(m.chat()),
        (Api::ChatCompletions, true) => MockReply::Sse(m.chat_stream()),
        (Api::Completions, false) => json_reply(m.completion()),
        (Api::Completions, true) => MockReply::Sse(m.completion_stream()),
        (Api::Embeddings, _) => json_reply(m.embeddings(req)),
        (Api::Responses, false) => json_reply(m.response()),
        (Api::Responses, true) => MockReply::Sse(m.response_stream()),
        (Api::Messages, false) => json_reply(m.message()),
        (Api::Messages, true) => MockReply::Sse(m.message_stream()),
    }
}

/// A top-level body field (`Null` when absent).
fn field(req: &InboundRequest, name: &str) -> Value {
    req.field(name)
}

fn json_reply(v: Value) -> MockReply {
    MockReply::Json(Bytes::from(v.to_string()))
}

fn data(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn event(name: &str, v: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {v}\n\n"))
}

struct Mock<'a> {
    model: &'a str,
    id: String,
    text: String,
    input: u64,
    output: u64,
    created: i64,
    include_usage: bool,
}

impl Mock<'_> {
    /// The reply cut in a few pieces for streaming.
    fn pieces(&self) -> Vec<String> {
        let words: Vec<&str> = self.text.split(' ').collect();
        words
            .chunks(3)
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    c.join(" ")
                } else {
                    format!(" {}", c.join(" "))
                }
            })
            .collect()
    }

    fn openai_usage(&self) -> Value {
        json!({"prompt_tokens": self.input, "completion_tokens": self.output, "total_tokens": self.input + self.output,
               "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}})
    }

    fn chat(&self) -> Value {
        json!({"id": format!("chatcmpl-mock-{}", self.id), "object": "chat.completion", "created": self.created,
               "model": self.model, "system_fingerprint": null,
               "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text, "refusal": null},
                            "logprobs": null, "finish_reason": "stop"}],
               "usage": self.openai_usage()})
    }

    fn chat_stream(&self) -> Vec<Bytes> {
        let chunk = |delta: Value, finish: Value| {
            data(
                &json!({"id": format!("chatcmpl-mock-{}", self.id), "object": "chat.completion.chunk", "created": self.created,
                         "model": self.model, "system_fingerprint": null,
                         "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]}),
            )
        };
        let mut out = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        out.extend(
            self.pieces()
                .into_iter()
                .map(|p| chunk(json!({"content": p}), Value::Null)),
        );
        out.push(chunk(json!({}), json!("stop")));
        if self.include_usage {
            out.push(data(&json!({"id": format!("chatcmpl-mock-{}", self.id), "object": "chat.completion.chunk",
                                  "created": self.created, "model": self.model, "choices": [], "usage": self.openai_usage()})));
        }
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        out
    }

    fn completion(&self) -> Value {
        json!({"id": format!("cmpl-mock-{}", self.id), "object": "text_completion", "created": self.created, "model": self.model,
               "choices": [{"text": self.text, "index": 0, "logprobs": null, "finish_reason": "stop"}],
               "usage": self.openai_usage()})
    }

    fn completion_stream(&self) -> Vec<Bytes> {
        let chunk = |text: &str, finish: Value| {
            data(
                &json!({"id": format!("cmpl-mock-{}", self.id), "object": "text_completion", "created": self.created,
                         "model": self.model, "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]}),
            )
        };
        let mut out: Vec<Bytes> = self
            .pieces()
            .iter()
            .map(|p| chunk(p, Value::Null))
            .collect();
        out.push(chunk("", json!("stop")));
        if self.include_usage {
            out.push(data(&json!({"id": format!("cmpl-mock-{}", self.id), "object": "text_completion", "created": self.created,
                                  "model": self.model, "choices": [], "usage": self.openai_usage()})));
        }
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        out
    }

    fn embeddings(&self, req: &InboundRequest) -> Value {
        let inputs: Vec<String> = match field(req, "input") {
            Value::Array(a) => a
                .iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                .collect(),
            other => vec![other.as_str().unwrap_or_default().to_owned()],
        };
        let dims = field(req, "dimensions")
            .as_u64()
            .filter(|d| (1..=4096).contains(d))
            .unwrap_or(1536) as usize;
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, s)| json!({"object": "embedding", "index": i, "embedding": unit_vector(s, dims)}))
            .collect();
        json!({"object": "list", "data": data, "model": self.model,
               "usage": {"prompt_tokens": self.input, "total_tokens": self.input}})
    }

    fn response_body(&self, status: &str, with_output: bool) -> Value {
        let output = if with_output {
            json!([{"type": "message", "id": format!("msg_mock_{}", self.id), "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": self.text, "annotations": []}]}])
        } else {
            json!([])
        };
        let usage = if with_output {
            json!({"input_tokens": self.input, "output_tokens": self.output, "total_tokens": self.input + self.output,
                   "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}})
        } else {
            Value::Null
        };
        json!({"id": format!("resp_mock_{}", self.id), "object": "response", "created_at": self.created, "status": status,
               "model": self.model, "output": output, "usage": usage, "error": null, "incomplete_details": null,
               "instructions": null, "metadata": {}, "parallel_tool_calls": true, "temperature": 1.0, "tool_choice": "auto",
               "tools": [], "top_p": 1.0})
    }

    fn response(&self) -> Value {
        self.response_body("completed", true)
    }

    fn response_stream(&self) -> Vec<Bytes> {
        let item_id = format!("msg_mock_{}", self.id);
        let mut seq = 0;
        let mut ev = |name: &str, mut v: Value| {
            v["type"] = json!(name);
            v["sequence_number"] = json!(seq);
            seq += 1;
            event(name, &v)
        };
        let mut out = vec![
            ev(
                "response.created",
                json!({"response": self.response_body("in_progress", false)}),
            ),
            ev(
                "response.output_item.added",
                json!({"output_index": 0, "item": {"type": "message", "id": item_id,
                "status": "in_progress", "role": "assistant", "content": []}}),
            ),
            ev(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []}}),
            ),
        ];
        for p in self.pieces() {
            out.push(ev(
                "response.output_text.delta",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": p}),
            ));
        }
        out.push(ev(
            "response.output_text.done",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": self.text}),
        ));
        out.push(ev(
            "response.content_part.done",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0,
            "part": {"type": "output_text", "text": self.text, "annotations": []}}),
        ));
        out.push(ev("response.output_item.done", json!({"output_index": 0, "item": {"type": "message", "id": item_id,
            "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": self.text, "annotations": []}]}})));
        out.push(ev(
            "response.completed",
            json!({"response": self.response()}),
        ));
        out
    }

    fn message(&self) -> Value {
        json!({"id": format!("msg_mock_{}", self.id), "type": "message", "role": "assistant", "model": self.model,
               "content": [{"type": "text", "text": self.text}], "stop_reason": "end_turn", "stop_sequence": null,
               "usage": {"input_tokens": self.input, "output_tokens": self.output,
                         "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}})
    }

    fn message_stream(&self) -> Vec<Bytes> {
        let mut out = vec![
            event(
                "message_start",
                &json!({"type": "message_start", "message": {"id": format!("msg_mock_{}", self.id),
                "type": "message", "role": "assistant", "model": self.model, "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": self.input, "output_tokens": 1,
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}),
            ),
            event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            event("ping", &json!({"type": "ping"})),
        ];
        for p in self.pieces() {
            out.push(event("content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})));
        }
        out.push(event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ));
        out.push(event("message_delta", &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": self.output}})));
        out.push(event("message_stop", &json!({"type": "message_stop"})));
        out
    }
}

/// A deterministic unit vector from a hash of the text.
fn unit_vector(text: &str, dims: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(dims);
    let mut block = Sha256::digest(text.as_bytes());
    while v.len() < dims {
        for pair in block.chunks(2) {
            if v.len() == dims {
                break;
            }
            let x = u16::from_le_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            v.push(f32::from(x) / 32768.0 - 1.0);
        }
        block = Sha256::digest(block);
    }
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter().map(|x| x / norm).collect()
}
