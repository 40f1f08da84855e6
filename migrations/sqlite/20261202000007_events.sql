-- Structured events (logins, changes, session and agent lifecycle) for operators and auditors; kept for
-- the retention period (`--event-retention-days`) and pruned in bounded batches. `at` is in unix
-- milliseconds; `details` is a JSON object that never holds a secret. No foreign keys: an event outlives
-- the user, connection or session it names.
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    actor_id TEXT,
    client_addr TEXT,
    user_id TEXT,
    connection_id TEXT,
    session_id TEXT,
    details TEXT NOT NULL
);
-- Newest first, filtered by one of these (or none), is what the API asks for.
CREATE INDEX events_at ON events(at, id);
CREATE INDEX events_type ON events(event_type, at);
CREATE INDEX events_user ON events(user_id, at);
CREATE INDEX events_actor ON events(actor_id, at);
CREATE INDEX events_connection ON events(connection_id, at);
CREATE INDEX events_session ON events(session_id, at);
-- When an agent was last reported down (the `agent_down` event): set by one conditional UPDATE, so of all
-- webapps exactly one reports each time an agent stops responding.
ALTER TABLE agents ADD COLUMN down_reported_at BIGINT;
