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
pub mod mfa;
pub mod oidc;
pub mod openapi;
pub mod tls;
pub mod workspaces;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

    /// End the sessions of agents that stopped responding ([`db::Db::sweep_lost`]); every read that
    /// depends on them calls this first, since the webapp keeps no timers.
    pub async fn sweep_lost(&self, now: i64) -> sqlx::Result<Vec<String>> {
        let lost = self.db.sweep_lost(now, self.agents_alive_since(now)).await?;
        for sid in &lost {
            let reason = "lost: its agent stopped responding";
            self.events.emit(
                events::Event::new(events::EventType::WorkspaceLost)
                    .session(sid)
                    .detail("reason", reason),
            );
            self.events.emit(
                events::Event::new(events::EventType::SessionEnded)
                    .session(sid)
                    .detail("reason", reason),
            );
        }
        Ok(lost)
    }

    /// Report the agents that stopped responding since the last look (`agent_down`, once per webapp fleet
    /// and outage).
    pub async fn report_agents_down(&self, now: i64) -> sqlx::Result<()> {
        if !self.events.enabled() {
            return Ok(());
        }
        for (id, name) in self.db.agents_newly_down(self.agents_alive_since(now), now).await? {
            tracing::warn!(agent = ?name, agent_id = %id, "Agent down: three heartbeats missed");
            self.events.emit(
                events::Event::new(events::EventType::AgentDown)
                    .detail("agent", &name)
                    .detail("agent_id", &id)
                    .detail("missed_heartbeats", 3),
            );
        }
        Ok(())
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
        let db = self.db.clone();
        let st = self.clone();
        // Agents that stop responding are reported within a heartbeat interval (its own task: pruning may
        // take a while, and neither blocks the API).
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(st.config.agent_heartbeat.max(Duration::from_secs(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = st.report_agents_down(now_unix()).await {
                    tracing::warn!(error = %e, "Cannot check for agents that stopped responding");
                }
            }
        });
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                if let Err(e) = db.prune(now_unix()).await {
                    tracing::warn!(error = %e, "Database maintenance failed");
                }
                if let Err(e) = events.prune(&db, events::now_ms()).await {
                    tracing::warn!(error = %e, "Pruning old events failed");
                }
            }
        })
    }
}

/// The webapp's HTTP routes: public API, internal API, health, OpenAPI and the web client.
pub fn router(state: AppState) -> Router {
    headers::layer(
        Router::new()
            .merge(api::routes())
            .merge(internal::routes())
            .merge(assets::routes()),
    )
    .with_state(state)
}
