//! Live session sharing: shares (who may join a session, and how) and viewers (each join, claimed once by
//! the bridge that holds the session).

use sqlx::Row as _;

use super::{Db, state};

/// Kinds of [`ShareRow::kind`].
pub mod share_kind {
    pub const USER: &str = "user";
    pub const GROUP: &str = "group";
    pub const LINK: &str = "link";
    pub const SHADOW: &str = "shadow";
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ShareRow {
    pub id: String,
    pub session_id: String,
    pub created_by: String,
    /// `user`, `group`, `link` or `shadow` ([`share_kind`]).
    pub kind: String,
    /// The user or group a share names (for `shadow`: the administrator).
    pub subject_id: Option<String>,
    #[serde(skip)]
    pub link_hash: Option<String>,
    /// `view` or `control`.
    pub mode: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ViewerRow {
    pub id: String,
    pub share_id: String,
    pub session_id: String,
    pub user_id: String,
    pub username: String,
    #[serde(skip)]
    pub token_jti: String,
    #[serde(skip)]
    pub token_expires_at: i64,
    pub created_at: i64,
    /// When the session's bridge attached the viewer (`None`: the token was not used yet).
    pub claimed_at: Option<i64>,
    pub bridge_id: Option<String>,
    pub left_at: Option<i64>,
}

/// A live session shared with a user (directly or through a group), for their list.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SharedSession {
    pub share_id: String,
    pub session_id: String,
    pub mode: String,
    pub expires_at: i64,
    pub owner: String,
    pub connection_name: String,
    pub protocol: String,
}

/// Where a viewer stands, for the heartbeat of the bridge that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewerState {
    Allowed(String),
    Revoked(String),
}

/// The outcome of [`Db::claim_viewer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewerClaim {
    /// Claimed: the share's current mode.
    Claimed(String),
    /// Already claimed, unknown, expired, or for another session or bridge.
    Refused(&'static str),
}

const SHARE_COLS: &str =
    "id, session_id, created_by, kind, subject_id, link_hash, mode, created_at, expires_at, revoked_at";
const VIEWER_COLS: &str = "id, share_id, session_id, user_id, username, token_jti, token_expires_at, created_at, \
                           claimed_at, bridge_id, left_at";

