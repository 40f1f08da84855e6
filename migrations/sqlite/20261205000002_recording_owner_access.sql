-- A recording its session's owner may play (the connection's `recording_owner_access` when the session was
-- recorded); admins and auditors read every recording.
ALTER TABLE recordings ADD COLUMN owner_access BIGINT NOT NULL DEFAULT 0;
