//! Password checks that resist abuse: attempts are throttled atomically (recorded before the password is
//! verified) per user name and address, per user name and per address, while a browser that has logged in
//! as the user before (its device cookie) has a bucket of its own, so other people's failures never lock the
//! owner out; argon2 runs on a bounded pool of dedicated threads, so a burst of logins cannot exhaust
//! memory or the async runtime.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, mpsc};

use axum::http::HeaderMap;

use crate::auth::cookie_value;
use crate::db::User;
use crate::error::ApiError;
use crate::events::{Event, EventType};
use crate::{AppState, crypto, now_unix};

/// Attempts are counted over this many seconds.
pub const WINDOW_SECS: i64 = 300;
/// Failed attempts of one user name from one address.
pub const PAIR_LIMIT: i64 = 5;
/// Failed attempts of one user name from all addresses together (distributed guessing).
pub const USER_LIMIT: i64 = 10;
/// Failed attempts from one address, any user name (spraying).
pub const ADDRESS_LIMIT: i64 = 30;
/// Failed attempts from one browser that has logged in as the user before.
pub const DEVICE_LIMIT: i64 = 5;
/// Longest user name accepted anywhere (bytes).
pub const MAX_USERNAME_BYTES: usize = 256;
/// The device cookie: set at login, sent back only to the auth endpoints.
pub const DEVICE_COOKIE: &str = "portico_device";
pub const DEVICE_COOKIE_MAX_AGE: i64 = 365 * 24 * 3600;

/// Password hashing on dedicated threads behind a short queue. Each argon2 computation takes 19 MiB; a
/// fixed set of threads reuses its allocations, where the blocking pool would grow a thread (and a malloc
/// arena) per request. A caller first reserves a place ([`PasswordPool::reserve`]): when all are taken it
/// is refused at once, before it costs anything else (no database work either).
pub struct PasswordPool {
    jobs: mpsc::SyncSender<Box<dyn FnOnce() + Send>>,
    places: Arc<tokio::sync::Semaphore>,
}

/// A place in the pool: running, or waiting for a thread.
pub struct Reservation<'a> {
    pool: &'a PasswordPool,
    place: tokio::sync::OwnedSemaphorePermit,
}

impl PasswordPool {
    /// `width` threads (at least 1) and at most `queue` jobs waiting for one.
    pub fn new(width: usize, queue: usize) -> PasswordPool {
        let width = width.max(1);
        let (jobs, rx) = mpsc::sync_channel::<Box<dyn FnOnce() + Send>>(width + queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..width {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "Cannot start a password hashing thread");
            }
        }
        PasswordPool {
            jobs,
            places: Arc::new(tokio::sync::Semaphore::new(width + queue)),
        }
    }

    /// As wide as the machine (at most 8 threads), with a queue of 8 jobs per thread.
    pub fn for_machine() -> PasswordPool {
        let width = std::thread::available_parallelism().map_or(2, |n| n.get()).min(8);
        PasswordPool::new(width, 8 * width)
    }

    /// A place for one job; [`ApiError::Busy`] at once when every place is taken.
    pub fn reserve(&self) -> Result<Reservation<'_>, ApiError> {
        let place = self.places.clone().try_acquire_owned().map_err(|_| ApiError::Busy)?;
        Ok(Reservation { pool: self, place })
    }

    /// Reserve a place and run `f` there.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
        self.reserve()?.run(f).await
    }

    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.run(move || crypto::hash_password(&password))
            .await?
            .map_err(ApiError::Internal)
    }
}

impl Reservation<'_> {
    /// Run `f` on a hashing thread; the place is released when `f` is done, even if the caller has gone.
    pub async fn run<T: Send + 'static>(self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let place = self.place;
        // The channel holds as many jobs as there are places, so it has room for a reserved one.
        self.pool
            .jobs
            .try_send(Box::new(move || {
                let _ = tx.send(f());
                drop(place);
            }))
            .map_err(|_| ApiError::Busy)?;
        rx.await
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("password hashing thread ended")))
    }
}

/// The counters an attempt is recorded under: the browser's own bucket when it carries a device cookie of
/// this user, else (user, address), user and address.
fn subjects(username: &str, client: Option<IpAddr>, device: Option<&str>) -> Vec<(String, i64)> {
    if let Some(device) = device {
        return vec![(format!("device:{device}"), DEVICE_LIMIT)];
    }
    let client = client.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    vec![
        (format!("pair:{client}|{username}"), PAIR_LIMIT),
        (format!("user:{username}"), USER_LIMIT),
        (format!("ip:{client}"), ADDRESS_LIMIT),
    ]
}

