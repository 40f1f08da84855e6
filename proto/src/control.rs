//! Messages of the internal control API between the bridge (or agent) and the webapp.
//!
//! The same types serve the HTTPS API (split tiers) and the in-process calls of the all-in-one binary.

use serde::{Deserialize, Serialize};

use crate::Secret;
use crate::codes::CloseCode;
use crate::token::Protocol;

/// A public key that signs session tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenKey {
    pub kid: String,
    /// Raw 32-byte Ed25519 public key, standard base64.
    pub public_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenKeys {
    pub keys: Vec<TokenKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimRequest {
    pub jti: String,
    pub bridge_id: String,
}

/// What the bridge needs to reach a target; returned once, when the token is claimed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub connection_id: String,
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: Option<Secret<String>>,
    pub private_key: Option<Secret<String>>,
    /// Pinned host key (SSH: `SHA256:...` as OpenSSH prints it; RDP: the SHA-256 of the server's TLS
    /// certificate, same notation); `None` = trust on first use.
    pub host_key_fingerprint: Option<String>,
    /// Protocol settings of the connection.
    #[serde(default)]
    pub settings: ConnectionSettings,
    /// A workspace container session: `host`, `port` and `password` are not known at claim time; the
    /// bridge asks for them with `workspace` (they arrive when the container is ready).
    #[serde(default)]
    pub workspace_pending: bool,
}

/// Where the bridge reaches a ready workspace container, and its one-time VNC password.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceEndpoint {
    pub host: String,
    pub port: u16,
    pub password: Secret<String>,
}

/// Where a workspace image serves its sound: after a line `PORTICO-AUDIO <token>` (hex SHA-256 of
/// `portico-audio:<password>`), raw PCM (s16le,
/// 48 kHz, stereo) until the connection closes.
pub const AUDIO_PORT: u16 = 4714;

/// What an ephemeral workspace container runs with (a connection of protocol `container`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSpec {
    /// Docker image (it serves a VNC desktop on [`WorkspaceSpec::vnc_port`], password in `VNC_PASSWORD`).
    pub image: String,
    /// CPU limit, thousandths of a core.
    #[serde(default = "WorkspaceSpec::default_cpu_millis")]
    pub cpu_millis: u32,
    /// Memory limit, MiB (no swap on top).
    #[serde(default = "WorkspaceSpec::default_memory_mb")]
    pub memory_mb: u32,
    /// Most processes in the container.
    #[serde(default = "WorkspaceSpec::default_pids_limit")]
    pub pids_limit: u32,
    /// TCP port of the VNC server inside the container.
    #[serde(default = "WorkspaceSpec::default_vnc_port")]
    pub vnc_port: u16,
    /// Desktop size the container starts with (`WIDTHxHEIGHT`).
    #[serde(default)]
    pub geometry: Option<String>,
    /// Warm pool: how many containers of this spec each healthy agent keeps started and unclaimed, so a
    /// launch takes one at once (never reused: each ends with its session, and a new one replaces it).
    /// A connection setting, not the container's: [`WorkspaceSpec::container`] leaves it out, and it is
    /// not serialized at 0 (an agent of the previous version still reads the spec).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warm: u32,
    /// Sound: the bridge plays the container's audio server ([`AUDIO_PORT`]) in the browser. On by
    /// default; an image without one simply has no sound. A connection setting (left out for agents).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub audio: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl WorkspaceSpec {
    /// What the container itself is made of (what a spare must match to serve a launch): the spec
    /// without the connection's pool settings.
    pub fn container(&self) -> WorkspaceSpec {
        WorkspaceSpec {
            warm: 0,
            audio: true,
            ..self.clone()
        }
    }

    fn default_cpu_millis() -> u32 {
        1000
    }
    fn default_memory_mb() -> u32 {
        512
    }
    fn default_pids_limit() -> u32 {
        256
    }
    fn default_vnc_port() -> u16 {
        5901
    }
}

/// A container the agent should be running, as the webapp wants it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DesiredContainer {
    /// The container's key (its label and name): the session's id, or `spare-<uuid>` for a container of
    /// the warm pool (it keeps that key when a session claims it). The field keeps its first name so
    /// agents and webapps of neighbouring versions understand each other.
    pub session_id: String,
    pub spec: WorkspaceSpec,
    /// One-time VNC password of this session's container.
    pub vnc_password: Secret<String>,
}

/// What became of a container, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Being created, or started and waiting for its VNC server.
    Starting,
    /// Its VNC server answers.
    Ready,
    /// It could not be started, or it stopped.
    Failed,
}

