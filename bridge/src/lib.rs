//! Portico bridge: the connection proxy.
//!
//! It trusts only short-lived session tokens signed by the webapp, checks them on every WebSocket before the
//! upgrade, claims them once through the control plane (which hands over the target credentials), and then
//! translates between the target protocol (SSH, VNC, RDP) and the browser wire protocol (`portico_proto::wire`).
//! It keeps no durable state: live sessions exist only in memory.

pub mod audio;
pub mod control;
pub mod display;
pub mod files;
pub mod lifecycle;
pub mod metrics;
pub mod pool;
pub mod rdp;
pub mod recorder;
pub mod screen;
pub mod session;
pub mod ssh;
pub mod terminal;
pub mod vnc;
pub mod ws;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use portico_proto::codes::CloseCode;
use portico_proto::control::{ControlError, SyncRequest};
use portico_proto::limits::MaxDesktop;
use portico_proto::token::{SessionClaims, TokenError, TokenVerifier};
use tokio::sync::RwLock;

pub use control::{ControlPlane, HttpControlPlane};
pub use session::Registry;

#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Unique name of this bridge node (logs, session ownership).
    pub bridge_id: String,
    /// Bridge pool; tokens must name it as their audience.
    pub zone: String,
    /// How often live sessions are reconciled with the control plane (ended sessions are closed).
    pub sync_interval: Duration,
    /// The largest desktop a VNC or RDP server may impose (default 4096x2160, either orientation); a server
    /// over it ends its session with `target_error`.
    pub max_desktop: MaxDesktop,
    /// Live sessions keep streaming while the control plane (every webapp, or its database) is away; after
    /// this long without a successful sync they end (`None`: never).
    pub control_plane_grace: Option<Duration>,
    /// This bridge's route at the load balancer: the webapp assigns it sessions whose WebSocket URL names
    /// it (`/bridge/v1/at/{route}/ws`). `None`: it gets only unassigned sessions.
    pub route: Option<String>,
    /// Where the sessions whose connection's policy records them are recorded (`<id>.portrec`): storage
    /// the webapps read too. `None`: such sessions are refused (`recording_unavailable`).
    pub recording_dir: Option<std::path::PathBuf>,
}

impl BridgeConfig {
    pub fn new(bridge_id: impl Into<String>, zone: impl Into<String>) -> Self {
        Self {
            bridge_id: bridge_id.into(),
            zone: zone.into(),
            sync_interval: Duration::from_millis(750),
            max_desktop: MaxDesktop::DEFAULT,
            control_plane_grace: Some(Duration::from_secs(300)),
            route: None,
            recording_dir: None,
        }
    }
}