fn share(r: &sqlx::any::AnyRow) -> sqlx::Result<ShareRow> {
    Ok(ShareRow {
        id: r.try_get("id")?,
        session_id: r.try_get("session_id")?,
        created_by: r.try_get("created_by")?,
        kind: r.try_get("kind")?,
        subject_id: r.try_get("subject_id")?,
        link_hash: r.try_get("link_hash")?,
        mode: r.try_get("mode")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

fn viewer(r: &sqlx::any::AnyRow) -> sqlx::Result<ViewerRow> {
    Ok(ViewerRow {
        id: r.try_get("id")?,
        share_id: r.try_get("share_id")?,
        session_id: r.try_get("session_id")?,
        user_id: r.try_get("user_id")?,
        username: r.try_get("username")?,
        token_jti: r.try_get("token_jti")?,
        token_expires_at: r.try_get("token_expires_at")?,
        created_at: r.try_get("created_at")?,
        claimed_at: r.try_get("claimed_at")?,
        bridge_id: r.try_get("bridge_id")?,
        left_at: r.try_get("left_at")?,
    })
}

/// Why a share no longer lets its viewers in at `now` (`None`: it does).
pub fn share_closed(s: &ShareRow, session_state: &str, now: i64) -> Option<&'static str> {
    if session_state == state::ENDED {
        Some("the session ended")
    } else if s.revoked_at.is_some() {
        Some("the owner stopped sharing the session")
    } else if s.expires_at <= now {
        Some("the share expired")
    } else {
        None
    }
}

impl Db {
    pub async fn insert_share(&self, s: &ShareRow) -> sqlx::Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO session_shares ({SHARE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        )))
        .bind(&s.id)
        .bind(&s.session_id)
        .bind(&s.created_by)
        .bind(&s.kind)
        .bind(&s.subject_id)
        .bind(&s.link_hash)
        .bind(&s.mode)
        .bind(s.created_at)
        .bind(s.expires_at)
        .bind(s.revoked_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every share of a session, newest first (revoked and expired ones too).
    pub async fn shares_of(&self, session_id: &str) -> sqlx::Result<Vec<ShareRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SHARE_COLS} FROM session_shares WHERE session_id = $1 ORDER BY created_at DESC, id"
        )))
        .bind(session_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(share).collect()
    }

    pub async fn share(&self, id: &str) -> sqlx::Result<Option<ShareRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SHARE_COLS} FROM session_shares WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(share).transpose()
    }

    pub async fn share_by_link(&self, link_hash: &str) -> sqlx::Result<Option<ShareRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SHARE_COLS} FROM session_shares WHERE link_hash = $1"
        )))
        .bind(link_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(share).transpose()
    }

    /// Change the mode of a share that is not revoked; false when there is none.
    pub async fn set_share_mode(&self, session_id: &str, share_id: &str, mode: &str) -> sqlx::Result<bool> {
        let r =
            sqlx::query("UPDATE session_shares SET mode = $1 WHERE id = $2 AND session_id = $3 AND revoked_at IS NULL")
                .bind(mode)
                .bind(share_id)
                .bind(session_id)
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Revoke one share of a session, or all of them; returns how many were revoked now.
    pub async fn revoke_shares(&self, session_id: &str, share_id: Option<&str>, now: i64) -> sqlx::Result<u64> {
        let r = sqlx::query(
            "UPDATE session_shares SET revoked_at = $1 WHERE session_id = $2 AND ($3 = '' OR id = $3) \
             AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(session_id)
        .bind(share_id.unwrap_or(""))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Add a viewer unless the session already has `max` viewers attached or about to be (a token not yet
    /// expired); false when it is full. One transaction that holds the session's row (PostgreSQL: a row lock;
    /// SQLite: the write lock), so concurrent joins cannot exceed `max` (READ COMMITTED alone let a
    /// concurrent count miss another join's insert).
    pub async fn insert_viewer(&self, v: &ViewerRow, max: i64, now: i64) -> sqlx::Result<bool> {
        let mut tx = self.begin_write().await?;
        if self.dialect == super::Dialect::Postgres {
            sqlx::query("SELECT id FROM sessions WHERE id = $1 FOR UPDATE")
                .bind(&v.session_id)
                .fetch_optional(&mut *tx)
                .await?;
        }
        let n: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM session_viewers WHERE session_id = $1 AND left_at IS NULL \
             AND (claimed_at IS NOT NULL OR token_expires_at >= $2)",
        )
        .bind(&v.session_id)
        .bind(now - portico_proto::token::LEEWAY_SECS)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        if n >= max {
            return Ok(false);
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO session_viewers ({VIEWER_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        )))
        .bind(&v.id)
        .bind(&v.share_id)
        .bind(&v.session_id)
        .bind(&v.user_id)
        .bind(&v.username)
        .bind(&v.token_jti)
        .bind(v.token_expires_at)
        .bind(v.created_at)
        .bind(v.claimed_at)
        .bind(&v.bridge_id)
        .bind(v.left_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn viewer(&self, id: &str) -> sqlx::Result<Option<ViewerRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {VIEWER_COLS} FROM session_viewers WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(viewer).transpose()
    }

    /// Claim viewer `id`'s token `jti` for `bridge_id`, which must hold the session: once, fleet-wide (one
    /// conditional `UPDATE`), within the token's lifetime, while its share lets viewers in.
    pub async fn claim_viewer(
        &self,
        id: &str,
        session_id: &str,
        jti: &str,
        bridge_id: &str,
        now: i64,
    ) -> sqlx::Result<ViewerClaim> {
        let r = sqlx::query(
            "UPDATE session_viewers SET claimed_at = $1, bridge_id = $2 WHERE id = $3 AND session_id = $4 \
             AND token_jti = $5 AND claimed_at IS NULL AND token_expires_at >= $6 \
             AND EXISTS (SELECT 1 FROM sessions s WHERE s.id = $4 AND s.bridge_id = $2 AND s.state <> 'ended')",
        )
        .bind(now)
        .bind(bridge_id)
        .bind(id)
        .bind(session_id)
        .bind(jti)
        .bind(now - portico_proto::token::LEEWAY_SECS)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(ViewerClaim::Refused(
                "viewer token already used, expired, or not for this session and bridge",
            ));
        }
        let Some(v) = self.viewer(id).await? else {
            return Ok(ViewerClaim::Refused("unknown viewer"));
        };
        let Some(s) = self.share(&v.share_id).await? else {
            return Ok(ViewerClaim::Refused("unknown share"));
        };
        if let Some(why) = share_closed(&s, "live", now) {
            return Ok(ViewerClaim::Refused(why));
        }
        Ok(ViewerClaim::Claimed(s.mode))
    }

    /// The viewer went (reported by the bridge that held it); false when it had already gone.
    pub async fn viewer_left(&self, id: &str, bridge_id: &str, now: i64) -> sqlx::Result<bool> {
        let r =
            sqlx::query("UPDATE session_viewers SET left_at = $1 WHERE id = $2 AND bridge_id = $3 AND left_at IS NULL")
                .bind(now)
                .bind(id)
                .bind(bridge_id)
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() > 0)
    }

    /// For a bridge's heartbeat: whether each of its viewers `ids` may stay, and in which mode. A viewer
    /// unknown or held by another bridge is revoked.
    pub async fn viewer_states(
        &self,
        ids: &[String],
        bridge_id: &str,
        now: i64,
    ) -> sqlx::Result<Vec<(String, ViewerState)>> {
        let mut out = Vec::new();
        for chunk in ids.chunks(200) {
            let placeholders: Vec<String> = (2..=chunk.len() + 1).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT v.id AS vid, s.state AS session_state, {} FROM session_viewers v \
                 JOIN session_shares sh ON sh.id = v.share_id JOIN sessions s ON s.id = v.session_id \
                 WHERE v.bridge_id = $1 AND v.id IN ({})",
                SHARE_COLS
                    .split(", ")
                    .map(|c| format!("sh.{c} AS {c}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                placeholders.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(bridge_id);
            for id in chunk {
                q = q.bind(id);
            }
            let rows = q.fetch_all(&self.pool).await?;
            let mut known = Vec::new();
            for r in &rows {
                let vid: String = r.try_get("vid")?;
                let st: String = r.try_get("session_state")?;
                known.push((vid, st, share(r)?));
            }
            for id in chunk {
                let state = match known.iter().find(|(v, ..)| v == id) {
                    Some((_, st, s)) => match share_closed(s, st, now) {
                        Some(why) => ViewerState::Revoked(why.into()),
                        None => ViewerState::Allowed(s.mode.clone()),
                    },
                    None => ViewerState::Revoked("unknown viewer".into()),
                };
                out.push((id.clone(), state));
            }
        }
        Ok(out)
    }

    /// The viewers of a session attached now, or let in and not yet attached (their token still valid).
    pub async fn live_viewers(&self, session_id: &str, now: i64) -> sqlx::Result<Vec<ViewerRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {VIEWER_COLS} FROM session_viewers WHERE session_id = $1 AND left_at IS NULL \
             AND (claimed_at IS NOT NULL OR token_expires_at >= $2) ORDER BY created_at"
        )))
        .bind(session_id)
        .bind(now - portico_proto::token::LEEWAY_SECS)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(viewer).collect()
    }

    /// Live sessions shared with `user_id`, by a user share or through one of their groups (two queries:
    /// whole keys, no `OR` across subjects; see `access()`).
    pub async fn shared_with(&self, user_id: &str, now: i64) -> sqlx::Result<Vec<SharedSession>> {
        let base = "SELECT sh.id AS share_id, sh.session_id AS session_id, sh.mode AS mode, \
                    sh.expires_at AS expires_at, u.username AS owner, c.name AS connection_name, \
                    c.protocol AS protocol FROM session_shares sh JOIN sessions s ON s.id = sh.session_id \
                    JOIN users u ON u.id = s.user_id JOIN connections c ON c.id = s.connection_id \
                    WHERE sh.revoked_at IS NULL AND sh.expires_at > $2 AND s.state <> 'ended' AND s.user_id <> $1";
        let queries = [
            format!("{base} AND sh.kind = 'user' AND sh.subject_id = $1"),
            format!(
                "{base} AND sh.kind = 'group' AND EXISTS (SELECT 1 FROM group_members m \
                 WHERE m.group_id = sh.subject_id AND m.user_id = $1)"
            ),
        ];
        let mut out: Vec<SharedSession> = Vec::new();
        for sql in queries {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(user_id)
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
            for r in &rows {
                let s = SharedSession {
                    share_id: r.try_get("share_id")?,
                    session_id: r.try_get("session_id")?,
                    mode: r.try_get("mode")?,
                    expires_at: r.try_get("expires_at")?,
                    owner: r.try_get("owner")?,
                    connection_name: r.try_get("connection_name")?,
                    protocol: r.try_get("protocol")?,
                };
                if !out.iter().any(|o| o.share_id == s.share_id) {
                    out.push(s);
                }
            }
        }
        out.sort_by(|a, b| a.session_id.cmp(&b.session_id).then(a.share_id.cmp(&b.share_id)));
        Ok(out)
    }

    /// Whether `user_id` is a member of `group_id`.
    pub async fn is_member(&self, group_id: &str, user_id: &str) -> sqlx::Result<bool> {
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM group_members WHERE group_id = $1 AND user_id = $2")
            .bind(group_id)
            .bind(user_id)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok(n > 0)
    }

    /// The route of a bridge (`None`: none, or no such bridge).
    pub async fn bridge_route(&self, bridge_id: &str) -> sqlx::Result<Option<String>> {
        let row = sqlx::query("SELECT route FROM bridges WHERE id = $1")
            .bind(bridge_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get("route")?,
            None => None,
        })
    }
}
