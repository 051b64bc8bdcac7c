-- Budget increase requests and their two-person approval. An approved increase raises its
-- pool's cap for one budget window (the one it was requested in, `window_start`); a pending
-- request past `expires_at` can no longer be approved. Decided rows stay as history.
CREATE TABLE budget_increases (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    pool             TEXT   NOT NULL,
    window_start     BIGINT NOT NULL,   -- unix ms
    amount_micro_usd BIGINT NOT NULL,
    reason           TEXT   NOT NULL,
    requested_by     TEXT   NOT NULL,
    requested_at     BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    state            TEXT   NOT NULL,   -- pending | approved | denied
    decided_by       TEXT,
    decided_at       BIGINT,
    decision_reason  TEXT
);
CREATE INDEX budget_increases_window ON budget_increases (state, window_start);
