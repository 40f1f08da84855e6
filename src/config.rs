//! Settings of the `portico` binary: a TOML file (`--config`), overridden by environment variables and flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;
use serde::Deserialize;

/// Every setting; each is a flag, an environment variable and a key of the TOML file.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Directory for the SQLite database, generated keys and the self-signed certificate.
    #[arg(long, global = true, env = "PORTICO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on (HTTPS).
    #[arg(long, global = true, env = "PORTICO_LISTEN")]
    pub listen: Option<String>,
    /// `sqlite://FILE` or `postgres://USER:PASS@HOST:PORT/DB`; default: SQLite in the data directory.
    #[arg(long, global = true, env = "PORTICO_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Base64 of 32 random bytes; default: generated once into DATA_DIR/master.key. Every webapp must share it.
    #[arg(long, global = true, env = "PORTICO_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    /// Credential bridges use for the internal API; default: generated once into DATA_DIR/node.secret.
    #[arg(long, global = true, env = "PORTICO_NODE_SECRET", hide_env_values = true)]
    pub node_secret: Option<String>,
    /// URL browsers use to reach the webapp (default: https://LISTEN).
    #[arg(long, global = true, env = "PORTICO_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// URL browsers use to reach the bridge (default: the public URL with wss://).
    #[arg(long, global = true, env = "PORTICO_BRIDGE_PUBLIC_URL")]
    pub bridge_public_url: Option<String>,
    /// Bridge pool name (token audience).
    #[arg(long, global = true, env = "PORTICO_ZONE")]
    pub zone: Option<String>,
    /// PEM certificate chain; default: self-signed, generated into DATA_DIR/tls.
    #[arg(long, global = true, env = "PORTICO_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, global = true, env = "PORTICO_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Password of the first admin (default: generated and printed once).
    #[arg(long, global = true, env = "PORTICO_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Bridge/agent: base URL of the webapp tier (its load balancer).
    #[arg(long, global = true, env = "PORTICO_WEBAPP_URL")]
    pub webapp_url: Option<String>,
    /// Bridge/agent: SHA-256 (hex) of the webapp's certificate, to trust a self-signed webapp.
    #[arg(long, global = true, env = "PORTICO_WEBAPP_CERT_SHA256")]
    pub webapp_cert_sha256: Option<String>,
    /// Bridge/agent: CA certificate (PEM) that signed the webapp's certificate.
    #[arg(long, global = true, env = "PORTICO_WEBAPP_CA")]
    pub webapp_ca: Option<PathBuf>,
    /// Name of this bridge node (default: bridge-<random>).
    #[arg(long, global = true, env = "PORTICO_BRIDGE_ID")]
    pub bridge_id: Option<String>,
    /// Bridge: its route at the load balancer (`[a-z0-9-]`, the server name in the shipped HAProxy
    /// configuration): the webapp then assigns new sessions to it and names the route in their WebSocket
    /// URL (`/bridge/v1/at/ROUTE/ws`). Without one, the bridge gets only unassigned sessions.
    #[arg(long, global = true, env = "PORTICO_BRIDGE_ROUTE")]
    pub bridge_route: Option<String>,
    /// Seconds a dropped browser may take to reattach to its session.
    #[arg(long, global = true, env = "PORTICO_SESSION_GRACE_SECS")]
    pub session_grace_secs: Option<u64>,
    /// Seconds without user input before a session ends (0 = never).
    #[arg(long, global = true, env = "PORTICO_SESSION_IDLE_SECS")]
    pub session_idle_secs: Option<u64>,
    /// Maximum session length in seconds (0 = unlimited).
    #[arg(long, global = true, env = "PORTICO_SESSION_MAX_SECS")]
    pub session_max_secs: Option<u64>,
    /// Docker engine socket for the agent.
    #[arg(long, global = true, env = "PORTICO_DOCKER_SOCKET")]
    pub docker_socket: Option<String>,
    /// Token Docker agents register with (webapp: accepted; agent: presented). All-in-one: generated in
    /// the data directory when not given.
    #[arg(
        long,
        global = true,
        env = "PORTICO_AGENT_REGISTRATION_TOKEN",
        hide_env_values = true
    )]
    pub agent_registration_token: Option<String>,
    /// The agent's name (default: the host name).
    #[arg(long, global = true, env = "PORTICO_AGENT_NAME")]
    pub agent_name: Option<String>,
    /// Seconds between agent heartbeats (webapp: expected; three missed mark an agent down).
    #[arg(long, global = true, env = "PORTICO_AGENT_HEARTBEAT_SECS")]
    pub agent_heartbeat_secs: Option<u64>,
    /// Docker network of workspace containers (the bridge tier must reach it; nothing is published).
    /// Default: portico-workspaces, created by the agent without inter-container traffic.
    #[arg(long, global = true, env = "PORTICO_AGENT_NETWORK")]
    pub agent_network: Option<String>,
    /// Numeric uid[:gid] workspace containers run as, whatever their image says; never root (default
    /// 1000:1000).
    #[arg(long, global = true, env = "PORTICO_AGENT_USER")]
    pub agent_user: Option<String>,
    /// Memory the agent offers to workspaces, MiB (default: all of the host's).
    #[arg(long, global = true, env = "PORTICO_AGENT_MEMORY_MB")]
    pub agent_memory_mb: Option<u64>,
    /// Bridge: the largest desktop a VNC or RDP server may impose, WIDTHxHEIGHT (either orientation: at
    /// most that many pixels, no side longer than the longer one); a larger one ends its session with
    /// target_error. Default 4096x2160.
    #[arg(long, global = true, env = "PORTICO_MAX_DESKTOP")]
    pub max_desktop: Option<portico_proto::limits::MaxDesktop>,
    /// Origins allowed to frame the embed page /connect, comma-separated (e.g. https://app.example);
    /// default: none, no page may be framed.
    #[arg(long, global = true, env = "PORTICO_EMBED_ORIGINS", value_delimiter = ',')]
    pub embed_origins: Option<Vec<String>>,
    /// Load balancers whose PROXY protocol v2 header or X-Forwarded-For names the real client address,
    /// comma-separated CIDRs (e.g. 10.0.0.0/8,192.0.2.7); default: none, the TCP peer is the client.
    #[arg(long, global = true, env = "PORTICO_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<String>>,
    /// Webapp: days events (logins, changes, sessions...) stay in the database (default 14); 0 stores none
    /// there (forward them with --event-forward).
    #[arg(long, global = true, env = "PORTICO_EVENT_RETENTION_DAYS")]
    pub event_retention_days: Option<u64>,
    /// Webapp: where events are forwarded, comma-separated: syslog+tcp://HOST:PORT, syslog+tls://HOST:PORT
    /// (RFC 5424, octet counting), jsonl:///PATH (JSON lines appended to a file) or jsonl:- (stdout).
    #[arg(long, global = true, env = "PORTICO_EVENT_FORWARD", value_delimiter = ',')]
    pub event_forward: Option<Vec<String>>,
    /// Webapp: CA certificate (PEM) that signed syslog+tls receivers' certificates (besides the system's).
    #[arg(long, global = true, env = "PORTICO_EVENT_FORWARD_CA")]
    pub event_forward_ca: Option<PathBuf>,
    /// Open connections in total (WebSockets included); beyond it new ones are closed at once.
    #[arg(long, global = true, env = "PORTICO_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Open connections of one client address.
    #[arg(long, global = true, env = "PORTICO_MAX_CONNECTIONS_PER_CLIENT")]
    pub max_connections_per_client: Option<usize>,
    /// Seconds a connection may take to send its TLS handshake and each request head (default 10).
    #[arg(long, global = true, env = "PORTICO_HEADER_TIMEOUT_SECS")]
    pub header_timeout_secs: Option<u64>,
    /// Seconds to keep serving after SIGTERM with the health check answering 503, so that load balancers
    /// stop sending new requests before this instance stops accepting (default 0; behind a load balancer,
    /// at least its detection window).
    #[arg(long, global = true, env = "PORTICO_SHUTDOWN_DELAY_SECS")]
    pub shutdown_delay_secs: Option<u64>,
    /// Bridge: seconds live sessions keep streaming without the control plane (every webapp or the
    /// database unreachable) before they end; 0: never (default 300).
    #[arg(long, global = true, env = "PORTICO_CONTROL_PLANE_GRACE_SECS")]
    pub control_plane_grace_secs: Option<u64>,
    /// Serve Prometheus metrics (`GET /metrics`, plain HTTP) on this address, e.g. 10.0.0.5:9100; keep it
    /// internal. Default: no metrics listener.
    #[arg(long, global = true, env = "PORTICO_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Bearer token a scrape of --metrics-listen must send (`Authorization: Bearer TOKEN`); default: none.
    #[arg(long, global = true, env = "PORTICO_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Recording storage: bridges write the recordings of connections whose policy records them here
    /// (`<session id>.portrec`), webapps serve them from here; shared storage (NFS, a volume) when they run
    /// on different machines. Default: `<data-dir>/recordings` for the all-in-one and the webapp, none for
    /// a bridge on its own (it then refuses sessions that must be recorded).
    #[arg(long, global = true, env = "PORTICO_RECORDING_DIR")]
    pub recording_dir: Option<PathBuf>,
    /// Days recordings are kept before the webapps remove them (default 90; 0: forever).
    #[arg(long, global = true, env = "PORTICO_RECORDING_RETENTION_DAYS")]
    pub recording_retention_days: Option<u64>,
}

