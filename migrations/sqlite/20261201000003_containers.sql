-- Ephemeral workspace containers, one per session of a `container` connection. The webapp writes the
-- wanted row when the session is created (scheduled on an agent); the agent reports what became of it.
-- `state`: starting, ready, failed, removed. `vnc_password_enc` is sealed like connection credentials.
CREATE TABLE containers (
    session_id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    spec TEXT NOT NULL,
    vnc_password_enc TEXT NOT NULL,
    state TEXT NOT NULL,
    container_id TEXT,
    host TEXT,
    port BIGINT,
    error TEXT,
    memory_mb BIGINT NOT NULL,
    cpu_millis BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    ready_at BIGINT,
    removed_at BIGINT
);
CREATE INDEX containers_agent ON containers(agent_id, state);
