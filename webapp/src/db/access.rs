//! Who may reach what: groups, nested folders (with their closure table), grants, per-user and per-group
//! limits, and the one SQL predicate of access that listing, reading, session start and revocation share;
//! and each user's favourite connections.

use portico_proto::codes::CloseCode;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};

use super::{
    CONNECTION_SELECT, Connection, Db, Dialect, SESSION_COLS, SessionRow, USER_COLS, User, connection, state, user,
};

/// The end reason of a session whose user lost access to its connection.
pub const REVOKED: &str = "ended: access was revoked";

/// A comma-separated list column (`NULL`: no list).
pub fn split_list(s: Option<String>) -> Option<Vec<String>> {
    s.map(|s| s.split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect())
}

fn join_list(v: &Option<Vec<String>>) -> Option<String> {
    v.as_ref().map(|v| v.join(","))
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Group {
    pub id: String,
    pub name: String,
    pub max_sessions: Option<i64>,
    pub protocols: Option<Vec<String>>,
    /// Its members' sessions are recorded at least so (`on` or `keystrokes`; `None`: the connection decides).
    pub recording: Option<String>,
    pub created_at: i64,
    pub members: i64,
}

/// What a group row holds besides its id.
#[derive(Debug, Clone)]
pub struct GroupBody {
    pub name: String,
    pub max_sessions: Option<i64>,
    pub protocols: Option<Vec<String>>,
    pub recording: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Folder {
    pub id: String,
    pub name: String,
    pub parent_id: Option<String>,
    pub created_at: i64,
}

/// The users and groups granted one connection or folder.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    #[serde(default)]
    pub user_ids: Vec<String>,
    #[serde(default)]
    pub group_ids: Vec<String>,
}

/// A user's effective limits: the strictest of their own and their groups' (the lowest maximum, the
/// intersection of the protocol lists); `None` where nothing limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_sessions: Option<i64>,
    pub protocols: Option<Vec<String>>,
    /// The strictest recording policy of the user's groups (their sessions are recorded at least so).
    pub recording: portico_proto::control::RecordingPolicy,
}

impl Limits {
    fn tighten(&mut self, max_sessions: Option<i64>, protocols: Option<Vec<String>>) {
        if let Some(m) = max_sessions {
            self.max_sessions = Some(self.max_sessions.map_or(m, |x| x.min(m)));
        }
        if let Some(p) = protocols {
            self.protocols = Some(match self.protocols.take() {
                None => p,
                Some(have) => have.into_iter().filter(|x| p.contains(x)).collect(),
            });
        }
    }

    pub fn allows_protocol(&self, protocol: &str) -> bool {
        self.protocols.as_ref().is_none_or(|p| p.iter().any(|x| x == protocol))
    }
}

/// Search and paging of a list.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Matched case-insensitively as a substring (of name, host and folder name for connections).
    pub q: Option<String>,
    /// Connections in this folder or its subfolders.
    pub folder_id: Option<String>,
    pub limit: i64,
    pub offset: i64,
    /// Connections: the caller's favourites first.
    pub favourites_first: bool,
    /// Connections: the ones the caller started a session on, most recently first (after the favourites
    /// when they come first); then the others, by folder and name.
    pub recent_first: bool,
    /// Connections: only the caller's favourites.
    pub only_favourites: bool,
    /// Connections: only the ones the caller has started a session on.
    pub only_used: bool,
}

/// A listed connection with what it is to the caller: one of their favourites or not, and when they last
/// started a session on it (unix seconds; `None`: never).
pub type Listed = (Connection, bool, Option<i64>);

/// The outcome of a change naming other rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Done,
    /// The row changed does not exist.
    NotFound,
    /// The change is refused: the reason, for the caller.
    Refused(String),
}

/// The outcome of starting a session under a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStart {
    Started,
    /// The user already has this many live sessions, their limit.
    LimitReached(i64),
}

