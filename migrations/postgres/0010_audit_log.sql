-- The audit log: append-only, hash-chained. Each Tollgate process appends to its own chain
-- (`chain_id`, a fresh id per start), so replicas never wait on each other to append; each
-- entry's `hash` is SHA-256 over the previous entry's hash and a length-prefixed encoding of
-- the entry's fields (src/audit/chain.rs), and chains anchor each other's heads periodically,
-- so a changed, deleted, inserted or reordered row, or a truncated or deleted chain up to its
-- last anchor, is found by `tollgate audit verify`. `detail` is JSON kept as TEXT: the hash
-- covers its exact bytes, which JSONB would normalize.
CREATE TABLE audit_log (
    chain_id  TEXT   NOT NULL,
    seq       BIGINT NOT NULL,
    at        BIGINT NOT NULL,       -- unix ms
    actor     TEXT   NOT NULL,       -- a subject, an admin, or `tollgate` for the system
    action    TEXT   NOT NULL,       -- e.g. token.issued, revocation.created, budget.reject
    target    TEXT   NOT NULL,
    detail    TEXT   NOT NULL,       -- JSON object
    prev_hash TEXT   NOT NULL,       -- hex; 64 zeros at seq 0
    hash      TEXT   NOT NULL,       -- hex
    PRIMARY KEY (chain_id, seq)
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_anchors ON audit_log (action) WHERE action IN ('chain.start', 'chain.anchor');

-- History is not rewritten through Tollgate's own connection: UPDATE, DELETE and TRUNCATE
-- raise. The owner of the table can still drop these triggers, so run Tollgate as a role that
-- does not own its tables (README, "Audit log": migrations as the owner, the service role with
-- INSERT and SELECT on audit_log only). The hash chain is what proves a DBA did not.
CREATE FUNCTION tollgate_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION tollgate_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION tollgate_audit_append_only();
