//! Walk every chain and report the first broken link of each: a missing entry, an entry that
//! does not follow its predecessor (removed, inserted or moved rows), an entry whose content no
//! longer matches its hash (a changed field), and anchors that point at entries which are gone
//! or different (a truncated or deleted chain). One page of one chain is in memory at a time.

use super::chain::{GENESIS_PREV, entry_hash};
use crate::store::{AuditRecord, Store, StoreError};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use utoipa::ToSchema;

const PAGE: u32 = 1000;

/// What is wrong at a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Entries are missing before this seq (deleted rows).
    Missing,
    /// This entry's `prev_hash` is not its predecessor's hash: an entry before it was
    /// rewritten, or rows were removed, inserted or reordered.
    BrokenLink,
    /// This entry's content does not match its hash: a field was changed.
    Altered,
    /// Another chain anchored this entry with a different hash.
    AnchorMismatch,
    /// Another chain anchored an entry of this chain that no longer exists: the chain was
    /// truncated or deleted.
    AnchorMissing,
}

/// One broken link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Problem {
    /// The chain.
    pub chain_id: String,
    /// The position in it.
    pub seq: i64,
    /// What is wrong.
    pub kind: ProblemKind,
    /// In words.
    pub detail: String,
}

/// The outcome of a walk.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Report {
    /// No problem found.
    pub ok: bool,
    /// Chains walked.
    pub chains: usize,
    /// Entries checked.
    pub entries: u64,
    /// Anchors checked.
    pub anchors: usize,
    /// The first problem of each broken chain, in chain order.
    pub problems: Vec<Problem>,
}

struct Anchor {
    hash: String,
    by: String,
}

/// Verify the whole log.
pub async fn verify(store: &Store) -> Result<Report, StoreError> {
    // (chain, seq) → what other chains say its hash is.
    let mut anchors: BTreeMap<(String, i64), Vec<Anchor>> = BTreeMap::new();
    let mut n_anchors = 0;
    for e in store.audit_anchor_entries().await? {
        for (chain_id, seq, hash) in anchored(&e) {
            if chain_id == e.chain_id {
                continue;
            }
            n_anchors += 1;
            anchors.entry((chain_id, seq)).or_default().push(Anchor {
                hash,
                by: format!("{}#{}", e.chain_id, e.seq),
            });
        }
    }
    let chains = store.audit_chains().await?;
    let mut report = Report {
        ok: true,
        chains: chains.len(),
        entries: 0,
        anchors: n_anchors,
        problems: Vec::new(),
    };
    for chain_id in &chains {
        if let Some(p) = walk(store, chain_id, &anchors, &mut report.entries).await? {
            report.problems.push(p);
        }
    }
    let walked: BTreeSet<&String> = chains.iter().collect();
    let mut gone: BTreeMap<&String, (i64, &Anchor)> = BTreeMap::new();
    for ((chain_id, seq), list) in &anchors {
        if !walked.contains(chain_id) && !gone.contains_key(chain_id) {
            gone.insert(chain_id, (*seq, &list[0]));
        }
    }
    for (chain_id, (seq, a)) in gone {
        report.problems.push(Problem {
            chain_id: chain_id.clone(),
            seq,
            kind: ProblemKind::AnchorMissing,
            detail: format!(
                "chain {chain_id} has no entries, but {} anchored its entry {seq}: the chain was deleted",
                a.by
            ),
        });
    }
    report.ok = report.problems.is_empty();
    Ok(report)
}

/// The first problem of one chain.
async fn walk(
    store: &Store,
    chain_id: &str,
    anchors: &BTreeMap<(String, i64), Vec<Anchor>>,
    entries: &mut u64,
) -> Result<Option<Problem>, StoreError> {
    let problem = |seq: i64, kind: ProblemKind, detail: String| {
        Ok(Some(Problem {
            chain_id: chain_id.to_owned(),
            seq,
            kind,
            detail,
        }))
    };
    let mut expected = 0i64;
    let mut prev = GENESIS_PREV.to_owned();
    loop {
        let page = store.audit_chain_page(chain_id, expected - 1, PAGE).await?;
        let full = page.len() == PAGE as usize;
        for r in page {
            *entries += 1;
            if r.seq != expected {
                let which = if r.seq == expected + 1 {
                    format!("entry {expected} is missing")
                } else {
                    format!("entries {expected} to {} are missing", r.seq - 1)
                };
                return problem(
                    expected,
                    ProblemKind::Missing,
                    format!("{which} (deleted; the chain goes on at {})", r.seq),
                );
            }
            if r.prev_hash != prev {
                return problem(
                    r.seq,
                    ProblemKind::BrokenLink,
                    format!(
                        "entry {} does not follow entry {}: an earlier entry was rewritten, or entries were removed, inserted or reordered",
                        r.seq,
                        r.seq - 1
                    ),
                );
            }
            if entry_hash(&r) != r.hash {
                return problem(
                    r.seq,
                    ProblemKind::Altered,
                    format!(
                        "entry {} ({} by {}) does not match its hash: a field was changed",
                        r.seq, r.action, r.actor
                    ),
                );
            }
            if let Some(a) = anchors
                .get(&(chain_id.to_owned(), r.seq))
                .and_then(|l| l.iter().find(|a| a.hash != r.hash))
            {
                return problem(
                    r.seq,
                    ProblemKind::AnchorMismatch,
                    format!(
                        "{} anchored entry {} with another hash: the chain was rewritten from there",
                        a.by, r.seq
                    ),
                );
            }
            prev = r.hash;
            expected += 1;
        }
        if !full {
            break;
        }
    }
    // Anchors past the end: the tail was cut off.
    let beyond = anchors
        .range((chain_id.to_owned(), expected)..=(chain_id.to_owned(), i64::MAX))
        .next();
    if let Some(((_, seq), list)) = beyond {
        return problem(
            *seq,
            ProblemKind::AnchorMissing,
            format!(
                "the chain ends at entry {}, but {} anchored its entry {seq}: the tail was deleted",
                expected - 1,
                list[0].by
            ),
        );
    }
    Ok(None)
}

/// The `(chain, seq, hash)` triples an anchoring entry names.
fn anchored(e: &AuditRecord) -> Vec<(String, i64, String)> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&e.detail) else {
        return Vec::new();
    };
    v["anchors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            Some((
                a["chain_id"].as_str()?.to_owned(),
                a["seq"].as_i64()?,
                a["hash"].as_str()?.to_owned(),
            ))
        })
        .collect()
}
