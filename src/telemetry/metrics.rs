//! Prometheus metrics. One registry per application, nothing global: tests run many apps in
//! one process, and a replica's numbers must be its own. Values the application already keeps
//! (cache ages, key counts) are read by [`Collector`]s at scrape time instead of being mirrored
//! on every change, so the request path pays nothing for them.
//!
//! Labels are identifiers with a bounded set of values (backend, provider, key state), never a
//! key, a token, a subject or a request id.

use prometheus_client::collector::Collector;
use prometheus_client::registry::Registry;

/// What `GET /metrics` answers with (OpenMetrics text, which Prometheus scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric name starts with this.
pub const PREFIX: &str = "tollgate";

/// The registry of one application.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            registry: Registry::with_prefix(PREFIX),
        }
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// The registry itself (request-path families register into it).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Add a collector read at every scrape.
    pub fn register_collector(&mut self, collector: impl Collector) {
        self.registry.register_collector(Box::new(collector));
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a `String` cannot fail; a collector that reports an error leaves the
        // families before it, which is still valid exposition up to the point it stopped.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("a metrics collector failed; the scrape is partial");
        }
        out
    }
}
