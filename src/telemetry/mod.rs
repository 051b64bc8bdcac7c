//! Telemetry: tracing setup. JSON lines in `serve` (one object per event, for log pipelines),
//! human-readable output in `dev`. Nothing here ever formats a secret: secrets live in
//! `secrecy` types whose `Debug` is redacted, and handlers log identifiers, never credentials.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Output shape of the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable, coloured when a terminal (development).
    Pretty,
}

/// Install the global subscriber. `RUST_LOG` overrides `default_filter`.
/// Calling it twice is harmless (the second call keeps the first subscriber).
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(fmt::layer().compact().with_writer(std::io::stderr))
            .try_init(),
    };
    // A second init (tests start many apps in one process) is not an error worth reporting.
    let _ = result;
}