/// One workspace container on an agent's Docker engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerReport {
    /// The container's key (see [`DesiredContainer::session_id`]).
    pub session_id: String,
    pub container_id: String,
    pub state: ContainerState,
    /// Where the bridge reaches its VNC server (when ready).
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

impl ContainerReport {
    /// Being created or started, not answering yet (`container_id` empty while Docker has none).
    pub fn starting(session_id: String, container_id: String) -> Self {
        Self::new(session_id, container_id, ContainerState::Starting, None, None, None)
    }

    /// Its VNC server answers at `host:port`.
    pub fn ready(session_id: String, container_id: String, host: Option<String>, port: Option<u16>) -> Self {
        Self::new(session_id, container_id, ContainerState::Ready, host, port, None)
    }

    /// It could not start, or it stopped, for `why`.
    pub fn failed(session_id: String, container_id: String, why: String) -> Self {
        Self::new(session_id, container_id, ContainerState::Failed, None, None, Some(why))
    }

    fn new(
        session_id: String,
        container_id: String,
        state: ContainerState,
        host: Option<String>,
        port: Option<u16>,
        error: Option<String>,
    ) -> Self {
        ContainerReport {
            session_id,
            container_id,
            state,
            host,
            port,
            error,
        }
    }
}

/// Heartbeat and reconciliation in one: the agent reports its capacity and every Portico container it
/// has; the webapp answers with the containers it wants (long poll: the answer comes early when that set
/// changes). Containers not wanted are removed by the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSync {
    pub capacity: AgentCapacity,
    pub containers: Vec<ContainerReport>,
    /// Hold the answer until the wanted set differs from `containers`, at most this long (ms).
    #[serde(default)]
    pub wait_ms: u32,
    /// The networks the agent's containers are on: the webapp accepts a container address only inside
    /// one of them.
    #[serde(default)]
    pub networks: Vec<AgentNetwork>,
    /// The images the agent's engine holds (refreshed every [`AgentSync::IMAGES_EVERY_SECS`]); `None` from
    /// an agent that does not tell (the webapp then assumes it holds any image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<AgentImage>>,
}

impl AgentSync {
    /// How often an agent lists its engine's images for the catalog.
    pub const IMAGES_EVERY_SECS: u64 = 15;
    /// Most images an agent reports (the newest first).
    pub const MAX_IMAGES: usize = 256;
}

/// An image an agent's Docker engine holds: what the connection editor offers, and where a launch of it
/// can be placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentImage {
    /// A repository tag, e.g. `portico/workspace:latest`.
    pub name: String,
    pub size_mb: u64,
    /// The image's `org.portico.*` and `org.opencontainers.image.*` labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl AgentImage {
    /// `name` as Docker lists its tags: Docker Hub's default registry and `library/` left out
    /// (`docker.io/library/debian:12` is listed as `debian:12`), `:latest` added to a reference without
    /// tag or digest.
    pub fn canonical(name: &str) -> String {
        let mut n = name;
        for hub in ["docker.io/", "index.docker.io/", "registry-1.docker.io/"] {
            if let Some(rest) = n.strip_prefix(hub) {
                n = rest.strip_prefix("library/").unwrap_or(rest);
                break;
            }
        }
        let last = n.rsplit('/').next().unwrap_or(n);
        if last.contains(':') || n.contains('@') {
            n.to_owned()
        } else {
            format!("{n}:latest")
        }
    }

    /// Whether an engine holding `images` (`None`: it does not say) can run `image`. A digest reference
    /// cannot be told from tags: it is assumed held.
    pub fn held(images: Option<&[AgentImage]>, image: &str) -> bool {
        let want = Self::canonical(image);
        images.is_none_or(|list| image.contains('@') || list.iter().any(|i| Self::canonical(&i.name) == want))
    }
}

/// One subnet of a Docker network an agent's containers are on (from Docker's network inspect).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentNetwork {
    /// The Docker network's name.
    pub name: String,
    /// CIDR, e.g. `172.18.0.0/16`.
    pub subnet: String,
    /// The subnet's gateway: the Docker host itself, never a container.
    #[serde(default)]
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSyncResponse {
    pub heartbeat_secs: u32,
    pub desired: Vec<DesiredContainer>,
}

/// RDP security protocols the bridge offers the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RdpSecurity {
    /// NLA (CredSSP) or TLS, whichever the server picks.
    #[default]
    Auto,
    /// TLS only (the server shows its own logon if the credentials do not work).
    Tls,
    /// NLA (CredSSP over TLS) only: the credentials are checked before a session exists.
    Nla,
}

