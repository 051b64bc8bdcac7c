-- Budget threshold alerts: one row per pool, window and threshold. The replica whose insert
-- succeeds sends the alert, so each fires once per window for the whole fleet.
CREATE TABLE budget_alerts (
    pool            TEXT NOT NULL,
    window_start    BIGINT NOT NULL,          -- unix day of the window's first day
    threshold       INTEGER NOT NULL,         -- percent
    fired_at        BIGINT NOT NULL,
    spent_micro_usd BIGINT NOT NULL,
    cap_micro_usd   BIGINT NOT NULL,
    PRIMARY KEY (pool, window_start, threshold)
);
