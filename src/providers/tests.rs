use super::mock::{MockReply, mock_reply};
use super::*;
use proptest::prelude::*;
use serde_json::{Value, json};

fn req(api: Api, v: Value) -> InboundRequest {
    parse(api, v.to_string().as_bytes()).unwrap()
}

fn parse(api: Api, body: &[u8]) -> Result<InboundRequest, RequestError> {
    parse_request(api, bytes::Bytes::copy_from_slice(body))
}

#[test]
fn bad_bodies_are_refused_with_the_field_named() {
    let cases: &[(&[u8], &str)] = &[
        (b"not json", "not valid JSON"),
        (b"[1]", "JSON object"),
        (br#"{"messages": []}"#, "`model` is required"),
        (
            br#"{"model": 5, "messages": []}"#,
            "`model` must be a string",
        ),
        (
            br#"{"model": "m", "messages": [], "stream": "yes"}"#,
            "`stream`",
        ),
        (
            br#"{"model": "m", "messages": [], "max_tokens": -1}"#,
            "`max_tokens`",
        ),
        (
            br#"{"model": "m", "messages": [], "max_tokens": 1e9}"#,
            "`max_tokens`",
        ),
        (
            br#"{"model": "m", "messages": [], "max_tokens": "10"}"#,
            "`max_tokens`",
        ),
        (br#"{"model": "m", "messages": "hi"}"#, "`messages`"),
        (br#"{"model": "m"}"#, "`messages` is required"),
        (
            br#"{"model": "m", "messages": [], "stream_options": 1}"#,
            "`stream_options`",
        ),
    ];
    for (body, want) in cases {
        let e = parse(Api::ChatCompletions, body).unwrap_err().to_string();
        assert!(e.contains(want), "{}: {e}", String::from_utf8_lossy(body));
    }
    let secret = br#"{"model": "m", "messages": [], "x": "sk-do-not-echo""#;
    assert!(
        !parse(Api::ChatCompletions, secret)
            .unwrap_err()
            .to_string()
            .contains("sk-do-not-echo")
    );
    assert!(parse(Api::Embeddings, br#"{"model": "e"}"#).is_err());
    assert!(
        parse(
            Api::Messages,
            br#"{"model": "c", "messages": [], "system": 5}"#
        )
        .is_err()
    );
}

#[test]
fn max_tokens_goes_in_the_field_each_api_uses() {
    let mut r = req(Api::ChatCompletions, json!({"model": "m", "messages": []}));
    assert_eq!(r.max_tokens(), None);
    r.set_max_tokens(64);
    assert_eq!(r.max_tokens(), Some(64));
    let mut r = req(
        Api::ChatCompletions,
        json!({"model": "m", "messages": [], "max_completion_tokens": 9000}),
    );
    r.set_max_tokens(100);
    let body: Value = serde_json::from_slice(&r.upstream_body("m")).unwrap();
    assert_eq!(body["max_completion_tokens"], 100);
    assert!(body.get("max_tokens").is_none());
    let mut r = req(Api::Responses, json!({"model": "m", "input": "x"}));
    r.set_max_tokens(7);
    let body: Value = serde_json::from_slice(&r.upstream_body("m")).unwrap();
    assert_eq!(body["max_output_tokens"], 7);
}

#[test]
fn upstream_body_rewrites_the_model_and_forces_stream_usage_only() {
    let r = req(
        Api::ChatCompletions,
        json!({"model": "alias", "messages": [{"role": "user", "content": "hi"}], "stream": true, "temperature": 0.2, "x_extra": [1]}),
    );
    assert!(r.strip_usage_chunk());
    let body: Value = serde_json::from_slice(&r.upstream_body("real")).unwrap();
    assert_eq!(body["model"], "real");
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["temperature"], 0.2);
    assert_eq!(body["x_extra"], json!([1]));
    let r = req(
        Api::ChatCompletions,
        json!({"model": "a", "messages": [], "stream": true, "stream_options": {"include_usage": true}}),
    );
    assert!(!r.strip_usage_chunk());
    let r = req(
        Api::Messages,
        json!({"model": "a", "messages": [], "stream": true}),
    );
    let body: Value = serde_json::from_slice(&r.upstream_body("b")).unwrap();
    assert!(
        body.get("stream_options").is_none(),
        "Anthropic has no stream_options"
    );
}

#[test]
fn upstream_body_keeps_every_other_member_byte_for_byte() {
    // Odd spacing, escapes, big numbers and unicode survive exactly as the client sent them.
    let body = br#"{ "model" : "alias", "messages":[{"role":"user","content":"h\u00e9 \"q\""}],
        "temperature": 0.70, "seed": 12345678901234567890, "x\u0041": {"nested": [1, 2.50]}, "max_tokens": 9 }"#;
    let mut r = parse(Api::ChatCompletions, body).unwrap();
    r.set_max_tokens(5);
    let up = r.upstream_body("real-model");
    let text = std::str::from_utf8(&up).unwrap();
    assert!(
        text.contains(r#""messages":[{"role":"user","content":"h\u00e9 \"q\""}]"#),
        "{text}"
    );
    assert!(text.contains(r#""temperature":0.70"#), "{text}");
    assert!(text.contains(r#""seed":12345678901234567890"#), "{text}");
    assert!(
        text.contains(r#""xA":{"nested": [1, 2.50]}"#),
        "escaped key re-escaped: {text}"
    );
    let v: Value = serde_json::from_slice(&up).unwrap();
    assert_eq!(v["model"], "real-model");
    assert_eq!(v["max_tokens"], 5);
    assert_eq!(v.as_object().unwrap().len(), 6);
    // Unchanged when Tollgate sets nothing: only the model differs.
    let r = parse(
        Api::ChatCompletions,
        br#"{"messages":[],"model":"a","max_tokens":null}"#,
    )
    .unwrap();
    assert_eq!(
        &r.upstream_body("b")[..],
        br#"{"messages":[],"model":"b","max_tokens":null}"#
    );
}

#[test]
fn fields_tollgate_reads_may_appear_only_once() {
    for (body, name) in [
        (
            &br#"{"model":"cheap","messages":[],"model":"dear"}"#[..],
            "model",
        ),
        (
            br#"{"model":"m","messages":[],"stream":false,"stream":true}"#,
            "stream",
        ),
        (
            br#"{"model":"m","messages":[],"max_tokens":1,"max_tokens":100000}"#,
            "max_tokens",
        ),
        (
            br#"{"model":"m","messages":[],"messages":[{"role":"user","content":"x"}]}"#,
            "messages",
        ),
    ] {
        assert_eq!(
            parse(Api::ChatCompletions, body).unwrap_err(),
            RequestError::Duplicate(name)
        );
    }
    // Members Tollgate does not read pass through, duplicates and all.
    let r = parse(
        Api::ChatCompletions,
        br#"{"model":"m","messages":[],"user":"a","user":"b"}"#,
    )
    .unwrap();
    assert_eq!(
        &r.upstream_body("m")[..],
        br#"{"model":"m","messages":[],"user":"a","user":"b"}"#
    );
}

#[test]
fn caps_and_stream_options_are_rewritten_in_place() {
    // Both cap fields carry Tollgate's cap; a null one stays null.
    let mut r = parse(
        Api::ChatCompletions,
        br#"{"model":"m","messages":[],"max_tokens":900,"max_completion_tokens":null}"#,
    )
    .unwrap();
    assert_eq!(r.max_tokens(), Some(900));
    r.set_max_tokens(64);
    assert_eq!(
        &r.upstream_body("m")[..],
        br#"{"model":"m","messages":[],"max_tokens":64,"max_completion_tokens":null}"#
    );
    // A null cap where the cap goes is filled in, never written a second time.
    for body in [
        &br#"{"model":"m","messages":[],"max_tokens":null}"#[..],
        br#"{"model":"m","max_completion_tokens":null,"messages":[],"max_tokens":null}"#,
    ] {
        let mut r = parse(Api::ChatCompletions, body).unwrap();
        assert_eq!(r.max_tokens(), None);
        r.set_max_tokens(64);
        let out = r.upstream_body("m");
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(text.matches("\"max_tokens\"").count(), 1, "{text}");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["max_tokens"], 64);
    }
    let r = parse(
        Api::ChatCompletions,
        br#"{"model":"m","messages":[],"max_tokens":50,"max_completion_tokens":20}"#,
    )
    .unwrap();
    assert_eq!(r.max_tokens(), Some(20), "the smallest cap binds");
    // stream_options: kept, with include_usage forced on; a null one is replaced.
    let r = parse(
        Api::ChatCompletions,
        br#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":false,"x":1}}"#,
    )
    .unwrap();
    assert!(r.strip_usage_chunk());
    let v: Value = serde_json::from_slice(&r.upstream_body("m")).unwrap();
    assert_eq!(v["stream_options"], json!({"include_usage": true, "x": 1}));
    let r = parse(
        Api::Completions,
        br#"{"model":"m","prompt":"p","stream":true,"stream_options":null}"#,
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&r.upstream_body("m")).unwrap();
    assert_eq!(v["stream_options"], json!({"include_usage": true}));
}

#[test]
fn the_estimate_reads_every_prompt_shape() {
    let long = "word ".repeat(200);
    let r = req(
        Api::ChatCompletions,
        json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": long},
            {"role": "user", "content": [{"type": "text", "text": long}, {"type": "image_url", "image_url": {"url": "data:"}}]},
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{\"a\":1}"}}]}
        ], "tools": [{"type": "function", "function": {"name": "f"}}]}),
    );
    let n = r.estimate_input_tokens();
    // 2 × 200 words exact (o200k: 200 tokens each), one image, three items, the tools.
    assert!(n >= 400 + 1_600 + 12 + 3, "{n}");
    assert!(n < 400 + 1_600 + 12 + 3 + 120, "{n}");
    // A short prompt is bounded by its length and still bounds the exact count.
    let short = req(
        Api::Messages,
        json!({"model": "claude-haiku-4-5", "system": "terse", "messages": [{"role": "user", "content": "hi there"}]}),
    );
    assert!(short.estimate_input_tokens() >= short.prompt_tokens());
    assert!(short.estimate_input_tokens() < 40);
}

#[test]
fn urls_and_auth_per_provider() {
    let base = url::Url::parse("https://api.openai.com/v1/").unwrap();
    assert_eq!(
        upstream_url(&base, Api::ChatCompletions).as_str(),
        "https://api.openai.com/v1/chat/completions"
    );
    let base = url::Url::parse("http://vllm:8000/v1").unwrap();
    assert_eq!(
        upstream_url(&base, Api::Embeddings).as_str(),
        "http://vllm:8000/v1/embeddings"
    );
    let key = secrecy::SecretString::from("sk-k");
    let mut h = http::HeaderMap::new();
    apply_auth(ProviderKind::OpenAi, &mut h, &key);
    assert_eq!(h["authorization"], "Bearer sk-k");
    assert!(h["authorization"].is_sensitive());
    let mut h = http::HeaderMap::new();
    h.insert(
        "anthropic-version",
        http::HeaderValue::from_static("2024-01-01"),
    );
    apply_auth(ProviderKind::Anthropic, &mut h, &key);
    assert_eq!(h["x-api-key"], "sk-k");
    assert_eq!(
        h["anthropic-version"], "2024-01-01",
        "the client's version is kept"
    );
    for f in [Family::OpenAi, Family::Anthropic] {
        assert!(
            !forwardable_headers(f).iter().any(|n| [
                "authorization",
                "x-api-key",
                "cookie",
                "host"
            ]
            .contains(&n.as_str()))
        );
    }
}

#[test]
fn usage_is_read_from_each_body_shape() {
    let chat = json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}}});
    assert_eq!(
        usage_from_body(Api::ChatCompletions, chat.to_string().as_bytes()),
        Some(Usage {
            input_tokens: 10,
            output_tokens: 5,
            cached_input_tokens: 4
        })
    );
    let resp = json!({"usage": {"input_tokens": 3, "output_tokens": 2, "input_tokens_details": {"cached_tokens": 1}}});
    assert_eq!(
        usage_from_body(Api::Responses, resp.to_string().as_bytes()),
        Some(Usage {
            input_tokens: 3,
            output_tokens: 2,
            cached_input_tokens: 1
        })
    );
    let msg = json!({"usage": {"input_tokens": 3, "output_tokens": 2, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 5}});
    assert_eq!(
        usage_from_body(Api::Messages, msg.to_string().as_bytes()),
        Some(Usage {
            input_tokens: 18,
            output_tokens: 2,
            cached_input_tokens: 10
        })
    );
    assert_eq!(usage_from_body(Api::ChatCompletions, b"{}"), None);
    assert_eq!(usage_from_body(Api::ChatCompletions, b"garbage"), None);
}