pub fn check_username(username: &str) -> Result<(), ApiError> {
    if username.len() > MAX_USERNAME_BYTES {
        return Err(ApiError::bad_request(format!(
            "username longer than {MAX_USERNAME_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Verify `username`'s password under the throttle. A wrong password (or unknown user) is
/// `Unauthorized`, a full bucket `RateLimited` with the time to wait, a saturated hashing pool `Busy`.
pub async fn check_password(
    st: &AppState,
    username: &str,
    password: String,
    client: Option<IpAddr>,
    headers: &HeaderMap,
) -> Result<User, ApiError> {
    check_username(username)?;
    let found = st.db.user_with_hash(username).await?;
    let device = cookie_value(headers, DEVICE_COOKIE)
        .and_then(|c| st.keys.open_device_cookie(c))
        .filter(|(_, user_id)| found.as_ref().is_some_and(|(u, _)| &u.id == user_id))
        .map(|(device, _)| device);
    let subjects = subjects(username, client, device.as_deref());
    let attempt = uuid::Uuid::new_v4().to_string();
    let known_user_id = found.as_ref().map(|(u, _)| u.id.clone());
    // A directory account's password is checked by its directory; an unknown name may be one's too.
    let method = match &found {
        Some((u, _)) if u.provider_id.is_some() => "ldap",
        _ => "password",
    };
    let event = |event_type| {
        let ev = Event::new(event_type)
            .client(client)
            .detail("username", username)
            .detail("method", method);
        match &known_user_id {
            Some(id) => ev.user(id),
            None => ev,
        }
    };
    if let Some(retry_after) = st
        .db
        .begin_login_attempt(&attempt, &subjects, now_unix(), WINDOW_SECS)
        .await?
    {
        tracing::info!(username = ?username, client = ?client, retry_after, "Login attempt throttled");
        st.events
            .emit(event(EventType::LoginThrottled).detail("retry_after", retry_after));
        return Err(ApiError::RateLimited {
            retry_after: u64::try_from(retry_after).unwrap_or(1),
        });
    }
    let verified = match found {
        // A directory account: its directory checks the password.
        Some((user, _)) if user.provider_id.is_some() => {
            let provider = match user.provider_id.as_deref() {
                Some(id) => st.db.provider(id).await?,
                None => None,
            };
            match provider.filter(|p| p.enabled && p.kind == crate::identity::KIND_LDAP) {
                Some(p) => crate::identity::directory_login(st, &p, username, &password).await,
                // An OIDC account has no password here; hash anyway so that timing tells nothing.
                None => local_verify(st, None, password).await.map(|_| None),
            }
        }
        Some((user, hash)) => local_verify(st, Some(hash), password)
            .await
            .map(|ok| ok.then_some(user)),
        // Unknown here: the directories may know the name (the first that accepts the password wins).
        None => {
            let directories: Vec<_> = st
                .db
                .list_providers()
                .await?
                .into_iter()
                .filter(|p| p.enabled && p.kind == crate::identity::KIND_LDAP)
                .collect();
            if directories.is_empty() {
                local_verify(st, None, password).await.map(|_| None)
            } else {
                let mut found = Ok(None);
                for p in &directories {
                    found = crate::identity::directory_login(st, p, username, &password).await;
                    if !matches!(found, Ok(None)) {
                        break;
                    }
                }
                found
            }
        }
    };
    let verified = match verified {
        Ok(v) => v,
        Err(e) => {
            // Hashing saturated or a directory unreachable: never verified, so no failure is counted.
            st.db.end_login_attempt(&attempt).await?;
            return Err(e);
        }
    };
    let Some(user) = verified else {
        tracing::info!(username = ?username, client = ?client, "Login failed");
        st.events
            .emit(event(EventType::LoginFailed).detail("reason", "invalid username or password"));
        return Err(ApiError::Unauthorized("invalid username or password".into()));
    };
    st.db.end_login_attempt(&attempt).await?;
    for (subject, _) in subjects.iter().filter(|(s, _)| !s.starts_with("ip:")) {
        st.db.clear_login_failures(subject).await?;
    }
    Ok(user)
}

/// Verify a local password on the hashing pool; `None` verifies against a dummy hash (an unknown user
/// takes as long as a known one) and is always wrong.
async fn local_verify(st: &AppState, hash: Option<String>, password: String) -> Result<bool, ApiError> {
    let known = hash.is_some();
    let hash = hash.unwrap_or_else(|| crypto::dummy_hash().to_owned());
    let ok = st
        .passwords
        .reserve()?
        .run(move || crypto::verify_password(&password, &hash))
        .await?;
    Ok(ok && known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_device_has_its_own_bucket() {
        let ip = Some(IpAddr::from([10, 0, 0, 1]));
        let s = subjects("alice", ip, None);
        let names: Vec<&str> = s.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["pair:10.0.0.1|alice", "user:alice", "ip:10.0.0.1"]);
        assert_eq!(
            subjects("alice", ip, Some("d1")),
            [("device:d1".to_owned(), DEVICE_LIMIT)]
        );
        assert_eq!(subjects("bob", None, None)[2].0, "ip:unknown");
    }

    #[test]
    fn user_names_are_capped() {
        assert!(check_username(&"a".repeat(MAX_USERNAME_BYTES)).is_ok());
        assert!(check_username(&"a".repeat(MAX_USERNAME_BYTES + 1)).is_err());
    }

    #[test]
    fn the_pool_refuses_beyond_its_queue() {
        use futures_util::FutureExt as _;
        let pool = PasswordPool::new(1, 1);
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        // Each call is polled once: its job is handed over, the caller does not wait for the result.
        let hand_over = |f: Box<dyn FnOnce() + Send>| pool.run(f).now_or_never();
        assert!(
            hand_over(Box::new(move || {
                let _ = started_tx.send(());
                let _ = wait.recv();
            }))
            .is_none()
        );
        started.recv().unwrap(); // The only thread is busy,
        assert!(hand_over(Box::new(|| ())).is_none()); // one job waits in the only queue slot,
        assert!(
            matches!(hand_over(Box::new(|| ())), Some(Err(ApiError::Busy))),
            "a full queue refuses"
        );
        release.send(()).unwrap();
    }
}
