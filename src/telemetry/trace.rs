//! OpenTelemetry traces, off unless `[telemetry.otlp]` is set: one server span per request
//! (from its `traceparent` when the caller sent one) and a client span per provider call,
//! whose context goes upstream as W3C `traceparent`.
//!
//! Spans are `tracing` spans of target [`TARGET`], turned into OpenTelemetry spans by
//! `tracing-opentelemetry` and exported in batches over OTLP/HTTP. While export is off no span
//! is made at all ([`enabled`] is one atomic load), so the request path pays nothing. Span
//! attributes are the same bounded identifiers as metric labels plus the request id: never a
//! token, a key, a prompt or a subject.

use super::config::OtlpConfig;
use bytes::Bytes;
use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every span exported (and of no log line).
pub const TARGET: &str = "tollgate::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (so worth making).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The exporting side, kept by the log guard: dropping it flushes the spans still queued.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Send what is queued and stop. Blocks (the batch thread hands its last export to the
    /// async runtime): call it off the runtime's worker threads.
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "trace export: spans still queued at exit were not sent");
        }
    }
}

/// The tracer provider for `config`, and the tracer the `tracing` layer writes into. Must be
/// called inside the async runtime: exports run on it.
pub fn provider(
    config: &OtlpConfig,
) -> Result<(Exporter, opentelemetry_sdk::trace::Tracer), String> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let http = reqwest::Client::builder()
        .timeout(config.timeout)
        .build()
        .map_err(|e| format!("trace export client: {e}"))?;
    let client = RuntimeClient {
        http,
        rt: tokio::runtime::Handle::try_current()
            .map_err(|_| "trace export needs the async runtime".to_owned())?,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(config.traces_url())
        .with_timeout(config.timeout)
        .with_http_client(client)
        .build()
        .map_err(|e| format!("trace exporter: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("tollgate");
    ENABLED.store(true, Ordering::Relaxed);
    Ok((Exporter { provider }, tracer))
}

/// The span of one HTTP request, child of the caller's `traceparent` when it sent one.
pub fn server_span(method: &http::Method, route: &str, headers: &HeaderMap) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        tollgate.request_id = tracing::field::Empty,
        tollgate.error_code = tracing::field::Empty,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderReader(headers));
    // A malformed or absent `traceparent` leaves an empty context: the span starts a trace.
    let _ = span.set_parent(parent);
    span
}

/// Record how a request ended on its span.
pub fn finish_server(span: &Span, status: u16, request_id: Option<&str>, code: Option<&str>) {
    if span.is_none() {
        return;
    }
    span.record("http.response.status_code", status);
    if let Some(id) = request_id {
        span.record("tollgate.request_id", id);
    }
    if let Some(code) = code {
        span.record("tollgate.error_code", code);
    }
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
}

/// The span of one provider call (a child of the current request's span), with its context
/// written into the outgoing `headers` as `traceparent`.
pub fn client_span(provider: &str, model: &str, host: &str, headers: &mut HeaderMap) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "upstream",
        otel.name = format!("POST {provider}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = "POST",
        server.address = host,
        http.response.status_code = tracing::field::Empty,
        gen_ai.request.model = model,
        tollgate.provider = provider,
    );
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderWriter(headers));
    span
}

/// Record the provider's answer on its span.
pub fn finish_client(span: &Span, status: u16) {
    if span.is_none() {
        return;
    }
    span.record("http.response.status_code", status);
    if status >= 500 || status == 429 {
        span.record("otel.status_code", "error");
    }
}

struct HeaderReader<'a>(&'a HeaderMap);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderWriter<'a>(&'a mut HeaderMap);

impl Injector for HeaderWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// The exporter's HTTP client. The batch processor exports from its own thread, outside the
/// async runtime, so each export is spawned onto the runtime and awaited from there.
#[derive(Debug)]
struct RuntimeClient {
    http: reqwest::Client,
    rt: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for RuntimeClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let http = self.http.clone();
        let call = async move {
            let (parts, body) = request.into_parts();
            let resp = http
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await?;
            let mut out = http::Response::new(body);
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok::<_, reqwest::Error>(out)
        };
        Ok(self.rt.spawn(call).await??)
    }
}
