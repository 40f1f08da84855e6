-- Two-factor authentication (TOTP, RFC 6238) for local accounts: the secret sealed like connection
-- credentials, whether it is confirmed, and the last time step used (a code works once); one-time recovery
-- codes stored as SHA-256; the second step of a login (a password checked, a code still to come); login
-- sessions that may only enrol (their role requires two factors and they have none yet); and settings
-- shared by every webapp instance.
ALTER TABLE users ADD COLUMN totp_secret_enc TEXT;
ALTER TABLE users ADD COLUMN totp_enabled BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN totp_last_step BIGINT;

CREATE TABLE recovery_codes (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    used_at BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE mfa_challenges (
    id_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0
);

ALTER TABLE login_sessions ADD COLUMN mfa_pending BIGINT NOT NULL DEFAULT 0;

CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
