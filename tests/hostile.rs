//! The hostile-input suite (issue 9): what an attacker sends Tollgate, one case at a time, each
//! with the exact status, error shape and code it must get, and the server healthy after it.
//! JWT attacks on the token endpoint, HTTP and JSON abuse on the proxy, and connection-level
//! abuse (slow and idle clients, connection floods, request smuggling) over raw TCP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::app::{Options, TestApp, spawn_app_with};
use support::db::TestDbKind;
use support::oidc::{KeyChoice, RSA_KID, TestIssuer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CHAT: &str = "/v1/chat/completions";
const HEADER_TIMEOUT_MS: u64 = 600;

async fn app() -> TestApp {
    spawn_app_with(
        TestDbKind::Sqlite,
        Options {
            extra_config: format!(
                "[limits]\nheader_read_timeout = \"{HEADER_TIMEOUT_MS}ms\"\nmax_connections = 64\nmax_body_bytes = 1048576\n"
            ),
            ..Options::default()
        },
    )
    .await
}

async fn healthy(app: &TestApp) {
    let r = app
        .http
        .get(format!("{}/healthz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the server is still healthy");
}

/// An OAuth error answer: its status, `error`, and the code header that must match it.
async fn oauth(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let header = r
        .headers()
        .get("x-tollgate-error-code")
        .map(|v| v.to_str().unwrap().to_owned());
    let v: Value = r.json().await.unwrap();
    let code = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_owned();
    assert!(v["error_description"].is_string(), "{v}");
    assert_eq!(header.as_deref(), Some(code.as_str()));
    (status, code)
}

/// An OpenAI-shaped error answer: status and `error.code`.
async fn openai(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(v["error"]["type"].is_string(), "{v}");
    (status, v["error"]["code"].as_str().unwrap().to_owned())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn jwt_attacks_on_the_token_endpoint_are_refused_with_invalid_request() {
    let app = app().await;
    let iss = &app.issuer;
    let good = iss.claims("team-a", "app");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    // Another issuer's keys: an attacker's.
    let attacker = TestIssuer::start().await;
    let attacker_jwk = json!({"kty": "EC", "crv": "P-256", "kid": "ec-1"});
    let payload = good.to_string();
    let dup_iss = payload.replacen("\"iss\":", "\"iss\":\"https://evil.example\",\"iss\":", 1);
    let far_future_iat = with(&|c| c["iat"] = json!(now() + 10 * 365 * 86400));
    let cases: Vec<(&str, String)> = vec![
        ("alg none", iss.unsigned(&good, "none")),
        ("alg NONE", iss.unsigned(&good, "NONE")),
        ("alg nOnE", iss.unsigned(&good, "nOnE")),
        ("alg None", iss.unsigned(&good, "None")),
        ("HS256 keyed with the issuer's public key", iss.hs256_with_public_key(&good)),
        (
            "kid path traversal",
            iss.sign_with_header(
                &json!({"alg": "RS256", "kid": "../../../../etc/passwd"}),
                &good,
                KeyChoice::Rsa,
            ),
        ),
        (
            "kid SQL",
            iss.sign_with_header(
                &json!({"alg": "RS256", "kid": "' OR '1'='1' --"}),
                &good,
                KeyChoice::Rsa,
            ),
        ),
        (
            "embedded jwk of the attacker's key",
            attacker.sign_with_header(
                &json!({"alg": "ES256", "kid": "ec-1", "jwk": attacker_jwk}),
                &good,
                KeyChoice::Ec,
            ),
        ),
        (
            "jku to the attacker's JWKS",
            attacker.sign_with_header(
                &json!({"alg": "ES256", "kid": "ec-1", "jku": format!("{}/jwks.json", attacker.url)}),
                &good,
                KeyChoice::Ec,
            ),
        ),
        (
            "x5u to the attacker",
            attacker.sign_with_header(
                &json!({"alg": "ES256", "kid": "ec-1", "x5u": format!("{}/jwks.json", attacker.url)}),
                &good,
                KeyChoice::Ec,
            ),
        ),
        (
            "crit header",
            iss.sign_with_header(
                &json!({"alg": "RS256", "kid": RSA_KID, "crit": ["exp"]}),
                &good,
                KeyChoice::Rsa,
            ),
        ),
        ("expired past the leeway", iss.sign(&with(&|c| c["exp"] = json!(now() - 120)))),
        ("nbf past the leeway", iss.sign(&with(&|c| c["nbf"] = json!(now() + 120)))),
        ("far-future iat", iss.sign(&far_future_iat)),
        ("exp not a number", iss.sign(&with(&|c| c["exp"] = json!("tomorrow")))),
        ("no exp", iss.sign(&with(&|c| c.as_object_mut().unwrap().remove("exp").map(|_| ()).unwrap()))),
        ("wrong audience", iss.sign(&with(&|c| c["aud"] = json!(["kubernetes"])))),
        ("issuer with a trailing slash", iss.sign(&with(&|c| c["iss"] = json!(format!("{}/", iss.url))))),
        ("untrusted issuer", attacker.sign(&with(&|c| c["iss"] = json!(attacker.url)))),
        ("duplicate iss keys", iss.sign_raw(&format!("{{\"alg\":\"RS256\",\"kid\":\"{RSA_KID}\"}}"), &dup_iss)),
        ("a payload that is not an object", iss.sign_raw(&format!("{{\"alg\":\"RS256\",\"kid\":\"{RSA_KID}\"}}"), "[1,2,3]")),
        ("oversized", format!("{}.{}.sig", "e".repeat(40_000), "e".repeat(40_000))),
        ("not base64", "@@@.@@@.@@@".into()),
        ("empty", String::new()),
    ];
    for (what, token) in &cases {
        let (status, code) = oauth(app.exchange(token).await).await;
        assert_eq!((status, code.as_str()), (400, "invalid_request"), "{what}");
    }
    assert_eq!(
        attacker.jwks_hits(),
        0,
        "a jku/x5u header is never followed"
    );
    healthy(&app).await;
    // The genuine token still works after all that.
    assert_eq!(app.exchange(&iss.sign(&good)).await.status(), 200);
}

#[tokio::test]
async fn confusable_identities_and_crossed_token_kinds_get_nothing() {
    let app = app().await;
    // A namespace that looks like team-a (Cyrillic а) matches no binding.
    let confusable = app.issuer.service_account_token("team-\u{430}", "app");
    let (status, code) = oauth(app.exchange(&confusable).await).await;
    assert_eq!((status, code.as_str()), (400, "unauthorized_client"));
    // A workload token is not a Tollgate token.
    let workload = app.workload_token("team-a", "app");
    let (status, code) = openai(
        app.post(CHAT, &workload, &TestApp::chat("gpt-test", "hi"))
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (401, "invalid_token"));
    // A Tollgate token is not a workload token.
    let token = app.token_for("team-a").await;
    let (status, code) = oauth(app.exchange(&token).await).await;
    assert_eq!((status, code.as_str()), (400, "invalid_request"));
    healthy(&app).await;
}

#[tokio::test]
async fn malformed_token_requests_get_oauth_errors() {
    let app = app().await;
    let post = |content_type: &'static str, body: String| {
        app.http
            .post(format!("{}/v1/token", app.url))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let sa = app.workload_token("team-a", "app");
    let form = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&subject_token={sa}"
    );
    let cases: Vec<(&str, &'static str, String, &str)> = vec![
        (
            "JSON instead of a form",
            "application/json",
            json!({"grant_type": "x"}).to_string(),
            "invalid_request",
        ),
        (
            "no grant type",
            "application/x-www-form-urlencoded",
            "subject_token=x".into(),
            "invalid_request",
        ),
        (
            "another grant type",
            "application/x-www-form-urlencoded",
            "grant_type=password&username=a&password=b".into(),
            "unsupported_grant_type",
        ),
        (
            "grant type twice",
            "application/x-www-form-urlencoded",
            format!("{form}&grant_type=client_credentials"),
            "invalid_request",
        ),
        (
            "subject token twice",
            "application/x-www-form-urlencoded",
            format!("{form}&subject_token={sa}"),
            "invalid_request",
        ),
        (
            "invalid UTF-8 in the form",
            "application/x-www-form-urlencoded",
            format!("{form}%FF%FE"),
            "invalid_request",
        ),
    ];
    for (what, ct, body, want) in cases {
        let (status, code) = oauth(post(ct, body).await.unwrap()).await;
        assert_eq!(status, 400, "{what}");
        assert_eq!(code, want, "{what}");
    }
    healthy(&app).await;
}

#[tokio::test]
async fn hostile_request_bodies_on_the_proxy_are_refused_in_openais_shape() {
    let app = app().await;
    let token = app.token_for("team-a").await;
    let raw = |body: Vec<u8>| {
        app.http
            .post(format!("{}{CHAT}", app.url))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let nested = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    let deep_messages = format!(
        "{{\"model\":\"gpt-test\",\"messages\":[{{\"role\":\"user\",\"content\":{}1{}}}]}}",
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "over max_body_bytes",
            vec![b' '; 2 * 1024 * 1024],
            413,
            "request_too_large",
        ),
        (
            "deeply nested arrays",
            nested.into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "deeply nested content",
            deep_messages.into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "invalid UTF-8",
            b"{\"model\":\"gpt-test\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}"
                .to_vec(),
            400,
            "invalid_request",
        ),
        (
            "not JSON",
            b"model=gpt-test".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "JSON but not an object",
            b"[\"gpt-test\"]".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "model not a string",
            br#"{"model":["gpt-test"],"messages":[]}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "duplicate model keys",
            br#"{"model":"gpt-test","model":"pricey","messages":[{"role":"user","content":"hi"}]}"#
                .to_vec(),
            400,
            "invalid_request",
        ),
        ("empty body", Vec::new(), 400, "invalid_request"),
    ];
    for (what, body, want_status, want_code) in cases {
        let r = raw(body).await.unwrap();
        assert_ne!(r.status(), 200, "{what}: served");
        let (status, code) = openai(r).await;
        assert_eq!((status, code.as_str()), (want_status, want_code), "{what}");
    }
    healthy(&app).await;
}

#[tokio::test]
async fn model_names_and_fields_never_reach_another_upstream_path_or_header() {
    let app = app().await;
    let token = app.token_for("team-a").await;
    for model in [
        "../../v1/files",
        "gpt-test/../../admin",
        "gpt-test?api-version=evil",
        "gpt-test#x",
        "gpt-test\r\nX-Evil: 1",
        "%2e%2e%2fadmin",
        "gpt-test\u{0}",
        "GPT-TEST",
    ] {
        let (status, code) =
            openai(app.post(CHAT, &token, &TestApp::chat(model, "hi")).await).await;
        assert_eq!(
            (status, code.as_str()),
            (404, "model_not_found"),
            "{model:?}"
        );
    }
    assert!(
        app.upstream.requests().is_empty(),
        "nothing reached the upstream"
    );
    // Body fields that other SDKs use to redirect a call are only body to Tollgate: the call
    // goes to the configured upstream path with the real key, and no header is taken from them.
    let mut body = TestApp::chat("gpt-test", "hi");
    body["api_key"] = json!("sk-attacker");
    body["base_url"] = json!("https://evil.example/v1");
    body["extra_headers"] = json!({"Authorization": "Bearer sk-attacker", "Host": "evil.example"});
    let r = app
        .http
        .post(format!("{}{CHAT}", app.url))
        .bearer_auth(&token)
        .header("x-forwarded-host", "evil.example")
        .header("openai-organization", "org-attacker")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = app.upstream.requests();
    let last = seen.last().unwrap();
    assert_eq!(last.path, "/v1/chat/completions");
    assert_eq!(
        last.header("authorization").as_deref(),
        Some(format!("Bearer {}", support::app::OPENAI_KEY).as_str())
    );
    assert!(last.header("x-forwarded-host").is_none());
    assert!(last.header("openai-organization").is_none());
    healthy(&app).await;
}

/// Send raw bytes on a fresh connection; the response head (or what came before the close).
async fn raw_exchange(app: &TestApp, bytes: &[u8]) -> String {
    let addr = app.url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn request_smuggling_and_broken_framing_are_refused_at_the_protocol() {
    let app = app().await;
    let token = app.token_for("team-a").await;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "Content-Length and Transfer-Encoding together",
            format!(
                "POST {CHAT} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/v1/keys HTTP/1.1\r\nHost: t\r\n\r\n"
            ),
            "HTTP/1.1 400",
        ),
        (
            "two different Content-Lengths",
            format!(
                "POST {CHAT} HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd"
            ),
            "HTTP/1.1 400",
        ),
        (
            "a negative Content-Length",
            format!("POST {CHAT} HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n"),
            "HTTP/1.1 400",
        ),
        (
            "an obfuscated Transfer-Encoding",
            format!("POST {CHAT} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n"),
            "HTTP/1.1 400",
        ),
        (
            "a header line without a colon",
            "GET /healthz HTTP/1.1\r\nHost t\r\n\r\n".into(),
            "HTTP/1.1 400",
        ),
        (
            "headers over the limit",
            format!(
                "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
                "a".repeat(600_000)
            ),
            "HTTP/1.1 431",
        ),
    ];
    for (what, bytes, want) in cases {
        let head = raw_exchange(&app, bytes.as_bytes()).await;
        assert!(head.starts_with(want), "{what}: {head:?}");
        assert!(!head.contains("HTTP/1.1 200"), "{what}: smuggled: {head:?}");
    }
    assert!(
        app.upstream.requests().is_empty(),
        "no smuggled request reached the upstream"
    );
    healthy(&app).await;
}

/// Does the server close `s` within `limit` (reading and discarding what it sends)?
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 512];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off_and_a_connection_flood_is_bounded() {
    let app = app().await;
    let addr = app.url.trim_start_matches("http://").to_owned();
    // Slowloris: half a request line, then silence. Closed after the header timeout.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)).await,
        "a slow client's connection stays open"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(HEADER_TIMEOUT_MS / 2),
        "closed too early: {:?}",
        started.elapsed()
    );
    // An idle connection that never sends anything is closed too.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "an idle connection stays open: {closed:?}"
    );
    // A keep-alive connection left idle after a response is closed too.
    let mut kept = TcpStream::connect(&addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let n = kept.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert!(
        closed_within(&mut kept, Duration::from_secs(5)).await,
        "an idle keep-alive connection stays open"
    );
    // A flood of idle sockets past max_connections: the surplus is closed at once, and once
    // the flood's sockets time out the server answers again.
    let mut flood = Vec::new();
    for _ in 0..80 {
        flood.push(TcpStream::connect(&addr).await.unwrap());
    }
    let mut refused = 0;
    for s in &mut flood[64..] {
        if matches!(
            tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        ) {
            refused += 1;
        }
    }
    assert_eq!(
        refused, 16,
        "connections past max_connections are closed at accept"
    );
    drop(flood);
    tokio::time::sleep(Duration::from_millis(HEADER_TIMEOUT_MS + 200)).await;
    healthy(&app).await;
}