/// Whether a connection's sessions are recorded (docs/protocol.md "Recording format"); ordered from the
/// least to the most recorded (a group's policy can only make a session's stricter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordingPolicy {
    #[default]
    Off,
    /// What the bridge sends the browser (screen and terminal output), with terminal resizes.
    On,
    /// Also the user's input: keystrokes (SSH and graphical), pointer and typed text.
    Keystrokes,
}

impl RecordingPolicy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" => Some(RecordingPolicy::Off),
            "on" => Some(RecordingPolicy::On),
            "keystrokes" => Some(RecordingPolicy::Keystrokes),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RecordingPolicy::Off => "off",
            RecordingPolicy::On => "on",
            RecordingPolicy::Keystrokes => "keystrokes",
        }
    }

    pub fn records(self) -> bool {
        self != RecordingPolicy::Off
    }

    pub fn input(self) -> bool {
        self == RecordingPolicy::Keystrokes
    }
}

/// The most a connection's sessions may be shared with ([`ConnectionSettings::sharing`]) or shadowed by an
/// administrator without an invitation ([`ConnectionSettings::shadowing`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareLimit {
    #[default]
    Off,
    /// View-only viewers.
    View,
    /// View-only viewers, and viewers who may take control.
    Control,
}

impl ShareLimit {
    /// Whether a viewer of `mode` is allowed.
    pub fn allows(self, mode: crate::token::ShareMode) -> bool {
        use crate::token::ShareMode;
        match self {
            ShareLimit::Off => false,
            ShareLimit::View => mode == ShareMode::View,
            ShareLimit::Control => true,
        }
    }
}

/// Per-connection settings beyond host, port and credentials. Unknown keys are refused by the API;
/// every field has a safe default, so older rows (`{}`) stay valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionSettings {
    /// RDP: the Windows domain of the account.
    pub domain: Option<String>,
    /// RDP: which security protocols to offer.
    pub security: RdpSecurity,
    /// RDP: a fixed desktop size; `None` = the size of the browser window (and follow its resizes).
    pub width: Option<u16>,
    pub height: Option<u16>,
    /// RDP: colour depth requested from the server (16, 24 or 32).
    pub color_depth: u8,
    /// Clipboard from the browser to the remote side.
    pub clipboard_up: bool,
    /// Clipboard from the remote side to the browser.
    pub clipboard_down: bool,
    /// Ask the user for the username and password at every connection (used once, never stored)
    /// instead of using stored credentials.
    pub ask_credentials: bool,
    /// RDP: accept any server certificate. Named as a danger: it allows a man in the middle.
    pub danger_accept_any_certificate: bool,
    /// RDP: use the graphics pipeline with the server's H.264 passed through when the browser decodes it
    /// (false: bitmap updates only, which the bridge encodes as images). Off by default: announcing the
    /// graphics pipeline made xrdp 0.9 fail the session start in some runs.
    pub h264: bool,
    /// Protocol `container`: the workspace image and its limits.
    pub workspace: Option<WorkspaceSpec>,
    /// Record the sessions (the user is told): off, on, or with keystrokes (or more where a group of the
    /// session's owner says so: the stricter policy wins).
    pub recording: RecordingPolicy,
    /// The session's owner may play their own recordings (admins and auditors play every one).
    pub recording_owner_access: bool,
    /// The owner of a session (or an administrator) may share it live with other users: off, view-only
    /// viewers, or viewers who may also take control.
    pub sharing: ShareLimit,
    /// Administrators may join a session without an invitation (the owner is told), up to this mode.
    pub shadowing: ShareLimit,
    /// SSH: the locale asked for the shell (`LANG`), taken where the server accepts it (OpenSSH with
    /// `AcceptEnv LANG LC_*`, Debian's default). `None`: `C.UTF-8`, the browser's terminal being UTF-8, as
    /// OpenSSH's client sends the locale of a UTF-8 terminal.
    ///
    /// This field and the two below are left out when they hold their defaults, so that a bridge of the
    /// previous version (which refuses unknown keys) takes a new webapp's targets during a rolling upgrade.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// SSH: file transfer through SFTP on the session's own connection (the bridge enforces it): none,
    /// download, upload or both.
    #[serde(skip_serializing_if = "crate::files::FilePolicy::is_none")]
    pub files: crate::files::FilePolicy,
    /// The largest file one transfer may move, in MiB.
    #[serde(skip_serializing_if = "is_default_files_max")]
    pub files_max_mb: u32,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            domain: None,
            security: RdpSecurity::Auto,
            width: None,
            height: None,
            color_depth: 32,
            clipboard_up: true,
            clipboard_down: true,
            ask_credentials: false,
            danger_accept_any_certificate: false,
            h264: false,
            workspace: None,
            recording: RecordingPolicy::Off,
            recording_owner_access: false,
            sharing: ShareLimit::Off,
            shadowing: ShareLimit::Off,
            locale: None,
            files: crate::files::FilePolicy::None,
            files_max_mb: DEFAULT_FILES_MAX_MB,
        }
    }
}

