//! Session recordings: one row per recorded session (the bytes live in the recording storage).

use sqlx::Row as _;

use super::Db;

#[derive(Debug, Clone, serde::Serialize)]
pub struct RecordingRow {
    /// The session's id (the recording is `<id>.portrec` in the storage).
    pub id: String,
    pub user_id: String,
    /// The user's name when the session began.
    pub username: String,
    pub connection_id: String,
    /// The connection's name when the session began.
    pub connection_name: String,
    /// `ssh`, `vnc`, `rdp` or `container`.
    pub protocol: String,
    /// Keystrokes were recorded too.
    pub input: bool,
    /// The session's owner may play it (the connection's policy when it was recorded).
    pub owner_access: bool,
    pub bridge_id: String,
    pub created_at: i64,
    /// When the session ended (`None`: live, or its end was never recorded).
    pub ended_at: Option<i64>,
    /// When its bridge reported the end, the recording written and synced (`None`: still recording, or
    /// cut short by the death of its bridge).
    pub completed_at: Option<i64>,
}

/// What a search of the recordings matches (every field optional).
#[derive(Debug, Clone, Default)]
pub struct RecordingFilter {
    pub user_id: Option<String>,
    pub connection_id: Option<String>,
    /// A substring of the user's or the connection's name, case-insensitive.
    pub q: Option<String>,
    /// Began at or after (unix seconds).
    pub since: Option<i64>,
    /// Began before (unix seconds).
    pub until: Option<i64>,
    /// Only recordings their owners may play (what a user who is not an admin or auditor lists).
    pub owner_access: bool,
}

const COLS: &str = "r.id, r.user_id, r.username, r.connection_id, r.connection_name, r.protocol, r.input, r.bridge_id, \
                    r.created_at, s.ended_at, r.completed_at, r.owner_access";

fn row(r: &sqlx::any::AnyRow) -> sqlx::Result<RecordingRow> {
    Ok(RecordingRow {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        username: r.try_get("username")?,
        connection_id: r.try_get("connection_id")?,
        connection_name: r.try_get("connection_name")?,
        protocol: r.try_get("protocol")?,
        input: r.try_get::<i64, _>("input")? != 0,
        owner_access: r.try_get::<i64, _>("owner_access")? != 0,
        bridge_id: r.try_get("bridge_id")?,
        created_at: r.try_get("created_at")?,
        ended_at: r.try_get("ended_at")?,
        completed_at: r.try_get("completed_at")?,
    })
}

impl Db {
    /// Record that session `row.id` is recorded (once: a second claim of the same session adds nothing).
    pub async fn insert_recording(&self, row: &RecordingRow) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO recordings (id, user_id, username, connection_id, connection_name, protocol, input, bridge_id, \
             created_at, owner_access) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&row.id)
        .bind(&row.user_id)
        .bind(&row.username)
        .bind(&row.connection_id)
        .bind(&row.connection_name)
        .bind(&row.protocol)
        .bind(i64::from(row.input))
        .bind(&row.bridge_id)
        .bind(row.created_at)
        .bind(i64::from(row.owner_access))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The recordings matching `f`, newest first, and how many match in all.
    pub async fn list_recordings(
        &self,
        f: &RecordingFilter,
        limit: i64,
        offset: i64,
    ) -> sqlx::Result<(Vec<RecordingRow>, i64)> {
        let pattern = f.q.as_deref().map(super::access::like).unwrap_or_default();
        let filter = "($1 = '' OR r.user_id = $1) AND ($2 = '' OR r.connection_id = $2) \
                      AND ($3 = '' OR LOWER(r.username) LIKE $3 ESCAPE '\\' OR LOWER(r.connection_name) LIKE $3 ESCAPE '\\') \
                      AND r.created_at >= $4 AND r.created_at < $5 AND ($6 = 0 OR r.owner_access = 1)";
        let bind = |q: sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>| {
            q.bind(f.user_id.clone().unwrap_or_default())
                .bind(f.connection_id.clone().unwrap_or_default())
                .bind(pattern.clone())
                .bind(f.since.unwrap_or(i64::MIN))
                .bind(f.until.unwrap_or(i64::MAX))
                .bind(i64::from(f.owner_access))
        };
        let total: i64 = bind(sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) AS n FROM recordings r WHERE {filter}"
        ))))
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?;
        let rows = bind(sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLS} FROM recordings r LEFT JOIN sessions s ON s.id = r.id WHERE {filter} \
             ORDER BY r.created_at DESC, r.id LIMIT $7 OFFSET $8"
        ))))
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        Ok((rows.iter().map(row).collect::<sqlx::Result<_>>()?, total))
    }

    pub async fn recording(&self, id: &str) -> sqlx::Result<Option<RecordingRow>> {
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLS} FROM recordings r LEFT JOIN sessions s ON s.id = r.id WHERE r.id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        r.as_ref().map(row).transpose()
    }

    /// The bridge reported the end of session `id`: its recording (if any) is complete.
    pub async fn complete_recording(&self, id: &str, now: i64) -> sqlx::Result<()> {
        sqlx::query("UPDATE recordings SET completed_at = $1 WHERE id = $2 AND completed_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forget recording `id`; `false` if there was none.
    pub async fn delete_recording(&self, id: &str) -> sqlx::Result<bool> {
        let r = sqlx::query("DELETE FROM recordings WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Recordings that began before `before` (at most `limit` of them, oldest first), for the retention.
    pub async fn expired_recordings(&self, before: i64, limit: i64) -> sqlx::Result<Vec<RecordingRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLS} FROM recordings r LEFT JOIN sessions s ON s.id = r.id WHERE r.created_at < $1 \
             ORDER BY r.created_at LIMIT $2"
        )))
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row).collect()
    }
}
