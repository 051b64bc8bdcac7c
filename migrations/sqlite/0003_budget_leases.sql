-- Fleet-wide budgets (DESIGN.md "Quotas across replicas"). Money is integer micro-dollars.
-- budget_days: per pool and UTC day (unix day number), all money handed to replicas that day
-- (spent, reserved or held). A window's total is the sum of its days, so every window kind —
-- daily, weekly, monthly, rolling — is a range of rows and rolls over exactly once.
CREATE TABLE budget_days (
    pool              TEXT NOT NULL,
    day               BIGINT NOT NULL,
    granted_micro_usd BIGINT NOT NULL,
    last_grant_micro_usd BIGINT NOT NULL,      -- what the latest acquire granted (its RETURNING)
    PRIMARY KEY (pool, day)
);

-- What each replica holds of a pool-day, and what it last reported: `available` (not reserved
-- or spent) and `allowance` (the most it may newly reserve before its next heartbeat). After
-- its heartbeat expires, `available - allowance` may be reclaimed: money it promised not to use.
CREATE TABLE budget_leases (
    pool                TEXT NOT NULL,
    day                 BIGINT NOT NULL,
    replica             TEXT NOT NULL,
    granted_micro_usd   BIGINT NOT NULL,
    available_micro_usd BIGINT NOT NULL,
    allowance_micro_usd BIGINT NOT NULL,
    reported_at         BIGINT NOT NULL,
    PRIMARY KEY (pool, day, replica)
);

-- Live replicas; heartbeat_at is refreshed every heartbeat interval.
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
