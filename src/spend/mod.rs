//! Asynchronous, batched writers for the rows the hot path produces (spend records, issued
//! tokens, audit entries). The hot path only does a non-blocking `try_send` into a bounded
//! queue; a background task writes batches to the store.
//!
//! When the store fails (down, slow past [`WRITE_TIMEOUT`], restarting), batches go to the
//! writer's [`Spool`] on local disk, in order, and are replayed from there once the store
//! answers, also by the next process after a restart. While a spool holds batches, new ones
//! join it behind them, so rows reach the store in the order they were made (an audit chain
//! never has a hole that later fills). When the spool cannot take more (its `max_bytes`, or
//! the disk is full), rows wait in memory and, with [`OnFull::Refuse`], the writer reports
//! that it is not accepting, so the proxy refuses new calls rather than serve calls it
//! cannot record. Without a spool (`spool.enabled = false`), rows wait in memory up to
//! `queue_capacity` and past that are counted as dropped and logged.

pub mod spool;

pub use spool::{Spool, SpoolError};

use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Writes one batch; `Err` keeps the batch for a retry.
pub type Sink<T> = Arc<
    dyn Fn(Vec<T>) -> Pin<Box<dyn Future<Output = Result<(), (Vec<T>, String)>> + Send>>
        + Send
        + Sync,
>;

/// A store write that takes longer than this counts as failed and its batch is spooled (a
/// replay that repeats it is harmless: sinks are idempotent).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a writer does when the store is down and its spool can take no more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFull {
    /// Refuse new model calls and token exchanges (503 `unavailable`) until rows can be made
    /// durable again: nothing is served that cannot be recorded.
    #[default]
    Refuse,
    /// Keep serving; rows wait in memory up to `queue_capacity`, then are dropped and counted.
    Serve,
}

/// A writer's durable overflow.
pub struct Overflow {
    /// The opened spool.
    pub spool: Spool,
    /// What to do when it is full.
    pub on_full: OnFull,
}

/// Where a writer's rows are going.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterState {
    /// Straight to the store.
    Direct,
    /// To the spool on disk, replayed when the store answers.
    Spooling,
    /// Held in memory: the store is failing and the spool cannot take them (full, a disk
    /// error, or no spool).
    Holding,
}

impl WriterState {
    /// `direct`, `spooling`, `holding`.
    pub fn as_str(self) -> &'static str {
        match self {
            WriterState::Direct => "direct",
            WriterState::Spooling => "spooling",
            WriterState::Holding => "holding",
        }
    }
    fn from_u8(v: u8) -> Self {
        match v {
            1 => WriterState::Spooling,
            2 => WriterState::Holding,
            _ => WriterState::Direct,
        }
    }
}

#[derive(Default)]
struct Shared {
    dropped: AtomicU64,
    state: AtomicU8,
    spool_bytes: AtomicU64,
    spool_batches: AtomicU64,
    held: AtomicU64,
    /// Set when a spool exists and its `on_full` is `refuse`.
    refuse_when_holding: bool,
}

/// The producer side, cheap to clone.
pub struct Writer<T> {
    tx: mpsc::Sender<T>,
    shared: Arc<Shared>,
    name: &'static str,
}

