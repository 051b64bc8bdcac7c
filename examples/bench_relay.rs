//! The benchmark's floor for a gateway: a bare relay on the same stack as Tollgate (axum
//! server, reqwest client) that reads the request body, forwards it to the upstream with a
//! fixed key and returns the answer — no authentication, limits, parsing or accounting.
//! Tollgate's cost over this relay is what its own work adds.
//!
//! `cargo run --release --example bench_relay -- 127.0.0.1:9101 http://127.0.0.1:9100`
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::post;

#[derive(Clone)]
struct Relay {
    client: reqwest::Client,
    url: reqwest::Url,
}

async fn relay(State(r): State<Relay>, body: Bytes) -> Response {
    let sent = r
        .client
        .post(r.url.clone())
        .header(header::AUTHORIZATION, "Bearer sk-bench-provider-key")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let Ok(resp) = sent else {
        return bad_gateway();
    };
    let status = resp.status();
    let Ok(bytes) = resp.bytes().await else {
        return bad_gateway();
    };
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = status;
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out
}

fn bad_gateway() -> Response {
    let mut out = Response::new(Body::empty());
    *out.status_mut() = axum::http::StatusCode::BAD_GATEWAY;
    out
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9101".into());
    let upstream = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:9100".into());
    let state = Relay {
        client: reqwest::Client::new(),
        url: format!("{upstream}/v1/chat/completions").parse().unwrap(),
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(relay))
        .route("/health", axum::routing::get(|| async { "ok" }))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    println!("relay on {addr} -> {upstream}");
    axum::serve(listener, app).await.unwrap();
}
