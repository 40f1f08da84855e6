-- Every bridge registers (with the node secret) and gets its own credential, stored as SHA-256; each
-- registration is a new identity, and sessions are bound to the identity that claimed them. A revoked
-- bridge keeps its row (revoked_at), so its name cannot register again until an administrator forgets it.
CREATE TABLE bridges (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    credential_hash TEXT NOT NULL UNIQUE,
    remote_addr TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX bridges_name ON bridges(name);
CREATE INDEX sessions_bridge ON sessions(bridge_id);