/// `LIKE` pattern for a substring, with the pattern characters of `q` escaped (`ESCAPE '\'`).
pub(super) fn like(q: &str) -> String {
    let mut p = String::from("%");
    for ch in q.to_lowercase().chars() {
        if matches!(ch, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(ch);
    }
    p.push('%');
    p
}

/// SQL true when the user `u` (an expression) holds a grant on the connection row aliased `c`: on the
/// connection, or on its folder or any folder above it; for themselves or through a group.
///
/// Four `EXISTS`, one per kind of object and subject, each looking up whole keys of the grants' primary key
/// (no `OR` inside a subquery): with the `OR`s inside one `EXISTS`, SQLite 3.51 (the bundled one) plans a
/// multi-index OR that stops at the first grant on the object, so a folder granted to two users let only
/// one of them in. `tests/tests/db.rs` checks grants to several users and groups on both engines.
fn access(u: &str, c: &str) -> String {
    let folders = format!("(SELECT p.ancestor_id FROM folder_paths p WHERE p.folder_id = {c}.folder_id)");
    let groups = format!("(SELECT m.group_id FROM group_members m WHERE m.user_id = {u})");
    format!(
        "(EXISTS (SELECT 1 FROM grants g WHERE g.object_kind = 'connection' AND g.object_id = {c}.id \
           AND g.subject_kind = 'user' AND g.subject_id = {u}) \
         OR EXISTS (SELECT 1 FROM grants g WHERE g.object_kind = 'connection' AND g.object_id = {c}.id \
           AND g.subject_kind = 'group' AND g.subject_id IN {groups}) \
         OR EXISTS (SELECT 1 FROM grants g WHERE g.object_kind = 'folder' AND g.object_id IN {folders} \
           AND g.subject_kind = 'user' AND g.subject_id = {u}) \
         OR EXISTS (SELECT 1 FROM grants g WHERE g.object_kind = 'folder' AND g.object_id IN {folders} \
           AND g.subject_kind = 'group' AND g.subject_id IN {groups}))"
    )
}

/// A query's positional parameters (all text or integers), numbered as they are added.
#[derive(Default)]
struct Params(Vec<Param>);

enum Param {
    Text(String),
    Int(i64),
}

impl Params {
    fn text(&mut self, v: impl Into<String>) -> String {
        self.0.push(Param::Text(v.into()));
        format!("${}", self.0.len())
    }

    fn int(&mut self, v: i64) -> String {
        self.0.push(Param::Int(v));
        format!("${}", self.0.len())
    }

    fn bind<'q>(
        &'q self,
        mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
        for p in &self.0 {
            q = match p {
                Param::Text(s) => q.bind(s.as_str()),
                Param::Int(i) => q.bind(*i),
            };
        }
        q
    }
}

/// Ends, in the caller's transaction, every live session whose user may no longer use its connection
/// (not an admin, and no grant left; an auditor never may). The bridges close them at their next sync.
pub(super) async fn end_revoked(conn: &mut AnyConnection, now: i64) -> sqlx::Result<u64> {
    let sql = format!(
        "UPDATE sessions SET state = $1, ended_at = $2, end_reason = $3, end_code = $4 WHERE state <> $1 AND NOT EXISTS (\
         SELECT 1 FROM users u JOIN connections c ON c.id = sessions.connection_id \
         WHERE u.id = sessions.user_id AND (u.role = 'admin' OR (u.role = 'user' AND {})))",
        access("u.id", "c")
    );
    let r = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(state::ENDED)
        .bind(now)
        .bind(REVOKED)
        .bind(CloseCode::Ended.as_str())
        .execute(&mut *conn)
        .await?;
    if r.rows_affected() > 0 {
        tracing::info!(sessions = r.rows_affected(), "Sessions ended: access was revoked");
    }
    Ok(r.rows_affected())
}

/// Which of `ids` exist in `table` (its `id` column).
async fn existing(conn: &mut AnyConnection, table: &'static str, ids: &[String]) -> sqlx::Result<Vec<String>> {
    let mut found = Vec::new();
    for chunk in ids.chunks(200) {
        let mut p = Params::default();
        let list: Vec<String> = chunk.iter().map(|id| p.text(id.as_str())).collect();
        let sql = format!("SELECT id FROM {table} WHERE id IN ({})", list.join(", "));
        let rows = p
            .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .fetch_all(&mut *conn)
            .await?;
        for r in rows {
            found.push(r.try_get::<String, _>("id")?);
        }
    }
    Ok(found)
}

