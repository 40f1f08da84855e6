//! Portico webapp: the stateless control plane.
//!
//! Users, API keys, connections and sessions live in the database; this crate is the only one that knows SQL.
//! It mints the Ed25519 session tokens that the bridge checks, and serves the internal API that bridges
//! use to claim tokens (once, fleet-wide) and to fetch target credentials.
#![recursion_limit = "256"]

pub mod access;
pub mod api;
pub mod assets;
pub mod auth;
pub mod config;
pub mod crypto;
pub mod db;
pub mod error;
pub mod events;
pub mod headers;
pub mod identity;
pub mod internal;
pub mod ldap;
pub mod login;
pub mod metrics;
pub mod mfa;
pub mod oidc;
pub mod openapi;
pub mod recordings;
pub mod shares;
pub mod tls;
pub mod workspaces;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::Router;
use portico_proto::token::TokenSigner;

pub use config::WebappConfig;
pub use internal::Internal;

/// Shared state of every request handler. Cloning is cheap; nothing in here is mutable.
#[derive(Clone)]
pub struct AppState {
    pub db: db::Db,
    pub keys: Arc<crypto::Keys>,
    pub signer: Arc<TokenSigner>,
    pub config: Arc<WebappConfig>,
    /// Password hashing: bounded, on its own threads.
    pub passwords: Arc<login::PasswordPool>,
    /// OIDC discovery documents and key sets (a cache).
    pub oidc: Arc<oidc::OidcCache>,
    /// Structured events: stored with a retention and forwarded ([`events::Events::emit`] never blocks).
    pub events: events::Events,
    /// Set when this instance is shutting down: the health check answers 503 so load balancers stop
    /// sending it requests while it finishes those in flight.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// This webapp's metrics (`--metrics-listen`): the HTTP layer, the health check and scrape-time reads.
    pub metrics: Arc<metrics::WebappMetrics>,
    /// How long this webapp has reached the database without a failure (judging heartbeats needs it).
    pub vigil: Arc<Vigil>,
}

/// The state of each bridge identity of `rows` (as [`db::Db::list_bridges`] orders them, oldest first):
/// `revoked`; `replaced` (a newer identity of the same name registered: the bridge restarted); silent since
/// before `alive_since`: `stopped` (it said so, or drained) or `down`; else `draining` or `healthy`.
pub fn bridge_states(rows: &[db::BridgeRow], alive_since: i64) -> Vec<&'static str> {
    rows.iter()
        .enumerate()
        .map(|(i, b)| {
            let silent = b.last_seen_at < alive_since;
            if b.revoked_at.is_some() {
                "revoked"
            } else if silent && rows[i + 1..].iter().any(|n| n.name == b.name) {
                "replaced"
            } else if silent {
                if b.draining_at.is_some() { "stopped" } else { "down" }
            } else if b.draining_at.is_some() {
                "draining"
            } else {
                "healthy"
            }
        })
        .collect()
}

/// Seconds without a heartbeat after which a bridge is down (bridges sync every 750 ms).
pub const BRIDGE_DOWN_SECS: i64 = 4;

/// How long this webapp must have reached the database before it calls a bridge down: the silence plus
/// one second of rounding and one sync.
fn bridge_window() -> Duration {
    Duration::from_secs(BRIDGE_DOWN_SECS as u64 + 2)
}

/// Since when this webapp has reached the database without a failure or a pause (time in, decision out).
/// A bridge or agent is judged by its heartbeats only once the database has been reachable for a whole
/// window: during an outage (or before this webapp started) none of them could report, and calling them
/// down then would end live sessions that never stopped streaming. The watch looks every second; a gap of
/// more than [`VIGIL_PAUSE`] between its looks means this webapp itself was not running (a starved
/// runtime, a paused VM, a clock jump): the heartbeats it did not see may be waiting in its own queues, so
/// nothing is judged until the last look is recent, and the window starts again from the look after it.
#[derive(Debug, Default)]
pub struct Vigil {
    state: std::sync::Mutex<VigilState>,
}

