//! The audit log: who did what, provably. Every token issued, admin action, revocation, pause
//! and budget decision that is not a plain allow is appended to a hash chain in the store.
//!
//! Each process appends to a chain of its own (a fresh id per start), so replicas never wait
//! on each other or on a fleet-wide lock to append, and the hot path only hashes a few hundred
//! bytes under a short lock and queues the row for the batched writer. Chains are tied to one
//! another by **anchors**: a chain's first entry, and then an entry every `anchor_interval`,
//! record the heads (last seq and hash) of the other chains, so deleting the tail of a chain,
//! or a whole chain, is found by [`verify`] up to its last anchor.
//!
//! Loss: entries go to the writer's local spool while the store is down and are replayed in
//! order when it answers (the same path as spend rows). An entry refused because the queue is full never
//! takes a place in the chain, so the chain stays intact; the next entry that fits is preceded
//! by an `audit.dropped` entry with the count, so the loss itself is on the record.

mod chain;
mod verify;

pub use chain::{GENESIS_PREV, entry_hash};
pub use verify::{Problem, ProblemKind, Report, verify};

use crate::spend::{Overflow, Sink, Writer, WriterConfig};
use crate::store::{AuditRecord, Store};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `[audit]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// How often this replica's chain records the heads of the other chains.
    #[serde(default = "default_anchor", with = "humantime_serde")]
    pub anchor_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            anchor_interval: default_anchor(),
        }
    }
}

fn default_anchor() -> Duration {
    Duration::from_secs(60)
}

/// The actor of entries Tollgate makes on its own (anchors, pauses of the anomaly guard).
pub const SYSTEM: &str = "tollgate";

/// How far back a new chain looks for chains to anchor.
const GENESIS_LOOKBACK_MS: i64 = 7 * 24 * 3600 * 1000;

struct Head {
    next_seq: i64,
    hash: String,
    dropped: u64,
}

/// This process's chain; cheap to share.
pub struct Audit {
    chain_id: String,
    head: Mutex<Head>,
    writer: Writer<AuditRecord>,
}

impl Audit {
    /// Open a new chain: its first entry (`chain.start`) anchors the heads of the chains that
    /// appended in the last week. Returns the writer task, which flushes on `cancel`.
    pub async fn start(
        store: Store,
        cfg: WriterConfig,
        overflow: Option<Overflow>,
        cancel: CancellationToken,
    ) -> (Arc<Audit>, JoinHandle<()>) {
        let (writer, task) = Writer::spawn("audit", cfg, sink(store.clone()), overflow, cancel);
        let audit = Arc::new(Audit::new(writer));
        let since = crate::clock::ledger_ms() - GENESIS_LOOKBACK_MS;
        let anchors = match store.audit_heads(since).await {
            Ok(heads) => heads,
            Err(e) => {
                tracing::warn!(error = %e, "audit: chain heads unreadable; this chain starts without anchors");
                Vec::new()
            }
        };
        audit.record(
            SYSTEM,
            "chain.start",
            &audit.chain_id,
            json!({
                "host": std::env::var("HOSTNAME").ok(),
                "pid": std::process::id(),
                "version": env!("CARGO_PKG_VERSION"),
                "anchors": anchors_json(&anchors),
            }),
        );
        (audit, task)
    }

    fn new(writer: Writer<AuditRecord>) -> Audit {
        Audit {
            chain_id: uuid::Uuid::now_v7().to_string(),
            head: Mutex::new(Head {
                next_seq: 0,
                hash: GENESIS_PREV.to_owned(),
                dropped: 0,
            }),
            writer,
        }
    }

    /// Record one entry from a short-lived process (a CLI command acting on the store): a
    /// chain of its own with the entry, closed and flushed before this returns.
    pub async fn record_once(
        store: &Store,
        actor: &str,
        action: &str,
        target: &str,
        detail: Value,
    ) {
        let cancel = CancellationToken::new();
        let cfg = WriterConfig {
            batch_size: 16,
            flush_interval: Duration::from_millis(1),
            queue_capacity: 16,
            shutdown_deadline: Duration::from_secs(10),
        };
        let (audit, task) = Audit::start(store.clone(), cfg, None, cancel.clone()).await;
        audit.record(actor, action, target, detail);
        audit.close();
        cancel.cancel();
        let _ = task.await;
    }

    /// The writer's state (spool, backlog, whether it accepts new work).
    pub fn writer_status(&self) -> crate::spend::WriterStatus {
        self.writer.status()
    }

    /// Whether new entries can be made durable (see [`Writer::accepting`]).
    pub fn accepting(&self) -> bool {
        self.writer.accepting()
    }

    /// This process's chain id.
    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    /// Append an entry. Never waits: the row is hashed into the chain and queued for the
    /// writer. `detail` should be a JSON object; it must never hold a secret or a token.
    pub fn record(&self, actor: &str, action: &str, target: &str, detail: Value) {
        let mut head = self.head.lock();
        if head.dropped > 0 {
            let n = head.dropped;
            let row = self.chained(&head, SYSTEM, "audit.dropped", "", json!({"entries": n}));
            if self.push(&mut head, row) {
                head.dropped = 0;
            } else {
                head.dropped += 1;
                return;
            }
        }
        let row = self.chained(&head, actor, action, target, detail);
        if !self.push(&mut head, row) {
            head.dropped += 1;
        }
    }

    /// Record the chain's clean end (on shutdown, before the writer flushes).
    pub fn close(&self) {
        let entries = self.head.lock().next_seq;
        self.record(
            SYSTEM,
            "chain.end",
            &self.chain_id,
            json!({"entries": entries}),
        );
    }

    fn chained(
        &self,
        head: &Head,
        actor: &str,
        action: &str,
        target: &str,
        detail: Value,
    ) -> AuditRecord {
        let mut row = AuditRecord {
            chain_id: self.chain_id.clone(),
            seq: head.next_seq,
            at: crate::clock::ledger_ms(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail: detail.to_string(),
            prev_hash: head.hash.clone(),
            hash: String::new(),
        };
        row.hash = entry_hash(&row);
        row
    }

    /// Queue `row`; only a queued row advances the chain, so a drop leaves no hole.
    fn push(&self, head: &mut Head, row: AuditRecord) -> bool {
        let hash = row.hash.clone();
        if self.writer.record(row) {
            head.next_seq += 1;
            head.hash = hash;
            true
        } else {
            false
        }
    }

    /// Every `interval`, record the heads of the other chains that moved since the last
    /// anchor (nothing when none did).
    pub fn spawn_anchoring(
        self: &Arc<Self>,
        store: Store,
        interval: Duration,
        cancel: CancellationToken,
    ) -> JoinHandle<()> {
        let audit = Arc::clone(self);
        let anchored: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
        crate::tasks::every(interval, cancel, move || {
            let (audit, store, anchored) =
                (Arc::clone(&audit), store.clone(), Arc::clone(&anchored));
            let lookback = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX / 4) * 3;
            async move {
                let since = crate::clock::ledger_ms() - lookback;
                let heads = match store.audit_heads(since).await {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::debug!(error = %e, "audit: anchor skipped, store unavailable");
                        return;
                    }
                };
                let moved: Vec<_> = {
                    let mut seen = anchored.lock();
                    heads
                        .into_iter()
                        .filter(|h| h.chain_id != audit.chain_id)
                        .filter(|h| seen.insert(h.chain_id.clone(), h.seq) != Some(h.seq))
                        .collect()
                };
                if !moved.is_empty() {
                    audit.record(
                        SYSTEM,
                        "chain.anchor",
                        &audit.chain_id,
                        json!({"anchors": anchors_json(&moved)}),
                    );
                }
            }
        })
    }
}

/// An entry as exported (JSON lines for a SIEM; `GET /admin/v1/audit`): `detail` as an
/// object, the time as RFC 3339 next to the unix milliseconds the hash covers.
pub fn export_json(e: &AuditRecord) -> Value {
    json!({
        "chain_id": e.chain_id,
        "seq": e.seq,
        "at": e.at,
        "time": crate::clock::to_rfc3339(e.at),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "detail": serde_json::from_str::<Value>(&e.detail).unwrap_or(Value::String(e.detail.clone())),
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    })
}

fn anchors_json(heads: &[crate::store::AuditHead]) -> Value {
    Value::Array(
        heads
            .iter()
            .map(|h| json!({"chain_id": h.chain_id, "seq": h.seq, "hash": h.hash}))
            .collect(),
    )
}

fn sink(store: Store) -> Sink<AuditRecord> {
    Arc::new(move |rows: Vec<AuditRecord>| {
        let store = store.clone();
        Box::pin(async move {
            match store.insert_audit(&rows).await {
                Ok(_) => Ok(()),
                Err(e) => Err((rows, e.to_string())),
            }
        })
    })
}

#[cfg(test)]
mod tests;
