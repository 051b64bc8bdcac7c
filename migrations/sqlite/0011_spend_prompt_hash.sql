-- Prompt hygiene: each request's prompt is kept as its SHA-256, never its content, so an
-- incident responder can find every request (workload, key, time) that sent a given prompt
-- (within a time range: the `at` index bounds the scan; no index of its own keeps spend writes lean).
ALTER TABLE spend ADD COLUMN prompt_sha256 TEXT;