#[test]
fn anthropic_input_counts_past_u64_saturate_rather_than_wrap() {
    // fuzz/regressions/sse_stream/anthropic-usage-overflow: the three input counts were added
    // unchecked, a panic in debug builds and a wrapped-around (tiny) charge in release builds.
    let max = u64::MAX;
    let body = format!(
        r#"{{"usage":{{"input_tokens":{max},"cache_creation_input_tokens":1,"cache_read_input_tokens":{max}}}}}"#
    );
    let want = Some(Usage {
        input_tokens: max,
        output_tokens: 0,
        cached_input_tokens: max,
    });
    assert_eq!(usage_from_body(Api::Messages, body.as_bytes()), want);
    let start = format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{body}}}\n\n"
    );
    let (_, usage) = run(Api::Messages, false, start.as_bytes(), &[]);
    assert_eq!(usage, want);
    let delta = format!("data: {{\"type\":\"message_delta\",{}\n\n", &body[1..]);
    let (_, usage) = run(Api::Messages, false, delta.as_bytes(), &[]);
    assert_eq!(usage, want);
}

const OPENAI_STREAM: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\r\n\r\n\
: keep-alive comment\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n\
data: [DONE]\n\n";

const ANTHROPIC_STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":6}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

fn run(api: Api, strip: bool, stream: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<Usage>) {
    let mut o = StreamObserver::new(api, strip);
    let mut out = Vec::new();
    let mut last = 0;
    for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
        let c = c.clamp(last, stream.len());
        out.extend_from_slice(&o.feed(&stream[last..c]));
        last = c;
    }
    out.extend_from_slice(&o.finish());
    (out, o.usage())
}

