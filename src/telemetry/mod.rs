//! Telemetry: tracing setup and the Prometheus registry ([`metrics`]). Logs are JSON lines in
//! `serve` (one object per event, for log pipelines), human-readable output in `dev`. Nothing here ever formats a secret: secrets live in
//! `secrecy` types whose `Debug` is redacted, and handlers log identifiers, never credentials.

pub mod config;
mod json;
pub mod metrics;
pub mod requests;
pub mod trace;
mod writer;

use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

/// Output shape of the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable, coloured when a terminal (development).
    Pretty,
}

/// Keeps the log writer's thread alive; dropping it flushes what is still queued. Hold it
/// until the process is about to exit.
#[must_use = "dropping the guard stops the log writer"]
pub struct Guard {
    _writer: Option<writer::BatchGuard>,
    traces: Option<trace::Exporter>,
}

impl Guard {
    /// Send the spans still queued (when traces are exported), then let the logs flush.
    pub async fn shutdown(mut self) {
        if let Some(t) = self.traces.take() {
            // The batch exporter blocks until its last export ran on this runtime.
            let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
        }
    }
}

/// Install the global subscriber. `RUST_LOG` overrides `default_filter`. With `otlp`, spans
/// of [`trace::TARGET`] are exported there (and never printed); must then be called inside
/// the async runtime. Calling it twice is harmless (the second call keeps the first
/// subscriber).
///
/// JSON lines go through [`writer::BatchedStderr`]: routine lines are written in batches
/// (at most [`writer::FLUSH_EVERY`] late), warnings and errors at once.
pub fn init(format: LogFormat, default_filter: &str) -> Guard {
    init_with(format, default_filter, None)
}

/// [`init`], exporting traces to `otlp` when given.
pub fn init_with(
    format: LogFormat,
    default_filter: &str,
    otlp: Option<&config::OtlpConfig>,
) -> Guard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Trace spans are for the exporter only: log lines stay as they are.
    let logs = filter.and(filter_fn(|m| !(m.is_span() && m.target() == trace::TARGET)));
    let (traces, tracer, trace_error) = match otlp.map(trace::provider) {
        Some(Ok((exporter, tracer))) => (Some(exporter), Some(tracer), None),
        Some(Err(e)) => (None, None, Some(e)),
        None => (None, None, None),
    };
    let spans = tracer.map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t)
            .with_filter(filter_fn(|m| m.target() == trace::TARGET))
    });
    let registry = tracing_subscriber::registry().with(spans);
    let (result, guard) = match format {
        LogFormat::Json => {
            let (writer, guard) = writer::BatchedStderr::new();
            let r = registry
                .with(
                    fmt::layer()
                        .event_format(json::JsonLines)
                        .with_writer(writer)
                        .with_filter(logs),
                )
                .try_init();
            (r, Some(guard))
        }
        LogFormat::Pretty => (
            registry
                .with(
                    fmt::layer()
                        .compact()
                        .with_writer(std::io::stderr)
                        .with_filter(logs),
                )
                .try_init(),
            None,
        ),
    };
    // A second init (tests start many apps in one process) is not an error worth reporting.
    let _ = result;
    if let Some(e) = trace_error {
        tracing::error!(error = %e, "traces are not exported");
    }
    if let Some(o) = otlp.filter(|_| traces.is_some()) {
        tracing::info!(endpoint = %o.traces_url(), sample_ratio = o.sample_ratio, "exporting traces over OTLP/HTTP");
    }
    Guard {
        _writer: guard,
        traces,
    }
}
