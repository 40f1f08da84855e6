-- Agents hardening (SQLite): an agent's name is bound to its persistent identity (`identity_hash`, SHA-256 of the key
-- in its data directory; NULL: bound by its next registration); `networks` is the JSON list of the subnets
-- its containers are on (a container address outside them is refused).
ALTER TABLE agents ADD COLUMN identity_hash TEXT;
ALTER TABLE agents ADD COLUMN networks TEXT NOT NULL DEFAULT '[]';
-- Refused registrations live apart from agents (an unauthenticated request never changes an agent): the
-- latest refusal per name, with the number of attempts; pruned after a day.
CREATE TABLE agent_refusals (
    name TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    remote_addr TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    first_at BIGINT NOT NULL,
    last_at BIGINT NOT NULL
);
INSERT INTO agent_refusals (name, reason, remote_addr, attempts, first_at, last_at)
    SELECT name, COALESCE(last_error, 'registration refused'), remote_addr, 1, created_at, created_at
    FROM agents WHERE credential_hash IS NULL;
DELETE FROM agents WHERE credential_hash IS NULL;
UPDATE agents SET state = 'healthy', last_error = NULL WHERE state = 'failed';
