-- Fleet-wide per-minute limits: how many units (requests or tokens) of one limit's window
-- the replicas were granted in all. A grant never takes `granted` past the limit.
CREATE TABLE rate_windows (
    scope   TEXT NOT NULL,       -- "<requests|tokens>:<token|pool>:<jti or pool name>"
    minute  BIGINT NOT NULL,     -- unix minute (UTC)
    granted BIGINT NOT NULL,
    last_grant BIGINT NOT NULL,
    PRIMARY KEY (scope, minute)
);
