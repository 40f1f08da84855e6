//! Single sign-on data: identity providers, the users that come from them (found by their stable id
//! there, with their groups replaced at every login), and OIDC logins under way.

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::access::end_revoked;
use super::{Db, USER_COLS, User, user};

/// An OIDC or LDAP provider as stored: `config` is the kind's JSON settings, `secret_enc` its sealed
/// secret (an OIDC client secret), never shown again.
#[derive(Debug, Clone)]
pub struct IdentityProvider {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub config: String,
    pub secret_enc: Option<String>,
    pub enabled: bool,
    pub created_at: i64,
}

/// What a provider says about a user at login.
#[derive(Debug, Clone)]
pub struct ExternalIdentity {
    /// The stable id at the provider (OIDC `sub`, LDAP DN).
    pub external_id: String,
    /// The name the provider suggests (`preferred_username`, `uid`); taken if free.
    pub username: String,
    pub role: String,
    /// Portico group names the user belongs to now (names that match no group are ignored).
    pub groups: Vec<String>,
}

/// An OIDC login under way, as saved when the browser went to the provider.
#[derive(Debug, Clone)]
pub struct OidcLogin {
    pub provider_id: String,
    pub nonce: String,
    pub verifier: String,
    pub binding_hash: String,
    pub next_path: String,
    pub expires_at: i64,
}

const PROVIDER_COLS: &str = "id, kind, name, config, secret_enc, enabled, created_at";

fn provider(r: &AnyRow) -> sqlx::Result<IdentityProvider> {
    Ok(IdentityProvider {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        name: r.try_get("name")?,
        config: r.try_get("config")?,
        secret_enc: r.try_get("secret_enc")?,
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        created_at: r.try_get("created_at")?,
    })
}