/// One `GET /healthz` on an open keep-alive connection: the answer's status line.
async fn keep_alive_get(s: &mut TcpStream) -> String {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn many_idle_keep_alive_connections_are_closed_and_never_lock_out_new_clients() {
    let app = app().await;
    let addr = app.url.trim_start_matches("http://").to_owned();
    // 56 clients make two calls each on one connection and then go quiet, keeping it open.
    let mut kept = Vec::new();
    for _ in 0..56 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        for _ in 0..2 {
            assert_eq!(keep_alive_get(&mut s).await, "HTTP/1.1 200 OK");
        }
        kept.push(s);
    }
    // Meanwhile others are served at once.
    healthy(&app).await;
    // The server closes every one of them after the header timeout, all at the same time.
    let started = Instant::now();
    let closed = futures_util::future::join_all(
        kept.iter_mut()
            .map(|s| closed_within(s, Duration::from_secs(5))),
    )
    .await;
    assert!(
        closed.iter().all(|c| *c),
        "{} left open",
        closed.iter().filter(|c| !**c).count()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Their slots are free again: 60 new keep-alive clients fit under the cap of 64.
    let mut fresh = Vec::new();
    for i in 0..60 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        assert_eq!(
            keep_alive_get(&mut s).await,
            "HTTP/1.1 200 OK",
            "client {i}"
        );
        fresh.push(s);
    }
    drop(fresh);
    healthy(&app).await;
}

