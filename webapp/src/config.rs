//! Webapp configuration (already validated; the binary parses files and flags into this).

use std::time::Duration;

use portico_proto::Secret;

#[derive(Debug, Clone)]
pub struct WebappConfig {
    /// `sqlite://path` or `postgres://...`.
    pub database_url: Secret<String>,
    /// 32-byte master key; token signing and credential encryption keys are derived from it.
    pub master_key: Secret<[u8; 32]>,
    /// Base URL browsers use for the webapp, e.g. `https://127.0.0.1:8443`.
    pub public_url: String,
    /// Base URL browsers use for the bridge, e.g. `wss://127.0.0.1:8443`.
    pub bridge_public_url: String,
    /// Bridge pool that accepts this webapp's tokens (token audience).
    pub zone: String,
    /// Credential of bridge nodes for the internal API.
    pub node_secret: Secret<String>,
    pub login_ttl: Duration,
    pub session_idle_timeout: Duration,
    pub session_max_duration: Duration,
    pub session_grace: Duration,
    /// Set the `Secure` flag on cookies (off only for plain-HTTP test setups).
    pub secure_cookies: bool,
    /// Token Docker agents present to register; `None` refuses every registration.
    pub agent_registration_token: Option<Secret<String>>,
    /// How often agents send heartbeats; three missed ones mark an agent down.
    pub agent_heartbeat: Duration,
}

impl WebappConfig {
    /// A configuration with the defaults, for the given database, master key and node secret.
    pub fn new(database_url: String, master_key: [u8; 32], node_secret: String, public_url: String) -> Self {
        let bridge_public_url = public_url
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        Self {
            database_url: Secret::new(database_url),
            master_key: Secret::new(master_key),
            public_url,
            bridge_public_url,
            zone: "default".into(),
            node_secret: Secret::new(node_secret),
            login_ttl: Duration::from_secs(12 * 3600),
            session_idle_timeout: Duration::from_secs(30 * 60),
            session_max_duration: Duration::from_secs(8 * 3600),
            session_grace: Duration::from_secs(60),
            secure_cookies: true,
            agent_registration_token: None,
            agent_heartbeat: Duration::from_secs(5),
        }
    }
}
