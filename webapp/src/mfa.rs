//! Two-factor authentication for local accounts: TOTP (RFC 6238: HMAC-SHA1, 30 s steps, 6 digits), with
//! enrolment by QR code, one-time recovery codes, a code that works once, per-role enforcement, and an
//! admin's reset. The algorithm is plain functions (time in, codes out); the handlers below are the glue.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use hmac::{Hmac, Mac as _};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::ApiJson;
use crate::auth::{Admin, CurrentUser, Overseer, ROLES};
use crate::error::ApiError;
use crate::events::{Event, EventType};
use crate::{AppState, crypto, now_unix};

pub const STEP_SECS: i64 = 30;
pub const DIGITS: u32 = 6;
/// Steps accepted on either side of now (clock drift and the time to type).
pub const WINDOW: i64 = 1;
/// How long a login's second step waits for its code.
pub const CHALLENGE_SECS: i64 = 300;
pub const RECOVERY_CODES: usize = 10;
/// The setting naming the roles that must have a second factor (a comma-separated list).
pub const REQUIRED_ROLES: &str = "mfa_required_roles";

/// The time step of `now` (Unix seconds).
pub fn step(now: i64) -> i64 {
    now.div_euclid(STEP_SECS)
}

/// The code of `secret` at time step `step` (RFC 6238 with HMAC-SHA1, RFC 4226's dynamic truncation).
pub fn code(secret: &[u8], step: i64) -> u32 {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).expect("hmac takes any key length");
    mac.update(&(step as u64).to_be_bytes());
    let h = mac.finalize().into_bytes();
    let off = usize::from(h[19] & 0x0f);
    let bin = u32::from_be_bytes([h[off] & 0x7f, h[off + 1], h[off + 2], h[off + 3]]);
    bin % 10u32.pow(DIGITS)
}

/// The step whose code `typed` is, within [`WINDOW`] steps of `now` (spaces ignored).
pub fn verify(secret: &[u8], typed: &str, now: i64) -> Option<i64> {
    let typed: String = typed.chars().filter(|c| !c.is_whitespace()).collect();
    if typed.len() != DIGITS as usize || !typed.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let want: u32 = typed.parse().ok()?;
    let s = step(now);
    (s - WINDOW..=s + WINDOW).find(|&t| {
        // Constant time per comparison, so the position of a match reveals nothing beyond it.
        subtle::ConstantTimeEq::ct_eq(&code(secret, t).to_be_bytes()[..], &want.to_be_bytes()[..]).into()
    })
}

pub fn base32(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

/// The `otpauth://` URI authenticator apps read from the QR code.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let enc = |s: &str| {
        url::form_urlencoded::byte_serialize(s.as_bytes())
            .collect::<String>()
            .replace('+', "%20")
    };
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        enc(issuer),
        enc(account),
        base32(secret),
        enc(issuer)
    )
}

/// The QR code of `text` as an SVG document.
pub fn qr_svg(text: &str) -> Result<String, ApiError> {
    let qr = qrcode::QrCode::new(text.as_bytes()).map_err(|e| ApiError::Internal(anyhow::anyhow!("qr code: {e}")))?;
    Ok(qr
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build())
}

/// A recovery code as shown (`xxxxx-xxxxx`, base32 letters and digits: 50 bits) and as typed back
/// (case, spaces and dashes ignored).
fn recovery_code() -> String {
    let mut raw = [0u8; 7];
    getrandom::fill(&mut raw).expect("os random");
    let s = data_encoding::BASE32_NOPAD.encode(&raw).to_lowercase();
    format!("{}-{}", &s[..5], &s[5..10])
}

