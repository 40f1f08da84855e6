//! The only SQL in Portico: one `AnyPool` over SQLite or PostgreSQL, portable queries (`$N`, integers for
//! times and flags), and one migration directory per dialect.

use std::time::Duration;

use anyhow::Context as _;
use portico_proto::codes::CloseCode;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor as _, Row as _};

mod access;
mod events;
mod identity;
mod mfa;
mod recordings;
mod shares;
pub use access::{Change, Folder, Grants, Group, GroupBody, Limits, ListQuery, REVOKED, SessionStart, split_list};
pub use events::{EventQuery, EventRecord};
pub use identity::{ExternalIdentity, IdentityProvider, OidcLogin};
pub use recordings::{RecordingFilter, RecordingRow};
pub use shares::{ShareRow, SharedSession, ViewerClaim, ViewerRow, ViewerState, share_closed, share_kind};

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub dialect: Dialect,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct User {
    pub id: String,
    pub username: String,
    pub role: String,
    pub created_at: i64,
    /// The user's own limit of concurrent sessions (`None`: none of their own).
    pub max_sessions: Option<i64>,
    /// The protocols the user may use (`None`: no restriction of their own).
    pub protocols: Option<Vec<String>>,
    /// Whether a second factor (TOTP) is confirmed for the user.
    pub mfa_enabled: bool,
    /// The identity provider the user comes from (`None`: a local account with a Portico password).
    pub provider_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Connection {
    pub id: String,
    pub name: String,
    pub protocol: String,
    pub host: String,
    pub port: i64,
    pub username: String,
    pub password_enc: Option<String>,
    pub private_key_enc: Option<String>,
    pub host_key_fingerprint: Option<String>,
    /// JSON of `portico_proto::control::ConnectionSettings`.
    pub settings: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// The folder it is in (`None`: the top level).
    pub folder_id: Option<String>,
    /// The names of the folders from the top down to `folder_id` (read only: kept with the folders).
    pub folder_path: Option<String>,
}

impl Connection {
    /// A connection `id` named `name` to `host:port` over `protocol`, created at `now`, without user name,
    /// credentials, pin, settings or folder (set the fields that matter).
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        protocol: &str,
        host: impl Into<String>,
        port: i64,
        now: i64,
    ) -> Self {
        Connection {
            id: id.into(),
            name: name.into(),
            protocol: protocol.into(),
            host: host.into(),
            port,
            username: String::new(),
            password_enc: None,
            private_key_enc: None,
            host_key_fingerprint: None,
            settings: "{}".into(),
            created_at: now,
            updated_at: now,
            folder_id: None,
            folder_path: None,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionRow {
    pub id: String,
    pub user_id: String,
    pub connection_id: String,
    pub state: String,
    #[serde(skip)]
    pub token_jti: String,
    pub token_expires_at: i64,
    pub claimed_at: Option<i64>,
    pub bridge_id: Option<String>,
    pub created_at: i64,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ApiKey {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    /// `read`, `sessions` or `admin` (see `auth::KeyScope`).
    pub scope: String,
    /// Unix seconds; `None` only for keys created before keys expired.
    pub expires_at: Option<i64>,
}

/// A bridge as the control plane knows it (its credential only as a hash, never here).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BridgeRow {
    pub id: String,
    pub name: String,
    pub remote_addr: String,
    pub registered_at: i64,
    pub last_seen_at: i64,
    pub revoked_at: Option<i64>,
    /// Its route at the load balancer (sessions are assigned only to bridges with one).
    pub route: Option<String>,
    /// Since when it drains (no new sessions), by an administrator or a signal.
    pub draining_at: Option<i64>,
    /// When a drained bridge ends what is left.
    pub drain_deadline_at: Option<i64>,
    /// Sessions it holds or was assigned that have not ended (listing only).
    pub live_sessions: i64,
}

/// A bridge that may take new sessions: alive, not draining, not revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeCandidate {
    pub id: String,
    pub route: Option<String>,
    pub live_sessions: i64,
}

/// A Docker agent as the control plane knows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentRow {
    pub id: String,
    pub name: String,
    #[serde(skip)]
    pub credential_hash: Option<String>,
    /// SHA-256 of the agent's persistent identity key; `None` until its next registration binds one.
    #[serde(skip)]
    pub identity_hash: Option<String>,
    /// `healthy` as stored; readers derive `down` from the heartbeat age.
    pub state: String,
    pub last_error: Option<String>,
    pub remote_addr: String,
    pub docker_version: String,
    pub cores: i64,
    pub memory_mb: i64,
    pub running: i64,
    pub created_at: i64,
    pub registered_at: Option<i64>,
    pub last_heartbeat_at: Option<i64>,
    /// JSON list of the subnets its containers are on (`portico_proto::control::AgentNetwork`).
    #[serde(skip)]
    pub networks: String,
    /// Since when an administrator has it drained: no new workspaces are placed on it.
    pub draining_at: Option<i64>,
}

const AGENT_COLS: &str = "id, name, credential_hash, identity_hash, state, last_error, remote_addr, docker_version, cores, memory_mb, running, created_at, registered_at, last_heartbeat_at, networks, draining_at";

/// Most names kept in `agent_refusals` (refused registrations are unauthenticated: their rows are bounded).
pub const MAX_AGENT_REFUSALS: i64 = 1000;

/// A refused registration as admins see it: the latest reason and address under one name.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentRefusal {
    pub name: String,
    pub reason: String,
    pub remote_addr: String,
    pub attempts: i64,
    pub first_at: i64,
    pub last_at: i64,
}

/// What a registration writes.
#[derive(Debug, Clone)]
pub struct AgentRegistration<'a> {
    pub name: &'a str,
    pub identity_hash: &'a str,
    pub credential_hash: &'a str,
    pub docker_version: &'a str,
    pub cores: i64,
    pub memory_mb: i64,
    pub running: i64,
    /// JSON list of its declared networks.
    pub networks: &'a str,
    pub addr: &'a str,
    pub now: i64,
}

/// How a registration went (each with the agent's id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentRegisterOutcome {
    /// A name nobody had: bound to this identity.
    New(String),
    /// This identity's own name (or a name no identity was bound to yet): a fresh credential.
    Again(String),
    /// The name belongs to another identity: nothing was changed.
    NameTaken(String),
}

fn agent(r: &AnyRow) -> sqlx::Result<AgentRow> {
    Ok(AgentRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        credential_hash: r.try_get("credential_hash")?,
        identity_hash: r.try_get("identity_hash")?,
        state: r.try_get("state")?,
        last_error: r.try_get("last_error")?,
        remote_addr: r.try_get("remote_addr")?,
        docker_version: r.try_get("docker_version")?,
        cores: r.try_get("cores")?,
        memory_mb: r.try_get("memory_mb")?,
        running: r.try_get("running")?,
        created_at: r.try_get("created_at")?,
        registered_at: r.try_get("registered_at")?,
        last_heartbeat_at: r.try_get("last_heartbeat_at")?,
        networks: r.try_get("networks")?,
        draining_at: r.try_get("draining_at")?,
    })
}