/// A streamed chat call's status and whole body, or `None` if it did not end within `limit`.
async fn stream_within(app: &TestApp, token: &str, limit: Duration) -> Option<(u16, String)> {
    let mut body = TestApp::chat("gpt-test", "stream please");
    body["stream"] = json!(true);
    tokio::time::timeout(limit, async {
        let r = app.post(CHAT, token, &body).await;
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    })
    .await
    .ok()
}

#[tokio::test]
async fn upstreams_that_stall_mid_stream_send_malformed_events_or_redirect_cannot_hang_or_leak() {
    let app = app().await;
    let token = app.token_for("team-a").await;
    let chunk = |text: &str| {
        format!(
            "data: {}\n\n",
            json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
        )
    };
    let (first, second) = (chunk("first "), chunk("second "));

    // Two events, then silence: the client gets both and the stream ends at the upstream idle
    // timeout (2 s in tests) instead of hanging.
    app.upstream.raw_stream_next(&[&first, &second], true);
    let started = Instant::now();
    let (status, text) = stream_within(&app, &token, Duration::from_secs(10))
        .await
        .expect("a stalled upstream hangs the client");
    assert_eq!(status, 200);
    assert!(
        text.contains("first ") && text.contains("second "),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );

    // Events that are not JSON, an event split mid-field, no usage, no [DONE]: relayed and
    // ended, charged the reservation's worst case (nothing tells Tollgate less).
    app.upstream.raw_stream_next(
        &[
            "data: {not json}\n\n",
            "data: {\"choices\": [",
            "]}\n\n",
            "event: ping\n\n",
            ": comment\n\n",
        ],
        false,
    );
    let (status, text) = stream_within(&app, &token, Duration::from_secs(10))
        .await
        .expect("a malformed stream hangs the client");
    assert_eq!(status, 200);
    assert!(text.contains("{not json}"), "{text}");

    // A redirect is never followed (the key would go with it): 502, and the target is never
    // contacted.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_url = format!("http://{}/v1/chat/completions", trap.local_addr().unwrap());
    let contacted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = contacted.clone();
    tokio::spawn(async move {
        if trap.accept().await.is_ok() {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    app.upstream.redirect_next(&trap_url);
    let (status, code) = openai(
        app.post(CHAT, &token, &TestApp::chat("gpt-test", "hi"))
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (502, "upstream_error"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !contacted.load(std::sync::atomic::Ordering::SeqCst),
        "the redirect was followed"
    );
    healthy(&app).await;
    // And the next ordinary call is served.
    assert_eq!(
        app.post(CHAT, &token, &TestApp::chat("gpt-test", "hi"))
            .await
            .status(),
        200
    );
}