#[test]
fn observer_reads_usage_and_strips_only_the_usage_chunk() {
    let (out, usage) = run(Api::ChatCompletions, false, OPENAI_STREAM.as_bytes(), &[]);
    assert_eq!(out, OPENAI_STREAM.as_bytes());
    assert_eq!(
        usage,
        Some(Usage {
            input_tokens: 7,
            output_tokens: 3,
            cached_input_tokens: 0
        })
    );
    let (out, usage) = run(Api::ChatCompletions, true, OPENAI_STREAM.as_bytes(), &[]);
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains("usage"), "{text}");
    assert!(text.contains("[DONE]") && text.contains("keep-alive"));
    assert_eq!(usage.unwrap().output_tokens, 3);
    let (_, usage) = run(Api::Messages, false, ANTHROPIC_STREAM.as_bytes(), &[]);
    assert_eq!(
        usage,
        Some(Usage {
            input_tokens: 11,
            output_tokens: 6,
            cached_input_tokens: 0
        })
    );
}

#[test]
fn an_event_fed_byte_by_byte_is_scanned_once() {
    // The search for an event's end started over at every chunk: an upstream sending one long
    // event a byte at a time cost time quadratic in its size (minutes for this one).
    let mut stream = vec![b'a'; 256 * 1024];
    stream.extend_from_slice(
        b"\r\n\r\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\r\n\r\n",
    );
    let cuts: Vec<usize> = (1..stream.len()).collect();
    let started = std::time::Instant::now();
    let (out, usage) = run(Api::ChatCompletions, true, &stream, &cuts);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(
        out.len(),
        256 * 1024 + 4,
        "the usage chunk is stripped, the rest relayed"
    );
    assert_eq!(usage.map(|u| u.input_tokens), Some(1));
}