/// A workspace container as the control plane knows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ContainerRow {
    /// The session the container serves; for an unclaimed spare, its [`ContainerRow::container_key`].
    pub session_id: String,
    /// What the agent knows the container by (its label and name): the session id, or `spare-<uuid>` for
    /// a container of the warm pool, kept when a session claims it.
    pub container_key: String,
    /// For an unclaimed spare of the warm pool: the connection it was started for.
    pub spare_for: Option<String>,
    pub agent_id: String,
    /// JSON of `portico_proto::control::WorkspaceSpec`.
    pub spec: String,
    #[serde(skip)]
    pub vnc_password_enc: String,
    /// See [`container_state`].
    pub state: String,
    pub container_id: Option<String>,
    pub host: Option<String>,
    pub port: Option<i64>,
    pub error: Option<String>,
    pub memory_mb: i64,
    pub cpu_millis: i64,
    pub created_at: i64,
    pub ready_at: Option<i64>,
    pub removed_at: Option<i64>,
}

/// States stored in `containers.state`.
pub mod container_state {
    /// Wanted; the agent is creating it, or waiting for its VNC server.
    pub const STARTING: &str = "starting";
    pub const READY: &str = "ready";
    /// It could not start, it stopped, or it vanished.
    pub const FAILED: &str = "failed";
    /// Its agent stopped responding.
    pub const LOST: &str = "lost";
    /// The session ended and the agent no longer has it.
    pub const REMOVED: &str = "removed";
}

const CONTAINER_COLS: &str = "session_id, container_key, spare_for, agent_id, spec, vnc_password_enc, state, container_id, host, port, error, memory_mb, cpu_millis, created_at, ready_at, removed_at";

fn container(r: &AnyRow) -> sqlx::Result<ContainerRow> {
    Ok(ContainerRow {
        session_id: r.try_get("session_id")?,
        container_key: r.try_get("container_key")?,
        spare_for: r.try_get("spare_for")?,
        agent_id: r.try_get("agent_id")?,
        spec: r.try_get("spec")?,
        vnc_password_enc: r.try_get("vnc_password_enc")?,
        state: r.try_get("state")?,
        container_id: r.try_get("container_id")?,
        host: r.try_get("host")?,
        port: r.try_get("port")?,
        error: r.try_get("error")?,
        memory_mb: r.try_get("memory_mb")?,
        cpu_millis: r.try_get("cpu_millis")?,
        created_at: r.try_get("created_at")?,
        ready_at: r.try_get("ready_at")?,
        removed_at: r.try_get("removed_at")?,
    })
}

/// A healthy agent and what its live containers already take.
#[derive(Debug, Clone)]
pub struct AgentLoad {
    pub id: String,
    pub name: String,
    pub cores: i64,
    pub memory_mb: i64,
    pub used_memory_mb: i64,
    pub used_cpu_millis: i64,
    /// JSON of the images it holds (`portico_proto::control::AgentImage`); `None`: it does not say.
    pub images: Option<String>,
}

impl AgentLoad {
    /// Whether this agent can run `image` (its catalog says so, or it keeps no catalog).
    pub fn holds(&self, image: &str) -> bool {
        let images: Option<Vec<portico_proto::control::AgentImage>> =
            self.images.as_deref().and_then(|j| serde_json::from_str(j).ok());
        portico_proto::control::AgentImage::held(images.as_deref(), image)
    }
}

/// What the agent reported of one container, as the database takes it.
pub struct ContainerUpdate<'a> {
    pub container_key: &'a str,
    pub container_id: &'a str,
    pub state: &'a str,
    pub host: Option<&'a str>,
    pub port: Option<i64>,
    pub error: Option<&'a str>,
}

/// Session states stored in `sessions.state`.
pub mod state {
    pub const PENDING: &str = "pending";
    pub const ACTIVE: &str = "active";
    pub const ENDED: &str = "ended";
}

fn user(r: &AnyRow) -> sqlx::Result<User> {
    Ok(User {
        id: r.try_get("id")?,
        username: r.try_get("username")?,
        role: r.try_get("role")?,
        created_at: r.try_get("created_at")?,
        max_sessions: r.try_get("max_sessions")?,
        protocols: access::split_list(r.try_get("protocols")?),
        mfa_enabled: r.try_get::<i64, _>("totp_enabled")? != 0,
        provider_id: r.try_get("provider_id")?,
    })
}

fn connection(r: &AnyRow) -> sqlx::Result<Connection> {
    Ok(Connection {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        protocol: r.try_get("protocol")?,
        host: r.try_get("host")?,
        port: r.try_get("port")?,
        username: r.try_get("username")?,
        password_enc: r.try_get("password_enc")?,
        private_key_enc: r.try_get("private_key_enc")?,
        host_key_fingerprint: r.try_get("host_key_fingerprint")?,
        settings: r.try_get("settings")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        folder_id: r.try_get("folder_id")?,
        folder_path: r.try_get("folder_path")?,
    })
}

fn session(r: &AnyRow) -> sqlx::Result<SessionRow> {
    Ok(SessionRow {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        connection_id: r.try_get("connection_id")?,
        state: r.try_get("state")?,
        token_jti: r.try_get("token_jti")?,
        token_expires_at: r.try_get("token_expires_at")?,
        claimed_at: r.try_get("claimed_at")?,
        bridge_id: r.try_get("bridge_id")?,
        created_at: r.try_get("created_at")?,
        ended_at: r.try_get("ended_at")?,
        end_reason: r.try_get("end_reason")?,
    })
}

const CONNECTION_COLS: &str = "id, name, protocol, host, port, username, password_enc, private_key_enc, host_key_fingerprint, settings, created_at, updated_at, folder_id";
/// Every column of [`Connection`], from `connections c` joined with its folder `f`.
const CONNECTION_SELECT: &str = "SELECT c.id, c.name, c.protocol, c.host, c.port, c.username, c.password_enc, c.private_key_enc, \
     c.host_key_fingerprint, c.settings, c.created_at, c.updated_at, c.folder_id, f.path AS folder_path \
     FROM connections c LEFT JOIN folders f ON f.id = c.folder_id";
/// The columns of [`User`], for tables aliased `u`.
const USER_COLS: &str =
    "u.id, u.username, u.role, u.created_at, u.max_sessions, u.protocols, u.totp_enabled, u.provider_id";
const SESSION_COLS: &str = "id, user_id, connection_id, state, token_jti, token_expires_at, claimed_at, bridge_id, created_at, ended_at, end_reason";

impl Db {
    /// Begin a transaction that writes. SQLite: `BEGIN IMMEDIATE`, so the write lock is taken (waiting up to
    /// the busy timeout) before the first read; a deferred transaction that reads and then writes while
    /// another connection writes fails at once with "database is locked" instead of waiting.
    pub async fn begin_write(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Any>> {
        match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Dialect::Postgres => self.pool.begin().await,
        }
    }

