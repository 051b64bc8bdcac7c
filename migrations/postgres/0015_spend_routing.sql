-- Routing: the model the client asked for, and the deployment of the serving model that
-- answered (NULL in rows written before either was recorded).
ALTER TABLE spend ADD COLUMN requested_model TEXT;
ALTER TABLE spend ADD COLUMN deployment TEXT;
