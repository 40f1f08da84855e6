-- A group's recording policy: its members' sessions are recorded at least so (`on` or `keystrokes`; NULL:
-- the connection decides alone). The stricter of the connection's and the groups' policies applies.
ALTER TABLE user_groups ADD COLUMN recording TEXT;