macro_rules! merge {
    ($a:ident, $b:ident, $($f:ident),*) => { $( if $a.$f.is_none() { $a.$f = $b.$f.clone(); } )* };
}

impl Settings {
    /// Flags/env (`self`) win over the file.
    pub fn with_file(mut self, path: Option<&Path>) -> anyhow::Result<Settings> {
        let Some(path) = path else { return Ok(self) };
        let text = std::fs::read_to_string(path).with_context(|| format!("read config file {}", path.display()))?;
        let file: Settings = toml::from_str(&text).with_context(|| format!("parse config file {}", path.display()))?;
        merge!(
            self,
            file,
            data_dir,
            listen,
            database_url,
            master_key,
            node_secret,
            public_url,
            bridge_public_url,
            zone,
            tls_cert,
            tls_key,
            admin_password,
            webapp_url,
            webapp_cert_sha256,
            webapp_ca,
            bridge_id,
            bridge_route,
            session_grace_secs,
            session_idle_secs,
            session_max_secs,
            docker_socket,
            agent_registration_token,
            agent_name,
            agent_heartbeat_secs,
            agent_network,
            agent_user,
            agent_memory_mb,
            max_desktop,
            embed_origins,
            trusted_proxies,
            event_retention_days,
            event_forward,
            event_forward_ca,
            max_connections,
            max_connections_per_client,
            header_timeout_secs,
            shutdown_delay_secs,
            control_plane_grace_secs,
            metrics_listen,
            metrics_token,
            recording_dir,
            recording_retention_days
        );
        Ok(self)
    }