impl Db {
    pub async fn list_providers(&self) -> sqlx::Result<Vec<IdentityProvider>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PROVIDER_COLS} FROM identity_providers ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(provider).collect()
    }

    pub async fn provider(&self, id: &str) -> sqlx::Result<Option<IdentityProvider>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PROVIDER_COLS} FROM identity_providers WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(provider).transpose()
    }

    /// Insert or replace a provider; `false`: its name is taken by another one.
    pub async fn save_provider(&self, p: &IdentityProvider) -> sqlx::Result<bool> {
        let taken: Option<String> =
            sqlx::query_scalar("SELECT id FROM identity_providers WHERE name = $1 AND id <> $2")
                .bind(&p.name)
                .bind(&p.id)
                .fetch_optional(&self.pool)
                .await?;
        if taken.is_some() {
            return Ok(false);
        }
        let updated = sqlx::query(
            "UPDATE identity_providers SET name = $1, config = $2, secret_enc = $3, enabled = $4 WHERE id = $5",
        )
        .bind(&p.name)
        .bind(&p.config)
        .bind(&p.secret_enc)
        .bind(i64::from(p.enabled))
        .bind(&p.id)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            sqlx::query(
                "INSERT INTO identity_providers (id, kind, name, config, secret_enc, enabled, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&p.id)
            .bind(&p.kind)
            .bind(&p.name)
            .bind(&p.config)
            .bind(&p.secret_enc)
            .bind(i64::from(p.enabled))
            .bind(p.created_at)
            .execute(&self.pool)
            .await?;
        }
        Ok(true)
    }

    /// Delete a provider with its users (their live sessions end and their logins are gone).
    pub async fn delete_provider(&self, id: &str, now: i64) -> sqlx::Result<bool> {
        let users: Vec<String> = sqlx::query_scalar("SELECT id FROM users WHERE provider_id = $1")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        for u in users {
            self.delete_user(&u, now).await?;
        }
        let r = sqlx::query("DELETE FROM identity_providers WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn count_provider_users(&self, provider_id: &str) -> sqlx::Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE provider_id = $1")
            .bind(provider_id)
            .fetch_one(&self.pool)
            .await
    }

    pub async fn count_oidc_logins(&self, now: i64) -> sqlx::Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM oidc_logins WHERE expires_at >= $1")
            .bind(now)
            .fetch_one(&self.pool)
            .await
    }

    /// The user a provider knows by `external_id`, if they logged in before.
    pub async fn external_user(&self, provider_id: &str, external_id: &str) -> sqlx::Result<Option<User>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLS} FROM users u WHERE u.provider_id = $1 AND u.external_id = $2"
        )))
        .bind(provider_id)
        .bind(external_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user).transpose()
    }

    /// Create the provider's user on first login, or update them: their role, and their group memberships
    /// replaced by `who.groups` (sessions they no longer may hold end in the same transaction). A new
    /// user gets the suggested name if it is free, else `name@provider`, else that with a number.
    pub async fn sync_external_user(
        &self,
        provider: &IdentityProvider,
        who: &ExternalIdentity,
        now: i64,
    ) -> sqlx::Result<User> {
        let mut tx = self.begin_write().await?;
        let found: Option<String> =
            sqlx::query_scalar("SELECT id FROM users WHERE provider_id = $1 AND external_id = $2")
                .bind(&provider.id)
                .bind(&who.external_id)
                .fetch_optional(&mut *tx)
                .await?;
        let id = match found {
            Some(id) => {
                sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
                    .bind(&who.role)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                id
            }
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                let base = who.username.clone();
                let mut candidates = vec![base.clone(), format!("{base}@{}", provider.name)];
                candidates.extend((2..=20).map(|n| format!("{base}@{}-{n}", provider.name)));
                let mut name = None;
                for c in candidates {
                    let taken: Option<String> = sqlx::query_scalar("SELECT id FROM users WHERE username = $1")
                        .bind(&c)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if taken.is_none() {
                        name = Some(c);
                        break;
                    }
                }
                let name = name.unwrap_or_else(|| format!("{base}@{}", uuid::Uuid::new_v4()));
                // No Portico password: `!` is no hash any password verifies against.
                sqlx::query(
                    "INSERT INTO users (id, username, password_hash, role, created_at, provider_id, external_id) \
                     VALUES ($1, $2, '!', $3, $4, $5, $6)",
                )
                .bind(&id)
                .bind(&name)
                .bind(&who.role)
                .bind(now)
                .bind(&provider.id)
                .bind(&who.external_id)
                .execute(&mut *tx)
                .await?;
                id
            }
        };
        sqlx::query("DELETE FROM group_members WHERE user_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        for g in &who.groups {
            sqlx::query("INSERT INTO group_members (group_id, user_id) SELECT id, $1 FROM user_groups WHERE name = $2")
                .bind(&id)
                .bind(g)
                .execute(&mut *tx)
                .await?;
        }
        end_revoked(&mut tx, now).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLS} FROM users u WHERE u.id = $1"
        )))
        .bind(&id)
        .fetch_one(&mut *tx)
        .await?;
        let u = user(&row)?;
        tx.commit().await?;
        Ok(u)
    }

    /// End the login sessions of local accounts that are not admins (local logins were just restricted
    /// to admins).
    pub async fn end_local_logins_except_admins(&self) -> sqlx::Result<u64> {
        let r = sqlx::query(
            "DELETE FROM login_sessions WHERE user_id IN \
             (SELECT id FROM users WHERE provider_id IS NULL AND role <> 'admin')",
        )
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    // ---- OIDC logins under way

    pub async fn insert_oidc_login(&self, state_hash: &str, l: &OidcLogin, now: i64) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM oidc_logins WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO oidc_logins (state_hash, provider_id, nonce, verifier, binding_hash, next_path, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(state_hash)
        .bind(&l.provider_id)
        .bind(&l.nonce)
        .bind(&l.verifier)
        .bind(&l.binding_hash)
        .bind(&l.next_path)
        .bind(l.expires_at)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// Take (and delete) the login a `state` names: a state works once, whoever presents it.
    pub async fn take_oidc_login(&self, state_hash: &str) -> sqlx::Result<Option<OidcLogin>> {
        let row = sqlx::query(
            "DELETE FROM oidc_logins WHERE state_hash = $1 \
             RETURNING provider_id, nonce, verifier, binding_hash, next_path, expires_at",
        )
        .bind(state_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(OidcLogin {
                provider_id: r.try_get("provider_id")?,
                nonce: r.try_get("nonce")?,
                verifier: r.try_get("verifier")?,
                binding_hash: r.try_get("binding_hash")?,
                next_path: r.try_get("next_path")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .transpose()
    }
}
