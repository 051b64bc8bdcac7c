use super::*;

fn drain(rx: &mut tokio::sync::mpsc::Receiver<AuditRecord>) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    while let Ok(r) = rx.try_recv() {
        out.push(r);
    }
    out
}

#[tokio::test]
async fn entries_link_to_their_predecessor_and_hash_their_content() {
    let (writer, mut rx) = Writer::detached("audit", 16);
    let audit = Audit::new(writer);
    audit.record(
        "alice",
        "revocation.created",
        "1",
        json!({"kind": "subject"}),
    );
    audit.record("bob", "key.disabled", "openai/prod", json!({}));
    audit.close();
    let rows = drain(&mut rx);
    assert_eq!(rows.len(), 3);
    let mut prev = GENESIS_PREV.to_owned();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.seq, i64::try_from(i).unwrap());
        assert_eq!(r.chain_id, audit.chain_id());
        assert_eq!(r.prev_hash, prev);
        assert_eq!(entry_hash(r), r.hash);
        prev = r.hash.clone();
    }
    assert_eq!(rows[2].action, "chain.end");
    assert_eq!(rows[2].detail, r#"{"entries":2}"#);
}

#[tokio::test]
async fn a_full_queue_leaves_no_hole_and_the_loss_is_recorded() {
    let (writer, mut rx) = Writer::detached("audit", 2);
    let audit = Audit::new(writer);
    audit.record("a", "x", "1", json!({}));
    audit.record("a", "x", "2", json!({}));
    audit.record("a", "x", "3", json!({})); // queue full: dropped
    audit.record("a", "x", "4", json!({})); // still full: dropped
    let first = drain(&mut rx);
    assert_eq!(first.len(), 2);
    audit.record("a", "x", "5", json!({}));
    let next = drain(&mut rx);
    assert_eq!(next.len(), 2, "{next:?}");
    assert_eq!(next[0].action, "audit.dropped");
    assert_eq!(next[0].detail, r#"{"entries":2}"#);
    assert_eq!(next[0].seq, 2);
    assert_eq!(next[0].prev_hash, first[1].hash);
    assert_eq!(next[1].target, "5");
    assert_eq!(next[1].seq, 3);
    assert_eq!(next[1].prev_hash, next[0].hash);
}
