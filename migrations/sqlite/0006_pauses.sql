-- Pauses set by the anomaly guard: a subject (workload) or a provider key whose spend or token
-- velocity ran far past its own baseline. A pause holds until an admin lifts it; lifted rows
-- stay as history. At most one active pause per (kind, value).
CREATE TABLE pauses (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,        -- subject | provider_key
    value      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    lifted_at  BIGINT,
    lifted_by  TEXT
);
CREATE UNIQUE INDEX pauses_active ON pauses (kind, value) WHERE lifted_at IS NULL;

-- The guard reads a key's recent spend.
CREATE INDEX spend_key_at ON spend (provider_key_id, at);