#[test]
fn malformed_events_pass_through_untouched() {
    let s = b"data: {not json}\n\ndata: \xff\xfe\n\nevent: x\n\n";
    let (out, usage) = run(Api::ChatCompletions, true, s, &[3, 9]);
    assert_eq!(out, s);
    assert_eq!(usage, None);
}

proptest! {
    #[test]
    fn any_chunking_gives_the_same_bytes_and_usage(mut cuts in proptest::collection::vec(0usize..400, 0..12), strip: bool) {
        cuts.sort_unstable();
        for (api, stream) in [(Api::ChatCompletions, OPENAI_STREAM), (Api::Messages, ANTHROPIC_STREAM)] {
            let whole = run(api, strip, stream.as_bytes(), &[]);
            let split = run(api, strip, stream.as_bytes(), &cuts);
            prop_assert_eq!(whole, split);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(Api::ChatCompletions, &bytes);
        let _ = run(Api::Responses, true, &bytes, &[7]);
        let _ = usage_from_body(Api::Messages, &bytes);
    }
}

fn sse_usage(api: Api, events: Vec<bytes::Bytes>, strip: bool) -> (String, Option<Usage>) {
    let mut o = StreamObserver::new(api, strip);
    let mut out = Vec::new();
    for e in events {
        out.extend_from_slice(&o.feed(&e));
    }
    out.extend_from_slice(&o.finish());
    (String::from_utf8(out).unwrap(), o.usage())
}

#[test]
fn mock_replies_carry_real_token_counts_in_every_format() {
    let prompt = "Explain token exchange to a platform engineer in two sentences";
    let chat = req(
        Api::ChatCompletions,
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}),
    );
    let exact = chat.prompt_tokens();
    assert!(exact > 5);
    assert!(
        chat.estimate_input_tokens() >= exact,
        "estimate is an upper bound"
    );
    let MockReply::Json(body) = mock_reply(&chat, "gpt-4o-mini") else {
        panic!("json")
    };
    let u = usage_from_body(Api::ChatCompletions, &body).unwrap();
    assert_eq!(u.input_tokens, exact);
    assert!(u.output_tokens > 0);

    let streamed = req(
        Api::ChatCompletions,
        json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": prompt}]}),
    );
    let upstream = parse(Api::ChatCompletions, &streamed.upstream_body("gpt-4o-mini")).unwrap();
    let MockReply::Sse(events) = mock_reply(&upstream, "gpt-4o-mini") else {
        panic!("sse")
    };
    let (text, usage) = sse_usage(Api::ChatCompletions, events, true);
    assert_eq!(usage.unwrap().input_tokens, exact);
    assert!(
        !text.contains("\"usage\""),
        "usage chunk stripped for a client that did not ask"
    );

    for (api, body) in [
        (
            Api::Messages,
            json!({"model": "claude-haiku-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": prompt}]}),
        ),
        (Api::Responses, json!({"model": "gpt-4o", "input": prompt})),
        (
            Api::Completions,
            json!({"model": "gpt-4o-mini", "prompt": prompt}),
        ),
    ] {
        let plain = req(api, body.clone());
        let plain = parse(api, &plain.upstream_body("m")).unwrap();
        let MockReply::Json(b) = mock_reply(&plain, "m") else {
            panic!("json")
        };
        let u = usage_from_body(api, &b).unwrap();
        assert!(u.input_tokens > 0 && u.output_tokens > 0, "{api:?}");
        let mut sb = body;
        sb["stream"] = json!(true);
        let s = req(api, sb);
        let up = parse(api, &s.upstream_body("m")).unwrap();
        let MockReply::Sse(events) = mock_reply(&up, "m") else {
            panic!("sse")
        };
        let (_, su) = sse_usage(api, events, s.strip_usage_chunk());
        assert_eq!(su, Some(u), "{api:?}: stream and plain usage agree");
    }

    let emb = req(
        Api::Embeddings,
        json!({"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 8}),
    );
    let MockReply::Json(b) = mock_reply(&emb, "text-embedding-3-small") else {
        panic!("json")
    };
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let e: Vec<f64> = v["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(e.len(), 8);
    assert!((e.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-3);
}

#[test]
fn metered_streams_are_cut_with_each_apis_own_ending() {
    let delta = |api: Api, i: usize| match api {
        Api::Responses => format!(
            "event: response.output_text.delta\ndata: {}\n\n",
            serde_json::json!({"type": "response.output_text.delta", "delta": format!("word{i} ")})
        ),
        _ => format!(
            "data: {}\n\n",
            serde_json::json!({"id": "cmpl-1", "object": "text_completion", "model": "m",
                "choices": [{"index": 0, "text": format!("word{i} ")}]})
        ),
    };
    for (api, ending) in [
        (Api::Responses, "response.incomplete"),
        (Api::Completions, "\"finish_reason\":\"length\""),
    ] {
        let mut o = StreamObserver::new(api, false).with_output_limit(10, "gpt-4o");
        let mut out = Vec::new();
        for i in 0..100 {
            out.extend_from_slice(&o.feed(delta(api, i).as_bytes()));
            if o.is_cut() {
                break;
            }
        }
        assert!(o.is_cut(), "{api:?}");
        assert!(o.output_counted() > 10 && o.output_counted() < 20);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(ending), "{api:?}: {text}");
        assert!(
            o.feed(delta(api, 101).as_bytes()).is_empty(),
            "nothing after the cut"
        );
    }
}

#[test]
fn bodies_nested_past_the_limit_are_refused_and_the_walk_sees_everything_within_it() {
    let body = |depth: usize| {
        // `depth` counts every bracket: the body's own object, `messages`, the message, then
        // nested arrays around the text.
        let inner = depth - 3;
        format!(
            "{{\"model\":\"gpt-4o\",\"messages\":[{{\"role\":\"user\",\"content\":{}\"hidden words here\"{}}}]}}",
            "[".repeat(inner),
            "]".repeat(inner)
        )
    };
    let ok = parse(Api::ChatCompletions, body(32).as_bytes()).unwrap();
    assert!(
        ok.prompt_text().contains("hidden words here"),
        "the walk reaches the deepest text"
    );
    assert_eq!(
        parse(Api::ChatCompletions, body(33).as_bytes()).err(),
        Some(RequestError::TooDeep(32))
    );
    // Brackets in strings, escaped quotes included, are text.
    let text = format!(
        "{{\"model\":\"gpt-4o\",\"messages\":[{{\"role\":\"user\",\"content\":\"\\\"{}\"}}]}}",
        "[{".repeat(100)
    );
    assert!(parse(Api::ChatCompletions, text.as_bytes()).is_ok());
}

#[test]
fn a_bindings_stop_sequences_lead_the_clients_within_the_apis_limit() {
    let stops = ["x".to_owned()];
    let upstream = |api: Api, v: Value| -> Value {
        let mut r = req(api, v);
        r.add_stop(&stops);
        serde_json::from_slice(&r.upstream_body("m")).unwrap()
    };
    let chat = |stop: Value| json!({"model": "a", "messages": [], "stop": stop});
    assert_eq!(
        upstream(Api::ChatCompletions, chat(json!(["a", "b", "c", "d"])))["stop"],
        json!(["x", "a", "b", "c"])
    );
    assert_eq!(
        upstream(Api::ChatCompletions, chat(json!("x")))["stop"],
        json!(["x"])
    );
    assert_eq!(
        upstream(Api::Completions, json!({"model": "a", "prompt": "p"}))["stop"],
        json!(["x"])
    );
    assert_eq!(
        upstream(
            Api::Messages,
            json!({"model": "a", "messages": [], "stop_sequences": ["y"]})
        )["stop_sequences"],
        json!(["x", "y"])
    );
    // The Responses API has no stop sequences: none are sent (the stream is still cut).
    let v = upstream(Api::Responses, json!({"model": "a", "input": "p"}));
    assert!(
        v.get("stop").is_none() && v.get("stop_sequences").is_none(),
        "{v}"
    );
    // A field Tollgate now rewrites may appear once.
    assert_eq!(
        parse(
            Api::ChatCompletions,
            br#"{"model":"a","messages":[],"stop":"a","stop":"b"}"#
        )
        .unwrap_err(),
        RequestError::Duplicate("stop")
    );
}

#[test]
fn a_stream_is_cut_at_a_stop_sequence_split_across_events() {
    let mut o = StreamObserver::new(Api::ChatCompletions, false)
        .with_output_limit(1000, "gpt-4o")
        .with_stops(&["STOP".to_owned()]);
    let ev = |t: &str| {
        format!(
            "data: {}\n\n",
            json!({"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": t}}]})
        )
    };
    let mut out = Vec::new();
    for piece in ["one ", "two ST", "OP three"] {
        out.extend_from_slice(&o.feed(ev(piece).as_bytes()));
    }
    let out = String::from_utf8(out).unwrap();
    assert!(o.is_cut());
    assert!(out.contains("two ST"), "{out}");
    assert!(!out.contains("three"), "{out}");
    assert!(out.contains(r#""finish_reason":"stop""#), "{out}");
}