fn normalize_recovery(typed: &str) -> String {
    typed
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn secret_aad(user_id: &str) -> String {
    format!("user:{user_id}:totp")
}

/// The secret, sealed (as base32) with the credentials key and bound to its user.
fn open_secret(st: &AppState, sealed: &str, user_id: &str) -> Result<Vec<u8>, ApiError> {
    let b32 = st.keys.open(sealed, &secret_aad(user_id))?;
    data_encoding::BASE32_NOPAD
        .decode(b32.as_bytes())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored totp secret: {e}")))
}

/// The roles that must have a second factor.
pub async fn required_roles(st: &AppState) -> Result<Vec<String>, ApiError> {
    Ok(crate::db::split_list(st.db.setting(REQUIRED_ROLES).await?).unwrap_or_default())
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/login/mfa", post(login_second_step))
        .route("/api/v1/auth/mfa/enrol", post(enrol))
        .route("/api/v1/auth/mfa/confirm", post(confirm))
        .route("/api/v1/users/{id}/mfa", delete(reset))
        .route("/api/v1/settings", get(settings).put(set_settings))
}

/// The second step of a login whose user has a second factor: the password was right, this answers with
/// a token for the step instead of a cookie.
pub async fn challenge(st: &AppState, user_id: &str) -> Result<Value, ApiError> {
    let token = crypto::random_token();
    st.db
        .insert_mfa_challenge(&crypto::sha256_hex(&token), user_id, now_unix() + CHALLENGE_SECS)
        .await?;
    Ok(json!({ "mfa_required": true, "mfa_token": token }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecondStep {
    mfa_token: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    recovery_code: Option<String>,
}

async fn login_second_step(
    State(st): State<AppState>,
    crate::api::ClientAddr(peer): crate::api::ClientAddr,
    ApiJson(b): ApiJson<SecondStep>,
) -> Result<Response, ApiError> {
    let client = peer.map(|a| a.ip());
    let now = now_unix();
    let id_hash = crypto::sha256_hex(&b.mfa_token);
    let Some(user_id) = st.db.mfa_attempt(&id_hash, now).await? else {
        return Err(ApiError::Unauthorized(
            "this sign-in expired or had too many wrong codes: log in again".into(),
        ));
    };
    let user = st.db.user(&user_id).await?.ok_or(ApiError::Unauthenticated)?;
    let with = if b.recovery_code.is_some() {
        "recovery_code"
    } else {
        "totp"
    };
    let event = |event_type| {
        Event::new(event_type)
            .client(client)
            .user(&user.id)
            .detail("username", &user.username)
            .detail("with", with)
    };
    let ok = match (b.code.as_deref(), b.recovery_code.as_deref()) {
        (Some(code), None) => {
            let sealed = st.db.totp_secret(&user.id).await?.ok_or(ApiError::Unauthenticated)?;
            let secret = open_secret(&st, &sealed, &user.id)?;
            match verify(&secret, code, now) {
                None => false,
                Some(s) if !st.db.use_totp_step(&user.id, s).await? => {
                    st.events
                        .emit(event(EventType::MfaFailed).detail("reason", "code used already"));
                    return Err(ApiError::Unauthorized(
                        "this code was used already: wait for the next one".into(),
                    ));
                }
                Some(_) => true,
            }
        }
        (None, Some(rc)) => {
            let used = st
                .db
                .use_recovery_code(&user.id, &crypto::sha256_hex(&normalize_recovery(rc)), now)
                .await?;
            if used {
                tracing::warn!(user_id = %user.id, "Login with a recovery code");
            }
            used
        }
        _ => return Err(ApiError::bad_request("send either code or recovery_code")),
    };
    if !ok {
        tracing::info!(user_id = %user.id, "Second factor refused");
        st.events
            .emit(event(EventType::MfaFailed).detail("reason", "wrong code"));
        return Err(ApiError::Unauthorized("wrong code".into()));
    }
    st.db.delete_mfa_challenge(&id_hash).await?;
    st.events.emit(event(EventType::MfaSucceeded));
    let method = crate::events::password_method(&user);
    st.events
        .emit(Event::login(EventType::LoginSucceeded, &user, client, method).detail("second_factor", with));
    crate::api::start_login(&st, user, false).await
}

async fn enrol(State(st): State<AppState>, me: CurrentUser) -> Result<Json<Value>, ApiError> {
    if me.key_scope.is_some() {
        return Err(ApiError::Forbidden("enrol from a login, not with an api key".into()));
    }
    let mut secret = [0u8; 20];
    getrandom::fill(&mut secret).map_err(|e| ApiError::Internal(anyhow::anyhow!("os random: {e}")))?;
    let sealed = st.keys.seal(&base32(&secret), &secret_aad(&me.user.id))?;
    if !st.db.set_pending_totp(&me.user.id, &sealed).await? {
        return Err(ApiError::Conflict(
            "two-factor authentication is on already; an administrator can reset it".into(),
        ));
    }
    let uri = otpauth_uri("Portico", &me.user.username, &secret);
    Ok(Json(
        json!({ "secret": base32(&secret), "otpauth_uri": uri, "qr_svg": qr_svg(&uri)? }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Confirm {
    code: String,
}

/// Confirm enrolment with a first code: turns the second factor on and returns the recovery codes, once.
async fn confirm(
    State(st): State<AppState>,
    me: CurrentUser,
    ApiJson(b): ApiJson<Confirm>,
) -> Result<Json<Value>, ApiError> {
    if me.user.mfa_enabled {
        return Err(ApiError::Conflict("two-factor authentication is on already".into()));
    }
    let sealed = st
        .db
        .totp_secret(&me.user.id)
        .await?
        .ok_or_else(|| ApiError::bad_request("start the enrolment first"))?;
    let secret = open_secret(&st, &sealed, &me.user.id)?;
    let step = verify(&secret, &b.code, now_unix()).ok_or_else(|| ApiError::bad_request("wrong code"))?;
    let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
    let hashes: Vec<String> = codes
        .iter()
        .map(|c| crypto::sha256_hex(&normalize_recovery(c)))
        .collect();
    if !st.db.confirm_totp(&me.user.id, step, &hashes).await? {
        return Err(ApiError::bad_request("wrong code"));
    }
    tracing::info!(user_id = %me.user.id, "Two-factor authentication on");
    st.events
        .emit(Event::new(EventType::MfaEnabled).by(&me).user(&me.user.id));
    Ok(Json(json!({ "recovery_codes": codes })))
}

/// An admin removes a user's second factor (a lost phone): the user logs in with the password alone and
/// enrols again (at once, if their role requires it).
async fn reset(State(st): State<AppState>, Admin(me): Admin, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    if !st.db.reset_totp(&id).await? {
        return Err(ApiError::NotFound("user"));
    }
    tracing::warn!(user_id = %id, admin = %me.user.id, "Two-factor authentication reset");
    st.events.emit(Event::new(EventType::MfaReset).by(&me).user(&id));
    Ok(StatusCode::NO_CONTENT)
}

async fn settings(State(st): State<AppState>, _: Overseer) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({
        "mfa_required_roles": required_roles(&st).await?,
        "local_login_admins_only": crate::identity::local_login_admins_only(&st).await?,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    mfa_required_roles: Option<Vec<String>>,
    #[serde(default)]
    local_login_admins_only: Option<bool>,
}

/// Security settings shared by every webapp: the roles whose logins must have a second factor (an account
/// of such a role without one may only enrol after its password; every other request is 403 until it
/// confirms a code), and whether local (password) accounts other than admins may log in (turning that
/// off ends their login sessions).
async fn set_settings(
    State(st): State<AppState>,
    Admin(me): Admin,
    ApiJson(b): ApiJson<Settings>,
) -> Result<Json<Value>, ApiError> {
    if let Some(roles) = &b.mfa_required_roles {
        if let Some(r) = roles.iter().find(|r| !ROLES.contains(&r.as_str())) {
            return Err(ApiError::bad_request(format!("unknown role {r:?}")));
        }
        let before = required_roles(&st).await?;
        st.db.set_setting(REQUIRED_ROLES, &roles.join(",")).await?;
        tracing::info!(roles = ?roles, admin = %me.user.id, "Two-factor requirement set");
        st.events.emit(
            Event::new(EventType::SettingsChanged)
                .by(&me)
                .detail("setting", "mfa_required_roles")
                .detail("before", before)
                .detail("after", roles),
        );
    }
    if let Some(only) = b.local_login_admins_only {
        let before = crate::identity::local_login_admins_only(&st).await?;
        st.db
            .set_setting(
                crate::identity::LOCAL_LOGIN_ADMINS_ONLY,
                if only { "true" } else { "false" },
            )
            .await?;
        let ended = if only {
            st.db.end_local_logins_except_admins().await?
        } else {
            0
        };
        tracing::warn!(admins_only = only, logins_ended = ended, admin = %me.user.id, "Local login setting changed");
        st.events.emit(
            Event::new(EventType::SettingsChanged)
                .by(&me)
                .detail("setting", "local_login_admins_only")
                .detail("before", before)
                .detail("after", only)
                .detail("logins_ended", ended),
        );
    }
    settings(State(st), Overseer(me)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6238_vectors() {
        // RFC 6238 appendix B, SHA1, the low 6 of its 8 digits.
        let secret = b"12345678901234567890";
        for (t, want) in [
            (59, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
        ] {
            assert_eq!(code(secret, step(t)), want % 1_000_000, "t={t}");
        }
    }

    #[test]
    fn codes_are_accepted_within_one_step_and_checked_strictly() {
        let secret = b"another secret of 20";
        let now = 1_800_000_000;
        let at = |t: i64| format!("{:06}", code(secret, step(t)));
        assert_eq!(verify(secret, &at(now), now), Some(step(now)));
        assert_eq!(verify(secret, &at(now - 30), now), Some(step(now) - 1));
        assert_eq!(verify(secret, &at(now + 30), now), Some(step(now) + 1));
        assert_eq!(verify(secret, &at(now - 90), now), None);
        let spaced = format!("{} {}", &at(now)[..3], &at(now)[3..]);
        assert_eq!(verify(secret, &spaced, now), Some(step(now)));
        for bad in ["", "12345", "1234567", "12345a", "-12345"] {
            assert_eq!(verify(secret, bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn recovery_codes_are_typed_back_loosely() {
        let c = recovery_code();
        assert_eq!(c.len(), 11);
        assert_eq!(
            normalize_recovery(&c.to_uppercase().replace('-', " ")),
            normalize_recovery(&c)
        );
        assert!(otpauth_uri("Portico", "a b", b"x").starts_with("otpauth://totp/Portico:a%20b?secret="));
        assert!(qr_svg("otpauth://totp/x").is_ok_and(|s| s.contains("<svg")));
    }
}