pub struct Bridge {
    pub config: BridgeConfig,
    pub control: Arc<dyn ControlPlane>,
    pub registry: Arc<Registry>,
    verifier: RwLock<Option<(TokenVerifier, std::time::Instant)>>,
    /// Set when the bridge is shutting down: its health check answers 503 so the load balancer sends new
    /// sessions elsewhere.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Set when an administrator drains this bridge: how long its live sessions may still run (the
    /// process's accept loop watches it, like a signal, and stops once nothing is left).
    pub drain_order: tokio::sync::watch::Sender<Option<Duration>>,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Bridge {
    pub fn new(config: BridgeConfig, control: Arc<dyn ControlPlane>) -> Arc<Bridge> {
        Arc::new(Bridge {
            config,
            control,
            registry: Arc::new(Registry::default()),
            verifier: RwLock::new(None),
            draining: Arc::default(),
            drain_order: tokio::sync::watch::Sender::new(None),
        })
    }

    /// The token verifier: the cached one under a shared lock (upgrades verify in parallel); the keys are
    /// fetched (again) under the write lock only when there are none yet or `force` asks for a refresh,
    /// which happens at most once per 10 s.
    async fn refresh_keys(&self, force: bool) -> Result<TokenVerifier, TokenError> {
        let fresh = |at: &std::time::Instant| !force || at.elapsed() < Duration::from_secs(10);
        if let Some((v, at)) = self.verifier.read().await.as_ref()
            && fresh(at)
        {
            return Ok(v.clone());
        }
        let mut guard = self.verifier.write().await;
        if let Some((v, at)) = guard.as_ref()
            && fresh(at)
        {
            return Ok(v.clone());
        }
        match self
            .control
            .token_keys()
            .await
            .and_then(|k| control::verifying_keys(&k))
        {
            Ok(keys) => {
                let v = TokenVerifier::new(keys, self.config.zone.clone());
                *guard = Some((v.clone(), std::time::Instant::now()));
                Ok(v)
            }
            Err(e) => {
                tracing::error!(error = %e, "Cannot fetch token keys from the control plane");
                guard.as_ref().map(|(v, _)| v.clone()).ok_or(TokenError::UnknownKey)
            }
        }
    }

    /// Tell every live session to end with `code` and `reason`.
    fn end_all(&self, code: CloseCode, reason: &str) {
        for id in self.registry.ids() {
            if let Some(live) = self.registry.get(&id) {
                live.order_end(code, reason.to_owned(), false);
            }
        }
    }

    /// End every live session (the process is shutting down): each browser is told why, each end is
    /// reported to the control plane. Waits until they are gone, at most 5 s.
    pub async fn shutdown(&self) {
        tracing::info!(sessions = self.registry.len(), "Ending live sessions: shutting down");
        let reason = if self.drain_order.borrow().is_some() {
            "the bridge was drained by an administrator"
        } else {
            "the bridge is shutting down"
        };
        self.end_all(CloseCode::Ended, reason);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.registry.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The last heartbeat says this bridge stops, so the control plane does not report it down.
        let last = SyncRequest {
            bridge_id: self.config.bridge_id.clone(),
            sessions: self.registry.ids(),
            viewers: Vec::new(),
            draining: true,
            stopping: true,
        };
        match tokio::time::timeout(Duration::from_secs(2), self.control.sync(&last)).await {
            Ok(Ok(_)) => tracing::info!("Told the control plane that this bridge stops"),
            Ok(Err(e)) => tracing::warn!(error = %e, "Cannot tell the control plane that this bridge stops"),
            Err(_) => tracing::warn!("Cannot tell the control plane that this bridge stops: timed out"),
        }
    }

    /// An administrator drains this bridge: no new sessions from now on, the live ones run until
    /// `deadline_unix` (or their own end), and the process stops once it holds none.
    fn drain(&self, deadline_unix: Option<i64>) {
        let left = deadline_unix.map_or(DRAIN_FOREVER, |d| {
            Duration::from_secs(u64::try_from(d.saturating_sub(now_unix())).unwrap_or(0))
        });
        self.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        self.drain_order.send_if_modified(|held| {
            // The first order starts the drain; a later one changes only a deadline that moved.
            let changed = match held {
                None => true,
                Some(h) => h.as_secs().abs_diff(left.as_secs()) > 1,
            };
            if changed {
                tracing::info!(sessions = self.registry.len(), deadline = ?deadline_unix, "Draining: asked by the control plane");
                *held = Some(left);
            }
            changed
        });
    }

    /// Check a token for `session_id` (signature, type, time, audience, session binding).
    pub async fn verify(&self, token: &str, session_id: &str) -> Result<SessionClaims, TokenError> {
        let verifier = self.refresh_keys(false).await?;
        match verifier.verify(token, now_unix(), session_id) {
            Err(TokenError::UnknownKey) => self.refresh_keys(true).await?.verify(token, now_unix(), session_id),
            other => other,
        }
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/bridge/v1/ws", get(ws::handler))
            .route("/bridge/v1/at/{route}/ws", get(ws::routed_handler))
            .route("/bridge/v1/health", get(health))
            .with_state(self.clone())
    }

    /// The heartbeat: every sync interval, with or without live sessions, tell the control plane which
    /// sessions live here and whether this bridge drains; close the sessions it has ended (API `DELETE`,
    /// admin kill, logout, revocation) and start draining when an administrator asks.
    pub fn spawn_sync(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let bridge = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(bridge.config.sync_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut watch = ControlPlaneWatch::new(bridge.config.control_plane_grace, std::time::Instant::now());
            loop {
                tick.tick().await;
                let ids = bridge.registry.ids();
                if ids.is_empty() {
                    // Nothing to keep alive: the grace starts with the next session.
                    watch.reached(std::time::Instant::now());
                }
                let viewers = bridge.registry.viewers();
                let req = SyncRequest {
                    bridge_id: bridge.config.bridge_id.clone(),
                    sessions: ids,
                    viewers: viewers.iter().map(|(v, _)| v.clone()).collect(),
                    draining: bridge.draining.load(std::sync::atomic::Ordering::SeqCst),
                    stopping: false,
                };
                let asked = std::time::Instant::now();
                match bridge.control.sync(&req).await {
                    Ok(res) => {
                        let now = std::time::Instant::now();
                        let silent = watch.unreachable_for(now);
                        if !req.sessions.is_empty() && silent > HEARTBEAT_LATE {
                            // The control plane judges this bridge down after a few seconds of silence:
                            // say where the time went (the round trip, or this runtime before it).
                            tracing::warn!(
                                silent_ms = silent.as_millis() as u64,
                                round_trip_ms = now.saturating_duration_since(asked).as_millis() as u64,
                                sessions = req.sessions.len(),
                                "Heartbeat late"
                            );
                        }
                        watch.reached(now);
                        if let Some(order) = &res.drain {
                            bridge.drain(order.deadline_unix);
                        }
                        for id in &res.ended {
                            if let (Some(live), Some((code, reason))) = (bridge.registry.get(id), res.end_of(id)) {
                                live.order_end(code, reason, true);
                            }
                        }
                        // Viewers: a revoked share disconnects its viewers, a changed mode applies at once.
                        for (viewer, live) in &viewers {
                            if let Some(reason) = res.viewers_revoked.get(viewer) {
                                live.order_viewer(lifecycle::Cmd::ViewerRevoked {
                                    id: viewer.clone(),
                                    reason: reason.clone(),
                                });
                            } else if let Some(&mode) = res.viewer_modes.get(viewer) {
                                live.order_viewer(lifecycle::Cmd::ViewerMode {
                                    id: viewer.clone(),
                                    mode,
                                });
                            }
                        }
                    }
                    Err(e @ (ControlError::Unauthorized | ControlError::Refused(_))) => {
                        if req.sessions.is_empty() {
                            tracing::warn!(error = %e, "The control plane refuses this bridge's heartbeat");
                            continue;
                        }
                        // This bridge's identity is gone (revoked by an administrator, or unknown to the
                        // webapp tier): the sessions it claimed are no longer its own.
                        tracing::error!(error = %e, "The control plane no longer accepts this bridge: ending its sessions");
                        bridge.end_all(
                            CloseCode::Ended,
                            "this bridge lost its credential (revoked by an administrator)",
                        );
                    }
                    Err(e) if req.sessions.is_empty() => {
                        tracing::debug!(error = %e, "Heartbeat to the control plane failed");
                    }
                    Err(e) => {
                        let now = std::time::Instant::now();
                        tracing::warn!(error = %e, unreachable_for = ?watch.unreachable_for(now), "Session sync with the control plane failed");
                        if let Some(grace) = watch.expired(now) {
                            tracing::error!(
                                ?grace,
                                sessions = req.sessions.len(),
                                "The control plane stayed unreachable: ending live sessions"
                            );
                            let reason = format!("the control plane was unreachable for {} s", grace.as_secs());
                            bridge.end_all(CloseCode::Ended, &reason);
                            watch.reached(now);
                        }
                    }
                }
            }
        })
    }
}

