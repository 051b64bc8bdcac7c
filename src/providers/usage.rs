//! Usage: read from plain response bodies, and from SSE streams as they pass through.

use super::Api;
use super::meter::OutputMeter;
use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde_json::Value;

/// Largest single pending event the observer buffers; past it the stream passes through
/// unparsed (and usage is unknown, which the proxy charges as the worst case).
const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Token usage of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// All input tokens (cached ones included).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens read from the provider's prompt cache.
    pub cached_input_tokens: u64,
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn openai_usage(usage: &Value) -> Option<Usage> {
    if !usage.is_object() {
        return None;
    }
    Some(Usage {
        input_tokens: u(&usage["prompt_tokens"]),
        output_tokens: u(&usage["completion_tokens"]),
        cached_input_tokens: u(&usage["prompt_tokens_details"]["cached_tokens"]),
    })
}

fn responses_usage(usage: &Value) -> Option<Usage> {
    if !usage.is_object() {
        return None;
    }
    Some(Usage {
        input_tokens: u(&usage["input_tokens"]),
        output_tokens: u(&usage["output_tokens"]),
        cached_input_tokens: u(&usage["input_tokens_details"]["cached_tokens"]),
    })
}

/// Anthropic counts cache reads and writes apart from `input_tokens`. The sum saturates: an
/// upstream reporting absurd counts is charged the most, never a wrapped-around few.
fn anthropic_input(usage: &Value) -> (u64, u64) {
    let read = u(&usage["cache_read_input_tokens"]);
    (
        u(&usage["input_tokens"])
            .saturating_add(u(&usage["cache_creation_input_tokens"]))
            .saturating_add(read),
        read,
    )
}

/// The `usage` member of a response; the rest of the body is skipped, never built.
#[derive(serde::Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Value,
}

/// Usage from a complete JSON response of `api`.
pub fn usage_from_body(api: Api, body: &[u8]) -> Option<Usage> {
    let WithUsage { usage } = serde_json::from_slice(body).ok()?;
    let usage = &usage;
    match api {
        Api::ChatCompletions | Api::Completions | Api::Embeddings => openai_usage(usage),
        Api::Responses => responses_usage(usage),
        Api::Messages => {
            if !usage.is_object() {
                return None;
            }
            let (input, cached) = anthropic_input(usage);
            Some(Usage {
                input_tokens: input,
                output_tokens: u(&usage["output_tokens"]),
                cached_input_tokens: cached,
            })
        }
    }
}

/// Watches an SSE stream on its way to the client.
pub struct StreamObserver {
    api: Api,
    strip: bool,
    buf: BytesMut,
    /// How many bytes at the start of `buf` no event end begins in: the search resumes there,
    /// so an event that arrives in many small chunks is scanned once, not once per chunk.
    searched: usize,
    usage: Option<Usage>,
    passthrough: bool,
    meter: Option<OutputMeter>,
    cut: bool,
}

impl StreamObserver {
    /// `strip_usage_chunk`: drop OpenAI's usage-only chunk (`choices: []`) from the output.
    pub fn new(api: Api, strip_usage_chunk: bool) -> Self {
        StreamObserver {
            api,
            strip: strip_usage_chunk,
            buf: BytesMut::new(),
            searched: 0,
            usage: None,
            passthrough: false,
            meter: None,
            cut: false,
        }
    }

    /// Cut the stream off once more than `limit` output tokens went through (`model` picks
    /// the tokenizer). Events are then relayed whole, so the cut falls between two events.
    pub fn with_output_limit(mut self, limit: u64, model: &str) -> Self {
        self.meter = Some(OutputMeter::new(limit, model));
        self
    }

    /// Cut the stream at the first of `stops` in its output (needs an output limit first).
    pub fn with_stops(mut self, stops: &[String]) -> Self {
        self.meter = self.meter.map(|m| m.with_stops(stops));
        self
    }

    /// Was the stream cut off at its output limit? Then [`StreamObserver::output_counted`]
    /// is what it produced.
    pub fn is_cut(&self) -> bool {
        self.cut
    }

    /// Is the output metered (a limit was set)?
    pub fn is_metered(&self) -> bool {
        self.meter.is_some()
    }

    /// Output tokens counted by the meter (0 without one).
    pub fn output_counted(&self) -> u64 {
        self.meter.as_ref().map_or(0, OutputMeter::counted)
    }

