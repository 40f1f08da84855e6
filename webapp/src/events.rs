//! Structured events: what an operator or auditor asks about (logins, second factors, changes made by
//! admins, the lifecycle of sessions, bridges, agents and workspace containers, refused tokens).
//!
//! [`Events::emit`] never blocks and never fails a request: it hands the event to a bounded queue per
//! sink (the database when the retention is not 0, and each `--event-forward` target) and counts what a
//! full queue drops. Background tasks drain the queues: the database sink inserts in batches, the
//! forwarders write RFC 5424 syslog (octet counting, over TCP or TLS) or JSON lines (a file or stdout),
//! reconnecting with a bounded exponential backoff while their own queue holds what arrives meanwhile.
//!
//! The formats are pure functions ([`syslog_frame`], [`json_line`]) with their tests below.
//! An event never holds a secret: details are built from explicit fields, and [`Event::detail`] redacts
//! string values under secret-sounding keys as a second line of defence.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::AppState;
use crate::auth::{CurrentUser, Overseer};
use crate::db::{Db, EventQuery};
use crate::error::ApiError;

macro_rules! event_types {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal / $severity:ident,)*) => {
        /// What happened. The single source of the event names: the database, the API, syslog's MSGID and
        /// the JSON lines all use [`EventType::as_str`] (serde's snake_case of the variant).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum EventType {
            $($(#[doc = $doc])* $variant,)*
        }

        impl EventType {
            /// Every event type, in the order of the documentation.
            pub const ALL: &[EventType] = &[$(EventType::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventType::$variant => $name,)*
                }
            }

            /// The syslog severity of this type of event.
            pub fn severity(self) -> Severity {
                match self {
                    $(EventType::$variant => Severity::$severity,)*
                }
            }
        }
    };
}

event_types! {
    /// A login session was created (`method`: `password`, `ldap` or `oidc`; `second_factor` when one was
    /// used).
    LoginSucceeded = "login_succeeded" / Notice,
    /// A wrong password, an unknown user name, or a refused single sign-on (`reason`).
    LoginFailed = "login_failed" / Warning,
    /// A login attempt refused before its password was verified (`retry_after` seconds).
    LoginThrottled = "login_throttled" / Warning,
    /// The password was right but the account may not log in this way (`reason`).
    LoginRefused = "login_refused" / Warning,
    Logout = "logout" / Info,
    /// A user changed their password (`other_logins_ended`).
    PasswordChanged = "password_changed" / Notice,
    /// The password was right; the second factor is asked.
    MfaRequired = "mfa_required" / Info,
    /// A right second factor (`with`: `totp` or `recovery_code`).
    MfaSucceeded = "mfa_succeeded" / Notice,
    /// A wrong second factor.
    MfaFailed = "mfa_failed" / Warning,
    /// A user confirmed a second factor.
    MfaEnabled = "mfa_enabled" / Notice,
    /// An admin removed a user's second factor.
    MfaReset = "mfa_reset" / Warning,
    ApiKeyCreated = "api_key_created" / Notice,
    ApiKeyDeleted = "api_key_deleted" / Notice,
    UserCreated = "user_created" / Notice,
    /// `before` and `after`: the fields that changed.
    UserUpdated = "user_updated" / Notice,
    UserDeleted = "user_deleted" / Notice,
    GroupCreated = "group_created" / Notice,
    GroupUpdated = "group_updated" / Notice,
    GroupDeleted = "group_deleted" / Notice,
    /// `added` and `removed` user ids.
    GroupMembersChanged = "group_members_changed" / Notice,
    FolderCreated = "folder_created" / Notice,
    FolderUpdated = "folder_updated" / Notice,
    FolderDeleted = "folder_deleted" / Notice,
    /// The grants of a connection or folder (`object`, `object_id`, `before`, `after`).
    GrantsChanged = "grants_changed" / Notice,
    ConnectionCreated = "connection_created" / Notice,
    /// `before` and `after`: the fields that changed (credentials only as `password_changed` and
    /// `private_key_changed`).
    ConnectionUpdated = "connection_updated" / Notice,
    ConnectionDeleted = "connection_deleted" / Notice,
    /// A host key or certificate pinned on first use.
    HostKeyPinned = "host_key_pinned" / Notice,
    /// A file moved in or out of a session (`direction`, `path`, `bytes`, `outcome`: `done`, `cancelled` or
    /// `failed`).
    FileTransferred = "file_transferred" / Notice,
    /// A folder made or a file removed in a session (`direction`: `mkdir` or `remove`, `path`).
    FileChanged = "file_changed" / Notice,
    IdentityProviderCreated = "identity_provider_created" / Notice,
    IdentityProviderUpdated = "identity_provider_updated" / Notice,
    IdentityProviderDeleted = "identity_provider_deleted" / Notice,
    /// A shared setting (`setting`, `before`, `after`).
    SettingsChanged = "settings_changed" / Notice,
    /// A session was started (`protocol`, `target`).
    SessionCreated = "session_created" / Info,
    /// A session was not started (`reason`: a limit, or no room for a workspace).
    SessionRefused = "session_refused" / Warning,
    /// A bridge claimed the session's token (`bridge_id`, `target`).
    SessionClaimed = "session_claimed" / Info,
    /// The end of a session was recorded (`reason`).
    SessionEnded = "session_ended" / Info,
    /// The bridge closed the session (`reason`, `bytes_to_browser`, `bytes_from_browser`, `duration_secs`).
    SessionClosed = "session_closed" / Info,
    /// A bridge's claim of a session token was refused (`reason`).
    TokenRefused = "token_refused" / Warning,
    BridgeRegistered = "bridge_registered" / Notice,
    /// A bridge registration was refused (`reason`).
    BridgeRegistrationRefused = "bridge_registration_refused" / Warning,
    BridgeRevoked = "bridge_revoked" / Warning,
    BridgeDown = "bridge_down" / Warning,
    BridgeDrained = "bridge_drained" / Notice,
    AgentRegistered = "agent_registered" / Notice,
    /// An agent registration was refused (`reason`).
    AgentRegistrationRefused = "agent_registration_refused" / Warning,
    /// An agent missed three heartbeats.
    AgentDown = "agent_down" / Warning,
    AgentRemoved = "agent_removed" / Notice,
    AgentDrained = "agent_drained" / Notice,
    /// A session's container was placed on an agent (`agent`, `image`).
    WorkspaceScheduled = "workspace_scheduled" / Info,
    WorkspaceReady = "workspace_ready" / Info,
    /// A workspace container could not start, stopped or vanished (`reason`).
    WorkspaceFailed = "workspace_failed" / Warning,
    /// A workspace container's agent stopped responding.
    WorkspaceLost = "workspace_lost" / Warning,
    /// A workspace container was removed after its session ended.
    WorkspaceRemoved = "workspace_removed" / Info,
    /// A session's recording began (`input`: keystrokes recorded too).
    RecordingStarted = "recording_started" / Info,
    /// Someone searched the recordings (`filters`, `results`).
    RecordingsListed = "recordings_listed" / Notice,
    /// Someone read a recording (`format`: `portrec` or `asciicast`).
    RecordingViewed = "recording_viewed" / Notice,
    RecordingDeleted = "recording_deleted" / Warning,
    /// Recordings older than the retention were removed (`count`).
    RecordingsExpired = "recordings_expired" / Info,
    /// A live session was shared (`share_id`, `kind`: `user`, `group` or `link`, `mode`, `subject`,
    /// `expires_at`).
    ShareCreated = "share_created" / Notice,
    /// A share's mode changed (`share_id`, `before`, `after`).
    ShareChanged = "share_changed" / Notice,
    /// Shares were revoked (`share_id`, or every share of the session: `count`).
    ShareRevoked = "share_revoked" / Notice,
    /// A viewer was let into a shared session (`share_id`, `viewer_id`, `mode`); the actor is the viewer.
    ViewerJoined = "viewer_joined" / Notice,
    /// A bridge attached the viewer (`viewer_id`, `bridge_id`).
    ViewerClaimed = "viewer_claimed" / Info,
    /// A viewer left or was disconnected (`viewer_id`, `reason`).
    ViewerLeft = "viewer_left" / Info,
    /// An administrator joined a session without an invitation (`viewer_id`, `mode`); its owner is told.
    SessionShadowed = "session_shadowed" / Warning,
}

