//! The benchmark's floor for a gateway: a bare relay on the same stack as Tollgate (axum
//! server, Tollgate's pooled hyper client) that reads the request body, forwards it to the
//! upstream with a fixed key and returns the answer — no authentication, limits, parsing or
//! accounting. Tollgate's cost over this relay is what its own work adds.
//!
//! `cargo run --release --example bench_relay -- 127.0.0.1:9101 http://127.0.0.1:9100`
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, Method, header};
use axum::response::Response;
use axum::routing::post;
use http_body_util::{BodyExt, Full};
use tollgate::config::UpstreamConfig;
use tollgate::proxy::UpstreamClient;

#[derive(Clone)]
struct Relay {
    client: UpstreamClient,
    uri: axum::http::Uri,
}

async fn relay(State(r): State<Relay>, body: Bytes) -> Response {
    let mut req = axum::http::Request::new(Full::new(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = r.uri.clone();
    let h = req.headers_mut();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer sk-bench-provider-key"),
    );
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let Ok(resp) = r.client.send(req).await else {
        return bad_gateway();
    };
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = body.collect().await.map(|b| b.to_bytes()) else {
        return bad_gateway();
    };
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = parts.status;
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
        client: UpstreamClient::new(&UpstreamConfig::default()).unwrap(),
        uri: format!("{upstream}/v1/chat/completions").parse().unwrap(),
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(relay))
        .route("/health", axum::routing::get(|| async { "ok" }))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    println!("relay on {addr} -> {upstream}");
    axum::serve(listener, app).await.unwrap();
}
