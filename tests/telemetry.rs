//! Traces, logs and subject-labelled metrics of a real `tollgate serve` process: spans
//! exported over OTLP/HTTP to a loopback collector (decoded with the OpenTelemetry protobuf
//! types), the caller's `traceparent` continued, the provider call a child span whose context
//! reaches the upstream as `traceparent`; the JSON log lines of a served and a refused call;
//! and no key or token in any of it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use support::app::{ANTHROPIC_KEY, OPENAI_KEY, Options, TestApp};
use support::db::{TestDb, TestDbKind};
use support::oidc::TestIssuer;
use support::process::Tollgate;
use support::upstream::TestUpstream;

/// An OTLP/HTTP trace receiver on loopback: every span it was sent, and the resources'
/// `service.name`s.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    services: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    async fn start(&self) -> String {
        let this = self.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
                let this = this.clone();
                async move {
                    assert_eq!(headers["content-type"], "application/x-protobuf");
                    let req = ExportTraceServiceRequest::decode(body).unwrap();
                    for rs in req.resource_spans {
                        if let Some(r) = &rs.resource {
                            for a in &r.attributes {
                                if a.key == "service.name" {
                                    this.services.lock().unwrap().push(string(a));
                                }
                            }
                        }
                        for ss in rs.scope_spans {
                            this.spans.lock().unwrap().extend(ss.spans);
                        }
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

fn string(kv: &opentelemetry_proto::tonic::common::v1::KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).map(string)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The JSON log lines of `message`.
fn lines<'a>(log: &'a [Value], message: &str) -> Vec<&'a Value> {
    log.iter()
        .filter(|l| l["message"] == message || l["fields"]["message"] == message)
        .collect()
}

