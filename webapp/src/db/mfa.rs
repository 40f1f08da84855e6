//! Second factors (TOTP) of local accounts, the second step of a login, and shared settings.

use super::Db;

/// Wrong codes a login's second step takes before it must start again with the password.
pub const MFA_ATTEMPTS: i64 = 5;

impl Db {
    /// Store a new, unconfirmed TOTP secret (sealed) for a user without a confirmed one; `false` if the
    /// user has one confirmed already.
    pub async fn set_pending_totp(&self, user_id: &str, secret_enc: &str) -> sqlx::Result<bool> {
        let r = sqlx::query(
            "UPDATE users SET totp_secret_enc = $1, totp_last_step = NULL WHERE id = $2 AND totp_enabled = 0",
        )
        .bind(secret_enc)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The sealed TOTP secret of a user, confirmed or not.
    pub async fn totp_secret(&self, user_id: &str) -> sqlx::Result<Option<String>> {
        sqlx::query_scalar::<_, Option<String>>("SELECT totp_secret_enc FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await
            .map(Option::flatten)
    }

    /// Use the code of time step `step`: succeeds once per step and never for a step at or before the
    /// last one used (a code cannot be replayed, nor an older one used after a newer).
    pub async fn use_totp_step(&self, user_id: &str, step: i64) -> sqlx::Result<bool> {
        let r = sqlx::query(
            "UPDATE users SET totp_last_step = $1 WHERE id = $2 AND (totp_last_step IS NULL OR totp_last_step < $1)",
        )
        .bind(step)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Confirm the pending secret (its first code was used at `step`), replace the recovery codes, and let
    /// the user's login sessions that could only enrol do everything again; all at once.
    pub async fn confirm_totp(&self, user_id: &str, step: i64, recovery_hashes: &[String]) -> sqlx::Result<bool> {
        let mut tx = self.begin_write().await?;
        let r = sqlx::query(
            "UPDATE users SET totp_enabled = 1, totp_last_step = $1 WHERE id = $2 AND totp_enabled = 0 \
             AND totp_secret_enc IS NOT NULL AND (totp_last_step IS NULL OR totp_last_step < $1)",
        )
        .bind(step)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        for h in recovery_hashes {
            sqlx::query("INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)")
                .bind(user_id)
                .bind(h)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE login_sessions SET mfa_pending = 0 WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Use a recovery code: once.
    pub async fn use_recovery_code(&self, user_id: &str, code_hash: &str, now: i64) -> sqlx::Result<bool> {
        let r = sqlx::query(
            "UPDATE recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(now)
        .bind(user_id)
        .bind(code_hash)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Remove a user's second factor and recovery codes (an admin's reset); `false` for an unknown user.
    pub async fn reset_totp(&self, user_id: &str) -> sqlx::Result<bool> {
        let mut tx = self.begin_write().await?;
        let r = sqlx::query(
            "UPDATE users SET totp_secret_enc = NULL, totp_enabled = 0, totp_last_step = NULL WHERE id = $1",
        )
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        for table in ["recovery_codes", "mfa_challenges"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE user_id = $1")))
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    /// Start a login's second step (the password was right).
    pub async fn insert_mfa_challenge(&self, id_hash: &str, user_id: &str, expires_at: i64) -> sqlx::Result<()> {
        sqlx::query("INSERT INTO mfa_challenges (id_hash, user_id, expires_at) VALUES ($1, $2, $3)")
            .bind(id_hash)
            .bind(user_id)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Count one attempt at a second step and return its user, unless it expired or used its
    /// [`MFA_ATTEMPTS`] (the count and the check are one statement: parallel guesses get no more).
    pub async fn mfa_attempt(&self, id_hash: &str, now: i64) -> sqlx::Result<Option<String>> {
        sqlx::query_scalar(
            "UPDATE mfa_challenges SET attempts = attempts + 1 WHERE id_hash = $1 AND expires_at > $2 AND attempts < $3 \
             RETURNING user_id",
        )
        .bind(id_hash)
        .bind(now)
        .bind(MFA_ATTEMPTS)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn delete_mfa_challenge(&self, id_hash: &str) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM mfa_challenges WHERE id_hash = $1 OR expires_at < $2")
            .bind(id_hash)
            .bind(crate::now_unix())
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    pub async fn setting(&self, name: &str) -> sqlx::Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
    }

    pub async fn set_setting(&self, name: &str, value: &str) -> sqlx::Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM settings WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2)")
            .bind(name)
            .bind(value)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }
}
