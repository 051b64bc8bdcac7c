//! A test upstream on loopback that speaks the OpenAI and Anthropic wire formats, accepts only
//! the provider keys it was given, records every request, and misbehaves on command.
//! Written independently of Tollgate's `providers` module: it is the referee.
//!
//! Usage rule (so tests know the numbers): input tokens = the number of whitespace-separated
//! words in all prompt text (messages/system/prompt/input); output tokens = the number of
//! words of the reply.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// A lasting misbehaviour (a deployment that is down, stalled or over its limit).
#[derive(Clone, Copy, Debug)]
pub enum Sticky {
    /// Every call gets this status.
    Fail(u16),
    /// Every call is answered after this long.
    Stall(Duration),
    /// Every call gets a 429 with `Retry-After: <secs>`.
    RateLimited(u64),
}

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

enum Action {
    Fail(u16, Value),
    Delay(Duration),
    Runaway(usize),
    /// Answer 200 with these SSE chunks as they are, then end the body or (true) stall forever.
    RawStream(Vec<String>, bool),
    /// Answer 302 to this location.
    Redirect(String),
    /// Answer 429 with `Retry-After: <secs>`, as OpenAI does when a key's limit is hit.
    RateLimited(u64),
    /// Answer 200, send the first bytes of a body, then break the connection.
    Reset,
}

struct Shared {
    openai_keys: Mutex<Vec<String>>,
    anthropic_keys: Mutex<Vec<String>>,
    /// Keys accepted but failed with this status on every call but `GET /v1/models`.
    degraded: Mutex<Vec<(String, u16)>>,
    requests: Mutex<Vec<RecordedRequest>>,
    actions: Mutex<VecDeque<Action>>,
    /// Misbehaviour for every call until healed (after queued actions).
    sticky: Mutex<Option<Sticky>>,
    /// Calls answered since start (models list and admin API excluded).
    served: std::sync::atomic::AtomicUsize,
    /// OpenAI's organization admin API: the admin key it accepts (`None`: not served).
    admin_key: Mutex<Option<String>>,
    /// Project service accounts: (project, id, name, key).
    service_accounts: Mutex<Vec<ServiceAccount>>,
}

/// A project service account the admin API created and has not deleted.
#[derive(Clone, Debug)]
pub struct ServiceAccount {
    pub project: String,
    pub id: String,
    pub name: String,
    pub key: String,
}

/// The running upstream.
pub struct TestUpstream {
    /// Base URL including `/v1`.
    pub url: String,
    shared: Arc<Shared>,
}

