//! A loopback webhook receiver: records every JSON body POSTed to `/hook/<kind>`.

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use parking_lot::Mutex;
use serde_json::Value;
use std::sync::Arc;

/// `(kind, body)` of every delivery, in arrival order.
pub type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// Start a receiver; returns its base URL and what it received.
pub async fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    async fn hook(
        State(seen): State<Seen>,
        axum::extract::Path(kind): axum::extract::Path<String>,
        axum::Json(v): axum::Json<Value>,
    ) -> &'static str {
        seen.lock().push((kind, v));
        "ok"
    }
    let app = Router::new()
        .route("/hook/{kind}", post(hook))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}