    /// How the listener treats connections (trusted proxies, caps, timeouts).
    pub fn frontend(&self) -> anyhow::Result<crate::serve::Frontend> {
        let mut f = crate::serve::Frontend::default();
        for c in self.trusted_proxies.iter().flatten().filter(|c| !c.trim().is_empty()) {
            f.trusted_proxies.push(c.parse().context("--trusted-proxies")?);
        }
        if let Some(n) = self.max_connections {
            f.max_connections = n.max(1);
        }
        if let Some(n) = self.max_connections_per_client {
            f.max_connections_per_client = n.max(1);
        }
        if let Some(s) = self.header_timeout_secs {
            f.header_timeout = Duration::from_secs(s.max(1));
        }
        if let Some(s) = self.shutdown_delay_secs {
            f.shutdown_delay = Duration::from_secs(s.min(300));
        }
        Ok(f)
    }

    /// The recording storage of a webapp (and the all-in-one's bridge).
    pub fn recording_dir(&self) -> PathBuf {
        self.recording_dir
            .clone()
            .unwrap_or_else(|| self.data_dir().join("recordings"))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from("portico-data"))
    }

    pub fn listen(&self) -> anyhow::Result<SocketAddr> {
        let s = self.listen.as_deref().unwrap_or("127.0.0.1:8443");
        s.parse()
            .with_context(|| format!("invalid listen address {s:?} (expected IP:PORT)"))
    }

    pub fn database_url(&self) -> anyhow::Result<String> {
        if let Some(u) = &self.database_url {
            return Ok(u.clone());
        }
        let dir = self.data_dir();
        private_dir(&dir)?;
        // SQLite creates the -wal and -shm files with the database file's mode: 0600 from the start.
        let db = dir.join("portico.db");
        for f in [db.clone(), dir.join("portico.db-wal"), dir.join("portico.db-shm")] {
            if f.exists() {
                set_mode(&f, 0o600)?;
            }
        }
        if !db.exists() {
            write_private(&db, b"")?;
        }
        Ok(format!("sqlite://{}", db.display()))
    }

    pub fn master_key(&self) -> anyhow::Result<[u8; 32]> {
        let b64 = match &self.master_key {
            Some(k) => k.clone(),
            None => read_or_generate(&self.data_dir().join("master.key"))?,
        };
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .and_then(|v| v.try_into().ok())
            .context("master key must be base64 of exactly 32 bytes")
    }

    /// The registration token: given, or (all-in-one) generated once in the data directory.
    pub fn agent_registration_token_or_generate(&self) -> anyhow::Result<String> {
        match &self.agent_registration_token {
            Some(t) if t.len() >= 16 => Ok(t.clone()),
            Some(_) => anyhow::bail!("agent registration token must have at least 16 characters"),
            None => read_or_generate(&self.data_dir().join("agent-registration.token")),
        }
    }

    /// The agent's persistent identity: generated once in the data directory (mode 0600); its name is bound
    /// to it at the webapp.
    pub fn agent_identity(&self) -> anyhow::Result<String> {
        read_or_generate(&self.data_dir().join("agent-identity.key"))
    }

    pub fn node_secret(&self) -> anyhow::Result<String> {
        match &self.node_secret {
            Some(s) if s.len() >= 16 => Ok(s.clone()),
            Some(_) => anyhow::bail!("node secret must have at least 16 characters"),
            None => read_or_generate(&self.data_dir().join("node.secret")),
        }
    }
}

