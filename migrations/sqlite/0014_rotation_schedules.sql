-- Scheduled rotation. A schedule counts from a key's last rotation; for a key never rotated it
-- counts from when a replica first saw the schedule cover it (first_seen), so a restart never
-- moves the due time. A replica creating the new key through the provider's admin API holds
-- the key's issue lease (issuing_by, issuing_until) so two replicas never create two keys.
CREATE TABLE rotation_schedule_keys (
    key_id        TEXT   PRIMARY KEY,
    first_seen    BIGINT NOT NULL,   -- unix ms
    issuing_by    TEXT,
    issuing_until BIGINT
);

-- The provider's id of the key a rotation's new version holds when Tollgate created it through
-- a key issuer (an OpenAI service account): retiring that version later deletes it there, and a
-- rollback deletes it at once.
ALTER TABLE rotations ADD COLUMN issued_ref TEXT;
