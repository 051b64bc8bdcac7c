//! The hash of an audit entry: SHA-256 over a domain tag and the length-prefixed fields, the
//! previous entry's hash first. Lengths make the encoding unambiguous (no field can borrow
//! bytes from its neighbour), and `detail` is hashed as the exact text stored, so nothing
//! depends on how a JSON library orders keys.

use crate::store::AuditRecord;
use sha2::{Digest, Sha256};

/// `prev_hash` of a chain's first entry.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const DOMAIN: &[u8] = b"tollgate-audit-v1";

/// The hex SHA-256 that `r.hash` must hold, given `r.prev_hash`.
pub fn entry_hash(r: &AuditRecord) -> String {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    let seq = r.seq.to_string();
    let at = r.at.to_string();
    for field in [
        r.prev_hash.as_str(),
        r.chain_id.as_str(),
        seq.as_str(),
        at.as_str(),
        r.actor.as_str(),
        r.action.as_str(),
        r.target.as_str(),
        r.detail.as_str(),
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AuditRecord {
        AuditRecord {
            chain_id: "c".into(),
            seq: 1,
            at: 1_700_000_000_000,
            actor: "alice".into(),
            action: "revocation.created".into(),
            target: "7".into(),
            detail: r#"{"kind":"subject"}"#.into(),
            prev_hash: GENESIS_PREV.into(),
            hash: String::new(),
        }
    }

    #[test]
    fn every_field_is_covered_and_boundaries_are_unambiguous() {
        let base = entry_hash(&entry());
        assert_eq!(base.len(), 64);
        let changes: [fn(&mut AuditRecord); 8] = [
            |r| r.chain_id.push('x'),
            |r| r.seq += 1,
            |r| r.at += 1,
            |r| r.actor.push('x'),
            |r| r.action.push('x'),
            |r| r.target.push('x'),
            |r| r.detail.push(' '),
            |r| r.prev_hash.replace_range(0..1, "1"),
        ];
        for change in changes {
            let mut r = entry();
            change(&mut r);
            assert_ne!(entry_hash(&r), base);
        }
        // Moving a byte from one field to the next changes the hash.
        let mut a = entry();
        a.actor = "alic".into();
        a.action = "erevocation.created".into();
        assert_ne!(entry_hash(&a), base);
        // The stored hash itself is not an input.
        let mut r = entry();
        r.hash = "anything".into();
        assert_eq!(entry_hash(&r), base);
    }
}
