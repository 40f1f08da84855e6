-- Docker agents. `state`: healthy (heartbeats arrive), down (missed heartbeats), failed (a registration
-- was refused: the row shows the name and the reason, so an agent that never registers is visible).
CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    credential_hash TEXT UNIQUE,
    state TEXT NOT NULL,
    last_error TEXT,
    remote_addr TEXT NOT NULL DEFAULT '',
    docker_version TEXT NOT NULL DEFAULT '',
    cores BIGINT NOT NULL DEFAULT 0,
    memory_mb BIGINT NOT NULL DEFAULT 0,
    running BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    registered_at BIGINT,
    last_heartbeat_at BIGINT
);
