-- Who may reach what (PostgreSQL): groups of users, nested folders of connections, grants of a connection or a folder
-- (and so its subfolders) to a user or a group, per-user and per-group limits, and favourites.
-- folder_paths is the closure of the folder tree (each folder with itself and every ancestor), rebuilt by
-- the webapp whenever a folder is created, moved or deleted; access checks read it in one join.
CREATE TABLE user_groups (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    -- NULL: no limit of its own. protocols: a comma-separated list.
    max_sessions BIGINT,
    protocols TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE group_members (
    group_id TEXT NOT NULL REFERENCES user_groups(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_user ON group_members(user_id);

CREATE TABLE folders (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    parent_id TEXT REFERENCES folders(id),
    -- The names from the top folder down to this one ("Site A / Floor 1"), kept by the webapp with
    -- folder_paths: connections are listed in this order, grouped by folder.
    path TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);
CREATE INDEX folders_parent ON folders(parent_id);

CREATE TABLE folder_paths (
    folder_id TEXT NOT NULL REFERENCES folders(id) ON DELETE CASCADE,
    ancestor_id TEXT NOT NULL REFERENCES folders(id) ON DELETE CASCADE,
    PRIMARY KEY (folder_id, ancestor_id)
);
CREATE INDEX folder_paths_ancestor ON folder_paths(ancestor_id);

-- object_kind: 'connection' or 'folder'; subject_kind: 'user' or 'group'. Rows of a deleted object or
-- subject are removed by the webapp in the transaction that deletes it.
CREATE TABLE grants (
    object_kind TEXT NOT NULL,
    object_id TEXT NOT NULL,
    subject_kind TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    PRIMARY KEY (object_kind, object_id, subject_kind, subject_id)
);
CREATE INDEX grants_subject ON grants(subject_kind, subject_id);

CREATE TABLE favourites (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    connection_id TEXT NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, connection_id)
);

ALTER TABLE connections ADD COLUMN folder_id TEXT REFERENCES folders(id);
CREATE INDEX connections_folder ON connections(folder_id);
CREATE INDEX connections_name ON connections(name);
ALTER TABLE users ADD COLUMN max_sessions BIGINT;
ALTER TABLE users ADD COLUMN protocols TEXT;
CREATE INDEX sessions_user_connection ON sessions(user_id, connection_id);
