//! The benchmark's upstream: a fast local stand-in for OpenAI and Anthropic, answering with
//! fixed bodies (usage included), plain or SSE-streamed, as fast as it can. It counts requests
//! that did not carry a provider key, so the harness can show the key was injected.
//!
//! `cargo run --release --example bench_upstream -- 127.0.0.1:9100`
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use std::sync::atomic::{AtomicU64, Ordering};

static KEYLESS: AtomicU64 = AtomicU64::new(0);

const CHAT: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}"#;
const MESSAGE: &str = r#"{"id":"msg-bench","type":"message","role":"assistant","model":"bench","content":[{"type":"text","text":"Hello from the bench upstream."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":8}}"#;
const CHAT_SSE: &str = concat!(
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" from the bench upstream.\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":8,\"total_tokens\":20}}\n\n",
    "data: [DONE]\n\n"
);
const MESSAGE_SSE: &str = concat!(
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"bench\",\"content\":[],\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello from the bench upstream.\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":8}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
);

fn wants_stream(body: &[u8]) -> bool {
    // A substring test is enough for the harness's fixed request bodies.
    let has = |pat: &[u8]| body.windows(pat.len()).any(|w| w == pat);
    has(b"\"stream\":true") || has(b"\"stream\": true")
}

fn reply(body: &'static str, sse: bool) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            if sse {
                "text/event-stream"
            } else {
                "application/json"
            },
        )
        .body(Body::from(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn chat(headers: HeaderMap, body: Bytes) -> Response {
    if !headers.contains_key(header::AUTHORIZATION) {
        KEYLESS.fetch_add(1, Ordering::Relaxed);
    }
    if wants_stream(&body) {
        reply(CHAT_SSE, true)
    } else {
        reply(CHAT, false)
    }
}

async fn messages(headers: HeaderMap, body: Bytes) -> Response {
    if !headers.contains_key("x-api-key") {
        KEYLESS.fetch_add(1, Ordering::Relaxed);
    }
    if wants_stream(&body) {
        reply(MESSAGE_SSE, true)
    } else {
        reply(MESSAGE, false)
    }
}

/// The models list: the live test a rotation makes with a pending key.
async fn models() -> Response {
    reply(
        r#"{"object":"list","data":[{"id":"bench","object":"model","created":1,"owned_by":"bench"}]}"#,
        false,
    )
}

async fn stats() -> String {
    format!("{{\"keyless\":{}}}", KEYLESS.load(Ordering::Relaxed))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9100".into());
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/messages", post(messages))
        .route("/v1/models", get(models))
        .route("/stats", get(stats));
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    println!(
        "bench upstream on http://{}",
        listener.local_addr().expect("addr")
    );
    axum::serve(listener, app).await.expect("serve");
}
