-- Staged rotation of provider keys. A rotation moves one key from the version it serves
-- (from_version) to a new one (to_version) through staged → tested → canary → promoted →
-- draining → retired, or ends rolled_back. Each step is one conditional update by the replica
-- holding the lease (leader, lease_until), so a crashed leader's rotation is resumed by another
-- replica once the lease lapses, and two replicas never both advance it. At most one rotation
-- per key is not finished (the partial unique index): concurrent rotate calls get one.
CREATE TABLE rotations (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id          TEXT   NOT NULL,
    from_version    TEXT   NOT NULL,
    to_version      TEXT   NOT NULL,
    state           TEXT   NOT NULL,   -- staged | tested | canary | promoted | draining | retired | rolled_back
    trigger         TEXT   NOT NULL,   -- manual | schedule | emergency
    emergency       BOOLEAN NOT NULL DEFAULT 0,
    requested_by    TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,   -- unix ms
    updated_at      BIGINT NOT NULL,   -- when the current state was entered
    leader          TEXT,
    lease_until     BIGINT,
    outcome         TEXT               -- why it was rolled back, or the last step's result
);
CREATE UNIQUE INDEX rotations_one_open ON rotations (key_id)
    WHERE state NOT IN ('retired', 'rolled_back');

-- Every transition with its inputs and result (JSON), in order.
CREATE TABLE rotation_events (
    rotation_id BIGINT  NOT NULL REFERENCES rotations (id),
    seq         INTEGER NOT NULL,
    at          BIGINT  NOT NULL,
    from_state  TEXT,
    to_state    TEXT    NOT NULL,
    actor       TEXT    NOT NULL,
    detail      TEXT    NOT NULL,
    PRIMARY KEY (rotation_id, seq)
);

-- An abort asked for through the API; the leader rolls back on its next step.
ALTER TABLE rotations ADD COLUMN abort_requested_by TEXT;

-- Which version of the key served each request: the canary compares the pending version's
-- upstream error rate with the current one's from these rows, whichever replica served them.
ALTER TABLE spend ADD COLUMN provider_key_version TEXT;
