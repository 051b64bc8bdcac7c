-- Inventory of the provider keys found in the secret store (never the secret itself). Each
-- replica upserts what its last listing saw; entries no longer listed become 'missing'.
-- state: active | quarantined (the provider refused it) | invalid (unusable metadata or
-- value; reason says why) | missing (deleted from the store).
CREATE TABLE provider_keys (
    id                 TEXT PRIMARY KEY,
    store              TEXT NOT NULL,
    provider           TEXT NOT NULL,
    billing_owner      TEXT NOT NULL,
    allowed_models     TEXT NOT NULL,          -- "*" or space-separated model names
    purpose            TEXT,
    version            TEXT NOT NULL,          -- the version served
    versions           TEXT NOT NULL,          -- JSON [{"id": "...", "stage": "current|pending|previous"}]
    state              TEXT NOT NULL,
    reason             TEXT,
    first_seen         BIGINT NOT NULL,
    last_seen          BIGINT NOT NULL
);
-- Spend per key (inventory: last used, spend to date).
CREATE INDEX spend_provider_key ON spend (provider_key_id, at);
