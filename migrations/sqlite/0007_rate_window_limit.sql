-- The limit a window was last leased under: lets one statement lease many windows, each
-- capped by its own limit (the upkeep leases every window's next minute at once).
ALTER TABLE rate_windows ADD COLUMN limit_units BIGINT NOT NULL DEFAULT 0;
