-- The bridge tier as a first-class tier: each bridge may name its route at the load balancer (the webapp
-- assigns new sessions to the healthy bridge with the fewest, and their WebSocket URL names that route),
-- and bridges and agents can be drained (no new sessions or workspaces; the live ones run to their end).
-- A session's bridge_id is set at creation when it is assigned, and only that bridge may claim it.
ALTER TABLE bridges ADD COLUMN route TEXT;
ALTER TABLE bridges ADD COLUMN draining_at BIGINT;
-- When a drained bridge ends what is left (NULL: never; the sessions run to their own end).
ALTER TABLE bridges ADD COLUMN drain_deadline_at BIGINT;
-- When a bridge was last reported down (the `bridge_down` event), like agents.down_reported_at.
ALTER TABLE bridges ADD COLUMN down_reported_at BIGINT;
ALTER TABLE agents ADD COLUMN draining_at BIGINT;
