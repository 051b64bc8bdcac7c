//! Asynchronous, batched writers for the rows the hot path produces (spend records, issued
//! tokens). The hot path only does a non-blocking `try_send` into a bounded queue; a
//! background task writes batches to the store, retrying with backoff while the store is down,
//! and flushes everything on shutdown.
//!
//! Bound: while the store is down, up to `queue_capacity` rows wait in memory; past that new
//! rows are counted as dropped and logged loudly. The durable on-disk spool that closes this
//! gap is part of the hardening issue.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Writes one batch; `Err` keeps the batch for a retry.
pub type Sink<T> = Arc<
    dyn Fn(Vec<T>) -> Pin<Box<dyn Future<Output = Result<(), (Vec<T>, String)>> + Send>>
        + Send
        + Sync,
>;

/// The producer side, cheap to clone.
pub struct Writer<T> {
    tx: mpsc::Sender<T>,
    dropped: Arc<AtomicU64>,
    name: &'static str,
}

impl<T> Clone for Writer<T> {
    fn clone(&self) -> Self {
        Writer {
            tx: self.tx.clone(),
            dropped: Arc::clone(&self.dropped),
            name: self.name,
        }
    }
}

/// Batching settings.
#[derive(Clone, Copy, Debug)]
pub struct WriterConfig {
    /// Rows per write.
    pub batch_size: usize,
    /// Longest a row waits.
    pub flush_interval: Duration,
    /// Rows held while the store is slow or down.
    pub queue_capacity: usize,
    /// How long shutdown keeps retrying a failing store before giving up.
    pub shutdown_deadline: Duration,
}

impl<T: Send + 'static> Writer<T> {
    /// Start the writer task. It stops after `cancel`, once the queue is flushed (or the
    /// shutdown deadline passes with the store still failing).
    pub fn spawn(
        name: &'static str,
        cfg: WriterConfig,
        sink: Sink<T>,
        cancel: CancellationToken,
    ) -> (Writer<T>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let handle = tokio::spawn(run(name, cfg, sink, rx, cancel));
        (
            Writer {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
                name,
            },
            handle,
        )
    }

    /// A writer whose rows the caller receives (tests drive the queue by hand).
    #[cfg(test)]
    pub(crate) fn detached(name: &'static str, capacity: usize) -> (Writer<T>, mpsc::Receiver<T>) {
        let (tx, rx) = mpsc::channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        (Writer { tx, dropped, name }, rx)
    }

    /// Queue a row without waiting. Returns false (and logs) when the queue is full.
    pub fn record(&self, row: T) -> bool {
        match self.tx.try_send(row) {
            Ok(()) => true,
            Err(_) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(
                    writer = self.name,
                    dropped_total = n,
                    "writer queue full or closed: row dropped"
                );
                false
            }
        }
    }

    /// Rows dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Rows waiting to be written (they pile up while the store is slow or down).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The writer's name (`spend`, `issued_tokens`, …).
    pub fn name(&self) -> &'static str {
        self.name
    }
}

async fn run<T: Send + 'static>(
    name: &'static str,
    cfg: WriterConfig,
    sink: Sink<T>,
    mut rx: mpsc::Receiver<T>,
    cancel: CancellationToken,
) {
    let mut batch: Vec<T> = Vec::with_capacity(cfg.batch_size);
    let mut backoff = Duration::from_millis(100);
    loop {
        // Wait for the first row of a batch, then gather more until the batch is full or
        // `flush_interval` has passed since that first row: one write per interval under
        // load, not one per request.
        if batch.is_empty() {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                got = rx.recv() => match got {
                    Some(row) => batch.push(row),
                    None => break,
                },
            }
        }
        let deadline = tokio::time::Instant::now() + cfg.flush_interval;
        let mut closing = false;
        while batch.len() < cfg.batch_size {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => { closing = true; break; }
                got = rx.recv() => match got {
                    Some(row) => batch.push(row),
                    None => { closing = true; break; }
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        if closing {
            break;
        }
        match (sink)(std::mem::take(&mut batch)).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err((rows, why)) => {
                tracing::warn!(writer = name, rows = rows.len(), error = %why, "store write failed; will retry");
                batch = rows;
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    rx.close();
    while let Some(row) = rx.recv().await {
        batch.push(row);
    }
    flush_all(name, &sink, batch, cfg).await;
}

async fn flush_all<T: Send + 'static>(
    name: &'static str,
    sink: &Sink<T>,
    mut rows: Vec<T>,
    cfg: WriterConfig,
) {
    let deadline = tokio::time::Instant::now() + cfg.shutdown_deadline;
    while !rows.is_empty() {
        let rest = rows.split_off(rows.len().min(cfg.batch_size));
        match (sink)(rows).await {
            Ok(()) => rows = rest,
            Err((mut back, why)) => {
                if tokio::time::Instant::now() >= deadline {
                    tracing::error!(writer = name, lost = back.len() + rest.len(), error = %why, "store unavailable at shutdown: rows not written");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                back.extend(rest);
                rows = back;
            }
        }
    }
    tracing::info!(writer = name, "writer flushed");
}

#[cfg(test)]
mod tests;