impl EventType {
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.iter().copied().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Syslog severities (RFC 5424 §6.2.1) that events use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning = 4,
    Notice = 5,
    Info = 6,
}

/// Syslog facility of every event: 13, "log audit" (RFC 5424 §6.2.1).
pub const FACILITY: u8 = 13;

/// One event, as emitted. Serialized the same way in the API, the JSON lines and the syslog MSG.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub id: String,
    /// Unix milliseconds.
    pub at: i64,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// Who did it (`None`: nobody logged in, or the system).
    pub actor_id: Option<String>,
    /// The client address of the request that caused it.
    pub client_addr: Option<String>,
    /// The user it is about.
    pub user_id: Option<String>,
    pub connection_id: Option<String>,
    pub session_id: Option<String>,
    /// A JSON object; never a secret.
    pub details: Map<String, Value>,
}

/// Keys whose string values [`Event::detail`] never records (a second line of defence: details are
/// built from explicit fields that hold no secret).
const SECRET_KEYS: [&str; 7] = [
    "password",
    "secret",
    "token",
    "private_key",
    "credential",
    "code",
    "cookie",
];

fn redact(key: &str, value: &mut Value) {
    match value {
        Value::String(s) if SECRET_KEYS.iter().any(|k| key.contains(k)) => *s = "<redacted>".into(),
        Value::Object(m) => m.iter_mut().for_each(|(k, v)| redact(k, v)),
        Value::Array(a) => a.iter_mut().for_each(|v| redact(key, v)),
        _ => {}
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Event {
    /// An event of `event_type`, now, with a fresh id and nothing else.
    pub fn new(event_type: EventType) -> Event {
        Event {
            id: uuid::Uuid::new_v4().to_string(),
            at: now_ms(),
            event_type,
            actor_id: None,
            client_addr: None,
            user_id: None,
            connection_id: None,
            session_id: None,
            details: Map::new(),
        }
    }

    /// Caused by `me`'s request: the actor and the client address.
    /// A login outcome of `user` from `client` by `method` (`password`, `ldap`, `oidc`): the user acts on
    /// their own account, named in the details.
    pub fn login(event_type: EventType, user: &crate::db::User, client: Option<IpAddr>, method: &str) -> Event {
        Event::new(event_type)
            .actor(&user.id)
            .client(client)
            .user(&user.id)
            .detail("username", &user.username)
            .detail("method", method)
    }

    pub fn by(mut self, me: &CurrentUser) -> Event {
        self.actor_id = Some(me.user.id.clone());
        self.client(me.client)
    }

    pub fn actor(mut self, user_id: &str) -> Event {
        self.actor_id = Some(user_id.to_owned());
        self
    }

    pub fn client(mut self, client: Option<IpAddr>) -> Event {
        self.client_addr = client.map(|a| a.to_string());
        self
    }

    pub fn user(mut self, user_id: &str) -> Event {
        self.user_id = Some(user_id.to_owned());
        self
    }

    pub fn connection(mut self, connection_id: &str) -> Event {
        self.connection_id = Some(connection_id.to_owned());
        self
    }

    pub fn session(mut self, session_id: &str) -> Event {
        self.session_id = Some(session_id.to_owned());
        self
    }

    /// Add `key: value` to the details (a value that does not serialize is left out).
    pub fn detail(mut self, key: &str, value: impl Serialize) -> Event {
        if let Ok(mut v) = serde_json::to_value(value) {
            redact(key, &mut v);
            self.details.insert(key.to_owned(), v);
        }
        self
    }

    /// `before` and `after` of a change: only the fields of two JSON objects that differ.
    pub fn change(self, before: &Value, after: &Value) -> Event {
        let (b, a) = diff(before, after);
        self.detail("before", b).detail("after", a)
    }
}

/// The fields of two JSON objects whose values differ: `(before, after)`.
/// How a password login of `user` was checked: by their directory, or by Portico (a local account).
pub fn password_method(user: &crate::db::User) -> &'static str {
    if user.provider_id.is_some() { "ldap" } else { "password" }
}

pub fn diff(before: &Value, after: &Value) -> (Value, Value) {
    let empty = Map::new();
    let b = before.as_object().unwrap_or(&empty);
    let a = after.as_object().unwrap_or(&empty);
    let mut out_b = Map::new();
    let mut out_a = Map::new();
    for k in b.keys().chain(a.keys().filter(|k| !b.contains_key(*k))) {
        let (vb, va) = (b.get(k).unwrap_or(&Value::Null), a.get(k).unwrap_or(&Value::Null));
        if vb != va {
            out_b.insert(k.clone(), vb.clone());
            out_a.insert(k.clone(), va.clone());
        }
    }
    (Value::Object(out_b), Value::Object(out_a))
}

// ---- formats

/// The host name syslog messages carry: printable US-ASCII without spaces, at most 255 bytes, else `-`.
pub fn syslog_hostname(raw: &str) -> String {
    let h: String = raw.trim().chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
    if h.is_empty() { "-".into() } else { h }
}

/// An RFC 3339 UTC timestamp with milliseconds (`2026-12-02T10:00:00.123Z`) from unix milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// An SD-PARAM value (RFC 5424 §6.3.3): `"`, `\` and `]` escaped with a backslash.
pub fn sd_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The SD-ID of the structured data element of every event (`32473` is the private enterprise number
/// RFC 5612 reserves for documentation and examples).
pub const SD_ID: &str = "portico@32473";

/// One RFC 5424 message (without framing):
/// `<PRI>1 TIMESTAMP HOSTNAME portico PROCID MSGID [portico@32473 id=… …] BOM{json}`.
/// PRI is facility 13 (log audit) × 8 + the type's severity, MSGID the event type, the structured data
/// names the event's id, actor, client and subjects, and MSG is the whole event as JSON (UTF-8, so it
/// starts with a byte order mark as §6.4 requires).
pub fn syslog_message(ev: &Event, hostname: &str, procid: u32) -> Vec<u8> {
    let pri = u16::from(FACILITY) * 8 + ev.event_type.severity() as u16;
    let mut sd = format!("[{SD_ID} id=\"{}\"", sd_escape(&ev.id));
    for (name, v) in [
        ("actor", &ev.actor_id),
        ("client", &ev.client_addr),
        ("user", &ev.user_id),
        ("connection", &ev.connection_id),
        ("session", &ev.session_id),
    ] {
        if let Some(v) = v {
            sd.push_str(&format!(" {name}=\"{}\"", sd_escape(v)));
        }
    }
    sd.push(']');
    let mut out = format!(
        "<{pri}>1 {} {} portico {procid} {} {sd} ",
        rfc3339_ms(ev.at),
        syslog_hostname(hostname),
        ev.event_type.as_str()
    )
    .into_bytes();
    out.extend_from_slice("\u{feff}".as_bytes());
    out.extend_from_slice(&serde_json::to_vec(ev).unwrap_or_default());
    out
}

/// A syslog message framed by octet counting (RFC 6587 §3.4.1, RFC 5425 §4.3): `LEN SP MSG`.
pub fn syslog_frame(ev: &Event, hostname: &str, procid: u32) -> Vec<u8> {
    let msg = syslog_message(ev, hostname, procid);
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(&msg);
    out
}

/// One JSON line (the event and `\n`; JSON escapes every control character, so a line is one event).
pub fn json_line(ev: &Event) -> Vec<u8> {
    let mut out = serde_json::to_vec(ev).unwrap_or_default();
    out.push(b'\n');
    out
}

// ---- forward targets

/// Where events are forwarded (`--event-forward`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardTarget {
    /// `syslog+tcp://host[:port]` (default port 514): RFC 5424, octet counting.
    SyslogTcp { host: String, port: u16 },
    /// `syslog+tls://host[:port]` (default port 6514): the same over TLS (RFC 5425).
    SyslogTls { host: String, port: u16 },
    /// `jsonl:///absolute/path`: JSON lines appended to a file (created with mode 0600).
    JsonlFile(PathBuf),
    /// `jsonl:-`: JSON lines on standard output.
    JsonlStdout,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardTargetError {
    #[error(
        "invalid event forward target {0:?} (expected syslog+tcp://host:port, syslog+tls://host:port, jsonl:///path or jsonl:-)"
    )]
    Invalid(String),
}

