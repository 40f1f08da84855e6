-- The close code a session ended with (proto's CloseCode, e.g. `ended`, `lost`, `target_error`), set with
-- end_reason wherever a session ends, so bridges hear it explicitly in their sync instead of deriving it
-- from the reason. NULL for sessions ended before this column (or by an older webapp during a rolling
-- upgrade): bridges then fall back to the reason.
ALTER TABLE sessions ADD COLUMN end_code TEXT;
