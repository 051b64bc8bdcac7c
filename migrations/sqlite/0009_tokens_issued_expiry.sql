-- The admin API lists issued tokens newest first across subjects (GET /admin/v1/tokens).
CREATE INDEX tokens_issued_expiry ON tokens_issued (expires_at, issued_at);