/// The largest transfer by default, in MiB.
pub const DEFAULT_FILES_MAX_MB: u32 = 1024;

fn is_default_files_max(mb: &u32) -> bool {
    *mb == DEFAULT_FILES_MAX_MB
}

/// The locale of an SSH session when its connection names none.
pub const DEFAULT_LOCALE: &str = "C.UTF-8";

/// A locale name as `LANG` takes it (`de_DE.UTF-8`, `C.UTF-8`, `sr_RS@latin`): at most 64 characters of
/// letters, digits and `_ . @ -`.
pub fn valid_locale(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostKeyReport {
    pub fingerprint: String,
}

/// The bridge closed a session: why, and what went through it (for the control plane's events).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EndRequest {
    pub reason: String,
    /// The close code the session ended with (older bridges send none: the reason starts with it; a code
    /// this version does not know counts as none).
    #[serde(default, deserialize_with = "known_code")]
    pub code: Option<CloseCode>,
    /// WebSocket message bytes the bridge sent to the browser(s) of the session (every attach together).
    #[serde(default)]
    pub bytes_to_browser: u64,
    /// WebSocket message bytes the bridge received from the browser(s).
    #[serde(default)]
    pub bytes_from_browser: u64,
    /// Milliseconds from the claim to the end, as the bridge measured them.
    #[serde(default)]
    pub duration_ms: u64,
}

/// A bridge claims a viewer's token (once, fleet-wide) for the session it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ViewerClaimRequest {
    pub jti: String,
    pub bridge_id: String,
    pub viewer_id: String,
}

/// A viewer went: why (for the events).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ViewerLeft {
    pub reason: String,
}

/// The claim's answer: the viewer's current mode (the owner may have changed it since the token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ViewerGrant {
    pub mode: crate::token::ShareMode,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncRequest {
    pub bridge_id: String,
    /// Sessions live on this bridge.
    pub sessions: Vec<String>,
    /// Viewers attached to those sessions (their ids): the answer says which may stay, and in which mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub viewers: Vec<String>,
    /// The bridge is draining (a signal, or the control plane asked): it takes no new sessions.
    #[serde(default)]
    pub draining: bool,
    /// The bridge's last sync before it stops (drained, or shutting down): not to be reported as down.
    #[serde(default)]
    pub stopping: bool,
}

/// The control plane asks a bridge to drain: no new sessions, the live ones run to their end, or until
/// `deadline_unix` (then they end), and the bridge stops once it holds none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainOrder {
    #[serde(default)]
    pub deadline_unix: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncResponse {
    /// Sessions of the request that the webapp considers ended: the bridge closes them.
    pub ended: Vec<String>,
    /// Why, for those that have a recorded reason (shown to the user).
    #[serde(default)]
    pub reasons: std::collections::BTreeMap<String, String>,
    /// The close code of each ended session whose end recorded one. Absent from older webapps' answers,
    /// and a code this bridge does not know is dropped (not an error): the bridge then derives the code
    /// from the reason ([`SyncResponse::end_of`]).
    #[serde(
        default,
        deserialize_with = "known_codes",
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub codes: std::collections::BTreeMap<String, CloseCode>,
    /// Set while an administrator has this bridge drained.
    #[serde(default)]
    pub drain: Option<DrainOrder>,
    /// The current mode of each viewer of the request that may stay (the owner may have switched it).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub viewer_modes: std::collections::BTreeMap<String, crate::token::ShareMode>,
    /// Viewers of the request whose share was revoked or expired, with why: the bridge disconnects them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub viewers_revoked: std::collections::BTreeMap<String, String>,
}

