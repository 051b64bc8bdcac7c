//! Telemetry: tracing setup and the Prometheus registry ([`metrics`]). Logs are JSON lines in
//! `serve` (one object per event, for log pipelines), human-readable output in `dev`. Nothing here ever formats a secret: secrets live in
//! `secrecy` types whose `Debug` is redacted, and handlers log identifiers, never credentials.

mod json;
pub mod metrics;
pub mod requests;
mod writer;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

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
}

/// Install the global subscriber. `RUST_LOG` overrides `default_filter`.
/// Calling it twice is harmless (the second call keeps the first subscriber).
///
/// JSON lines go through [`writer::BatchedStderr`]: routine lines are written in batches
/// (at most [`writer::FLUSH_EVERY`] late), warnings and errors at once.
pub fn init(format: LogFormat, default_filter: &str) -> Guard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let registry = tracing_subscriber::registry().with(filter);
    let (result, guard) = match format {
        LogFormat::Json => {
            let (writer, guard) = writer::BatchedStderr::new();
            let r = registry
                .with(
                    fmt::layer()
                        .event_format(json::JsonLines)
                        .with_writer(writer),
                )
                .try_init();
            (r, Some(guard))
        }
        LogFormat::Pretty => (
            registry
                .with(fmt::layer().compact().with_writer(std::io::stderr))
                .try_init(),
            None,
        ),
    };
    // A second init (tests start many apps in one process) is not an error worth reporting.
    let _ = result;
    Guard { _writer: guard }
}
