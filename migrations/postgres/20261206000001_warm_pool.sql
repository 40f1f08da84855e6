-- Warm pool: pre-started workspace containers (spares) that a launch claims instead of starting one.
-- `container_key` is what the agent knows a container by (its label and name): the session id for a
-- container started for its session, `spare-<uuid>` for a spare, kept when a session claims the spare
-- (the row's `session_id` then becomes the session's). `spare_for` is the connection an unclaimed spare
-- was started for; NULL once claimed, and for every other row. A spare is never reused: claimed, it ends
-- with its session like any other container.
ALTER TABLE containers ADD COLUMN container_key TEXT;
UPDATE containers SET container_key = session_id;
ALTER TABLE containers ADD COLUMN spare_for TEXT;
CREATE UNIQUE INDEX containers_key ON containers(container_key);
CREATE INDEX containers_spare ON containers(spare_for, agent_id, state);

-- Image catalog: the images an agent's Docker engine holds (JSON list of `AgentImage`), as its latest sync
-- said; NULL for an agent that does not report them (a previous version: it is assumed to hold any).
ALTER TABLE agents ADD COLUMN images TEXT;

-- During a rolling upgrade, webapps of the previous version insert rows without a key: the key of such
-- a row is its session id (what the agent is told), as for every row before this migration.
CREATE FUNCTION containers_key_default() RETURNS trigger AS $$
BEGIN
    IF NEW.container_key IS NULL THEN
        NEW.container_key := NEW.session_id;
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER containers_key_default BEFORE INSERT ON containers
    FOR EACH ROW EXECUTE FUNCTION containers_key_default();
