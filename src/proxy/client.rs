//! The upstream HTTP client: hyper's pooled client (HTTP/1.1, and HTTP/2 where TLS ALPN
//! offers it) over rustls with the webpki roots.
//!
//! Not reqwest, on purpose: reqwest's per-request layers (URL re-parse of every response,
//! redirect and retry policies, default headers) cost more CPU than all of Tollgate's own
//! checks together (profiled in `bench/RESULTS.md`). And a gateway that holds provider keys
//! must never follow a redirect with one: this client has no redirect logic at all, so a 3xx
//! from a provider is an upstream error, never a second request.

use crate::config::UpstreamConfig;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use std::time::Duration;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A pooled client, cheap to clone.
#[derive(Clone)]
pub struct UpstreamClient {
    inner: Client<Connector, Full<Bytes>>,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made (refused, DNS, TLS handshake, connect timeout).
    #[error("connection failed")]
    Connect,
    /// The connection broke before a response head arrived.
    #[error("request failed")]
    Request,
}

impl UpstreamClient {
    /// A client with the connect timeout and pool size of `cfg`.
    pub fn new(cfg: &UpstreamConfig) -> Result<Self, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .build(https);
        Ok(UpstreamClient { inner })
    }

    /// Send one request; the caller bounds the wait.
    pub async fn send(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, SendError> {
        self.inner.request(req).await.map_err(|e| {
            if e.is_connect() {
                SendError::Connect
            } else {
                SendError::Request
            }
        })
    }
}
