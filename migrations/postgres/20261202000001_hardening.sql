-- Hardening (PostgreSQL): login attempts are recorded before the password is verified (each with the attempt's id, so a
-- refused or successful attempt removes its own rows); API keys get a scope and an expiry.
ALTER TABLE login_attempts ADD COLUMN attempt_id TEXT;
CREATE INDEX login_attempts_attempt ON login_attempts(attempt_id);
ALTER TABLE api_keys ADD COLUMN scope TEXT NOT NULL DEFAULT 'admin';
ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