impl SyncResponse {
    /// How the answer says session `id` ended, if it did: its close code (the one the control plane recorded,
    /// else the one its reason implies, as older webapps' answers carry no codes) and its reason.
    pub fn end_of(&self, id: &str) -> Option<(CloseCode, String)> {
        if !self.ended.iter().any(|e| e == id) {
            return None;
        }
        let reason = self.reasons.get(id);
        let code = match self.codes.get(id) {
            Some(&code) => code,
            None => CloseCode::from_recorded_reason(reason.map(String::as_str)),
        };
        Some((code, reason.cloned().unwrap_or_else(|| "the session was ended".into())))
    }
}

/// The codes of [`SyncResponse::codes`], without those this version does not know (a newer webapp's): they
/// fall back to the reason, rather than failing the whole heartbeat.
fn known_codes<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, CloseCode>, D::Error> {
    let raw = std::collections::BTreeMap::<String, String>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .filter_map(|(id, code)| Some((id, code.parse().ok()?)))
        .collect())
}

fn known_code<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<CloseCode>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.and_then(|code| code.parse().ok()))
}

/// Why a control call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error("token already used")]
    AlreadyUsed,
    #[error("session not found")]
    NotFound,
    #[error("session already ended")]
    Ended,
    #[error("control plane refused the node credential")]
    Unauthorized,
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    #[error("refused: {0}")]
    Refused(String),
    /// Too many refused attempts from this address; try again after this many seconds.
    #[error("too many refused attempts, try again in {0} s")]
    RateLimited(u64),
}

/// What an agent's Docker host can take.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCapacity {
    /// CPU cores of the host.
    pub cores: u32,
    /// Memory of the host, MiB.
    pub memory_mb: u64,
    /// Workspace containers running now.
    pub running: u32,
}

/// An agent asks to join, through the upstream address (the load balancer), with the registration token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRegisterRequest {
    /// The agent's name (unique per host, e.g. its host name).
    pub name: String,
    pub registration_token: Secret<String>,
    /// The agent's persistent identity (a random key kept in its data directory): the name stays bound to
    /// the first identity that registered it until an admin removes the agent.
    pub identity: Secret<String>,
    pub docker_version: String,
    pub capacity: AgentCapacity,
    /// The networks of its containers (see [`AgentSync::networks`]).
    #[serde(default)]
    pub networks: Vec<AgentNetwork>,
}

/// A bridge asks to join (with the node secret as its bearer credential).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeRegisterRequest {
    /// The bridge's name (a label for admins; every registration is a new identity).
    pub name: String,
    /// The bridge's route at the load balancer (`[a-z0-9][a-z0-9-]*`, at most 63 bytes): sessions assigned to
    /// this bridge get a WebSocket URL naming it (`/bridge/v1/at/{route}/ws`), which the load balancer sends
    /// to this bridge only. `None`: the bridge is not addressable by name and gets no assigned sessions.
    #[serde(default)]
    pub route: Option<String>,
}

/// Whether `route` is a valid bridge route name: `[a-z0-9][a-z0-9-]*`, at most 63 bytes.
pub fn valid_route(route: &str) -> bool {
    (1..=63).contains(&route.len())
        && route
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !route.starts_with('-')
}

/// The bridge's own credential, for every internal call after registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BridgeRegistered {
    pub bridge_id: String,
    pub credential: Secret<String>,
}

