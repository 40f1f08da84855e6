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
    /// Origins (`https://app.example`) allowed to frame the embed page `/connect`; empty: nobody may.
    pub embed_origins: Vec<String>,
    /// Days events stay in the database (default 14); 0 stores none there.
    pub event_retention_days: u64,
    /// Where events are forwarded: `syslog+tcp://host:port`, `syslog+tls://host:port`, `jsonl:///path`,
    /// `jsonl:-` (stdout).
    pub event_forward: Vec<String>,
    /// PEM of a CA that signed `syslog+tls` receivers' certificates (besides the machine's roots).
    pub event_forward_ca: Option<String>,
    /// The recording storage the bridges write (`<session id>.portrec`), read here to serve recordings;
    /// `None`: recordings are listed but cannot be read from this webapp.
    pub recording_dir: Option<std::path::PathBuf>,
    /// Days recordings are kept (default 90); older ones are removed, row and file.
    pub recording_retention_days: u64,
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
            embed_origins: Vec::new(),
            event_retention_days: 14,
            event_forward: Vec::new(),
            event_forward_ca: None,
            recording_dir: None,
            recording_retention_days: 90,
        }
    }

    /// The settings of the event pipeline (forward targets parsed).
    pub fn events(&self) -> anyhow::Result<crate::events::EventsConfig> {
        let forward = self
            .event_forward
            .iter()
            .filter(|t| !t.trim().is_empty())
            .map(|t| crate::events::ForwardTarget::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(crate::events::EventsConfig {
            retention_days: self.event_retention_days,
            forward,
            forward_ca: self.event_forward_ca.clone(),
        })
    }

    /// Check what browsers will be told: the bridge URL (a WebSocket or HTTP(S) URL without query or
    /// fragment) and the embedding origins (bare `http(s)://host[:port]` origins).
    pub fn validate(&self) -> anyhow::Result<()> {
        let bridge = url::Url::parse(&self.bridge_public_url)
            .map_err(|e| anyhow::anyhow!("invalid bridge public url {:?}: {e}", self.bridge_public_url))?;
        anyhow::ensure!(
            matches!(bridge.scheme(), "wss" | "ws" | "https" | "http")
                && plain_host(&bridge)
                && bridge.username().is_empty()
                && bridge.password().is_none()
                && bridge.query().is_none()
                && bridge.fragment().is_none(),
            "invalid bridge public url {:?} (expected wss://host[:port][/path])",
            self.bridge_public_url
        );
        for o in &self.embed_origins {
            parse_origin(o)?;
        }
        self.events()?;
        Ok(())
    }

    /// The base URL of the bridge's WebSocket endpoint (`wss://host[:port][/path]`, no trailing slash).
    pub fn bridge_ws_base(&self) -> String {
        let base = self.bridge_public_url.trim_end_matches('/');
        if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.to_owned()
        }
    }

    /// The bridge origins browsers may open WebSockets to (`wss://host[:port]`), for the CSP `connect-src`.
    pub fn bridge_origins(&self) -> Vec<String> {
        url::Url::parse(&self.bridge_ws_base())
            .ok()
            .map(|u| u.origin())
            .filter(url::Origin::is_tuple)
            .map(|o| o.ascii_serialization())
            .into_iter()
            .collect()
    }

    /// The embedding origins in their canonical form (invalid ones were refused by [`Self::validate`]).
    pub fn embed_origins(&self) -> Vec<String> {
        self.embed_origins.iter().filter_map(|o| parse_origin(o).ok()).collect()
    }
}

/// A host that can stand in a CSP source as is: an IP address or a DNS name of letters, digits, `-` and `.`
/// (the URL parser lets `*` and other punctuation through).
fn plain_host(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => {
            !d.is_empty() && d.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }
        Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => true,
        None => false,
    }
}

/// Parse an origin an admin allows to embed Portico: `http(s)://host[:port]` and nothing else (no path,
/// query, user or wildcard), so that it can go into a CSP header as is. Returns the canonical form.
pub fn parse_origin(s: &str) -> anyhow::Result<String> {
    let bad = || anyhow::anyhow!("invalid embed origin {s:?} (expected https://host[:port])");
    let u = url::Url::parse(s.trim()).map_err(|_| bad())?;
    let bare = matches!(u.scheme(), "https" | "http")
        && u.host().is_some()
        && u.username().is_empty()
        && u.password().is_none()
        && u.path() == "/"
        && u.query().is_none()
        && u.fragment().is_none()
        && plain_host(&u);
    anyhow::ensure!(bare, bad());
    let origin = u.origin();
    anyhow::ensure!(origin.is_tuple(), bad());
    Ok(origin.ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_canonical_and_nothing_else_gets_into_the_csp() {
        assert_eq!(parse_origin("https://App.Example").unwrap(), "https://app.example");
        assert_eq!(parse_origin("https://app.example:443/").unwrap(), "https://app.example");
        assert_eq!(parse_origin("http://127.0.0.1:8080").unwrap(), "http://127.0.0.1:8080");
        for bad in [
            "app.example",
            "*",
            "https://*.example",
            "https://app.example/path",
            "https://app.example; script-src *",
            "https://app.example 'unsafe-inline'",
            "https://user@app.example",
            "https://app.example?x",
            "wss://app.example",
            "javascript:alert(1)",
        ] {
            let err = parse_origin(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid embed origin"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_bridge_origin_is_in_websocket_form() {
        let mut cfg = WebappConfig::new(
            "sqlite::memory:".into(),
            [0; 32],
            "node-secret-0123456789".into(),
            "https://portico.example:8443".into(),
        );
        assert_eq!(cfg.bridge_ws_base(), "wss://portico.example:8443");
        assert_eq!(cfg.bridge_origins(), ["wss://portico.example:8443"]);
        cfg.bridge_public_url = "https://bridge.example/portico/".into();
        cfg.validate().unwrap();
        assert_eq!(cfg.bridge_ws_base(), "wss://bridge.example/portico");
        assert_eq!(cfg.bridge_origins(), ["wss://bridge.example"]);
        cfg.bridge_public_url = "wss://bridge.example/?x=1".into();
        assert!(cfg.validate().is_err());
        cfg.bridge_public_url = "wss://bridge.example".into();
        cfg.embed_origins = vec!["https://a.example; frame-ancestors *".into()];
        assert!(cfg.validate().is_err());
    }
}