impl TestUpstream {
    pub async fn start(openai_key: &str, anthropic_key: &str) -> TestUpstream {
        let shared = Arc::new(Shared {
            openai_keys: Mutex::new(vec![openai_key.to_owned()]),
            anthropic_keys: Mutex::new(vec![anthropic_key.to_owned()]),
            degraded: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            actions: Mutex::new(VecDeque::new()),
            sticky: Mutex::new(None),
            served: std::sync::atomic::AtomicUsize::new(0),
            admin_key: Mutex::new(None),
            service_accounts: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestUpstream { url, shared }
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().clone()
    }

    /// Accept `key` too (OpenAI family).
    pub fn accept_openai_key(&self, key: &str) {
        self.shared.openai_keys.lock().push(key.to_owned());
    }

    /// Stop accepting `key` (the provider revoked it).
    pub fn revoke_openai_key(&self, key: &str) {
        self.shared.openai_keys.lock().retain(|k| k != key);
    }

    /// Requests carrying `key` (besides the models list) get `status` from now on.
    pub fn degrade_key(&self, key: &str, status: u16) {
        self.shared.degraded.lock().push((key.to_owned(), status));
    }

    /// Requests to `path` that carried OpenAI key `key`.
    pub fn count_with_key(&self, path: &str, key: &str) -> usize {
        let bearer = format!("Bearer {key}");
        self.shared
            .requests
            .lock()
            .iter()
            .filter(|r| r.path == path && r.header("authorization").as_deref() == Some(&bearer))
            .count()
    }

    /// Serve OpenAI's organization admin API for `admin_key`: creating a project service
    /// account creates a key the upstream accepts; deleting the account revokes it.
    pub fn serve_admin_api(&self, admin_key: &str) {
        *self.shared.admin_key.lock() = Some(admin_key.to_owned());
    }

    /// The service accounts that exist now.
    pub fn service_accounts(&self) -> Vec<ServiceAccount> {
        self.shared.service_accounts.lock().clone()
    }

    /// Every call misbehaves so from now on (`None`: heal).
    pub fn set_sticky(&self, s: Option<Sticky>) {
        *self.shared.sticky.lock() = s;
    }

    /// Model calls it answered with a success.
    pub fn served(&self) -> usize {
        self.shared.served.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Model calls it received (any answer).
    pub fn calls(&self) -> usize {
        self.shared
            .requests
            .lock()
            .iter()
            .filter(|r| r.path != "/v1/models" && !r.path.starts_with("/v1/organization/"))
            .count()
    }

    /// The next request gets this status and body.
    pub fn fail_next(&self, status: u16, body: Value) {
        self.shared
            .actions
            .lock()
            .push_back(Action::Fail(status, body));
    }

    /// The next request is answered after `d`.
    pub fn delay_next(&self, d: Duration) {
        self.shared.actions.lock().push_back(Action::Delay(d));
    }

    /// The next answer ignores `max_tokens` and runs to `words` words.
    /// The next call gets these SSE chunks verbatim (`stall`: then the body never ends).
    pub fn raw_stream_next(&self, chunks: &[&str], stall: bool) {
        self.shared.actions.lock().push_back(Action::RawStream(
            chunks.iter().map(|c| (*c).to_owned()).collect(),
            stall,
        ));
    }

    /// The next call gets a 429 with `Retry-After: secs`.
    pub fn rate_limit_next(&self, secs: u64) {
        self.shared
            .actions
            .lock()
            .push_back(Action::RateLimited(secs));
    }

    /// The next call's connection breaks after the first bytes of its body.
    pub fn reset_next(&self) {
        self.shared.actions.lock().push_back(Action::Reset);
    }

    /// The next call is redirected to `location`.
    pub fn redirect_next(&self, location: &str) {
        self.shared
            .actions
            .lock()
            .push_back(Action::Redirect(location.to_owned()));
    }

    pub fn runaway_next(&self, words: usize) {
        self.shared.actions.lock().push_back(Action::Runaway(words));
    }
}

fn words(v: &Value, out: &mut u64) {
    match v {
        Value::String(s) => *out += s.split_whitespace().count() as u64,
        Value::Array(a) => a.iter().for_each(|x| words(x, out)),
        Value::Object(o) => {
            for k in ["content", "text"] {
                if let Some(x) = o.get(k) {
                    words(x, out);
                }
            }
        }
        _ => {}
    }
}

/// The usage rule: words of the prompt.
pub fn prompt_words(body: &Value) -> u64 {
    let mut n = 0;
    for k in ["messages", "system", "prompt", "input"] {
        if let Some(v) = body.get(k) {
            words(v, &mut n);
        }
    }
    n
}

async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let headers: HeaderMap = req.headers().clone();
    let bytes: Bytes = axum::body::to_bytes(req.into_body(), 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    s.requests.lock().push(RecordedRequest {
        path: path.clone(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: body.clone(),
    });
    if let Some(rest) = path.strip_prefix("/v1/organization/") {
        return admin_api(&s, &method, rest, &headers, &body);
    }
    let action = s.actions.lock().pop_front().or_else(|| {
        let sticky = *s.sticky.lock();
        match sticky {
            Some(Sticky::Fail(st)) => Some(Action::Fail(
                st,
                json!({"error": {"message": "deployment is down", "type": "server_error", "param": null, "code": null}}),
            )),
            Some(Sticky::Stall(d)) => Some(Action::Delay(d)),
            Some(Sticky::RateLimited(secs)) => Some(Action::RateLimited(secs)),
            None => None,
        }
    });
    let mut reply = "the upstream says hello back to you".to_owned();
    match action {
        Some(Action::Fail(status, b)) => {
            return (StatusCode::from_u16(status).unwrap(), axum::Json(b)).into_response();
        }
        Some(Action::Delay(d)) => tokio::time::sleep(d).await,
        Some(Action::RawStream(chunks, stall)) => return raw_sse(chunks, stall),
        Some(Action::RateLimited(secs)) => {
            let b = json!({"error": {"message": "Rate limit reached for requests", "type": "requests",
                "param": null, "code": "rate_limit_exceeded"}});
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", secs.to_string())],
                axum::Json(b),
            )
                .into_response();
        }
        Some(Action::Reset) => {
            // The head and the first bytes go out (flushed while the stream waits), then the
            // connection breaks.
            let parts = futures_util::stream::unfold(0u8, |i| async move {
                match i {
                    0 => Some((Ok(Bytes::from_static(b"{\"id\":\"chatcmpl-up\",\"choi")), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((Err(std::io::Error::other("connection reset")), 2))
                    }
                    _ => None,
                }
            });
            let content_type = if body["stream"].as_bool() == Some(true) {
                "text/event-stream"
            } else {
                "application/json"
            };
            return Response::builder()
                .header("content-type", content_type)
                .body(Body::from_stream(parts))
                .unwrap();
        }
        Some(Action::Redirect(to)) => {
            return Response::builder()
                .status(StatusCode::FOUND)
                .header("location", to)
                .body(Body::empty())
                .unwrap();
        }
        Some(Action::Runaway(n)) => {
            reply = (0..n)
                .map(|i| format!("word{i}"))
                .collect::<Vec<_>>()
                .join(" ");
        }
        None => {}
    }
    let anthropic =
        path == "/v1/messages" || (path == "/v1/models" && headers.contains_key("x-api-key"));
    let presented = if anthropic {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    } else {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned)
    };
    let authorized = match &presented {
        Some(k) if anthropic => {
            s.anthropic_keys.lock().contains(k) && headers.contains_key("anthropic-version")
        }
        Some(k) => s.openai_keys.lock().contains(k),
        None => false,
    };
    if !authorized {
        let b = if anthropic {
            json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
        } else {
            json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key", "param": null}})
        };
        return (StatusCode::UNAUTHORIZED, axum::Json(b)).into_response();
    }
    let degraded = presented.as_ref().and_then(|k| {
        s.degraded
            .lock()
            .iter()
            .find(|(d, _)| d == k)
            .map(|(_, st)| *st)
    });
    if let Some(st) = degraded
        && path != "/v1/models"
    {
        let b = json!({"error": {"message": "The server had an error while processing your request", "type": "server_error", "param": null, "code": null}});
        return (StatusCode::from_u16(st).unwrap(), axum::Json(b)).into_response();
    }
    if path != "/v1/models" {
        s.served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    let model = body["model"].as_str().unwrap_or("unknown").to_owned();
    let input = prompt_words(&body);
    let reply = reply.as_str();
    let output = reply.split_whitespace().count() as u64;
    let stream = body["stream"].as_bool() == Some(true);
    let pieces: Vec<String> = reply.split(' ').map(|w| format!("{w} ")).collect();
    match (path.as_str(), stream) {
        ("/v1/models", _) => {
            axum::Json(json!({"object": "list", "data": [{"id": "gpt-test-upstream", "object": "model", "created": 0, "owned_by": "test"}]})).into_response()
        }
        ("/v1/chat/completions", false) => axum::Json(json!({
            "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output}
        })).into_response(),
        ("/v1/chat/completions", true) => {
            let mut events: Vec<String> = pieces
                .iter()
                .map(|p| json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}]}).to_string())
                .collect();
            events.push(json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).to_string());
            if body["stream_options"]["include_usage"].as_bool() == Some(true) {
                events.push(json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [], "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output}}).to_string());
            }
            events.push("[DONE]".to_owned());
            sse(events.into_iter().map(|e| format!("data: {e}\n\n")).collect())
        }
        ("/v1/completions", false) => axum::Json(json!({
            "id": "cmpl-up", "object": "text_completion", "created": 1, "model": model,
            "choices": [{"index": 0, "text": reply, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output}
        })).into_response(),
        ("/v1/embeddings", _) => {
            let n = body["input"].as_array().map_or(1, Vec::len);
            let data: Vec<Value> = (0..n).map(|i| json!({"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]})).collect();
            axum::Json(json!({"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": input, "total_tokens": input}})).into_response()
        }
        ("/v1/responses", false) => axum::Json(response_body(&model, reply, input, output)).into_response(),
        ("/v1/responses", true) => {
            let mut events = vec![format!("event: response.created\ndata: {}\n\n",
                json!({"type": "response.created", "response": {"id": "resp-up", "status": "in_progress"}}))];
            for p in &pieces {
                events.push(format!("event: response.output_text.delta\ndata: {}\n\n",
                    json!({"type": "response.output_text.delta", "delta": p})));
            }
            events.push(format!("event: response.completed\ndata: {}\n\n",
                json!({"type": "response.completed", "response": response_body(&model, reply, input, output)})));
            sse(events)
        }
        ("/v1/messages", false) => axum::Json(json!({
            "id": "msg-up", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": reply}], "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": input, "output_tokens": output}
        })).into_response(),
        ("/v1/messages", true) => {
            let mut events = vec![
                format!("event: message_start\ndata: {}\n\n", json!({"type": "message_start", "message": {"id": "msg-up", "type": "message",
                    "role": "assistant", "model": model, "content": [], "usage": {"input_tokens": input, "output_tokens": 1}}})),
                format!("event: content_block_start\ndata: {}\n\n", json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}})),
            ];
            for p in &pieces {
                events.push(format!("event: content_block_delta\ndata: {}\n\n", json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": p}})));
            }
            events.push(format!("event: content_block_stop\ndata: {}\n\n", json!({"type": "content_block_stop", "index": 0})));
            events.push(format!("event: message_delta\ndata: {}\n\n", json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": output}})));
            events.push(format!("event: message_stop\ndata: {}\n\n", json!({"type": "message_stop"})));
            sse(events)
        }
        _ => (StatusCode::NOT_FOUND, axum::Json(json!({"error": {"message": "no such route"}}))).into_response(),
    }
}

fn response_body(model: &str, reply: &str, input: u64, output: u64) -> Value {
    json!({"id": "resp-up", "object": "response", "status": "completed", "model": model,
        "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": reply}]}],
        "usage": {"input_tokens": input, "output_tokens": output, "total_tokens": input + output}})
}