impl<T> Clone for Writer<T> {
    fn clone(&self) -> Self {
        Writer {
            tx: self.tx.clone(),
            shared: Arc::clone(&self.shared),
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

/// A writer's state for `/readyz` and `/metrics`.
#[derive(Clone, Copy, Debug)]
pub struct WriterStatus {
    /// Where rows go.
    pub state: WriterState,
    /// Rows waiting in the in-memory queue.
    pub queued: usize,
    /// Rows held in memory because the spool could not take them.
    pub held: u64,
    /// Bytes in the spool.
    pub spool_bytes: u64,
    /// Batches in the spool.
    pub spool_batches: u64,
    /// Rows dropped (queue full with nowhere else to go).
    pub dropped: u64,
    /// False when new work should be refused (holding, with `on_full = "refuse"`).
    pub accepting: bool,
}

impl<T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static> Writer<T> {
    /// Start the writer task. It stops after `cancel`, once the queue is flushed to the store
    /// or the spool (or, without a spool, the shutdown deadline passes with the store still
    /// failing).
    pub fn spawn(
        name: &'static str,
        cfg: WriterConfig,
        sink: Sink<T>,
        overflow: Option<Overflow>,
        cancel: CancellationToken,
    ) -> (Writer<T>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            refuse_when_holding: overflow
                .as_ref()
                .is_some_and(|o| o.on_full == OnFull::Refuse),
            ..Shared::default()
        });
        let spool = overflow.map(|o| Arc::new(Mutex::new(o.spool)));
        let mut run = Run {
            name,
            cfg,
            sink,
            shared: Arc::clone(&shared),
            spool,
            held: Vec::new(),
            backoff: MIN_BACKOFF,
            retry_at: None,
            failing: false,
            cancel: cancel.clone(),
        };
        run.publish_spool();
        if run.spool_batches() > 0 {
            tracing::info!(
                writer = name,
                batches = run.spool_batches(),
                "spool holds batches from a previous run; replaying them"
            );
            run.retry_at = Some(Instant::now());
        }
        let handle = tokio::spawn(run.run(rx, cancel));
        (Writer { tx, shared, name }, handle)
    }
}

impl<T> Writer<T> {
    /// A writer whose rows the caller receives (tests drive the queue by hand).
    #[cfg(test)]
    pub(crate) fn detached(name: &'static str, capacity: usize) -> (Writer<T>, mpsc::Receiver<T>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Writer {
                tx,
                shared: Arc::default(),
                name,
            },
            rx,
        )
    }

    /// Queue a row without waiting. Returns false (and logs) when the queue is full.
    pub fn record(&self, row: T) -> bool {
        match self.tx.try_send(row) {
            Ok(()) => true,
            Err(_) => {
                let n = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
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
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Rows waiting to be written (they pile up while the store is slow or down).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The writer's name (`spend`, `issued_tokens`, …).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether new work may be taken: false only while rows can be neither written nor
    /// spooled and the spool's `on_full` is `refuse`. One atomic load (the hot path asks).
    pub fn accepting(&self) -> bool {
        !(self.shared.refuse_when_holding
            && self.shared.state.load(Ordering::Relaxed) == WriterState::Holding as u8)
    }

    /// Everything `/readyz` and `/metrics` show.
    pub fn status(&self) -> WriterStatus {
        WriterStatus {
            state: WriterState::from_u8(self.shared.state.load(Ordering::Relaxed)),
            queued: self.queued(),
            held: self.shared.held.load(Ordering::Relaxed),
            spool_bytes: self.shared.spool_bytes.load(Ordering::Relaxed),
            spool_batches: self.shared.spool_batches.load(Ordering::Relaxed),
            dropped: self.dropped(),
            accepting: self.accepting(),
        }
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

struct Run<T> {
    name: &'static str,
    cfg: WriterConfig,
    sink: Sink<T>,
    shared: Arc<Shared>,
    spool: Option<Arc<Mutex<Spool>>>,
    /// Rows the store did not take and the spool could not: oldest first, after everything
    /// in the spool.
    held: Vec<T>,
    backoff: Duration,
    /// When to try the store again with the backlog; `None` while there is none.
    retry_at: Option<Instant>,
    /// The last store write failed (shutdown does not wait on such a store again).
    failing: bool,
    /// Cancelled at shutdown: with a spool, a write still waiting on the store gives up and
    /// its rows go to disk.
    cancel: CancellationToken,
}

/// With a spool, the most shutdown waits on one store write before spooling its rows.
const SHUTDOWN_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// What one replay step did.
enum Drained {
    /// A batch reached the store (or a corrupt one was moved aside): go on.
    Progress,
    /// The store refused; try again later.
    Failed,
    /// Nothing left.
    Empty,
}

impl<T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static> Run<T> {
    fn spool_batches(&self) -> u64 {
        self.shared.spool_batches.load(Ordering::Relaxed)
    }

    fn backlog(&self) -> bool {
        !self.held.is_empty() || self.spool_batches() > 0
    }

    fn publish_spool(&self) {
        if let Some(sp) = &self.spool {
            let s = sp.lock();
            self.shared.spool_bytes.store(s.bytes(), Ordering::Relaxed);
            self.shared
                .spool_batches
                .store(s.segments() as u64, Ordering::Relaxed);
        }
        self.shared
            .held
            .store(self.held.len() as u64, Ordering::Relaxed);
        let state = if !self.held.is_empty() {
            WriterState::Holding
        } else if self.spool_batches() > 0 {
            WriterState::Spooling
        } else {
            WriterState::Direct
        };
        let before = self.shared.state.swap(state as u8, Ordering::Relaxed);
        if before != state as u8 {
            let before = WriterState::from_u8(before);
            match state {
                WriterState::Holding => tracing::error!(
                    writer = self.name,
                    held = self.held.len(),
                    refusing = self.shared.refuse_when_holding,
                    "store failing and spool unable to take more: rows held in memory"
                ),
                WriterState::Spooling => tracing::warn!(
                    writer = self.name,
                    from = before.as_str(),
                    "rows go to the local spool until the store answers"
                ),
                WriterState::Direct => {
                    tracing::info!(writer = self.name, "backlog replayed; writing to the store")
                }
            }
        }
    }

    /// One store write, bounded by [`WRITE_TIMEOUT`] (by [`SHUTDOWN_WRITE_TIMEOUT`] once
    /// shutdown has begun, when a spool can take the rows).
    async fn write(&mut self, rows: Vec<T>) -> Result<(), (Vec<T>, String)> {
        let copy = rows.clone();
        let spooled = self.spool.is_some();
        let limit = if spooled && self.cancel.is_cancelled() {
            SHUTDOWN_WRITE_TIMEOUT
        } else {
            WRITE_TIMEOUT
        };
        let cancel = self.cancel.clone();
        let shutdown = async move {
            if spooled && !cancel.is_cancelled() {
                cancel.cancelled().await;
                tokio::time::sleep(SHUTDOWN_WRITE_TIMEOUT).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let r = tokio::select! {
            r = tokio::time::timeout(limit, (self.sink)(rows)) => match r {
                Ok(r) => r,
                Err(_) => Err((copy, format!("store write timed out after {limit:?}"))),
            },
            () = shutdown => Err((copy, "store write still waiting at shutdown".to_owned())),
        };
        self.failing = r.is_err();
        r
    }

    /// Rows the store did not take, in order behind everything already waiting: into the
    /// spool while it takes them, in memory otherwise.
    async fn spill(&mut self, rows: Vec<T>) {
        self.held.extend(rows);
        if let Some(sp) = &self.spool {
            while !self.held.is_empty() {
                let n = self.held.len().min(self.cfg.batch_size.max(1));
                let chunk = self.held[..n].to_vec();
                let sp = Arc::clone(sp);
                let appended = tokio::task::spawn_blocking(move || sp.lock().append(&chunk))
                    .await
                    .unwrap_or_else(|e| {
                        Err(SpoolError::Io {
                            path: Default::default(),
                            error: std::io::Error::other(e.to_string()),
                        })
                    });
                match appended {
                    Ok(()) => {
                        self.held.drain(..n);
                    }
                    Err(e) => {
                        if self.shared.state.load(Ordering::Relaxed) != WriterState::Holding as u8 {
                            tracing::error!(writer = self.name, error = %e, "spool refused a batch");
                        }
                        break;
                    }
                }
            }
        }
        let cap = self.cfg.queue_capacity.max(1);
        if self.held.len() > cap {
            let lost = (self.held.len() - cap) as u64;
            self.held.truncate(cap);
            let n = self.shared.dropped.fetch_add(lost, Ordering::Relaxed) + lost;
            tracing::error!(
                writer = self.name,
                dropped_total = n,
                "store and spool unavailable and memory bound reached: rows dropped"
            );
        }
        if self.retry_at.is_none() {
            self.retry_at = Some(Instant::now() + self.backoff);
        }
        self.publish_spool();
    }

    /// Replay the oldest waiting batch.
    async fn drain_one(&mut self) -> Drained {
        if let Some(spool) = self.spool.clone()
            && self.spool_batches() > 0
        {
            let sp = Arc::clone(&spool);
            let front = tokio::task::spawn_blocking(move || sp.lock().front::<T>())
                .await
                .ok()
                .flatten();
            let outcome = match front {
                None => Drained::Empty,
                Some(Ok(rows)) => match self.write(rows).await {
                    Ok(()) => {
                        let sp = Arc::clone(&spool);
                        match tokio::task::spawn_blocking(move || sp.lock().pop_front()).await {
                            Ok(Ok(())) => Drained::Progress,
                            Ok(Err(e)) => {
                                tracing::error!(writer = self.name, error = %e, "spool: a replayed batch could not be removed");
                                Drained::Failed
                            }
                            Err(_) => Drained::Failed,
                        }
                    }
                    Err((_, why)) => {
                        tracing::warn!(writer = self.name, error = %why, "store still failing; spool kept");
                        Drained::Failed
                    }
                },
                Some(Err(SpoolError::Corrupt { path, error })) => {
                    let sp = Arc::clone(&spool);
                    let aside =
                        tokio::task::spawn_blocking(move || sp.lock().quarantine_front()).await;
                    tracing::error!(writer = self.name, segment = %path.display(), error, moved_to = ?aside.ok().and_then(Result::ok), "spool segment unreadable: moved aside, its rows are not replayed");
                    Drained::Progress
                }
                Some(Err(e)) => {
                    tracing::error!(writer = self.name, error = %e, "spool unreadable");
                    Drained::Failed
                }
            };
            self.publish_spool();
            return outcome;
        }
        if self.held.is_empty() {
            self.publish_spool();
            return Drained::Empty;
        }
        let n = self.held.len().min(self.cfg.batch_size.max(1));
        let chunk: Vec<T> = self.held.drain(..n).collect();
        let outcome = match self.write(chunk).await {
            Ok(()) => Drained::Progress,
            Err((mut rows, why)) => {
                tracing::warn!(writer = self.name, rows = rows.len(), error = %why, "store write failed; will retry");
                rows.append(&mut self.held);
                self.held = rows;
                Drained::Failed
            }
        };
        self.publish_spool();
        outcome
    }

    async fn run(mut self, mut rx: mpsc::Receiver<T>, cancel: CancellationToken) {
        let mut batch: Vec<T> = Vec::with_capacity(self.cfg.batch_size);
        let mut closing = false;
        while !closing {
            // Gather a batch: wait for its first row, then more until it is full or
            // `flush_interval` has passed since that row (one write per interval under load,
            // not one per request). A due replay cuts the wait short.
            let replay_at = self.retry_at;
            if batch.is_empty() {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => closing = true,
                    got = rx.recv() => match got {
                        Some(row) => batch.push(row),
                        None => closing = true,
                    },
                    _ = sleep_until_opt(replay_at) => {}
                }
            }
            if !batch.is_empty() && !closing {
                let deadline = Instant::now() + self.cfg.flush_interval;
                let deadline = replay_at.map_or(deadline, |r| r.min(deadline));
                while batch.len() < self.cfg.batch_size {
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
            }
            if closing {
                break;
            }
            if !batch.is_empty() {
                let rows = std::mem::take(&mut batch);
                if self.backlog() {
                    self.spill(rows).await;
                } else if let Err((rows, why)) = self.write(rows).await {
                    tracing::warn!(writer = self.name, rows = rows.len(), error = %why, "store write failed; rows spooled");
                    self.spill(rows).await;
                }
            }
            if self.retry_at.is_some_and(|t| t <= Instant::now()) {
                match self.drain_one().await {
                    Drained::Progress => {
                        self.backoff = MIN_BACKOFF;
                        self.retry_at = Some(Instant::now());
                    }
                    Drained::Failed => {
                        self.retry_at = Some(Instant::now() + self.backoff);
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    }
                    Drained::Empty => {
                        self.backoff = MIN_BACKOFF;
                        self.retry_at = None;
                    }
                }
            }
        }
        rx.close();
        while let Some(row) = rx.recv().await {
            batch.push(row);
        }
        self.finish(batch).await;
    }

    /// Shutdown: everything still queued goes to the store, or to the spool when the store
    /// fails (it is replayed by the next start); a backlog is replayed while the store
    /// answers, until the shutdown deadline.
    async fn finish(mut self, rows: Vec<T>) {
        let deadline = Instant::now() + self.cfg.shutdown_deadline;
        if self.backlog() {
            self.spill(rows).await;
        } else {
            let mut rows = rows;
            while !rows.is_empty() {
                let rest = rows.split_off(rows.len().min(self.cfg.batch_size.max(1)));
                if let Err((back, why)) = self.write(rows).await {
                    tracing::warn!(writer = self.name, error = %why, "store write failed at shutdown");
                    let mut back = back;
                    back.extend(rest);
                    self.spill(back).await;
                    break;
                }
                rows = rest;
            }
        }
        // After a failed write (here or the last one before shutdown), rows that are safe on
        // disk do not make shutdown wait on the store again.
        let safe_on_disk = |run: &Self| run.spool.is_some() && run.held.is_empty();
        while self.backlog() && Instant::now() < deadline && !(self.failing && safe_on_disk(&self))
        {
            match self.drain_one().await {
                Drained::Progress => {}
                Drained::Empty => break,
                // With a spool the rows are safe on disk: stop trying a failing store.
                Drained::Failed if safe_on_disk(&self) => break,
                Drained::Failed => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        if !self.held.is_empty() {
            tracing::error!(
                writer = self.name,
                lost = self.held.len(),
                "store and spool unavailable at shutdown: rows not written"
            );
        } else if let Some(sp) = &self.spool {
            let s = sp.lock();
            if !s.is_empty() {
                tracing::warn!(
                    writer = self.name,
                    batches = s.segments(),
                    bytes = s.bytes(),
                    spool = %s.dir().display(),
                    "store unavailable at shutdown: rows left in the spool, replayed at the next start"
                );
                return;
            }
        }
        tracing::info!(writer = self.name, "writer flushed");
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