/// The agent's own credential, for heartbeats and everything after.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRegistered {
    pub agent_id: String,
    pub credential: Secret<String>,
    /// How often the webapp expects a heartbeat; three missed ones mark the agent down.
    pub heartbeat_secs: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_is_held_under_any_of_its_names() {
        let held = |tags: &[&str], image: &str| {
            let list: Vec<AgentImage> = tags
                .iter()
                .map(|t| AgentImage {
                    name: (*t).into(),
                    size_mb: 1,
                    labels: Default::default(),
                })
                .collect();
            AgentImage::held(Some(&list), image)
        };
        assert!(held(&["portico/workspace:latest"], "portico/workspace"));
        assert!(held(
            &["portico/workspace:latest"],
            "docker.io/portico/workspace:latest"
        ));
        assert!(held(&["debian:12"], "docker.io/library/debian:12"));
        assert!(held(&["debian:12"], "index.docker.io/library/debian:12"));
        assert!(held(&["registry.example:5000/ws:1"], "registry.example:5000/ws:1"));
        assert!(!held(&["registry.example:5000/ws:1"], "registry.example:5000/ws"));
        assert!(!held(&["debian:12"], "debian:11"));
        assert!(!held(&["portico/workspace:latest"], "other/workspace:latest"));
        // A digest cannot be told from tags; an agent without a catalog holds anything.
        assert!(held(&[], "debian@sha256:0123"));
        assert!(AgentImage::held(None, "anything:1"));
    }

    #[test]
    fn settings_added_later_are_left_out_at_their_defaults() {
        // A bridge of the previous version refuses unknown keys: defaults must not show up.
        let v = serde_json::to_value(ConnectionSettings::default()).unwrap();
        for key in ["locale", "files", "files_max_mb"] {
            assert!(v.get(key).is_none(), "{key} in {v}");
        }
        let s = ConnectionSettings {
            locale: Some("de_DE.UTF-8".into()),
            files: crate::files::FilePolicy::Download,
            files_max_mb: 5,
            ..ConnectionSettings::default()
        };
        let back: ConnectionSettings = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(valid_locale("sr_RS@latin") && valid_locale("C.UTF-8"));
        assert!(!valid_locale("") && !valid_locale("a b") && !valid_locale("x;id") && !valid_locale(&"a".repeat(65)));
    }

    #[test]
    fn bridge_routes_are_plain_names() {
        for ok in ["bridge1", "b", "eu-west-2", &"a".repeat(63)] {
            assert!(valid_route(ok), "{ok}");
        }
        for bad in [
            "",
            "-b",
            "Bridge1",
            "b/1",
            "b.1",
            "b 1",
            "b%2f",
            "../x",
            &"a".repeat(64),
            "é",
        ] {
            assert!(!valid_route(bad), "{bad}");
        }
    }

    #[test]
    fn older_bridges_and_webapps_understand_each_other() {
        // A heartbeat without the drain fields, a response without an order, a registration without a route.
        let req: SyncRequest = serde_json::from_str(r#"{"bridge_id":"b","sessions":[]}"#).unwrap();
        assert!(!req.draining && !req.stopping);
        let res: SyncResponse = serde_json::from_str(r#"{"ended":[]}"#).unwrap();
        assert_eq!(res.drain, None);
        let reg: BridgeRegisterRequest = serde_json::from_str(r#"{"name":"b"}"#).unwrap();
        assert_eq!(reg.route, None);
        let order: SyncResponse = serde_json::from_str(r#"{"ended":[],"drain":{"deadline_unix":5}}"#).unwrap();
        assert_eq!(order.drain, Some(DrainOrder { deadline_unix: Some(5) }));
        let end: EndRequest = serde_json::from_str(r#"{"reason":"ended: bye"}"#).unwrap();
        assert_eq!(end.code, None);
        let end: EndRequest = serde_json::from_str(r#"{"reason":"x","code":"a_later_code"}"#).unwrap();
        assert_eq!(end.code, None);
        let end: EndRequest = serde_json::from_str(r#"{"reason":"x","code":"remote_closed"}"#).unwrap();
        assert_eq!(end.code, Some(CloseCode::RemoteClosed));
    }

    #[test]
    fn sync_answers_carry_end_codes_and_older_ones_fall_back_to_the_reason() {
        // An older webapp: no codes, the reason tells.
        let old: SyncResponse = serde_json::from_str(
            r#"{"ended":["a","b","c","d"],"reasons":{"a":"lost: bridge b1 stopped responding","b":"workspace failed: no image","c":"connection deleted"}}"#,
        )
        .unwrap();
        assert_eq!(
            old.end_of("a"),
            Some((CloseCode::Lost, "lost: bridge b1 stopped responding".into()))
        );
        assert_eq!(old.end_of("b").map(|e| e.0), Some(CloseCode::TargetError));
        assert_eq!(old.end_of("c").map(|e| e.0), Some(CloseCode::Ended));
        assert_eq!(
            old.end_of("d"),
            Some((CloseCode::Ended, "the session was ended".into()))
        );
        assert_eq!(old.end_of("e"), None);
        // A code wins over the reason; a code this version does not know falls back to it.
        let new: SyncResponse = serde_json::from_str(
            r#"{"ended":["a","b"],"reasons":{"a":"lost: anything","b":"lost: x"},"codes":{"a":"idle_timeout","b":"a_later_code"}}"#,
        )
        .unwrap();
        assert_eq!(new.end_of("a").map(|e| e.0), Some(CloseCode::IdleTimeout));
        assert_eq!(new.end_of("b").map(|e| e.0), Some(CloseCode::Lost));
        // What a webapp sends is what a bridge reads.
        let back: SyncResponse = serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
        assert_eq!(back.codes.get("a"), Some(&CloseCode::IdleTimeout));
        assert!(!serde_json::to_string(&old).unwrap().contains("codes"));
    }
}