/// Read a base64 secret from `path`, generating 32 random bytes (mode 0600) on first use.
fn read_or_generate(path: &Path) -> anyhow::Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        return Ok(s.trim().to_owned());
    }
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("os random number generator: {e}"))?;
    let s = base64::engine::general_purpose::STANDARD.encode(b);
    write_private(path, s.as_bytes())?;
    Ok(s)
}

/// Create `dir` (and its parents) readable only by its owner, and make an existing one so (mode 0700).
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    set_mode(dir, 0o700)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("restrict the permissions of {}", path.display()))
}

pub fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(data).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_settings_fill_what_flags_and_env_leave_open() {
        let dir = std::env::temp_dir().join(format!("portico-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("portico.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nzone = \"eu\"\nsession-grace-secs = 30\n",
        )
        .unwrap();
        let flags = Settings {
            zone: Some("us".into()),
            ..Settings::default()
        };
        let s = flags.with_file(Some(&file)).unwrap();
        assert_eq!(s.listen().unwrap().port(), 9000);
        assert_eq!(s.zone.as_deref(), Some("us"), "flags and env win over the file");
        assert_eq!(s.session_grace_secs, Some(30));
        std::fs::write(&file, "surprise = 1\n").unwrap();
        let err = Settings::default().with_file(Some(&file)).unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_metrics_listener_is_off_unless_a_flag_env_or_file_asks() {
        assert!(Settings::default().metrics_listen.is_none());
        let dir = std::env::temp_dir().join(format!("portico-metrics-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("portico.toml");
        std::fs::write(&file, "metrics-listen = \"127.0.0.1:9100\"\nmetrics-token = \"t\"\n").unwrap();
        let s = Settings::default().with_file(Some(&file)).unwrap();
        assert_eq!(s.metrics_listen.as_deref(), Some("127.0.0.1:9100"));
        assert_eq!(s.metrics_token.as_deref(), Some("t"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn generated_secrets_are_stable_and_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("portico-secrets-{}", std::process::id()));
        let s = Settings {
            data_dir: Some(dir.clone()),
            ..Settings::default()
        };
        let k1 = s.master_key().unwrap();
        assert_eq!(k1, s.master_key().unwrap(), "generated once, then read back");
        let mode = std::fs::metadata(dir.join("master.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let bad = Settings {
            master_key: Some("c2hvcnQ=".into()),
            ..Settings::default()
        };
        assert!(bad.master_key().is_err());
        let weak = Settings {
            node_secret: Some("short".into()),
            ..Settings::default()
        };
        assert!(weak.node_secret().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