impl ForwardTarget {
    pub fn parse(s: &str) -> Result<ForwardTarget, ForwardTargetError> {
        let bad = || ForwardTargetError::Invalid(s.to_owned());
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("jsonl:") {
            if rest == "-" {
                return Ok(ForwardTarget::JsonlStdout);
            }
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if !path.starts_with('/') || path.len() < 2 || path.contains('\0') {
                return Err(bad());
            }
            return Ok(ForwardTarget::JsonlFile(PathBuf::from(path)));
        }
        let (tls, default_port) = if s.starts_with("syslog+tcp://") {
            (false, 514)
        } else if s.starts_with("syslog+tls://") {
            (true, 6514)
        } else {
            return Err(bad());
        };
        let u = url::Url::parse(s).map_err(|_| bad())?;
        let host = match u.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            _ => return Err(bad()),
        };
        let bare = u.username().is_empty()
            && u.password().is_none()
            && matches!(u.path(), "" | "/")
            && u.query().is_none()
            && u.fragment().is_none();
        if !bare {
            return Err(bad());
        }
        let port = u.port().unwrap_or(default_port);
        Ok(if tls {
            ForwardTarget::SyslogTls { host, port }
        } else {
            ForwardTarget::SyslogTcp { host, port }
        })
    }

    fn is_syslog(&self) -> bool {
        matches!(self, ForwardTarget::SyslogTcp { .. } | ForwardTarget::SyslogTls { .. })
    }
}

