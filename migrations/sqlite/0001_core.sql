-- Tollgate core schema (SQLite). Times are unix milliseconds (BIGINT), money is integer
-- micro-dollars (BIGINT). migrations/postgres holds the same logical schema.

-- Token-signing keys shared by every replica. The private key is sealed (AES-256-GCM under
-- the key-encryption key, kid as associated data): this table never holds plaintext.
CREATE TABLE signing_keys (
    kid                TEXT PRIMARY KEY,
    generation         BIGINT NOT NULL UNIQUE,   -- replicas race to create a generation; one wins
    algorithm          TEXT NOT NULL,
    public_jwk         TEXT NOT NULL,
    sealed_private_key BLOB NOT NULL,
    created_at         BIGINT NOT NULL,
    sign_from          BIGINT NOT NULL,
    sign_until         BIGINT NOT NULL,
    publish_until      BIGINT NOT NULL
);

-- Inventory of minted Tollgate tokens (never the token itself).
CREATE TABLE tokens_issued (
    jti        TEXT PRIMARY KEY,
    subject    TEXT NOT NULL,
    issuer     TEXT NOT NULL,
    team       TEXT NOT NULL,
    pool       TEXT NOT NULL,
    binding    TEXT NOT NULL,
    models     TEXT NOT NULL,                    -- JSON array of model names
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    pod_uid    TEXT
);
CREATE INDEX tokens_issued_subject ON tokens_issued (subject, expires_at);

-- Revocations: jti, subject, team, pool, issuer, pod_uid, provider_key.
CREATE TABLE revocations (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    created_by TEXT NOT NULL
);
CREATE INDEX revocations_expiry ON revocations (expires_at);

-- One row per proxied request; request_id makes a replayed batch idempotent.
CREATE TABLE spend (
    request_id          TEXT PRIMARY KEY,
    at                  BIGINT NOT NULL,
    jti                 TEXT NOT NULL,
    subject             TEXT NOT NULL,
    team                TEXT NOT NULL,
    pool                TEXT NOT NULL,
    billing_owner       TEXT NOT NULL,
    provider            TEXT NOT NULL,
    provider_key_id     TEXT NOT NULL,
    model               TEXT NOT NULL,
    upstream_model      TEXT NOT NULL,
    endpoint            TEXT NOT NULL,
    stream              INTEGER NOT NULL,
    input_tokens        BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    cost_micro_usd      BIGINT NOT NULL,
    status              INTEGER NOT NULL,
    latency_ms          BIGINT NOT NULL
);
CREATE INDEX spend_pool_at ON spend (pool, at);
CREATE INDEX spend_team_at ON spend (team, at);
CREATE INDEX spend_subject_at ON spend (subject, at);