/// The first of `ids` that is not in `table`, as a refusal naming `what`.
async fn all_exist(
    conn: &mut AnyConnection,
    table: &'static str,
    what: &str,
    ids: &[String],
) -> sqlx::Result<Option<Change>> {
    let found = existing(conn, table, ids).await?;
    Ok(ids
        .iter()
        .find(|id| !found.contains(id))
        .map(|id| Change::Refused(format!("no {what} with id {id}"))))
}

fn group(r: &AnyRow) -> sqlx::Result<Group> {
    Ok(Group {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        max_sessions: r.try_get("max_sessions")?,
        protocols: split_list(r.try_get("protocols")?),
        recording: r.try_get("recording")?,
        created_at: r.try_get("created_at")?,
        members: r.try_get("members")?,
    })
}

fn folder(r: &AnyRow) -> sqlx::Result<Folder> {
    Ok(Folder {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        parent_id: r.try_get("parent_id")?,
        created_at: r.try_get("created_at")?,
    })
}

const GROUP_SELECT: &str = "SELECT g.id, g.name, g.max_sessions, g.protocols, g.recording, g.created_at, \
     (SELECT COUNT(*) FROM group_members m WHERE m.group_id = g.id) AS members FROM user_groups g";

/// Rebuild the closure of the folder tree (each folder with itself and its ancestors) and each folder's
/// path of names, from `parent_id`.
async fn rebuild_folder_paths(conn: &mut AnyConnection) -> sqlx::Result<()> {
    let rows: Vec<(String, Option<String>, String)> = sqlx::query_as("SELECT id, parent_id, name FROM folders")
        .fetch_all(&mut *conn)
        .await?;
    let by_id: std::collections::HashMap<&str, (Option<&str>, &str)> = rows
        .iter()
        .map(|(id, p, name)| (id.as_str(), (p.as_deref(), name.as_str())))
        .collect();
    let mut pairs = Vec::new();
    let mut paths = Vec::new();
    for (id, _, _) in &rows {
        let mut names = Vec::new();
        let mut at = Some(id.as_str());
        // The tree has no cycles (moves are checked); the bound guards against one anyway.
        for _ in 0..=rows.len() {
            let Some((a, (parent, name))) = at.and_then(|a| by_id.get_key_value(a)) else {
                break;
            };
            pairs.push((id.as_str(), *a));
            names.push(*name);
            at = *parent;
        }
        names.reverse();
        paths.push((id.as_str(), names.join(" / ")));
    }
    sqlx::query("DELETE FROM folder_paths").execute(&mut *conn).await?;
    for chunk in pairs.chunks(400) {
        let mut p = Params::default();
        let values: Vec<String> = chunk
            .iter()
            .map(|(f, a)| format!("({}, {})", p.text(*f), p.text(*a)))
            .collect();
        let sql = format!(
            "INSERT INTO folder_paths (folder_id, ancestor_id) VALUES {}",
            values.join(", ")
        );
        p.bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .execute(&mut *conn)
            .await?;
    }
    for (id, path) in paths {
        sqlx::query("UPDATE folders SET path = $1 WHERE id = $2 AND path <> $1")
            .bind(path)
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

impl Db {
    // ---- connections as a caller sees them

    /// One page of the connections `viewer` may use (`None`: every connection), searched, with whether each
    /// is one of `caller`'s favourites and when `caller` last started a session on it, ordered by folder
    /// and name (or favourites and recent ones first, see [`ListQuery`]), and the total number that
    /// match. One query for the page (another for the total), whatever the order.
    pub async fn list_connections(
        &self,
        caller: &str,
        viewer: Option<&str>,
        q: &ListQuery,
    ) -> sqlx::Result<(Vec<Listed>, i64)> {
        let mut p = Params::default();
        let me = p.text(caller);
        let mut filter = vec!["1 = 1".to_owned()];
        if let Some(u) = viewer {
            let u = p.text(u);
            filter.push(access(&u, "c"));
        }
        if let Some(q) = q.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
            let pat = p.text(like(q));
            filter.push(format!(
                "(LOWER(c.name) LIKE {pat} ESCAPE '\\' OR LOWER(c.host) LIKE {pat} ESCAPE '\\' \
                 OR c.folder_id IN (SELECT f.id FROM folders f WHERE LOWER(f.name) LIKE {pat} ESCAPE '\\'))"
            ));
        }
        if let Some(f) = &q.folder_id {
            let f = p.text(f.as_str());
            filter.push(format!(
                "c.folder_id IN (SELECT fp.folder_id FROM folder_paths fp WHERE fp.ancestor_id = {f})"
            ));
        }
        let mut own = vec!["1 = 1"];
        if q.only_favourites {
            own.push("fav.user_id IS NOT NULL");
        }
        if q.only_used {
            own.push("u.last_used_at IS NOT NULL");
        }
        // The caller's favourites and, per connection, their latest session start (through the
        // `sessions(user_id, connection_id)` index): joined to the matching connections.
        let from = format!(
            "({CONNECTION_SELECT} WHERE {}) l \
             LEFT JOIN favourites fav ON fav.user_id = {me} AND fav.connection_id = l.id \
             LEFT JOIN (SELECT s.connection_id, MAX(s.created_at) AS last_used_at FROM sessions s \
             WHERE s.user_id = {me} GROUP BY s.connection_id) u ON u.connection_id = l.id \
             WHERE {}",
            filter.join(" AND "),
            own.join(" AND ")
        );
        let total: i64 = {
            let sql = format!("SELECT COUNT(*) AS n FROM {from}");
            p.bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?
        };
        let mut order = Vec::new();
        if q.favourites_first {
            order.push("CASE WHEN fav.user_id IS NULL THEN 1 ELSE 0 END");
        }
        if q.recent_first {
            // Never used last on both engines (PostgreSQL puts NULL first in a descending order).
            order.push("CASE WHEN u.last_used_at IS NULL THEN 1 ELSE 0 END, u.last_used_at DESC");
        }
        // Grouped by folder (top level first), then by name.
        order.push("COALESCE(l.folder_path, ''), l.name, l.id");
        let (limit, offset) = (p.int(q.limit), p.int(q.offset));
        let sql = format!(
            "SELECT l.*, CAST(CASE WHEN fav.user_id IS NULL THEN 0 ELSE 1 END AS BIGINT) AS favourite, \
             u.last_used_at FROM {from} ORDER BY {} LIMIT {limit} OFFSET {offset}",
            order.join(", ")
        );
        let rows = p
            .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .fetch_all(&self.pool)
            .await?;
        let listed = rows
            .iter()
            .map(|r| {
                Ok((
                    connection(r)?,
                    r.try_get::<i64, _>("favourite")? != 0,
                    r.try_get("last_used_at")?,
                ))
            })
            .collect::<sqlx::Result<_>>()?;
        Ok((listed, total))
    }

    /// Make a connection one of `caller`'s favourites (`on`) or not; `false`, and nothing changes, when
    /// `viewer` may not use it (`None`: any connection), exactly as for a connection that does not exist.
    pub async fn set_favourite(
        &self,
        caller: &str,
        viewer: Option<&str>,
        connection_id: &str,
        on: bool,
    ) -> sqlx::Result<bool> {
        let mut p = Params::default();
        let (me, id) = (p.text(caller), p.text(connection_id));
        let mut visible = format!("c.id = {id}");
        if let Some(u) = viewer {
            let u = p.text(u);
            visible = format!("{visible} AND {}", access(&u, "c"));
        }
        // One statement each way: the connection's visibility and the change cannot drift apart.
        let sql = if on {
            format!(
                "INSERT INTO favourites (user_id, connection_id) SELECT {me}, c.id FROM connections c WHERE {visible} \
                 ON CONFLICT (user_id, connection_id) DO NOTHING"
            )
        } else {
            format!(
                "DELETE FROM favourites WHERE user_id = {me} AND connection_id IN \
                 (SELECT c.id FROM connections c WHERE {visible})"
            )
        };
        let r = p
            .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .execute(&self.pool)
            .await?;
        if r.rows_affected() > 0 {
            return Ok(true);
        }
        // Nothing changed: it already was (or was not) a favourite, or the caller may not use it.
        Ok(self.connection_for(viewer, connection_id).await?.is_some())
    }

    /// A connection, if `viewer` may use it (`None`: any).
    pub async fn connection_for(&self, viewer: Option<&str>, id: &str) -> sqlx::Result<Option<Connection>> {
        let Some(u) = viewer else {
            return self.connection(id).await;
        };
        let sql = format!("{CONNECTION_SELECT} WHERE c.id = $1 AND {}", access("$2", "c"));
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(u)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(connection).transpose()
    }

    /// Update a connection; a move out of a granted folder ends the sessions it revokes, atomically.
    pub async fn update_connection(&self, c: &Connection, now: i64) -> sqlx::Result<Change> {
        let mut tx = self.begin_write().await?;
        if let Some(f) = &c.folder_id
            && existing(&mut tx, "folders", std::slice::from_ref(f)).await?.is_empty()
        {
            return Ok(Change::Refused(format!("no folder with id {f}")));
        }
        let sql = "UPDATE connections SET name = $2, protocol = $3, host = $4, port = $5, username = $6, password_enc = $7, \
                   private_key_enc = $8, host_key_fingerprint = $9, settings = $10, created_at = $11, updated_at = $12, \
                   folder_id = $13 WHERE id = $1";
        let r = Self::bind_connection(sqlx::query(sql), c).execute(&mut *tx).await?;
        if r.rows_affected() != 1 {
            return Ok(Change::NotFound);
        }
        end_revoked(&mut tx, now).await?;
        tx.commit().await?;
        Ok(Change::Done)
    }

    // ---- users

    /// One page of users, searched by name.
    pub async fn list_users(&self, q: &ListQuery) -> sqlx::Result<(Vec<User>, i64)> {
        let mut p = Params::default();
        let filter = match q.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
            Some(q) => format!("LOWER(u.username) LIKE {} ESCAPE '\\'", p.text(like(q))),
            None => "1 = 1".into(),
        };
        let total: i64 = p
            .bind(sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) AS n FROM users u WHERE {filter}"
            ))))
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        let (limit, offset) = (p.int(q.limit), p.int(q.offset));
        let sql =
            format!("SELECT {USER_COLS} FROM users u WHERE {filter} ORDER BY u.username LIMIT {limit} OFFSET {offset}");
        let rows = p
            .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .fetch_all(&self.pool)
            .await?;
        Ok((rows.iter().map(user).collect::<sqlx::Result<_>>()?, total))
    }

    pub async fn user(&self, id: &str) -> sqlx::Result<Option<User>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLS} FROM users u WHERE u.id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user).transpose()
    }

    /// Set a user's role and limits; a role that loses access ends the sessions it revokes, atomically.
    pub async fn update_user(&self, u: &User, now: i64) -> sqlx::Result<bool> {
        let mut tx = self.begin_write().await?;
        let r = sqlx::query("UPDATE users SET role = $1, max_sessions = $2, protocols = $3 WHERE id = $4")
            .bind(&u.role)
            .bind(u.max_sessions)
            .bind(join_list(&u.protocols))
            .bind(&u.id)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        end_revoked(&mut tx, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The strictest of the user's own limits and their groups'.
    pub async fn limits(&self, u: &User) -> sqlx::Result<Limits> {
        let mut limits = Limits::default();
        limits.tighten(u.max_sessions, u.protocols.clone());
        let rows: Vec<(Option<i64>, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT g.max_sessions, g.protocols, g.recording FROM user_groups g \
             JOIN group_members m ON m.group_id = g.id WHERE m.user_id = $1",
        )
        .bind(&u.id)
        .fetch_all(&self.pool)
        .await?;
        for (max, protocols, recording) in rows {
            limits.tighten(max, split_list(protocols));
            if let Some(r) = recording
                .as_deref()
                .and_then(portico_proto::control::RecordingPolicy::parse)
            {
                limits.recording = limits.recording.max(r);
            }
        }
        Ok(limits)
    }

    /// Insert a pending session unless its user already has `max_sessions` live ones: the count and the
    /// insert are one statement, under a lock of the user's row on PostgreSQL, so parallel starts cannot
    /// pass the limit together. A pending session whose token expired unclaimed is not live.
    pub async fn start_session(
        &self,
        s: &SessionRow,
        max_sessions: Option<i64>,
        now: i64,
    ) -> sqlx::Result<SessionStart> {
        let Some(max) = max_sessions else {
            self.insert_session(s).await?;
            return Ok(SessionStart::Started);
        };
        let mut tx = self.begin_write().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT id FROM users WHERE id = $1 FOR UPDATE")
                .bind(&s.user_id)
                .fetch_optional(&mut *tx)
                .await?;
        }
        let sql = format!(
            "INSERT INTO sessions ({SESSION_COLS}) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 \
             WHERE (SELECT COUNT(*) FROM sessions l WHERE l.user_id = $2 AND l.state <> $12 \
             AND NOT (l.state = $13 AND l.token_expires_at < $14)) < $15"
        );
        let r = Self::bind_session(sqlx::query(sqlx::AssertSqlSafe(sql)), s)
            .bind(state::ENDED)
            .bind(state::PENDING)
            .bind(now - portico_proto::token::LEEWAY_SECS)
            .bind(max)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(if r.rows_affected() == 1 {
            SessionStart::Started
        } else {
            SessionStart::LimitReached(max)
        })
    }

    // ---- groups

    /// Create a group; `false` if the name is taken.
    pub async fn create_group(&self, id: &str, g: &GroupBody, now: i64) -> sqlx::Result<bool> {
        let r = sqlx::query(
            "INSERT INTO user_groups (id, name, max_sessions, protocols, created_at, recording) \
             SELECT $1, $2, $3, $4, $5, $6 WHERE NOT EXISTS (SELECT 1 FROM user_groups WHERE name = $2)",
        )
        .bind(id)
        .bind(&g.name)
        .bind(g.max_sessions)
        .bind(join_list(&g.protocols))
        .bind(now)
        .bind(&g.recording)
        .execute(&self.pool)
        .await;
        match r {
            Ok(r) => Ok(r.rows_affected() == 1),
            // Two creations of one name at once: the unique index refuses the second.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn list_groups(&self, q: &ListQuery) -> sqlx::Result<(Vec<Group>, i64)> {
        let mut p = Params::default();
        let filter = match q.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
            Some(q) => format!("LOWER(g.name) LIKE {} ESCAPE '\\'", p.text(like(q))),
            None => "1 = 1".into(),
        };
        let total: i64 = p
            .bind(sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) AS n FROM user_groups g WHERE {filter}"
            ))))
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        let (limit, offset) = (p.int(q.limit), p.int(q.offset));
        let sql = format!("{GROUP_SELECT} WHERE {filter} ORDER BY g.name LIMIT {limit} OFFSET {offset}");
        let rows = p
            .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .fetch_all(&self.pool)
            .await?;
        Ok((rows.iter().map(group).collect::<sqlx::Result<_>>()?, total))
    }

    pub async fn group(&self, id: &str) -> sqlx::Result<Option<Group>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{GROUP_SELECT} WHERE g.id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(group).transpose()
    }

    pub async fn update_group(&self, id: &str, g: &GroupBody) -> sqlx::Result<Change> {
        let r = sqlx::query(
            "UPDATE user_groups SET name = $1, max_sessions = $2, protocols = $3, recording = $5 WHERE id = $4",
        )
        .bind(&g.name)
        .bind(g.max_sessions)
        .bind(join_list(&g.protocols))
        .bind(id)
        .bind(&g.recording)
        .execute(&self.pool)
        .await;
        match r {
            Ok(r) if r.rows_affected() == 1 => Ok(Change::Done),
            Ok(_) => Ok(Change::NotFound),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Ok(Change::Refused("a group with this name exists".into()))
            }
            Err(e) => Err(e),
        }
    }

    /// Delete a group with its grants; its members' sessions that it alone allowed end, atomically.
    pub async fn delete_group(&self, id: &str, now: i64) -> sqlx::Result<bool> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM grants WHERE subject_kind = 'group' AND subject_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM group_members WHERE group_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query("DELETE FROM user_groups WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        end_revoked(&mut tx, now).await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn members(&self, group_id: &str) -> sqlx::Result<Vec<String>> {
        sqlx::query_scalar("SELECT user_id FROM group_members WHERE group_id = $1 ORDER BY user_id")
            .bind(group_id)
            .fetch_all(&self.pool)
            .await
    }

    /// Replace a group's members; the sessions the removed members no longer may hold end, atomically.
    pub async fn set_members(&self, group_id: &str, user_ids: &[String], now: i64) -> sqlx::Result<Change> {
        let mut tx = self.begin_write().await?;
        if existing(&mut tx, "user_groups", &[group_id.to_owned()])
            .await?
            .is_empty()
        {
            return Ok(Change::NotFound);
        }
        if let Some(refused) = all_exist(&mut tx, "users", "user", user_ids).await? {
            return Ok(refused);
        }
        sqlx::query("DELETE FROM group_members WHERE group_id = $1")
            .bind(group_id)
            .execute(&mut *tx)
            .await?;
        let mut ids = user_ids.to_vec();
        ids.sort();
        ids.dedup();
        for chunk in ids.chunks(400) {
            let mut p = Params::default();
            let g = p.text(group_id);
            let values: Vec<String> = chunk.iter().map(|u| format!("({g}, {})", p.text(u.as_str()))).collect();
            let sql = format!(
                "INSERT INTO group_members (group_id, user_id) VALUES {}",
                values.join(", ")
            );
            p.bind(sqlx::query(sqlx::AssertSqlSafe(sql))).execute(&mut *tx).await?;
        }
        end_revoked(&mut tx, now).await?;
        tx.commit().await?;
        Ok(Change::Done)
    }

    // ---- folders

    pub async fn list_folders(&self) -> sqlx::Result<Vec<Folder>> {
        let rows = sqlx::query("SELECT id, name, parent_id, created_at FROM folders ORDER BY name, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(folder).collect()
    }

    pub async fn folder(&self, id: &str) -> sqlx::Result<Option<Folder>> {
        let row = sqlx::query("SELECT id, name, parent_id, created_at FROM folders WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(folder).transpose()
    }

    pub async fn create_folder(&self, f: &Folder) -> sqlx::Result<Change> {
        let mut tx = self.begin_write().await?;
        if let Some(p) = &f.parent_id
            && existing(&mut tx, "folders", std::slice::from_ref(p)).await?.is_empty()
        {
            return Ok(Change::Refused(format!("no folder with id {p}")));
        }
        sqlx::query("INSERT INTO folders (id, name, parent_id, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&f.id)
            .bind(&f.name)
            .bind(&f.parent_id)
            .bind(f.created_at)
            .execute(&mut *tx)
            .await?;
        rebuild_folder_paths(&mut tx).await?;
        tx.commit().await?;
        Ok(Change::Done)
    }

    /// Rename or move a folder (never into itself or below itself); a move that revokes access ends the
    /// sessions concerned, atomically.
    pub async fn update_folder(&self, id: &str, name: &str, parent_id: Option<&str>, now: i64) -> sqlx::Result<Change> {
        let mut tx = self.begin_write().await?;
        if existing(&mut tx, "folders", &[id.to_owned()]).await?.is_empty() {
            return Ok(Change::NotFound);
        }
        if let Some(p) = parent_id {
            if existing(&mut tx, "folders", &[p.to_owned()]).await?.is_empty() {
                return Ok(Change::Refused(format!("no folder with id {p}")));
            }
            let below: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM folder_paths WHERE folder_id = $1 AND ancestor_id = $2")
                    .bind(p)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            if below > 0 {
                return Ok(Change::Refused(
                    "a folder cannot move into itself or one of its subfolders".into(),
                ));
            }
        }
        sqlx::query("UPDATE folders SET name = $1, parent_id = $2 WHERE id = $3")
            .bind(name)
            .bind(parent_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        rebuild_folder_paths(&mut tx).await?;
        end_revoked(&mut tx, now).await?;
        tx.commit().await?;
        Ok(Change::Done)
    }

    /// Delete an empty folder (no subfolder, no connection) with its grants.
    pub async fn delete_folder(&self, id: &str) -> sqlx::Result<Change> {
        let mut tx = self.begin_write().await?;
        if existing(&mut tx, "folders", &[id.to_owned()]).await?.is_empty() {
            return Ok(Change::NotFound);
        }
        let used: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM folders WHERE parent_id = $1) + (SELECT COUNT(*) FROM connections WHERE folder_id = $1)",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if used > 0 {
            return Ok(Change::Refused(
                "the folder is not empty: move or delete its subfolders and connections first".into(),
            ));
        }
        sqlx::query("DELETE FROM grants WHERE object_kind = 'folder' AND object_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM folder_paths WHERE folder_id = $1 OR ancestor_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM folders WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Change::Done)
    }

    // ---- grants

    /// The grants of a connection (`object_kind` "connection") or a folder ("folder").
    pub async fn grants(&self, object_kind: &'static str, object_id: &str) -> sqlx::Result<Grants> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT subject_kind, subject_id FROM grants WHERE object_kind = $1 AND object_id = $2 ORDER BY subject_id",
        )
        .bind(object_kind)
        .bind(object_id)
        .fetch_all(&self.pool)
        .await?;
        let mut g = Grants::default();
        for (kind, id) in rows {
            match kind.as_str() {
                "user" => g.user_ids.push(id),
                _ => g.group_ids.push(id),
            }
        }
        Ok(g)
    }

    /// Replace the grants of a connection or a folder; the sessions they no longer allow end, atomically.
    pub async fn set_grants(
        &self,
        object_kind: &'static str,
        object_id: &str,
        g: &Grants,
        now: i64,
    ) -> sqlx::Result<Change> {
        let table = match object_kind {
            "connection" => "connections",
            _ => "folders",
        };
        let mut tx = self.begin_write().await?;
        if existing(&mut tx, table, &[object_id.to_owned()]).await?.is_empty() {
            return Ok(Change::NotFound);
        }
        if let Some(refused) = all_exist(&mut tx, "users", "user", &g.user_ids).await? {
            return Ok(refused);
        }
        if let Some(refused) = all_exist(&mut tx, "user_groups", "group", &g.group_ids).await? {
            return Ok(refused);
        }
        sqlx::query("DELETE FROM grants WHERE object_kind = $1 AND object_id = $2")
            .bind(object_kind)
            .bind(object_id)
            .execute(&mut *tx)
            .await?;
        let mut subjects: Vec<(&str, &str)> = g
            .user_ids
            .iter()
            .map(|u| ("user", u.as_str()))
            .chain(g.group_ids.iter().map(|x| ("group", x.as_str())))
            .collect();
        subjects.sort();
        subjects.dedup();
        for chunk in subjects.chunks(300) {
            let mut p = Params::default();
            let (k, o) = (p.text(object_kind), p.text(object_id));
            let values: Vec<String> = chunk
                .iter()
                .map(|(sk, si)| format!("({k}, {o}, {}, {})", p.text(*sk), p.text(*si)))
                .collect();
            let sql = format!(
                "INSERT INTO grants (object_kind, object_id, subject_kind, subject_id) VALUES {}",
                values.join(", ")
            );
            p.bind(sqlx::query(sqlx::AssertSqlSafe(sql))).execute(&mut *tx).await?;
        }
        end_revoked(&mut tx, now).await?;
        tx.commit().await?;
        Ok(Change::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_escapes_pattern_characters() {
        assert_eq!(like("Floor 1"), "%floor 1%");
        assert_eq!(like("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }

    #[test]
    fn the_strictest_limit_applies() {
        let mut l = Limits::default();
        assert!(l.allows_protocol("rdp"));
        l.tighten(Some(5), None);
        l.tighten(Some(2), Some(vec!["ssh".into(), "vnc".into()]));
        l.tighten(None, Some(vec!["vnc".into(), "rdp".into()]));
        assert_eq!(l.max_sessions, Some(2));
        assert_eq!(l.protocols, Some(vec!["vnc".to_owned()]));
        assert!(l.allows_protocol("vnc") && !l.allows_protocol("ssh"));
        assert_eq!(
            split_list(Some("ssh,,vnc".into())),
            Some(vec!["ssh".into(), "vnc".into()])
        );
        assert_eq!(split_list(None), None);
    }
}