impl fmt::Display for ForwardTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bracket = |h: &str| {
            if h.contains(':') {
                format!("[{h}]")
            } else {
                h.to_owned()
            }
        };
        match self {
            ForwardTarget::SyslogTcp { host, port } => write!(f, "syslog+tcp://{}:{port}", bracket(host)),
            ForwardTarget::SyslogTls { host, port } => write!(f, "syslog+tls://{}:{port}", bracket(host)),
            ForwardTarget::JsonlFile(p) => write!(f, "jsonl://{}", p.display()),
            ForwardTarget::JsonlStdout => f.write_str("jsonl:-"),
        }
    }
}

// ---- backoff and rate-limited logging (sans-IO)

/// Exponential backoff: `min`, doubling, at most `max`; [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { next: min, min, max }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Forwarders reconnect after 0.5 s, doubling up to 30 s.
pub const RECONNECT_MIN: Duration = Duration::from_millis(500);
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Counts what happens often and says so at most once per `every`.
#[derive(Debug)]
pub struct RateLimitedCount {
    every: Duration,
    last: Option<Instant>,
    pending: u64,
}

impl RateLimitedCount {
    pub fn new(every: Duration) -> RateLimitedCount {
        RateLimitedCount {
            every,
            last: None,
            pending: 0,
        }
    }

    /// Count one at `now`; `Some(n)` when it is time to log the `n` counted since the last log.
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        if self.last.is_some_and(|l| now.duration_since(l) < self.every) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

// ---- the handle

/// Settings of the event pipeline (from [`crate::WebappConfig`]).
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// Days events stay in the database; 0 stores none there.
    pub retention_days: u64,
    pub forward: Vec<ForwardTarget>,
    /// PEM of a CA that signed `syslog+tls` receivers' certificates (besides the machine's roots).
    pub forward_ca: Option<String>,
}

/// Events each sink's queue holds (the database's while it is slow or away, a forwarder's while its
/// receiver is); beyond that, events are dropped and counted.
pub const QUEUE: usize = 10_000;
/// Most events per database insert statement.
const INSERT_ROWS: usize = 100;
/// Most events taken from the queue per database transaction.
const STORE_BATCH: usize = 1000;
/// Rows per pruning statement, and most statements per maintenance run.
pub const PRUNE_BATCH: i64 = 1000;
const PRUNE_MAX_BATCHES: usize = 500;
/// A connect or a write that takes longer breaks the connection (reconnect with backoff).
const IO_TIMEOUT: Duration = Duration::from_secs(10);