/// A heartbeat this long after the last one is logged (the control plane calls a bridge down after 4 s).
const HEARTBEAT_LATE: Duration = Duration::from_secs(2);

/// A drain without a deadline: the live sessions run to their own end.
const DRAIN_FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The bridge's health for load balancers: 200 with its live session count, 503 once it drains.
async fn health(axum::extract::State(bridge): axum::extract::State<Arc<Bridge>>) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let sessions = bridge.registry.ids().len();
    if bridge.draining.load(std::sync::atomic::Ordering::SeqCst) {
        let body = serde_json::json!({ "ok": false, "error": "shutting down", "sessions": sessions });
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    axum::Json(serde_json::json!({ "ok": true, "sessions": sessions })).into_response()
}

/// How long live sessions have gone without a successful sync, and whether that is past the grace
/// (time in, decision out).
#[derive(Debug)]
pub struct ControlPlaneWatch {
    grace: Option<Duration>,
    last_ok: std::time::Instant,
}

impl ControlPlaneWatch {
    pub fn new(grace: Option<Duration>, now: std::time::Instant) -> Self {
        Self { grace, last_ok: now }
    }

    /// The control plane answered (or there was nothing to ask about).
    pub fn reached(&mut self, now: std::time::Instant) {
        self.last_ok = now;
    }