/// An SSE response whose events arrive in separate chunks, a little apart, each split in two
/// to exercise reassembly across chunk boundaries.
fn raw_sse(chunks: Vec<String>, stall: bool) -> Response {
    let head = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(Bytes::from(c))),
    );
    let body = if stall {
        Body::from_stream(head.chain(futures_util::stream::pending()))
    } else {
        Body::from_stream(head)
    };
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

fn sse(events: Vec<String>) -> Response {
    let stream = futures_util::stream::unfold(events.into_iter(), |mut it| async move {
        let e = it.next()?;
        tokio::time::sleep(Duration::from_millis(2)).await;
        Some((Ok::<_, std::io::Error>(Bytes::from(e)), it))
    })
    .flat_map(|r: Result<Bytes, std::io::Error>| {
        let parts: Vec<Result<Bytes, std::io::Error>> = match r {
            Ok(b) if b.len() > 8 => {
                let mid = b.len() / 2;
                vec![Ok(b.slice(..mid)), Ok(b.slice(mid..))]
            }
            other => vec![other],
        };
        futures_util::stream::iter(parts)
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

use futures_util::StreamExt;

/// OpenAI's documented admin endpoints for project service accounts: `POST
/// /v1/organization/projects/{project}/service_accounts` (answers the account with its
/// unredacted `api_key`) and `DELETE …/service_accounts/{id}`.
fn admin_api(
    s: &Shared,
    method: &axum::http::Method,
    rest: &str,
    headers: &HeaderMap,
    body: &Value,
) -> Response {
    let err = |status: StatusCode, msg: &str| {
        (status, axum::Json(json!({"error": {"message": msg, "type": "invalid_request_error", "code": null, "param": null}})))
            .into_response()
    };
    let admin = s.admin_key.lock().clone();
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if admin.is_none() || presented != admin.as_deref() {
        return err(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided. Admin keys start with sk-admin-",
        );
    }
    let parts: Vec<&str> = rest.split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["projects", project, "service_accounts"]) => {
            let Some(name) = body["name"].as_str().filter(|n| !n.is_empty()) else {
                return err(StatusCode::BAD_REQUEST, "name is required");
            };
            let n = s.service_accounts.lock().len() + s.requests.lock().len();
            let id = format!("svc_acct_{n:04}");
            let key = format!("sk-svcacct-{}-{n:04}", project);
            s.openai_keys.lock().push(key.clone());
            s.service_accounts.lock().push(ServiceAccount {
                project: (*project).to_owned(),
                id: id.clone(),
                name: name.to_owned(),
                key: key.clone(),
            });
            axum::Json(json!({
                "object": "organization.project.service_account", "id": id, "name": name,
                "role": "member", "created_at": 1_711_471_533,
                "api_key": {"object": "organization.project.service_account.api_key",
                            "value": key, "name": "Secret Key", "created_at": 1_711_471_533,
                            "id": format!("key_{n:04}")},
            }))
            .into_response()
        }
        ("DELETE", ["projects", project, "service_accounts", id]) => {
            let mut accounts = s.service_accounts.lock();
            let Some(i) = accounts
                .iter()
                .position(|a| a.id == *id && a.project == *project)
            else {
                return err(StatusCode::NOT_FOUND, "No such service account");
            };
            let gone = accounts.remove(i);
            s.openai_keys.lock().retain(|k| *k != gone.key);
            axum::Json(json!({"object": "organization.project.service_account.deleted", "id": id, "deleted": true}))
                .into_response()
        }
        _ => err(StatusCode::NOT_FOUND, "Invalid URL"),
    }
}