    /// Connect (creating a SQLite file if needed) and run the migrations of the dialect.
    pub async fn connect(url: &str) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            anyhow::bail!("unsupported database url scheme (expected sqlite: or postgres:)");
        };
        let url = match dialect {
            Dialect::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
            }
            _ => url.to_owned(),
        };
        let mut opts = AnyPoolOptions::new()
            .acquire_timeout(Duration::from_secs(3))
            .max_connections(16);
        if dialect == Dialect::Sqlite {
            opts = opts.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute("PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL")
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = opts.connect(&url).await.context("connect to the database")?;
        let db = Db { pool, dialect };
        db.migrate().await?;
        Ok(db)
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.dialect {
            Dialect::Sqlite => &SQLITE_MIGRATOR,
            Dialect::Postgres => &POSTGRES_MIGRATOR,
        };
        migrator.run(&self.pool).await.context("run database migrations")
    }

    /// One real round trip to the database.
    pub async fn ping(&self) -> sqlx::Result<()> {
        let v: i64 = sqlx::query_scalar("SELECT CAST(1 AS BIGINT)")
            .fetch_one(&self.pool)
            .await?;
        debug_assert_eq!(v, 1);
        Ok(())
    }

    // ---- users

    pub async fn count_users(&self) -> sqlx::Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await
    }

    pub async fn insert_user(
        &self,
        id: &str,
        username: &str,
        password_hash: &str,
        role: &str,
        now: i64,
    ) -> sqlx::Result<()> {
        sqlx::query("INSERT INTO users (id, username, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(id)
            .bind(username)
            .bind(password_hash)
            .bind(role)
            .bind(now)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    pub async fn user_with_hash(&self, username: &str) -> sqlx::Result<Option<(User, String)>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLS}, u.password_hash FROM users u WHERE u.username = $1"
        )))
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((user(&r)?, r.try_get("password_hash")?))).transpose()
    }

    pub async fn set_password(&self, user_id: &str, password_hash: &str) -> sqlx::Result<bool> {
        let r = sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(password_hash)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Delete a user and, in the same transaction, end every live session of theirs: the bridges close
    /// them at their next sync and their unclaimed tokens can no longer be claimed.
    pub async fn delete_user(&self, id: &str, now: i64) -> sqlx::Result<bool> {
        self.delete_with_sessions(
            ("users", "subject", "user"),
            "user_id",
            id,
            "ended: the user was deleted",
            now,
        )
        .await
    }

    /// Delete `table`'s row `id` with the grants naming it (as `grant_side` of `grant_kind`), and end the
    /// live sessions whose `session_column` names it, atomically.
    async fn delete_with_sessions(
        &self,
        (table, grant_side, grant_kind): (&'static str, &'static str, &'static str),
        session_column: &'static str,
        id: &str,
        reason: &str,
        now: i64,
    ) -> sqlx::Result<bool> {
        let mut tx = self.begin_write().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM grants WHERE {grant_side}_kind = $1 AND {grant_side}_id = $2"
        )))
        .bind(grant_kind)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let r = sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE id = $1")))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE sessions SET state = $1, ended_at = $2, end_reason = $3, end_code = $5 \
             WHERE {session_column} = $4 AND state <> $1"
        )))
        .bind(state::ENDED)
        .bind(now)
        .bind(reason)
        .bind(id)
        .bind(CloseCode::Ended.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    // ---- login sessions and rate limiting

    pub async fn insert_login_session(
        &self,
        id_hash: &str,
        user_id: &str,
        csrf: &str,
        now: i64,
        expires_at: i64,
        mfa_pending: bool,
    ) -> sqlx::Result<()> {
        sqlx::query("INSERT INTO login_sessions (id_hash, user_id, csrf_token, created_at, expires_at, mfa_pending) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(id_hash)
            .bind(user_id)
            .bind(csrf)
            .bind(now)
            .bind(expires_at)
            .bind(i64::from(mfa_pending))
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// The user, CSRF token, and whether it may only enrol a second factor, of a live login session.
    pub async fn login_session(&self, id_hash: &str, now: i64) -> sqlx::Result<Option<(User, String, bool)>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLS}, s.csrf_token, s.mfa_pending FROM login_sessions s \
             JOIN users u ON u.id = s.user_id WHERE s.id_hash = $1 AND s.expires_at > $2"
        )))
        .bind(id_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok((
                user(&r)?,
                r.try_get("csrf_token")?,
                r.try_get::<i64, _>("mfa_pending")? != 0,
            ))
        })
        .transpose()
    }

    /// End every login session of `user_id` except `keep` (the caller's own); returns how many ended.
    pub async fn delete_other_login_sessions(&self, user_id: &str, keep: Option<&str>) -> sqlx::Result<u64> {
        let r = sqlx::query("DELETE FROM login_sessions WHERE user_id = $1 AND id_hash <> $2")
            .bind(user_id)
            .bind(keep.unwrap_or(""))
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    pub async fn delete_login_session(&self, id_hash: &str) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM login_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Record a login attempt under each of `subjects` (subject, limit) *before* its password is verified,
    /// then count the subjects' attempts in the window. The k-th attempt to be recorded sees at least k rows
    /// of its subject, so of any number of concurrent attempts at most `limit` per subject are admitted; a
    /// refused attempt removes its rows again (it was never verified, so it is no failure). Returns `None`
    /// when admitted, else the seconds until the oldest counted attempt of a full subject leaves the window.
    pub async fn begin_login_attempt(
        &self,
        attempt_id: &str,
        subjects: &[(String, i64)],
        now: i64,
        window: i64,
    ) -> sqlx::Result<Option<i64>> {
        let values: Vec<String> = (0..subjects.len()).map(|i| format!("($1, $2, ${})", i + 3)).collect();
        let sql = format!(
            "INSERT INTO login_attempts (attempt_id, at, subject) VALUES {}",
            values.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(attempt_id).bind(now);
        for (subject, _) in subjects {
            q = q.bind(subject);
        }
        q.execute(&self.pool).await?;
        let placeholders: Vec<String> = (0..subjects.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT subject, COUNT(*), MIN(at) FROM login_attempts WHERE at > $1 AND subject IN ({}) GROUP BY subject",
            placeholders.join(", ")
        );
        let mut q = sqlx::query_as::<_, (String, i64, i64)>(sqlx::AssertSqlSafe(sql)).bind(now - window);
        for (subject, _) in subjects {
            q = q.bind(subject);
        }
        let counts = q.fetch_all(&self.pool).await?;
        let retry_after = counts
            .iter()
            .filter(|(subject, n, _)| subjects.iter().any(|(s, limit)| s == subject && n > limit))
            .map(|(_, _, first)| (first + window - now).max(1))
            .max();
        if retry_after.is_some() {
            self.end_login_attempt(attempt_id).await?;
        }
        Ok(retry_after)
    }

    /// Remove the rows of one attempt (refused before verification, or successful).
    pub async fn end_login_attempt(&self, attempt_id: &str) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM login_attempts WHERE attempt_id = $1")
            .bind(attempt_id)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    pub async fn clear_login_failures(&self, subject: &str) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM login_attempts WHERE subject = $1")
            .bind(subject)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Drop expired login sessions, old login attempts and refusals, and the rows of spare containers
    /// that never served a session.
    pub async fn prune(&self, now: i64) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM login_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM login_attempts WHERE at <= $1")
            .bind(now - 3600)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM agent_refusals WHERE last_at <= $1")
            .bind(now - 24 * 3600)
            .execute(&self.pool)
            .await?;
        // Spares that never served a session (let go, failed) keep no history worth a row after a day.
        sqlx::query(
            "DELETE FROM containers WHERE spare_for IS NOT NULL AND state NOT IN ('starting', 'ready') \
             AND COALESCE(removed_at, created_at) <= $1",
        )
        .bind(now - 24 * 3600)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "UPDATE sessions SET state = $1, ended_at = $2, end_reason = $3, end_code = $6 \
             WHERE state = $4 AND token_expires_at < $5",
        )
        .bind(state::ENDED)
        .bind(now)
        .bind("token expired unused")
        .bind(state::PENDING)
        .bind(now - 60)
        .bind(CloseCode::Ended.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ---- API keys

    pub async fn insert_api_key(&self, k: &ApiKey, key_hash: &str) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, user_id, name, key_hash, created_at, scope, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&k.id)
        .bind(&k.user_id)
        .bind(&k.name)
        .bind(key_hash)
        .bind(k.created_at)
        .bind(&k.scope)
        .bind(k.expires_at)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// The user and scope of an API key that has not expired (keys from before expiries had none).
    pub async fn user_by_api_key(&self, key_hash: &str, now: i64) -> sqlx::Result<Option<(User, String)>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLS}, k.scope FROM api_keys k JOIN users u ON u.id = k.user_id \
             WHERE k.key_hash = $1 AND (k.expires_at IS NULL OR k.expires_at > $2)"
        )))
        .bind(key_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if row.is_some() {
            sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE key_hash = $2")
                .bind(now)
                .bind(key_hash)
                .execute(&self.pool)
                .await?;
        }
        row.map(|r| Ok((user(&r)?, r.try_get("scope")?))).transpose()
    }

    pub async fn list_api_keys(&self, user_id: &str) -> sqlx::Result<Vec<ApiKey>> {
        let rows = sqlx::query(
            "SELECT id, user_id, name, created_at, last_used_at, scope, expires_at FROM api_keys \
             WHERE user_id = $1 ORDER BY created_at",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ApiKey {
                    id: r.try_get("id")?,
                    user_id: r.try_get("user_id")?,
                    name: r.try_get("name")?,
                    created_at: r.try_get("created_at")?,
                    last_used_at: r.try_get("last_used_at")?,
                    scope: r.try_get("scope")?,
                    expires_at: r.try_get("expires_at")?,
                })
            })
            .collect()
    }

    pub async fn delete_api_key(&self, id: &str, user_id: &str) -> sqlx::Result<bool> {
        let r = sqlx::query("DELETE FROM api_keys WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    // ---- connections

    /// Binds every column of `CONNECTION_COLS`, in order, as `$1..$13`.
    fn bind_connection<'q>(
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
        c: &'q Connection,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
        q.bind(&c.id)
            .bind(&c.name)
            .bind(&c.protocol)
            .bind(&c.host)
            .bind(c.port)
            .bind(&c.username)
            .bind(&c.password_enc)
            .bind(&c.private_key_enc)
            .bind(&c.host_key_fingerprint)
            .bind(&c.settings)
            .bind(c.created_at)
            .bind(c.updated_at)
            .bind(&c.folder_id)
    }

    pub async fn insert_connection(&self, c: &Connection) -> sqlx::Result<()> {
        let sql = format!(
            "INSERT INTO connections ({CONNECTION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        );
        Self::bind_connection(sqlx::query(sqlx::AssertSqlSafe(sql)), c)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    pub async fn connection(&self, id: &str) -> sqlx::Result<Option<Connection>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{CONNECTION_SELECT} WHERE c.id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(connection).transpose()
    }

    /// Delete a connection and end its live sessions (see [`Db::delete_user`]).
    pub async fn delete_connection(&self, id: &str, now: i64) -> sqlx::Result<bool> {
        self.delete_with_sessions(
            ("connections", "object", "connection"),
            "connection_id",
            id,
            "ended: the connection was deleted",
            now,
        )
        .await
    }

    /// Record a host key seen on first use; a pinned key is never overwritten.
    pub async fn pin_host_key_if_unset(&self, connection_id: &str, fingerprint: &str, now: i64) -> sqlx::Result<bool> {
        let r = sqlx::query(
            "UPDATE connections SET host_key_fingerprint = $1, updated_at = $2 WHERE id = $3 AND host_key_fingerprint IS NULL",
        )
        .bind(fingerprint)
        .bind(now)
        .bind(connection_id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    // ---- agents

    /// Record a refused registration under `name` (the latest reason and address, and how many times), in
    /// a table of its own: it never touches an agent. At most [`MAX_AGENT_REFUSALS`] names are kept (rows
    /// older than a day are pruned); `false` when the table is full and this one was only logged.
    pub async fn record_agent_refusal(&self, name: &str, reason: &str, addr: &str, now: i64) -> sqlx::Result<bool> {
        let r = sqlx::query(
            "INSERT INTO agent_refusals (name, reason, remote_addr, attempts, first_at, last_at) \
             SELECT $1, $2, $3, 1, $4, $4 WHERE (SELECT COUNT(*) FROM agent_refusals) < $5 \
             ON CONFLICT (name) DO UPDATE SET reason = excluded.reason, remote_addr = excluded.remote_addr, \
             attempts = agent_refusals.attempts + 1, last_at = excluded.last_at",
        )
        .bind(name)
        .bind(reason)
        .bind(addr)
        .bind(now)
        .bind(MAX_AGENT_REFUSALS)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 1 {
            return Ok(true);
        }
        // The table is full: a name already in it still counts its attempts.
        let r = sqlx::query(
            "UPDATE agent_refusals SET reason = $2, remote_addr = $3, attempts = attempts + 1, last_at = $4 WHERE name = $1",
        )
        .bind(name)
        .bind(reason)
        .bind(addr)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Refused registrations, by name.
    pub async fn agent_refusals(&self) -> sqlx::Result<Vec<AgentRefusal>> {
        let rows = sqlx::query(
            "SELECT name, reason, remote_addr, attempts, first_at, last_at FROM agent_refusals ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AgentRefusal {
                    name: r.try_get("name")?,
                    reason: r.try_get("reason")?,
                    remote_addr: r.try_get("remote_addr")?,
                    attempts: r.try_get("attempts")?,
                    first_at: r.try_get("first_at")?,
                    last_at: r.try_get("last_at")?,
                })
            })
            .collect()
    }

    /// Register the agent `r.name` with a fresh credential: a new name is bound to `r.identity_hash`; an
    /// existing one is taken only by that same identity (or bound by it if it has none yet). Never changes
    /// an agent registered by another identity.
    pub async fn register_agent(&self, r: &AgentRegistration<'_>) -> sqlx::Result<AgentRegisterOutcome> {
        let id = uuid::Uuid::new_v4().to_string();
        let inserted = sqlx::query(
            "INSERT INTO agents (id, name, identity_hash, credential_hash, state, docker_version, cores, memory_mb, running, \
             networks, remote_addr, created_at, registered_at, last_heartbeat_at) \
             VALUES ($1, $2, $3, $4, 'healthy', $5, $6, $7, $8, $9, $10, $11, $11, $11) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&id)
        .bind(r.name)
        .bind(r.identity_hash)
        .bind(r.credential_hash)
        .bind(r.docker_version)
        .bind(r.cores)
        .bind(r.memory_mb)
        .bind(r.running)
        .bind(r.networks)
        .bind(r.addr)
        .bind(r.now)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            // Earlier refusals under this name were this agent's (a wrong token, fixed since).
            sqlx::query("DELETE FROM agent_refusals WHERE name = $1")
                .bind(r.name)
                .execute(&self.pool)
                .await?;
            return Ok(AgentRegisterOutcome::New(id));
        }
        let updated = sqlx::query(
            "UPDATE agents SET identity_hash = $2, credential_hash = $3, state = 'healthy', last_error = NULL, \
             docker_version = $4, cores = $5, memory_mb = $6, running = $7, networks = $8, remote_addr = $9, \
             registered_at = $10, last_heartbeat_at = $10 \
             WHERE name = $1 AND (identity_hash = $2 OR identity_hash IS NULL)",
        )
        .bind(r.name)
        .bind(r.identity_hash)
        .bind(r.credential_hash)
        .bind(r.docker_version)
        .bind(r.cores)
        .bind(r.memory_mb)
        .bind(r.running)
        .bind(r.networks)
        .bind(r.addr)
        .bind(r.now)
        .execute(&self.pool)
        .await?;
        let id: Option<String> = sqlx::query_scalar("SELECT id FROM agents WHERE name = $1")
            .bind(r.name)
            .fetch_optional(&self.pool)
            .await?;
        let id = id.unwrap_or_default();
        Ok(if updated.rows_affected() == 1 {
            AgentRegisterOutcome::Again(id)
        } else {
            AgentRegisterOutcome::NameTaken(id)
        })
    }

    /// Drain an agent (`on`: no new workspaces on it; its live ones run to their end) or take it back:
    /// its name, or `None` when there is no such agent.
    pub async fn drain_agent(&self, id: &str, on: bool, now: i64) -> sqlx::Result<Option<String>> {
        sqlx::query_scalar(
            "UPDATE agents SET draining_at = CASE WHEN $1 = 1 THEN COALESCE(draining_at, $2) ELSE NULL END \
             WHERE id = $3 RETURNING name",
        )
        .bind(i64::from(on))
        .bind(now)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
    }

    /// Remove an agent (an admin's decision: frees its name for the next identity that registers it). Its
    /// live workspaces fail and their sessions end; its refusals go with it. Returns its name.
    pub async fn delete_agent(&self, id: &str, now: i64) -> sqlx::Result<Option<String>> {
        let name: Option<String> = sqlx::query_scalar("SELECT name FROM agents WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(name) = name else { return Ok(None) };
        // The row goes first: a placement after this finds no agent to lock (`place_container`).
        sqlx::query("DELETE FROM agents WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM agent_refusals WHERE name = $1")
            .bind(&name)
            .execute(&self.pool)
            .await?;
        let reason = format!("agent {name} was removed by an admin");
        for c in self.live_containers(id).await? {
            self.close_container(&c.container_key, container_state::FAILED, Some(&reason), now)
                .await?;
            self.end_session(
                &c.session_id,
                CloseCode::TargetError,
                &format!("workspace failed: {reason}"),
                now,
            )
            .await?;
        }
        Ok(Some(name))
    }

    pub async fn agent_by_credential(&self, credential_hash: &str) -> sqlx::Result<Option<AgentRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {AGENT_COLS} FROM agents WHERE credential_hash = $1"
        )))
        .bind(credential_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(agent).transpose()
    }

    /// A sync from the agent: its capacity, its declared networks (JSON) and the time.
    pub async fn agent_heartbeat(
        &self,
        id: &str,
        cores: i64,
        memory_mb: i64,
        running: i64,
        networks: &str,
        now: i64,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE agents SET cores = $2, memory_mb = $3, running = $4, last_heartbeat_at = $5, state = 'healthy', \
             networks = $6 WHERE id = $1",
        )
        .bind(id)
        .bind(cores)
        .bind(memory_mb)
        .bind(running)
        .bind(now)
        .bind(networks)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Take an agent's image catalog (JSON); written only when it changed.
    pub async fn set_agent_images(&self, id: &str, images: &str) -> sqlx::Result<()> {
        sqlx::query("UPDATE agents SET images = $2 WHERE id = $1 AND (images IS NULL OR images <> $2)")
            .bind(id)
            .bind(images)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// One agent's image catalog (JSON), if it reports one.
    pub async fn agent_images_of(&self, id: &str) -> sqlx::Result<Option<String>> {
        let v: Option<Option<String>> = sqlx::query_scalar("SELECT images FROM agents WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(v.flatten())
    }

    /// The image catalogs of the agents that report one: (name, last heartbeat, images JSON).
    pub async fn agent_images(&self) -> sqlx::Result<Vec<(String, Option<i64>, String)>> {
        sqlx::query_as("SELECT name, last_heartbeat_at, images FROM agents WHERE images IS NOT NULL ORDER BY name")
            .fetch_all(&self.pool)
            .await
    }

    pub async fn list_agents(&self) -> sqlx::Result<Vec<AgentRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {AGENT_COLS} FROM agents ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(agent).collect()
    }

    // ---- remote sessions

    /// Binds every column of `SESSION_COLS`, in order, as `$1..$11`.
    fn bind_session<'q>(
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
        s: &'q SessionRow,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
        q.bind(&s.id)
            .bind(&s.user_id)
            .bind(&s.connection_id)
            .bind(&s.state)
            .bind(&s.token_jti)
            .bind(s.token_expires_at)
            .bind(s.claimed_at)
            .bind(&s.bridge_id)
            .bind(s.created_at)
            .bind(s.ended_at)
            .bind(&s.end_reason)
    }

    pub async fn insert_session(&self, s: &SessionRow) -> sqlx::Result<()> {
        let sql =
            format!("INSERT INTO sessions ({SESSION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)");
        Self::bind_session(sqlx::query(sqlx::AssertSqlSafe(sql)), s)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    pub async fn session(&self, id: &str) -> sqlx::Result<Option<SessionRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SESSION_COLS} FROM sessions WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session).transpose()
    }

    pub async fn list_sessions(&self, user_id: Option<&str>, include_ended: bool) -> sqlx::Result<Vec<SessionRow>> {
        let mut sql = format!("SELECT {SESSION_COLS} FROM sessions WHERE ($1 = '' OR user_id = $1)");
        if !include_ended {
            sql.push_str(" AND state <> 'ended'");
        }
        sql.push_str(" ORDER BY created_at DESC LIMIT 500");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id.unwrap_or(""))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(session).collect()
    }

    /// Atomically claim a session token: succeeds once per `jti`, fleet-wide, and only while the token is
    /// valid (its expiry plus the verifier's leeway): whoever presents an expired token claims nothing.
    pub async fn claim_session(&self, id: &str, jti: &str, bridge_id: &str, now: i64) -> sqlx::Result<bool> {
        let r = sqlx::query(
            "UPDATE sessions SET state = $1, claimed_at = $2, bridge_id = $3 \
             WHERE id = $4 AND token_jti = $5 AND state = $6 AND claimed_at IS NULL AND token_expires_at >= $7 \
             AND (bridge_id IS NULL OR bridge_id = $3)",
        )
        .bind(state::ACTIVE)
        .bind(now)
        .bind(bridge_id)
        .bind(id)
        .bind(jti)
        .bind(state::PENDING)
        .bind(now - portico_proto::token::LEEWAY_SECS)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// End session `id` (unless it already ended) with the close code bridges will hear and the reason
    /// users will read; `code` is `None` only for an end a bridge reported without one (an older bridge).
    pub async fn end_session(
        &self,
        id: &str,
        code: impl Into<Option<CloseCode>>,
        reason: &str,
        now: i64,
    ) -> sqlx::Result<bool> {
        let r = sqlx::query(
            "UPDATE sessions SET state = $1, ended_at = $2, end_reason = $3, end_code = $5 WHERE id = $4 AND state <> $1",
        )
        .bind(state::ENDED)
        .bind(now)
        .bind(reason)
        .bind(id)
        .bind(code.into().map(CloseCode::as_str))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Of `ids`, the sessions that are over for `bridge_id`: ended, unknown, or claimed by another bridge
    /// (a bridge acts only on its own sessions), each with its recorded end reason and close code (none for
    /// a session that is not ended here, or ended by an older webapp that recorded no code).
    pub async fn ended_among(
        &self,
        ids: &[String],
        bridge_id: &str,
    ) -> sqlx::Result<Vec<(String, Option<String>, Option<CloseCode>)>> {
        let mut ended = Vec::new();
        for chunk in ids.chunks(200) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id, state, end_reason, bridge_id, end_code FROM sessions WHERE id IN ({})",
                placeholders.join(", ")
            );
            type Row = (String, String, Option<String>, Option<String>, Option<String>);
            let mut q = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id);
            }
            let known = q.fetch_all(&self.pool).await?;
            for id in chunk {
                match known.iter().find(|(k, ..)| k == id) {
                    Some((_, st, _, owner, _)) if st != state::ENDED && owner.as_deref() == Some(bridge_id) => {}
                    Some((_, st, reason, _, code)) if st == state::ENDED => {
                        // A code this version does not know (a newer webapp's) is left to the reason.
                        let code = code.as_deref().and_then(|c| c.parse().ok());
                        ended.push((id.clone(), reason.clone(), code));
                    }
                    _ => ended.push((id.clone(), None, None)),
                }
            }
        }
        Ok(ended)
    }

    // ---- bridges

    /// Register a bridge under a new identity; `Ok(false)` when the name belongs to a revoked bridge.
    pub async fn register_bridge(&self, b: &BridgeRow, credential_hash: &str) -> sqlx::Result<bool> {
        let revoked: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM bridges WHERE name = $1 AND revoked_at IS NOT NULL")
                .bind(&b.name)
                .fetch_one(&self.pool)
                .await?;
        if revoked > 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO bridges (id, name, credential_hash, remote_addr, registered_at, last_seen_at, route) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&b.id)
        .bind(&b.name)
        .bind(credential_hash)
        .bind(&b.remote_addr)
        .bind(b.registered_at)
        .bind(b.last_seen_at)
        .bind(&b.route)
        .execute(&self.pool)
        .await?;
        Ok(true)
    }

    /// The identity of a bridge credential that is not revoked; marks the bridge seen (at most once a
    /// second: bridges sync several times a second, and their heartbeat decides when they are down).
    pub async fn bridge_by_credential(&self, credential_hash: &str, now: i64) -> sqlx::Result<Option<String>> {
        let id: Option<String> =
            sqlx::query_scalar("SELECT id FROM bridges WHERE credential_hash = $1 AND revoked_at IS NULL")
                .bind(credential_hash)
                .fetch_optional(&self.pool)
                .await?;
        if let Some(id) = &id {
            self.bridge_seen(id, now).await?;
        }
        Ok(id)
    }

    /// A bridge's heartbeat: marks it seen at `now` (one write a second at most).
    pub async fn bridge_seen(&self, id: &str, now: i64) -> sqlx::Result<()> {
        sqlx::query("UPDATE bridges SET last_seen_at = $1 WHERE id = $2 AND last_seen_at < $3")
            .bind(now)
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn list_bridges(&self) -> sqlx::Result<Vec<BridgeRow>> {
        let rows = sqlx::query(
            "SELECT b.id, b.name, b.remote_addr, b.registered_at, b.last_seen_at, b.revoked_at, b.route, \
             b.draining_at, b.drain_deadline_at, \
             (SELECT COUNT(*) FROM sessions s WHERE s.bridge_id = b.id AND s.state <> $1) AS live_sessions \
             FROM bridges b ORDER BY b.registered_at, b.id",
        )
        .bind(state::ENDED)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(BridgeRow {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    remote_addr: r.try_get("remote_addr")?,
                    registered_at: r.try_get("registered_at")?,
                    last_seen_at: r.try_get("last_seen_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                    route: r.try_get("route")?,
                    draining_at: r.try_get("draining_at")?,
                    drain_deadline_at: r.try_get("drain_deadline_at")?,
                    live_sessions: r.try_get("live_sessions")?,
                })
            })
            .collect()
    }

    /// Bridges that may take new sessions (seen at or after `alive_since`, not draining, not revoked), with
    /// the sessions each holds or was assigned.
    pub async fn bridge_candidates(&self, alive_since: i64) -> sqlx::Result<Vec<BridgeCandidate>> {
        let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
            "SELECT b.id, b.route, \
             (SELECT COUNT(*) FROM sessions s WHERE s.bridge_id = b.id AND s.state <> $1) AS live_sessions \
             FROM bridges b WHERE b.revoked_at IS NULL AND b.draining_at IS NULL AND b.last_seen_at >= $2 \
             ORDER BY b.id",
        )
        .bind(state::ENDED)
        .bind(alive_since)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, route, live_sessions)| BridgeCandidate {
                id,
                route,
                live_sessions,
            })
            .collect())
    }

    /// Sessions that have not ended, counted by state and protocol (metrics).
    pub async fn count_live_sessions(&self) -> sqlx::Result<Vec<(String, String, i64)>> {
        sqlx::query_as(
            "SELECT s.state, COALESCE(c.protocol, 'unknown'), CAST(COUNT(*) AS BIGINT) \
             FROM sessions s LEFT JOIN connections c ON c.id = s.connection_id \
             WHERE s.state IN ($1, $2) GROUP BY s.state, c.protocol",
        )
        .bind(state::PENDING)
        .bind(state::ACTIVE)
        .fetch_all(&self.pool)
        .await
    }

    /// Containers that are wanted (starting or ready), counted by state (metrics).
    pub async fn count_live_containers(&self) -> sqlx::Result<Vec<(String, i64)>> {
        sqlx::query_as(
            "SELECT state, CAST(COUNT(*) AS BIGINT) FROM containers \
             WHERE state IN ('starting', 'ready') GROUP BY state",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Drain a bridge (no new sessions; the live ones end at `deadline_at`, or their own end): its name,
    /// or `None` when there is no such live bridge. A bridge already draining keeps its start and takes the
    /// new deadline.
    pub async fn drain_bridge(&self, id: &str, deadline_at: Option<i64>, now: i64) -> sqlx::Result<Option<String>> {
        sqlx::query_scalar(
            "UPDATE bridges SET draining_at = COALESCE(draining_at, $1), drain_deadline_at = $2 \
             WHERE id = $3 AND revoked_at IS NULL RETURNING name",
        )
        .bind(now)
        .bind(deadline_at)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
    }

    /// A bridge reports that it drains (a signal): `true` when this is news.
    pub async fn mark_bridge_draining(&self, id: &str, now: i64) -> sqlx::Result<bool> {
        let r = sqlx::query("UPDATE bridges SET draining_at = $1 WHERE id = $2 AND draining_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// A bridge stops (drained, or shut down): it is not to be reported down.
    pub async fn mark_bridge_stopped(&self, id: &str, now: i64) -> sqlx::Result<()> {
        sqlx::query("UPDATE bridges SET draining_at = COALESCE(draining_at, $1), down_reported_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The drain an administrator asked of a bridge, if any: `Some(deadline)`.
    pub async fn bridge_drain(&self, id: &str) -> sqlx::Result<Option<Option<i64>>> {
        let row: Option<(Option<i64>, Option<i64>)> =
            sqlx::query_as("SELECT draining_at, drain_deadline_at FROM bridges WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(at, deadline)| at.map(|_| deadline)))
    }

    /// Sessions held by (or assigned to) a bridge without a heartbeat since `alive_since` end as lost
    /// (a revoked bridge's sessions ended with the revocation); returns (session, bridge name) of those it
    /// ended.
    pub async fn sweep_lost_bridges(&self, now: i64, alive_since: i64) -> sqlx::Result<Vec<(String, String)>> {
        let lost: Vec<(String, String)> = sqlx::query_as(
            "SELECT s.id, b.name FROM sessions s JOIN bridges b ON b.id = s.bridge_id \
             WHERE s.state <> $1 AND b.revoked_at IS NULL AND b.last_seen_at < $2",
        )
        .bind(state::ENDED)
        .bind(alive_since)
        .fetch_all(&self.pool)
        .await?;
        let mut ended = Vec::new();
        for (sid, bridge) in lost {
            let reason = format!("lost: bridge {bridge} stopped responding; reconnect to start a new session");
            if self.end_session(&sid, CloseCode::Lost, &reason, now).await? {
                ended.push((sid, reason));
            }
        }
        Ok(ended)
    }

    /// Bridges without a heartbeat since `alive_since` that were not reported down (or stopped) since:
    /// marked reported at `now` and returned (id, name); one conditional `UPDATE`, like agents.
    pub async fn bridges_newly_down(&self, alive_since: i64, now: i64) -> sqlx::Result<Vec<(String, String)>> {
        sqlx::query_as(
            "UPDATE bridges SET down_reported_at = $1 \
             WHERE revoked_at IS NULL AND last_seen_at < $2 \
             AND (down_reported_at IS NULL OR down_reported_at < last_seen_at) \
             RETURNING id, name",
        )
        .bind(now)
        .bind(alive_since)
        .fetch_all(&self.pool)
        .await
    }

    /// Revoke a bridge: its credential stops working and its live sessions end, in one transaction.
    /// `forget` removes an already revoked bridge's row, so its name may register again.
    pub async fn revoke_bridge(&self, id: &str, forget: bool, now: i64) -> sqlx::Result<bool> {
        let mut tx = self.begin_write().await?;
        let r = if forget {
            sqlx::query("DELETE FROM bridges WHERE id = $1 AND revoked_at IS NOT NULL")
                .bind(id)
                .execute(&mut *tx)
                .await?
        } else {
            sqlx::query("UPDATE bridges SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?
        };
        sqlx::query(
            "UPDATE sessions SET state = $1, ended_at = $2, end_reason = $3, end_code = $5 \
             WHERE bridge_id = $4 AND state <> $1",
        )
        .bind(state::ENDED)
        .bind(now)
        .bind("ended: the bridge was revoked by an administrator")
        .bind(id)
        .bind(CloseCode::Ended.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    // ---- workspace containers

    /// Insert `c` only if its agent still has room for it (memory and CPU limits of its live containers
    /// plus this one within the agent's capacity); `false` if not. Atomic across webapps: the agent's row
    /// is locked (PostgreSQL row lock, SQLite write lock) for the check and the insert. A spare
    /// (`c.spare_for`) is placed only while its connection has fewer than `spares` live spares on the
    /// agent, checked under the same lock (two webapps topping up one pool never overfill it).
    pub async fn place_container(&self, c: &ContainerRow, spares: Option<i64>) -> sqlx::Result<bool> {
        let mut tx = self.begin_write().await?;
        // Locks the agent's row; a drained agent takes nothing (checked under the lock).
        let locked = sqlx::query("UPDATE agents SET running = running WHERE id = $1 AND draining_at IS NULL")
            .bind(&c.agent_id)
            .execute(&mut *tx)
            .await?;
        if locked.rows_affected() != 1 {
            return Ok(false);
        }
        let (cores, memory_mb, used_mem, used_cpu): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT a.cores, a.memory_mb, \
             CAST(COALESCE((SELECT SUM(memory_mb) FROM containers WHERE agent_id = a.id AND state IN ('starting', 'ready')), 0) AS BIGINT), \
             CAST(COALESCE((SELECT SUM(cpu_millis) FROM containers WHERE agent_id = a.id AND state IN ('starting', 'ready')), 0) AS BIGINT) \
             FROM agents a WHERE a.id = $1",
        )
        .bind(&c.agent_id)
        .fetch_one(&mut *tx)
        .await?;
        if memory_mb - used_mem < c.memory_mb || cores * 1000 - used_cpu < c.cpu_millis {
            return Ok(false); // Dropping the transaction rolls it back.
        }
        if let (Some(conn), Some(limit)) = (&c.spare_for, spares) {
            let have: i64 = sqlx::query_scalar(
                "SELECT CAST(COUNT(*) AS BIGINT) FROM containers \
                 WHERE agent_id = $1 AND spare_for = $2 AND state IN ('starting', 'ready')",
            )
            .bind(&c.agent_id)
            .bind(conn)
            .fetch_one(&mut *tx)
            .await?;
            if have >= limit {
                return Ok(false);
            }
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO containers ({CONTAINER_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        )))
        .bind(&c.session_id)
        .bind(&c.container_key)
        .bind(&c.spare_for)
        .bind(&c.agent_id)
        .bind(&c.spec)
        .bind(&c.vnc_password_enc)
        .bind(&c.state)
        .bind(&c.container_id)
        .bind(&c.host)
        .bind(c.port)
        .bind(&c.error)
        .bind(c.memory_mb)
        .bind(c.cpu_millis)
        .bind(c.created_at)
        .bind(c.ready_at)
        .bind(c.removed_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn container(&self, session_id: &str) -> sqlx::Result<Option<ContainerRow>> {
        Ok(self.containers_where("session_id = $1", Some(session_id)).await?.pop())
    }

    /// Container rows matching `cond` (SQL over the `containers` columns, `$1` bound to `arg`).
    async fn containers_where(&self, cond: &'static str, arg: Option<&str>) -> sqlx::Result<Vec<ContainerRow>> {
        let q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CONTAINER_COLS} FROM containers WHERE {cond}"
        )));
        let q = match arg {
            Some(a) => q.bind(a.to_owned()),
            None => q,
        };
        q.fetch_all(&self.pool).await?.iter().map(container).collect()
    }

    /// Agents with a heartbeat at or after `alive_since`, with what their live containers take.
    pub async fn agent_loads(&self, alive_since: i64) -> sqlx::Result<Vec<AgentLoad>> {
        let rows = sqlx::query(
            "SELECT a.id, a.name, a.cores, a.memory_mb, a.images, \
             CAST(COALESCE(SUM(c.memory_mb), 0) AS BIGINT) AS used_memory_mb, \
             CAST(COALESCE(SUM(c.cpu_millis), 0) AS BIGINT) AS used_cpu_millis \
             FROM agents a LEFT JOIN containers c ON c.agent_id = a.id AND c.state IN ('starting', 'ready') \
             WHERE a.state = 'healthy' AND a.last_heartbeat_at >= $1 AND a.draining_at IS NULL \
             GROUP BY a.id, a.name, a.cores, a.memory_mb, a.images ORDER BY a.name",
        )
        .bind(alive_since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AgentLoad {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    cores: r.try_get("cores")?,
                    memory_mb: r.try_get("memory_mb")?,
                    used_memory_mb: r.try_get("used_memory_mb")?,
                    used_cpu_millis: r.try_get("used_cpu_millis")?,
                    images: r.try_get("images")?,
                })
            })
            .collect()
    }

    /// The containers `agent_id` should run: wanted (starting or ready), and either an unclaimed spare or
    /// their session not ended.
    pub async fn desired_containers(&self, agent_id: &str) -> sqlx::Result<Vec<ContainerRow>> {
        let cols: Vec<String> = CONTAINER_COLS.split(", ").map(|c| format!("c.{c}")).collect();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM containers c LEFT JOIN sessions s ON s.id = c.session_id \
             WHERE c.agent_id = $1 AND c.state IN ('starting', 'ready') \
             AND (c.spare_for IS NOT NULL OR s.state <> 'ended') ORDER BY c.created_at",
            cols.join(", ")
        )))
        .bind(agent_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(container).collect()
    }

    /// Take what an agent reported of one of its containers (by its key); `false` if the row is not this
    /// agent's or its session ended (the container is being removed: what it reports now does not matter).
    pub async fn update_container(&self, agent_id: &str, u: &ContainerUpdate<'_>, now: i64) -> sqlx::Result<bool> {
        let r = sqlx::query(
            "UPDATE containers SET state = $3, container_id = $4, host = $5, port = $6, error = $7, \
             ready_at = CASE WHEN $3 = 'ready' AND ready_at IS NULL THEN $8 ELSE ready_at END \
             WHERE container_key = $1 AND agent_id = $2 AND state IN ('starting', 'ready') \
             AND (spare_for IS NOT NULL OR session_id IN (SELECT id FROM sessions WHERE state <> 'ended'))",
        )
        .bind(u.container_key)
        .bind(agent_id)
        .bind(u.state)
        .bind(u.container_id)
        .bind(u.host)
        .bind(u.port)
        .bind(u.error)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Containers of `agent_id` in one of the live states (starting, ready).
    pub async fn live_containers(&self, agent_id: &str) -> sqlx::Result<Vec<ContainerRow>> {
        self.containers_where("agent_id = $1 AND state IN ('starting', 'ready')", Some(agent_id))
            .await
    }

    /// Set a container's final state (`failed`, `removed`, `lost`) unless it already has one; by its key.
    pub async fn close_container(
        &self,
        container_key: &str,
        state: &str,
        error: Option<&str>,
        now: i64,
    ) -> sqlx::Result<bool> {
        self.close_row(container_key, state, error, now, "").await
    }

    /// Let an unclaimed spare go (`removed` or `failed`): `false` if it is no longer a live spare (a launch
    /// claimed it meanwhile: it is a session's container now and must not be touched).
    pub async fn close_spare(
        &self,
        container_key: &str,
        state: &str,
        error: Option<&str>,
        now: i64,
    ) -> sqlx::Result<bool> {
        self.close_row(container_key, state, error, now, " AND spare_for IS NOT NULL")
            .await
    }

    async fn close_row(
        &self,
        container_key: &str,
        state: &str,
        error: Option<&str>,
        now: i64,
        and: &'static str,
    ) -> sqlx::Result<bool> {
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE containers SET state = $2, error = COALESCE($3, error), removed_at = $4 \
             WHERE container_key = $1 AND state IN ('starting', 'ready'){and}"
        )))
        .bind(container_key)
        .bind(state)
        .bind(error)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Claim a ready spare of the warm pool for `session_id`: one of `connection_id` with exactly `spec`,
    /// on an agent with a heartbeat since `alive_since` that is not draining. One conditional `UPDATE` per
    /// candidate, so two launches racing for one spare never both get it (the loser tries the next).
    /// Returns the claimed row (now the session's).
    pub async fn claim_spare(
        &self,
        connection_id: &str,
        spec: &str,
        session_id: &str,
        alive_since: i64,
    ) -> sqlx::Result<Option<ContainerRow>> {
        let candidates: Vec<String> = sqlx::query_scalar(
            "SELECT c.container_key FROM containers c JOIN agents a ON a.id = c.agent_id \
             WHERE c.spare_for = $1 AND c.spec = $2 AND c.state = 'ready' \
             AND a.state = 'healthy' AND a.last_heartbeat_at >= $3 AND a.draining_at IS NULL \
             ORDER BY c.ready_at",
        )
        .bind(connection_id)
        .bind(spec)
        .bind(alive_since)
        .fetch_all(&self.pool)
        .await?;
        for key in candidates {
            let taken = sqlx::query(
                "UPDATE containers SET session_id = $1, spare_for = NULL \
                 WHERE container_key = $2 AND spare_for = $3 AND state = 'ready'",
            )
            .bind(session_id)
            .bind(&key)
            .bind(connection_id)
            .execute(&self.pool)
            .await?;
            if taken.rows_affected() == 1 {
                return self.container(session_id).await;
            }
        }
        Ok(None)
    }

    /// Spares of the warm pool (unclaimed, starting or ready) on every agent, with the connection each
    /// was started for.
    pub async fn live_spares(&self) -> sqlx::Result<Vec<ContainerRow>> {
        self.containers_where("spare_for IS NOT NULL AND state IN ('starting', 'ready')", None)
            .await
    }

    /// How many spares of `connection_id` on `agent_id` failed (not removed on purpose) since `since`: the
    /// pool backs off instead of starting a broken image again and again.
    pub async fn spare_failures(&self, agent_id: &str, connection_id: &str, since: i64) -> sqlx::Result<i64> {
        sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM containers \
             WHERE agent_id = $1 AND spare_for = $2 AND state = 'failed' \
             AND COALESCE(removed_at, created_at) >= $3",
        )
        .bind(agent_id)
        .bind(connection_id)
        .bind(since)
        .fetch_one(&self.pool)
        .await
    }

    /// Connections of protocol `protocol` with their settings (JSON), for the warm pool.
    pub async fn connection_settings_of(&self, protocol: &str) -> sqlx::Result<Vec<(String, String)>> {
        sqlx::query_as("SELECT id, settings FROM connections WHERE protocol = $1")
            .bind(protocol)
            .fetch_all(&self.pool)
            .await
    }

    /// A container by its key (what the agent reports).
    pub async fn container_by_key(&self, container_key: &str) -> sqlx::Result<Option<ContainerRow>> {
        Ok(self
            .containers_where("container_key = $1", Some(container_key))
            .await?
            .pop())
    }

    /// Live workspace sessions of a user.
    pub async fn live_workspace_sessions(&self, user_id: &str) -> sqlx::Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT s.id FROM sessions s JOIN containers c ON c.session_id = s.id \
             WHERE s.user_id = $1 AND s.state <> 'ended'",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
    }

    /// Sessions whose container lives on an agent without a heartbeat since `alive_since` are lost: ended
    /// with a reason that says so, their containers marked `lost`. Idempotent, so every webapp may run it
    /// on its reads (the webapp tier keeps no timers); returns the sessions it ended.
    pub async fn sweep_lost(&self, now: i64, alive_since: i64) -> sqlx::Result<Vec<String>> {
        let lost: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT c.container_key, c.session_id, a.name FROM containers c JOIN agents a ON a.id = c.agent_id \
             WHERE c.state IN ('starting', 'ready') AND (a.last_heartbeat_at IS NULL OR a.last_heartbeat_at < $1)",
        )
        .bind(alive_since)
        .fetch_all(&self.pool)
        .await?;
        let mut ended = Vec::new();
        // An unclaimed spare has no session: only its row closes.
        for (key, sid, agent) in lost {
            let reason = format!("lost: agent {agent} stopped responding; relaunch for a fresh workspace");
            self.close_container(&key, container_state::LOST, Some(&reason), now)
                .await?;
            if self.end_session(&sid, CloseCode::Lost, &reason, now).await? {
                ended.push(sid);
            }
        }
        Ok(ended)
    }
}
