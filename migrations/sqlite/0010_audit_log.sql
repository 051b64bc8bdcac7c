-- The audit log: append-only, hash-chained (see migrations/postgres/0010_audit_log.sql).
CREATE TABLE audit_log (
    chain_id  TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    at        BIGINT  NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    target    TEXT    NOT NULL,
    detail    TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL,
    PRIMARY KEY (chain_id, seq)
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_anchors ON audit_log (action) WHERE action IN ('chain.start', 'chain.anchor');

-- Anyone with the database file can drop these; the hash chain is what proves nobody did.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only (UPDATE refused)');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only (DELETE refused)');
END;