fn field<'a>(line: &'a Value, name: &str) -> &'a Value {
    if line.get(name).is_some() {
        &line[name]
    } else {
        &line["fields"][name]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_continue_the_callers_trace_reach_the_upstream_and_logs_name_each_decision() {
    let collector = Collector::default();
    let otlp = collector.start().await;
    let issuer = TestIssuer::start().await;
    let upstream = TestUpstream::start(OPENAI_KEY, ANTHROPIC_KEY).await;
    let db = TestDb::new(TestDbKind::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        extra_config: format!(
            "[telemetry]\nmetrics_subject_label = true\n[telemetry.otlp]\nendpoint = \"{otlp}\"\nservice_name = \"tollgate-test\"\ntimeout = \"2s\"\n"
        ),
        ..Options::default()
    };
    let mut tollgate = Tollgate::prepare(dir.path(), &db.url, &issuer.url, &upstream.url, &opts);
    tollgate.start().await;
    let http = reqwest::Client::new();

    let sa = issuer.service_account_token("team-a", "app");
    let token = support::process::exchange(&http, &tollgate.url, &sa).await;

    // The caller is inside a trace of its own: a sampled `traceparent`.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let chat = |body: Value| {
        http.post(format!("{}/v1/chat/completions", tollgate.url))
            .bearer_auth(&token)
            .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
            .json(&body)
            .send()
    };
    let served = chat(TestApp::chat("gpt-test", "trace me please"))
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let served_id = served.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut streamed_body = TestApp::chat("gpt-test", "stream me too");
    streamed_body["stream"] = json!(true);
    let streamed = chat(streamed_body).await.unwrap();
    assert_eq!(streamed.status(), 200);
    let text = streamed.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    let refused = chat(TestApp::chat("unbound", "not for this token"))
        .await
        .unwrap();
    assert!(refused.status().is_client_error());
    let refused_id = refused.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let refused_code = refused.headers()["x-tollgate-error-code"]
        .to_str()
        .unwrap()
        .to_owned();

    // The opt-in subject series.
    let metrics = support::process::metrics(&http, &tollgate.url).await.0;
    let subject = "system:serviceaccount:team-a:app";
    let series = format!(
        r#"tollgate_subject_requests_total{{subject="{subject}",team="a",model="gpt-test"}} 2"#
    );
    assert!(
        metrics.lines().any(|l| l == series),
        "{series} in\n{metrics}"
    );

    // SIGTERM flushes the spans still queued.
    tollgate.stop().await;

    let spans = collector.spans();
    assert!(
        collector
            .services
            .lock()
            .unwrap()
            .iter()
            .all(|s| s == "tollgate-test")
    );
    let server: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "POST /v1/chat/completions")
        .collect();
    assert_eq!(server.len(), 3, "{spans:#?}");
    for s in &server {
        assert_eq!(s.kind, SpanKind::Server as i32);
        assert_eq!(
            hex(&s.trace_id),
            caller_trace,
            "the caller's trace continues"
        );
        assert_eq!(hex(&s.parent_span_id), caller_span);
        assert_eq!(
            attr(s, "http.route").as_deref(),
            Some("/v1/chat/completions")
        );
    }
    let served_span = server
        .iter()
        .find(|s| attr(s, "tollgate.request_id").as_deref() == Some(served_id.as_str()))
        .expect("the served call's span carries its request id");
    assert_eq!(
        attr(served_span, "http.response.status_code").as_deref(),
        Some("200")
    );
    let refused_span = server
        .iter()
        .find(|s| attr(s, "tollgate.request_id").as_deref() == Some(refused_id.as_str()))
        .unwrap();
    assert_eq!(
        attr(refused_span, "tollgate.error_code").as_deref(),
        Some(refused_code.as_str())
    );

    // Two provider calls (the refused one never left), each a client child of its request.
    let client: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    assert_eq!(client.len(), 2, "{spans:#?}");
    let seen = upstream.requests();
    for c in &client {
        assert!(
            server.iter().any(|s| s.span_id == c.parent_span_id),
            "the provider call is a child of a request span"
        );
        assert_eq!(
            attr(c, "gen_ai.request.model").as_deref(),
            Some("gpt-test-upstream")
        );
        assert_eq!(attr(c, "http.response.status_code").as_deref(), Some("200"));
        // The upstream got this span's context, not the caller's.
        let want = format!("00-{caller_trace}-{}-01", hex(&c.span_id));
        assert!(
            seen.iter()
                .any(|r| r.header("traceparent").as_deref() == Some(want.as_str())),
            "{want} never reached the upstream"
        );
    }
    // The streamed call's spans end with its stream, after the headers were sent.
    let stream_server = server
        .iter()
        .find(|s| s.span_id != served_span.span_id && s.span_id != refused_span.span_id)
        .unwrap();
    let stream_client = client
        .iter()
        .find(|c| c.parent_span_id == stream_server.span_id)
        .unwrap();
    assert!(stream_server.end_time_unix_nano >= stream_client.end_time_unix_nano);

    // One JSON line per decision: settled (served) twice, refused once with who asked.
    let log_text = tollgate.log_text();
    let log: Vec<Value> = log_text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let settled = lines(&log, "request settled");
    assert_eq!(settled.len(), 2, "{log_text}");
    for l in &settled {
        assert_eq!(field(l, "decision"), "served");
        assert_eq!(field(l, "subject"), subject);
    }
    let refusals = lines(&log, "request refused");
    assert_eq!(refusals.len(), 1, "one line per refusal:\n{log_text}");
    let l = refusals[0];
    assert_eq!(field(l, "request_id"), refused_id.as_str());
    assert_eq!(field(l, "subject"), subject);
    assert_eq!(field(l, "code"), refused_code.as_str());
    assert_eq!(field(l, "decision"), "refused");

    // No key or token in the logs or in any span.
    let spans_text = format!("{spans:?}");
    for secret in [OPENAI_KEY, ANTHROPIC_KEY, token.as_str(), sa.as_str()] {
        assert!(!log_text.contains(secret), "a secret in the log");
        assert!(!spans_text.contains(secret), "a secret in a span");
    }
}