    pub fn unreachable_for(&self, now: std::time::Instant) -> Duration {
        now.saturating_duration_since(self.last_ok)
    }

    /// After a failed sync: the grace, when it has run out.
    pub fn expired(&self, now: std::time::Instant) -> Option<Duration> {
        self.grace.filter(|g| self.unreachable_for(now) >= *g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_only_after_the_grace_without_the_control_plane() {
        let t0 = std::time::Instant::now();
        let mut w = ControlPlaneWatch::new(Some(Duration::from_secs(10)), t0);
        assert_eq!(w.expired(t0 + Duration::from_secs(9)), None);
        assert_eq!(w.expired(t0 + Duration::from_secs(10)), Some(Duration::from_secs(10)));
        w.reached(t0 + Duration::from_secs(9));
        assert_eq!(
            w.expired(t0 + Duration::from_secs(18)),
            None,
            "a sync in between starts it again"
        );
        let never = ControlPlaneWatch::new(None, t0);
        assert_eq!(never.expired(t0 + Duration::from_secs(100_000)), None);
    }

    /// The bridge's modules in layers, bottom first. A module may use only modules of lower layers, so the
    /// module graph has no cycles: dispatch (`session`) above the protocols, the protocols above the shared
    /// lifecycle and the display core, which use neither each other nor anything above them.
    const LAYERS: &[&[&str]] = &[
        &["pool", "control", "ssh", "recorder"],
        &["metrics"],
        &["display", "lifecycle"],
        &["files", "audio"],
        &["screen", "terminal"],
        &["vnc", "rdp"],
        &["session"],
        &["ws"],
    ];

    fn layer(module: &str) -> usize {
        LAYERS
            .iter()
            .position(|l| l.contains(&module))
            .unwrap_or_else(|| panic!("module {module} is in no layer: add it to LAYERS"))
    }

    #[test]
    fn modules_use_only_the_layers_below_them() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                for sub in std::fs::read_dir(&path).unwrap() {
                    files.push(sub.unwrap().path());
                }
            } else {
                files.push(path);
            }
        }
        let mut wrong = Vec::new();
        for path in files {
            let rel = path.strip_prefix(&dir).unwrap();
            let module = rel.iter().next().unwrap().to_str().unwrap().trim_end_matches(".rs");
            if module == "lib" {
                continue;
            }
            let own = layer(module);
            let text = std::fs::read_to_string(&path).unwrap();
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (i, _) in line.match_indices("crate::") {
                    let used: String = line[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if used != module && LAYERS.iter().any(|l| l.contains(&used.as_str())) && layer(&used) >= own {
                        wrong.push(format!("{} uses crate::{used}", rel.display()));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "imports against the layering: {wrong:#?}");
    }
}
