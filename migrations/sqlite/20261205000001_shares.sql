-- Live session sharing (docs/security.md, "Sharing"): a share lets someone other than a session's owner join
-- it as a viewer, view-only or in control, until it expires or is revoked. `kind`: `user` (subject_id is a
-- user), `group` (a group), `link` (anyone logged in who holds the link: only the SHA-256 of its secret is
-- kept) or `shadow` (an administrator who joined without an invitation, as the connection's policy allows).
CREATE TABLE session_shares (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    created_by TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject_id TEXT,
    link_hash TEXT,
    mode TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX session_shares_session ON session_shares (session_id);
CREATE INDEX session_shares_subject ON session_shares (subject_id);
CREATE UNIQUE INDEX session_shares_link ON session_shares (link_hash);

-- One row per join: the viewer's token is claimed once by the bridge that holds the session, like a
-- session's; `left_at` is set when the bridge reports that the viewer went.
CREATE TABLE session_viewers (
    id TEXT PRIMARY KEY,
    share_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    username TEXT NOT NULL,
    token_jti TEXT NOT NULL,
    token_expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    claimed_at BIGINT,
    bridge_id TEXT,
    left_at BIGINT
);
CREATE INDEX session_viewers_session ON session_viewers (session_id);