struct Sink {
    name: String,
    tx: mpsc::Sender<Arc<Event>>,
    dropped: AtomicU64,
}

struct Inner {
    sinks: Vec<Sink>,
    retention_days: u64,
    dropped: AtomicU64,
    drop_log: Mutex<RateLimitedCount>,
}

/// The event pipeline; cheap to clone. See the module documentation.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("sinks", &self.inner.sinks.iter().map(|s| &s.name).collect::<Vec<_>>())
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// How the pipeline is doing, for metrics.
#[derive(Debug, Clone, Serialize)]
pub struct EventStats {
    /// Events dropped because a queue was full, all sinks together.
    pub dropped: u64,
    /// Per sink: its name, events waiting in its queue, events it dropped.
    pub sinks: Vec<(String, usize, u64)>,
}

impl Events {
    /// Start the sinks' tasks: the database (when the retention is not 0) and each forwarder.
    pub fn start(config: &EventsConfig, db: Db) -> anyhow::Result<Events> {
        let tls = if config
            .forward
            .iter()
            .any(|t| matches!(t, ForwardTarget::SyslogTls { .. }))
        {
            Some(Arc::new(crate::tls::client_config(config.forward_ca.as_deref())?))
        } else {
            None
        };
        let hostname =
            syslog_hostname(&std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "-".into()));
        let mut sinks = Vec::new();
        if config.retention_days > 0 {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(store(db, rx));
            sinks.push(Sink {
                name: "database".into(),
                tx,
                dropped: AtomicU64::new(0),
            });
        }
        for target in &config.forward {
            let (tx, rx) = mpsc::channel(QUEUE);
            let forwarder = Forwarder {
                target: target.clone(),
                tls: tls.clone(),
                hostname: hostname.clone(),
            };
            tokio::spawn(forwarder.run(rx));
            sinks.push(Sink {
                name: target.to_string(),
                tx,
                dropped: AtomicU64::new(0),
            });
        }
        Ok(Events {
            inner: Arc::new(Inner {
                sinks,
                retention_days: config.retention_days,
                dropped: AtomicU64::new(0),
                drop_log: Mutex::new(RateLimitedCount::new(Duration::from_secs(10))),
            }),
        })
    }

    /// A pipeline with no sink (events are only dropped on the floor, uncounted).
    pub fn disabled() -> Events {
        Events {
            inner: Arc::new(Inner {
                sinks: Vec::new(),
                retention_days: 0,
                dropped: AtomicU64::new(0),
                drop_log: Mutex::new(RateLimitedCount::new(Duration::from_secs(10))),
            }),
        }
    }

    /// Whether any sink takes events.
    pub fn enabled(&self) -> bool {
        !self.inner.sinks.is_empty()
    }

    pub fn retention_days(&self) -> u64 {
        self.inner.retention_days
    }

    /// Hand `event` to every sink. Never waits and never fails: a full queue drops the event for that
    /// sink, counted and logged (at most every 10 s).
    pub fn emit(&self, event: Event) {
        if self.inner.sinks.is_empty() {
            return;
        }
        let event = Arc::new(event);
        for sink in &self.inner.sinks {
            if sink.tx.try_send(event.clone()).is_err() {
                sink.dropped.fetch_add(1, Ordering::Relaxed);
                let total = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let due = self.inner.drop_log.lock().ok().and_then(|mut l| l.note(Instant::now()));
                if let Some(n) = due {
                    tracing::warn!(sink = %sink.name, dropped = n, dropped_total = total, queue = QUEUE, "Events dropped: a sink's queue is full");
                }
            }
        }
    }

    /// Events dropped so far, all sinks together.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> EventStats {
        EventStats {
            dropped: self.dropped(),
            sinks: self
                .inner
                .sinks
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        s.tx.max_capacity() - s.tx.capacity(),
                        s.dropped.load(Ordering::Relaxed),
                    )
                })
                .collect(),
        }
    }

    /// Delete the events older than the retention (all of them when it is 0), in statements of
    /// [`PRUNE_BATCH`] rows with a pause between them, at most [`PRUNE_MAX_BATCHES`] per call: never one
    /// huge statement that holds the database. Returns the rows deleted.
    pub async fn prune(&self, db: &Db, now_ms: i64) -> sqlx::Result<u64> {
        let keep_ms = i64::try_from(self.inner.retention_days)
            .unwrap_or(i64::MAX / 86_400_000)
            .saturating_mul(86_400_000);
        let before = now_ms.saturating_sub(keep_ms);
        let mut total = 0;
        for _ in 0..PRUNE_MAX_BATCHES {
            let n = db.prune_events(before, PRUNE_BATCH).await?;
            total += n;
            if n < PRUNE_BATCH as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if total > 0 {
            tracing::info!(
                deleted = total,
                retention_days = self.inner.retention_days,
                "Old events pruned"
            );
        }
        Ok(total)
    }
}

