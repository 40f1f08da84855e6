-- Session recordings (docs/protocol.md "Recording format"): one row per recorded session, written when a
-- bridge claims a session whose connection's policy records it. The bytes live in the recording storage
-- (`<recording dir>/<session id>.portrec`), written by the bridge and served by any webapp; the row keeps
-- what a search needs after the user or the connection is gone (their names at the time).
CREATE TABLE recordings (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    username TEXT NOT NULL,
    connection_id TEXT NOT NULL,
    connection_name TEXT NOT NULL,
    protocol TEXT NOT NULL,
    input BIGINT NOT NULL,
    bridge_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- When the bridge reported the session's end, after the recording's last chunk was written and
    -- synced; NULL while it is live, or for ever when its bridge died (the recording is then cut short).
    completed_at BIGINT
);
CREATE INDEX recordings_created ON recordings (created_at);
CREATE INDEX recordings_user ON recordings (user_id, created_at);
CREATE INDEX recordings_connection ON recordings (connection_id, created_at);
