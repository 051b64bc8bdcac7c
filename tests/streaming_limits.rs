//! Streams are charged as they run: one that goes past what was reserved for it (the
//! provider ignored `max_tokens`) is cut off cleanly with the API's own length ending, and
//! only what it produced is charged. Well-behaved streams are never cut.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use support::app::{TestApp, request_id, spawn_app};
use support::db::TestDbKind;

fn events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn a_runaway_chat_stream_is_cut_at_its_reservation_and_charged_for_what_it_produced() {
    let app = spawn_app(TestDbKind::Sqlite).await;
    let token = app.token_for("team-a").await;
    app.upstream.runaway_next(400);
    let mut body = TestApp::chat("gpt-test", "tell me everything");
    body["stream"] = json!(true);
    body["max_tokens"] = json!(20);
    let r = app.post("/v1/chat/completions", &token, &body).await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let text = r.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let evs = events(&text);
    let last = evs.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length", "{text}");
    assert_eq!(last["id"], "chatcmpl-up");
    let words: usize = evs
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .count();
    // 20 max_tokens + a margin of 16 tokens (each "wordN " piece is a few tokens): far
    // fewer than the 400 words sent.
    assert!((5..=36).contains(&words), "{words} pieces relayed");

    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let row = app.spend_row(&id).await;
    assert_eq!(row.status, 200);
    assert!(
        (20..=40).contains(&row.output_tokens),
        "charged {} output tokens",
        row.output_tokens
    );
    assert!(row.cost_micro_usd > 0);
    app.stop().await;
}

#[tokio::test]
async fn a_runaway_anthropic_stream_ends_with_its_own_max_tokens_events() {
    let app = spawn_app(TestDbKind::Sqlite).await;
    let token = app.token_for("team-a").await;
    app.upstream.runaway_next(400);
    let r = app
        .anthropic(
            &token,
            &json!({"model": "claude-test", "max_tokens": 20, "stream": true,
                "messages": [{"role": "user", "content": "tell me everything"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let evs = events(&text);
    let kinds: Vec<&str> = evs.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        &kinds[kinds.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"],
        "{text}"
    );
    let delta = &evs[evs.len() - 2];
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() <= 40);
    app.stop().await;
}

#[tokio::test]
async fn a_stream_that_respects_max_tokens_is_never_cut() {
    let app = spawn_app(TestDbKind::Sqlite).await;
    let token = app.token_for("team-a").await;
    let mut body = TestApp::chat("gpt-test", "hi");
    body["stream"] = json!(true);
    body["max_tokens"] = json!(7);
    let text = app
        .post("/v1/chat/completions", &token, &body)
        .await
        .text()
        .await
        .unwrap();
    let evs = events(&text);
    assert_eq!(
        evs.last().unwrap()["choices"][0]["finish_reason"],
        "stop",
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_is_charged_for_what_was_produced_not_the_worst_case() {
    use futures_util::StreamExt;
    let app = spawn_app(TestDbKind::Sqlite).await;
    let token = app.token_for("team-a").await;
    app.upstream.runaway_next(400); // 2 ms per event: the stream lasts about a second
    let mut body = TestApp::chat("gpt-test", "tell me everything");
    body["stream"] = json!(true);
    body["max_tokens"] = json!(256);
    let r = app.post("/v1/chat/completions", &token, &body).await;
    let id = request_id(&r);
    let mut chunks = r.bytes_stream();
    for _ in 0..3 {
        chunks.next().await.unwrap().unwrap();
    }
    drop(chunks); // the client goes away

    let mut row = None;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if let Ok(Some(r)) = app.store().spend_record(&id).await {
            row = Some(r);
            break;
        }
    }
    let row = row.expect("the interrupted request is recorded");
    assert_eq!(row.status, 499);
    // Counted output + a 16-token margin, far below the 256 + 25 reserved.
    assert!(
        row.output_tokens < 80,
        "charged {} output tokens",
        row.output_tokens
    );
    app.stop().await;
}