/// The database sink: batches of what is waiting, inserted together; a failing batch is tried again with
/// backoff (while the queue holds what arrives meanwhile) and dropped, counted, after a few minutes.
async fn store(db: Db, mut rx: mpsc::Receiver<Arc<Event>>) {
    let mut batch = Vec::with_capacity(STORE_BATCH);
    let mut failures = RateLimitedCount::new(Duration::from_secs(30));
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < STORE_BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
        for attempt in 1.. {
            match db.insert_events(&batch, INSERT_ROWS).await {
                Ok(()) => break,
                Err(e) if attempt >= 10 => {
                    tracing::error!(error = %e, events = batch.len(), "Events lost: the database refused them ten times");
                    break;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    if let Some(n) = failures.note(Instant::now()) {
                        tracing::warn!(error = %e, failures = n, retry_in = ?delay, "Cannot store events");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
        batch.clear();
    }
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

struct Forwarder {
    target: ForwardTarget,
    tls: Option<Arc<rustls::ClientConfig>>,
    hostname: String,
}

/// Why a forwarder's connection ended.
enum Ended {
    /// Every sender is gone: the webapp is stopping.
    Stopped,
    Broken(String),
}

impl Forwarder {
    /// Connect, send, and on any failure connect again after a backoff; what fails to be written is sent
    /// first on the next connection.
    async fn run(self, mut rx: mpsc::Receiver<Arc<Event>>) {
        let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
        let mut pending: Option<Vec<u8>> = None;
        let procid = std::process::id();
        loop {
            let connected = tokio::time::timeout(IO_TIMEOUT, self.connect()).await;
            let (reader, writer) = match connected {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    let delay = jitter(backoff.next_delay());
                    tracing::warn!(receiver = %self.target, error = format!("{e:#}"), retry_in = ?delay, "Cannot reach the event receiver");
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Err(_) => {
                    let delay = jitter(backoff.next_delay());
                    tracing::warn!(receiver = %self.target, retry_in = ?delay, "Cannot reach the event receiver: timed out");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            tracing::info!(receiver = %self.target, "Forwarding events");
            match self
                .pump(reader, writer, &mut rx, &mut pending, &mut backoff, procid)
                .await
            {
                Ended::Stopped => return,
                Ended::Broken(why) => {
                    let delay = jitter(backoff.next_delay());
                    tracing::warn!(receiver = %self.target, error = %why, retry_in = ?delay, "Event receiver connection lost");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn connect(&self) -> anyhow::Result<(Option<Reader>, Writer)> {
        match &self.target {
            ForwardTarget::SyslogTcp { host, port } => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                tcp.set_nodelay(true)?;
                let (r, w) = tcp.into_split();
                Ok((Some(Box::new(r)), Box::new(w)))
            }
            ForwardTarget::SyslogTls { host, port } => {
                let config = self
                    .tls
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("no tls configuration"))?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| anyhow::anyhow!("invalid server name {host:?}: {e}"))?;
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                tcp.set_nodelay(true)?;
                let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
                let (r, w) = tokio::io::split(tls);
                Ok((Some(Box::new(r)), Box::new(w)))
            }
            ForwardTarget::JsonlFile(path) => {
                let file = tokio::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(path)
                    .await
                    .map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?;
                Ok((None, Box::new(file)))
            }
            ForwardTarget::JsonlStdout => Ok((None, Box::new(tokio::io::stdout()))),
        }
    }

    /// Write events until the connection breaks; the receiver closing its side (it never sends) is seen
    /// at once, not at the next write.
    async fn pump(
        &self,
        reader: Option<Reader>,
        mut writer: Writer,
        rx: &mut mpsc::Receiver<Arc<Event>>,
        pending: &mut Option<Vec<u8>>,
        backoff: &mut Backoff,
        procid: u32,
    ) -> Ended {
        if let Some(bytes) = pending.take() {
            if let Err(why) = write(&mut writer, &bytes).await {
                *pending = Some(bytes);
                return Ended::Broken(why);
            }
            backoff.reset();
        }
        let mut reader = reader;
        let mut scratch = [0u8; 256];
        loop {
            let closed = async {
                match reader.as_mut() {
                    Some(r) => r.read(&mut scratch).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = rx.recv() => {
                    let Some(ev) = ev else { return Ended::Stopped };
                    let bytes = if self.target.is_syslog() {
                        syslog_frame(&ev, &self.hostname, procid)
                    } else {
                        json_line(&ev)
                    };
                    if let Err(why) = write(&mut writer, &bytes).await {
                        *pending = Some(bytes);
                        return Ended::Broken(why);
                    }
                    backoff.reset();
                }
                r = closed => match r {
                    Ok(0) => return Ended::Broken("the receiver closed the connection".into()),
                    Ok(_) => {}
                    Err(e) => return Ended::Broken(e.to_string()),
                },
            }
        }
    }
}

/// Write and flush `bytes`, within [`IO_TIMEOUT`].
async fn write(writer: &mut Writer, bytes: &[u8]) -> Result<(), String> {
    let io = async {
        writer.write_all(bytes).await?;
        writer.flush().await
    };
    match tokio::time::timeout(IO_TIMEOUT, io).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("write timed out".into()),
    }
}

/// `d` ± 20 %, so that many webapps do not reconnect in step.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 1];
    let _ = getrandom::fill(&mut b);
    d.mul_f64(0.8 + 0.4 * f64::from(b[0]) / 255.0)
}

// ---- API

/// Filters and paging of `GET /api/v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsParams {
    /// Event types, comma-separated.
    #[serde(default, rename = "type")]
    event_type: Option<String>,
    /// Events about this user or caused by them.
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    connection_id: Option<String>,
    #[serde(default)]
    session_id: Option<String>,
    /// Unix milliseconds, inclusive.
    #[serde(default)]
    since: Option<i64>,
    /// Unix milliseconds, exclusive.
    #[serde(default)]
    until: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    offset: Option<i64>,
}

impl EventsParams {
    fn query(self) -> Result<EventQuery, ApiError> {
        let limit = self.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::bad_request("limit must be between 1 and 1000"));
        }
        let offset = self.offset.unwrap_or(0);
        if !(0..=1_000_000).contains(&offset) {
            return Err(ApiError::bad_request("offset must be between 0 and 1000000"));
        }
        let mut types = Vec::new();
        for t in self.event_type.iter().flat_map(|t| t.split(',')).map(str::trim) {
            if t.is_empty() {
                continue;
            }
            let parsed =
                EventType::parse(t).ok_or_else(|| ApiError::bad_request(format!("unknown event type {t:?}")))?;
            types.push(parsed.as_str().to_owned());
        }
        if types.len() > EventType::ALL.len() {
            return Err(ApiError::bad_request("too many event types"));
        }
        for v in [&self.user_id, &self.connection_id, &self.session_id]
            .into_iter()
            .flatten()
        {
            if v.len() > 200 {
                return Err(ApiError::bad_request("an id filter is too long"));
            }
        }
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        Ok(EventQuery {
            types,
            user_id: nonempty(self.user_id),
            connection_id: nonempty(self.connection_id),
            session_id: nonempty(self.session_id),
            since: self.since,
            until: self.until,
            limit,
            offset,
        })
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/events/types", get(list_types))
}

/// Stored events, newest first, filtered and paged (the number of all matches in `X-Total-Count`).
/// Admins and auditors only.
async fn list_events(
    State(st): State<AppState>,
    _: Overseer,
    Query(q): Query<EventsParams>,
) -> Result<Response, ApiError> {
    let (events, total) = st.db.events(&q.query()?).await?;
    Ok(crate::api::page(events, total))
}

/// Every event type, and how long events are kept here.
async fn list_types(State(st): State<AppState>, _: Overseer) -> Json<Value> {
    Json(serde_json::json!({
        "types": EventType::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        "retention_days": st.events.retention_days(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event {
            id: "e1".into(),
            at: 1_764_669_600_123,
            event_type: EventType::LoginFailed,
            actor_id: None,
            client_addr: Some("192.0.2.7".into()),
            user_id: Some("u\"1]\\".into()),
            connection_id: None,
            session_id: None,
            details: Map::new(),
        }
        .detail("username", "mallory\n<13>1 forged")
    }

    #[test]
    fn names_are_serde_snake_case_unique_and_fit_a_msgid() {
        let mut seen = std::collections::HashSet::new();
        for t in EventType::ALL {
            let serde_name = serde_json::to_value(t).unwrap();
            assert_eq!(serde_name, Value::String(t.as_str().into()), "{t:?}");
            assert!(seen.insert(t.as_str()), "{t} twice");
            assert!(t.as_str().len() <= 32 && t.as_str().bytes().all(|b| b.is_ascii_graphic()));
            assert_eq!(EventType::parse(t.as_str()), Some(*t));
        }
        assert_eq!(EventType::parse("login"), None);
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_764_669_600_123), "2025-12-02T10:00:00.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn sd_param_values_escape_quote_backslash_and_bracket() {
        assert_eq!(sd_escape(r#"a"b\c]d[e"#), r#"a\"b\\c\]d[e"#);
        assert_eq!(sd_escape("plain"), "plain");
    }

    #[test]
    fn a_syslog_message_is_rfc5424_with_octet_counting() {
        let ev = sample();
        let frame = syslog_frame(&ev, "web 1\n", 42);
        let text = String::from_utf8(frame.clone()).unwrap();
        let (len, msg) = text.split_once(' ').unwrap();
        assert_eq!(
            len.parse::<usize>().unwrap(),
            msg.len(),
            "the count is the message's bytes"
        );
        // PRI: facility 13 (log audit) × 8 + warning (4).
        let expected_head = format!(
            "<108>1 2025-12-02T10:00:00.123Z web1 portico 42 login_failed [{SD_ID} id=\"e1\" client=\"192.0.2.7\" user=\"u\\\"1\\]\\\\\"] \u{feff}"
        );
        assert!(msg.starts_with(&expected_head), "{msg}");
        let json: Value = serde_json::from_str(&msg[expected_head.len()..]).unwrap();
        assert_eq!(json["type"], "login_failed");
        assert_eq!(json["details"]["username"], "mallory\n<13>1 forged");
        assert!(
            !msg.contains('\n'),
            "a message is one line: JSON escapes control characters"
        );
        // The host name falls back to the nil value.
        assert!(
            String::from_utf8(syslog_message(&ev, " \t", 1))
                .unwrap()
                .contains(" - portico 1 ")
        );
        let notice = Event::new(EventType::UserCreated);
        assert!(syslog_message(&notice, "h", 1).starts_with(b"<109>1 "));
        let info = Event::new(EventType::SessionCreated);
        assert!(syslog_message(&info, "h", 1).starts_with(b"<110>1 "));
    }

    #[test]
    fn a_json_line_is_one_line() {
        let line = json_line(&sample());
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(line.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["at"], 1_764_669_600_123_i64);
        assert_eq!(v["client_addr"], "192.0.2.7");
    }

    #[test]
    fn secrets_are_redacted_even_when_a_caller_slips() {
        let ev = Event::new(EventType::ConnectionUpdated)
            .detail("password", "hunter2")
            .detail(
                "after",
                serde_json::json!({"client_secret": "s3", "has_password": true, "name": "box"}),
            )
            .detail("tokens", ["t1"]);
        let text = serde_json::to_string(&ev).unwrap();
        for s in ["hunter2", "s3", "t1"] {
            assert!(!text.contains(s), "{text}");
        }
        assert_eq!(ev.details["after"]["has_password"], true);
        assert_eq!(ev.details["after"]["name"], "box");
    }

    #[test]
    fn a_change_keeps_only_what_differs() {
        let before = serde_json::json!({"role": "user", "max_sessions": null, "name": "a"});
        let after = serde_json::json!({"role": "admin", "max_sessions": null, "name": "a", "new": 1});
        let (b, a) = diff(&before, &after);
        assert_eq!(b, serde_json::json!({"role": "user", "new": null}));
        assert_eq!(a, serde_json::json!({"role": "admin", "new": 1}));
    }

    #[test]
    fn forward_targets_parse() {
        let p = |s: &str| ForwardTarget::parse(s);
        assert_eq!(
            p("syslog+tcp://127.0.0.1:1514").unwrap(),
            ForwardTarget::SyslogTcp {
                host: "127.0.0.1".into(),
                port: 1514
            }
        );
        assert_eq!(
            p("syslog+tcp://siem.example").unwrap(),
            ForwardTarget::SyslogTcp {
                host: "siem.example".into(),
                port: 514
            }
        );
        assert_eq!(
            p("syslog+tls://[::1]").unwrap(),
            ForwardTarget::SyslogTls {
                host: "::1".into(),
                port: 6514
            }
        );
        assert_eq!(p("syslog+tls://[::1]").unwrap().to_string(), "syslog+tls://[::1]:6514");
        assert_eq!(
            p("jsonl:///var/log/portico/events.jsonl").unwrap(),
            ForwardTarget::JsonlFile("/var/log/portico/events.jsonl".into())
        );
        assert_eq!(p("jsonl:-").unwrap(), ForwardTarget::JsonlStdout);
        for bad in [
            "syslog://h:514",
            "syslog+udp://h:514",
            "syslog+tcp://",
            "syslog+tcp://user@h:514",
            "syslog+tcp://h:514/path",
            "syslog+tcp://h:514?x=1",
            "syslog+tcp://h:99999",
            "jsonl:relative.jsonl",
            "jsonl://",
            "http://h",
            "",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
        let delays: Vec<u64> = (0..9).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]);
        b.reset();
        assert_eq!(b.next_delay(), RECONNECT_MIN);
        let j = jitter(Duration::from_secs(10));
        assert!(j >= Duration::from_secs(8) && j <= Duration::from_secs(12), "{j:?}");
    }

    #[test]
    fn drops_are_logged_at_most_every_period_with_their_count() {
        let mut c = RateLimitedCount::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(c.note(t0), Some(1));
        assert_eq!(c.note(t0 + Duration::from_secs(1)), None);
        assert_eq!(c.note(t0 + Duration::from_secs(5)), None);
        assert_eq!(c.note(t0 + Duration::from_secs(10)), Some(3));
    }

    #[tokio::test]
    async fn emit_never_waits_and_counts_what_a_full_queue_drops() {
        let (tx, mut rx) = mpsc::channel(2);
        let events = Events {
            inner: Arc::new(Inner {
                sinks: vec![Sink {
                    name: "test".into(),
                    tx,
                    dropped: AtomicU64::new(0),
                }],
                retention_days: 0,
                dropped: AtomicU64::new(0),
                drop_log: Mutex::new(RateLimitedCount::new(Duration::from_secs(10))),
            }),
        };
        for _ in 0..5 {
            events.emit(Event::new(EventType::Logout));
        }
        assert_eq!(events.dropped(), 3);
        assert_eq!(events.stats().sinks, [("test".to_owned(), 2, 3)]);
        assert!(rx.recv().await.is_some());
    }
}