#[derive(Debug, Default)]
struct VigilState {
    up_since: Option<Instant>,
    last: Option<Instant>,
}

/// The longest gap between the watch's looks (one a second) that is not a pause of this webapp.
pub const VIGIL_PAUSE: Duration = Duration::from_millis(2500);

impl Vigil {
    fn state(&self) -> std::sync::MutexGuard<'_, VigilState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A successful round trip at `now`.
    pub fn reached(&self, now: Instant) {
        let mut s = self.state();
        if s.last.is_some_and(|l| now.saturating_duration_since(l) > VIGIL_PAUSE) {
            s.up_since = Some(now);
        }
        s.up_since.get_or_insert(now);
        s.last = Some(now);
    }

    /// A failed round trip: the window starts again at the next success.
    pub fn failed(&self) {
        let mut s = self.state();
        s.up_since = None;
        s.last = None;
    }

    /// Whether the database has been reachable for `window` up to `now`, and seen recently.
    pub fn may_judge(&self, window: Duration, now: Instant) -> bool {
        let s = self.state();
        s.last.is_some_and(|l| now.saturating_duration_since(l) <= VIGIL_PAUSE)
            && s.up_since.is_some_and(|t| now.saturating_duration_since(t) >= window)
    }
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl AppState {
    /// Agents whose last heartbeat is before this second are down: three intervals without one (times are
    /// whole seconds, so "before `now - 3 × interval + 1`" is at most three intervals ago, never more).
    pub fn agents_alive_since(&self, now: i64) -> i64 {
        now - 3 * i64::from(self.agent_heartbeat_secs()) + 1
    }

    /// Bridges whose last heartbeat is before this second are down: they sync several times a second,
    /// so [`BRIDGE_DOWN_SECS`] of silence means they are gone (or cut off from every webapp).
    pub fn bridges_alive_since(&self, now: i64) -> i64 {
        now - BRIDGE_DOWN_SECS
    }

    /// End the sessions of agents and bridges that stopped responding ([`db::Db::sweep_lost`],
    /// [`db::Db::sweep_lost_bridges`]); every read that depends on them calls this first, and each webapp's
    /// watch does every second. Nothing is judged until this webapp has reached the database for a whole
    /// heartbeat window ([`Vigil`]): after an outage no bridge or agent could report, and none is lost.
    pub async fn sweep_lost(&self, now: i64) -> sqlx::Result<Vec<String>> {
        let mut lost = Vec::new();
        if self.vigil.may_judge(self.agent_window(), Instant::now()) {
            for sid in self.db.sweep_lost(now, self.agents_alive_since(now)).await? {
                let reason = "lost: its agent stopped responding";
                self.events.emit(
                    events::Event::new(events::EventType::WorkspaceLost)
                        .session(&sid)
                        .detail("reason", reason),
                );
                self.events.emit(
                    events::Event::new(events::EventType::SessionEnded)
                        .session(&sid)
                        .detail("reason", reason),
                );
                lost.push(sid);
            }
        }
        if self.vigil.may_judge(bridge_window(), Instant::now()) {
            for (sid, reason) in self.db.sweep_lost_bridges(now, self.bridges_alive_since(now)).await? {
                tracing::warn!(session_id = %sid, %reason, "Session lost with its bridge");
                self.events.emit(
                    events::Event::new(events::EventType::SessionEnded)
                        .session(&sid)
                        .detail("reason", &reason),
                );
                lost.push(sid);
            }
        }
        Ok(lost)
    }

    /// Report the agents and bridges that stopped responding since the last look (`agent_down`,
    /// `bridge_down`: once per webapp fleet and outage).
    pub async fn report_down(&self, now: i64) -> sqlx::Result<()> {
        if self.vigil.may_judge(bridge_window(), Instant::now()) {
            for (id, name) in self.db.bridges_newly_down(self.bridges_alive_since(now), now).await? {
                tracing::warn!(bridge = ?name, bridge_id = %id, "Bridge down: no heartbeat for {BRIDGE_DOWN_SECS} s");
                self.events.emit(
                    events::Event::new(events::EventType::BridgeDown)
                        .detail("bridge", &name)
                        .detail("bridge_id", &id)
                        .detail("silent_secs", BRIDGE_DOWN_SECS),
                );
            }
        }
        if self.vigil.may_judge(self.agent_window(), Instant::now()) {
            for (id, name) in self.db.agents_newly_down(self.agents_alive_since(now), now).await? {
                tracing::warn!(agent = ?name, agent_id = %id, "Agent down: three heartbeats missed");
                self.events.emit(
                    events::Event::new(events::EventType::AgentDown)
                        .detail("agent", &name)
                        .detail("agent_id", &id)
                        .detail("missed_heartbeats", 3),
                );
            }
        }
        Ok(())
    }

    /// How long this webapp must have reached the database before it calls an agent down.
    fn agent_window(&self) -> Duration {
        Duration::from_secs(3 * u64::from(self.agent_heartbeat_secs()) + 1)
    }

    /// How often agents are expected to sync (whole seconds, at least 1).
    pub fn agent_heartbeat_secs(&self) -> u32 {
        u32::try_from(self.config.agent_heartbeat.as_secs().max(1)).unwrap_or(5)
    }

    /// Connect to the database, run migrations and derive the keys.
    pub async fn new(config: WebappConfig) -> anyhow::Result<AppState> {
        config.validate()?;
        let db = db::Db::connect(config.database_url.expose()).await?;
        let keys = crypto::Keys::derive(config.master_key.expose());
        let signer = TokenSigner::new(keys.token_signing.clone());
        let events = events::Events::start(&config.events()?, db.clone())?;
        Ok(AppState {
            db,
            keys: Arc::new(keys),
            signer: Arc::new(signer),
            config: Arc::new(config),
            passwords: Arc::new(login::PasswordPool::for_machine()),
            oidc: Arc::default(),
            events,
            draining: Arc::default(),
            vigil: Arc::default(),
            metrics: Arc::default(),
        })
    }

    /// Create the first admin when there is no user yet. Returns the generated password, if one was generated.
    pub async fn ensure_admin(&self, password: Option<String>) -> anyhow::Result<Option<String>> {
        if self.db.count_users().await? > 0 {
            return Ok(None);
        }
        let generated = password.is_none();
        let password = password.unwrap_or_else(|| crypto::random_token()[..20].to_owned());
        let hash = crypto::hash_password(&password)?;
        self.db
            .insert_user(
                &uuid::Uuid::new_v4().to_string(),
                "admin",
                &hash,
                auth::ROLE_ADMIN,
                now_unix(),
            )
            .await
            .context("create the first admin")?;
        tracing::info!(username = "admin", "Created the first admin");
        Ok(generated.then_some(password))
    }

    /// Periodic clean-up of expired rows; safe to run on every instance at once.
    pub fn spawn_maintenance(&self) -> tokio::task::JoinHandle<()> {
        let st = self.clone();
        // The watch: every second, a database round trip (the vigil), then the sessions of bridges and
        // agents that stopped responding end and their loss is reported (its own task: pruning may take a
        // while, and neither blocks the API).
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = st.db.ping().await {
                    st.vigil.failed();
                    tracing::debug!(error = %e, "Watch: database unreachable");
                    continue;
                }
                st.vigil.reached(Instant::now());
                let now = now_unix();
                if let Err(e) = st.sweep_lost(now).await {
                    tracing::warn!(error = %e, "Cannot end the sessions of bridges and agents that stopped responding");
                }
                if let Err(e) = st.report_down(now).await {
                    tracing::warn!(error = %e, "Cannot check for bridges and agents that stopped responding");
                }
            }
        });
        let st = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                if let Err(e) = st.db.prune(now_unix()).await {
                    tracing::warn!(error = %e, "Database maintenance failed");
                }
                if let Err(e) = st.events.prune(&st.db, events::now_ms()).await {
                    tracing::warn!(error = %e, "Pruning old events failed");
                }
                if let Err(e) = recordings::expire(&st, now_unix()).await {
                    tracing::warn!(error = format!("{e:#}"), "Removing expired recordings failed");
                }
            }
        })
    }
}