    /// Take a chunk from upstream; returns the bytes to send to the client now. Without
    /// stripping, the chunk goes out as is (a copy is parsed); with stripping, complete events
    /// go out and a partial one waits for its end.
    pub fn feed(&mut self, chunk: &[u8]) -> Bytes {
        if self.cut {
            return Bytes::new();
        }
        if self.passthrough {
            return Bytes::copy_from_slice(chunk);
        }
        let whole_events = self.strip || self.meter.is_some();
        self.buf.extend_from_slice(chunk);
        let mut out = BytesMut::new();
        while let Some(end) = event_end(&self.buf, self.searched) {
            let event = self.buf.split_to(end);
            self.searched = 0;
            let keep = self.observe(&event);
            if self.cut {
                // This event went past the limit: it is not sent; the API's own ending is.
                self.buf.clear();
                if let Some(m) = &self.meter {
                    out.extend_from_slice(m.tail(self.api).as_bytes());
                }
                return out.freeze();
            }
            if keep && whole_events {
                out.extend_from_slice(&event);
            }
        }
        // No event end starts before the last 3 bytes (the rest of a "\r\n\r\n" may follow).
        self.searched = self.buf.len().saturating_sub(3);
        if self.buf.len() > MAX_EVENT_BYTES {
            // Give up parsing rather than buffer without bound.
            self.passthrough = true;
            let pending = self.buf.split();
            if whole_events {
                out.extend_from_slice(&pending);
            }
        }
        if whole_events {
            out.freeze()
        } else {
            Bytes::copy_from_slice(chunk)
        }
    }

    /// The end of the stream: whatever is left to send (a final event without its blank line).
    pub fn finish(&mut self) -> Bytes {
        let rest = self.buf.split();
        if rest.is_empty() || self.passthrough {
            return Bytes::new();
        }
        let keep = self.observe(&rest);
        if self.cut {
            return self
                .meter
                .as_ref()
                .map_or_else(Bytes::new, |m| Bytes::from(m.tail(self.api)));
        }
        if (self.strip || self.meter.is_some()) && keep {
            rest.freeze()
        } else {
            Bytes::new()
        }
    }

    /// Usage seen so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Read one event; `false` drops it from the output.
    fn observe(&mut self, event: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(event) else {
            return true;
        };
        let data: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect::<Vec<_>>()
            .join("\n");
        if data.is_empty() || data.trim() == "[DONE]" {
            return true;
        }
        let Ok(v) = serde_json::from_str::<Value>(&data) else {
            return true;
        };
        if let Some(m) = &mut self.meter {
            m.see(self.api, &v);
            if m.over() {
                self.cut = true;
                return false;
            }
        }
        match self.api {
            Api::ChatCompletions | Api::Completions => {
                if let Some(us) = openai_usage(&v["usage"]) {
                    self.usage = Some(us);
                    let usage_only = v["choices"].as_array().is_some_and(Vec::is_empty);
                    return !(self.strip && usage_only);
                }
            }
            Api::Responses => {
                let t = v["type"].as_str().unwrap_or("");
                if matches!(
                    t,
                    "response.completed" | "response.incomplete" | "response.failed"
                ) && let Some(us) = responses_usage(&v["response"]["usage"])
                {
                    self.usage = Some(us);
                }
            }
            Api::Messages => match v["type"].as_str() {
                Some("message_start") => {
                    let usage = &v["message"]["usage"];
                    let (input, cached) = anthropic_input(usage);
                    self.usage = Some(Usage {
                        input_tokens: input,
                        output_tokens: u(&usage["output_tokens"]),
                        cached_input_tokens: cached,
                    });
                }
                Some("message_delta") => {
                    let usage = &v["usage"];
                    let mut us = self.usage.unwrap_or_default();
                    us.output_tokens = u(&usage["output_tokens"]);
                    if usage
                        .get("input_tokens")
                        .is_some_and(|x| x.as_u64().is_some_and(|n| n > 0))
                    {
                        let (input, cached) = anthropic_input(usage);
                        us.input_tokens = input;
                        us.cached_input_tokens = cached;
                    }
                    self.usage = Some(us);
                }
                _ => {}
            },
            Api::Embeddings => {}
        }
        true
    }
}

/// Index just past the first complete event (its blank line included), when no event end
/// starts before `from`.
fn event_end(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    let lf = memmem::find(rest, b"\n\n").map(|i| from + i + 2);
    let crlf = memmem::find(rest, b"\r\n\r\n").map(|i| from + i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
