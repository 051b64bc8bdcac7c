-- Every change to what the revocation set holds (revocations, pauses) is announced on the
-- `tollgate_revocations` channel, whoever wrote it: a replica, the CLI, a DBA. Replicas LISTEN
-- and re-sync at once; their periodic re-sync covers notifications lost while a listener
-- reconnects. One notification per statement: a batch revokes with one re-sync. (SQLite has
-- one node, which applies its own writes at once: no counterpart there.)
CREATE FUNCTION tollgate_notify_revocations() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('tollgate_revocations', TG_TABLE_NAME);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER revocations_notify AFTER INSERT OR UPDATE OR DELETE ON revocations
    FOR EACH STATEMENT EXECUTE FUNCTION tollgate_notify_revocations();
CREATE TRIGGER pauses_notify AFTER INSERT OR UPDATE OR DELETE ON pauses
    FOR EACH STATEMENT EXECUTE FUNCTION tollgate_notify_revocations();