/// The webapp's HTTP routes: public API, internal API, health, OpenAPI and the web client.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .merge(api::routes())
        .merge(internal::routes())
        .merge(recordings::routes())
        .merge(shares::routes())
        .merge(assets::routes());
    headers::layer(metrics::layer(routes, state.metrics.clone())).with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vigil_judges_only_after_a_whole_window_of_reachable_database() {
        let v = Vigil::default();
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let w = Duration::from_secs(7);
        assert!(!v.may_judge(w, t0), "never reached: no judgement");
        for n in 0..=6 {
            v.reached(s(n));
        }
        assert!(!v.may_judge(w, s(6)));
        v.reached(s(7));
        assert!(v.may_judge(w, s(7)), "the window counts from the first success");
        v.failed();
        assert!(!v.may_judge(w, s(30)), "an outage starts the window again");
        for n in 30..=36 {
            v.reached(s(n));
        }
        assert!(!v.may_judge(w, s(36)));
        v.reached(s(37));
        assert!(v.may_judge(w, s(37)));
    }

    #[test]
    fn a_pause_of_the_webapp_itself_is_not_silence_of_the_bridges() {
        let v = Vigil::default();
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let w = Duration::from_secs(6);
        for n in 0..=10 {
            v.reached(s(n));
        }
        assert!(v.may_judge(w, s(10)));
        // The runtime stalls for 5 s: a request handled right after it (before the watch looks) judges
        // nothing, since the watch has not looked for longer than a pause.
        assert!(!v.may_judge(w, s(15)), "a stale look: no judgement");
        // The watch's first look after the stall starts the window again.
        v.reached(s(15));
        assert!(!v.may_judge(w, s(15)));
        for n in 16..=20 {
            v.reached(s(n));
        }
        assert!(!v.may_judge(w, s(20)));
        v.reached(s(21));
        assert!(v.may_judge(w, s(21)), "a whole window of looks after the pause");
        // Looks that come a little late (a busy machine) are not a pause.
        v.reached(s(21) + Duration::from_millis(2400));
        assert!(v.may_judge(w, s(21) + Duration::from_millis(2400)));
    }
}

#[cfg(test)]
mod bridge_state_tests {
    use super::*;

    fn row(id: &str, name: &str, seen: i64) -> db::BridgeRow {
        db::BridgeRow {
            id: id.into(),
            name: name.into(),
            remote_addr: String::new(),
            registered_at: seen,
            last_seen_at: seen,
            revoked_at: None,
            route: None,
            draining_at: None,
            drain_deadline_at: None,
            live_sessions: 0,
        }
    }

    #[test]
    fn a_bridge_s_state_comes_from_its_heartbeat_its_drain_and_its_successors() {
        let mut rows = vec![
            row("a1", "a", 10), // restarted since: replaced, not down
            row("b1", "b", 10), // silent: down
            row("c1", "c", 10), // drained and gone: stopped
            row("a2", "a", 100),
            row("d1", "d", 100), // draining
            row("e1", "e", 100), // revoked
        ];
        rows[2].draining_at = Some(5);
        rows[4].draining_at = Some(99);
        rows[5].revoked_at = Some(99);
        assert_eq!(
            bridge_states(&rows, 96),
            ["replaced", "down", "stopped", "healthy", "draining", "revoked"]
        );
    }
}
