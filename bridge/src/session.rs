//! Live sessions: the registry of the sessions on this bridge and the dispatch that starts one actor task
//! per session, which owns the upstream connection (SSH: `terminal.rs`, VNC: `vnc.rs`, RDP: `rdp/`) and at
//! most one attached browser. The protocols build on [`crate::lifecycle`]; nothing below imports this module.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portico_proto::codes::CloseCode;
use portico_proto::control::Target;
use portico_proto::limits::MaxDesktop;
use portico_proto::recording::Meta;
use portico_proto::token::{Protocol, SessionClaims};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::control::ControlPlane;
use crate::lifecycle::{Lifecycle, LiveSession};
use crate::metrics::BridgeMetrics;
use crate::recorder::{Recorder, RecorderError};

/// An ended session, remembered for one grace period: a browser that was away when it ended and comes
/// back with its resume token hears why instead of being refused without a reason.
struct Ended {
    resume_hash: [u8; 32],
    code: CloseCode,
    reason: String,
    until: Instant,
}

/// Most ended sessions remembered at once (each is a few hundred bytes).
const MAX_ENDED: usize = 10_000;

/// All sessions live on this bridge (memory only: the bridge keeps no durable state).
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Arc<LiveSession>>>,
    ended: Mutex<HashMap<String, Ended>>,
    /// The bridge's metrics (live sessions by protocol and what they send are counted through it).
    pub metrics: Arc<BridgeMetrics>,
}

impl Registry {
    pub fn new(metrics: Arc<BridgeMetrics>) -> Self {
        Registry {
            sessions: Mutex::default(),
            ended: Mutex::default(),
            metrics,
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<LiveSession>> {
        self.sessions.lock().ok()?.get(id).cloned()
    }

    pub fn ids(&self) -> Vec<String> {
        self.sessions
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The viewers attached to live sessions, with the session holding each.
    pub fn viewers(&self) -> Vec<(String, Arc<LiveSession>)> {
        let sessions: Vec<Arc<LiveSession>> = self
            .sessions
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        sessions
            .into_iter()
            .flat_map(|s| s.viewer_ids().into_iter().map(move |v| (v, s.clone())))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, s: Arc<LiveSession>) {
        if let Ok(mut m) = self.sessions.lock() {
            m.insert(s.id.clone(), s);
        }
    }

    /// The session is over: forget it, but remember how it ended for `grace`.
    fn remove(&self, id: &str, grace: Duration) {
        let Some(live) = self.sessions.lock().ok().and_then(|mut m| m.remove(id)) else {
            return;
        };
        let (end, resume_hash) = live.ended_state();
        if let (Some((code, reason)), Ok(mut ended)) = (end, self.ended.lock()) {
            let now = Instant::now();
            ended.retain(|_, e| e.until > now);
            if ended.len() < MAX_ENDED {
                ended.insert(
                    id.to_owned(),
                    Ended {
                        resume_hash,
                        code,
                        reason,
                        until: now + grace,
                    },
                );
            }
        }
    }

    /// How session `id` ended, if it ended within its grace period and `resume_token` was its last one.
    pub fn ended(&self, id: &str, resume_token: &str) -> Option<(CloseCode, String)> {
        let h: [u8; 32] = Sha256::digest(resume_token.as_bytes()).into();
        let ended = self.ended.lock().ok()?;
        let e = ended.get(id)?;
        (e.until > Instant::now() && bool::from(e.resume_hash.ct_eq(&h))).then(|| (e.code, e.reason.clone()))
    }
}

/// Start the actor of a freshly claimed session; the browser attaches with [`Cmd::Attach`].
pub fn spawn(
    registry: Arc<Registry>,
    control: Arc<dyn ControlPlane>,
    claims: SessionClaims,
    target: Target,
    max_desktop: MaxDesktop,
    recording_dir: Option<PathBuf>,
) -> Arc<LiveSession> {
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let metrics = registry.metrics.session(target.protocol);
    registry.metrics.sessions_started.with(&[metrics.protocol]).inc();
    let live = Arc::new(LiveSession::new(claims.sid.clone(), cmd_tx, metrics));
    registry.insert(live.clone());
    let grace = Duration::from_secs(claims.grace.max(1).into());
    let life = Lifecycle::new(live.clone(), control.clone(), claims, max_desktop);
    let session = live.clone();
    let started = std::time::Instant::now();
    tokio::spawn(async move {
        let id = life.live.id.clone();
        // Counted live until the actor is over, whichever way it ends.
        let _live = LiveGauge::up(life.live.metrics.live.clone());
        let actor = async move {
            let (mut life, mut cmd_rx) = (life, cmd_rx);
            if target.settings.recording.records() {
                match start_recording(&life, &target, recording_dir.as_deref()).await {
                    Ok(r) => life.recorder = Some(r),
                    Err(e) => {
                        // Fail closed: a session the policy records is not connected unrecorded.
                        tracing::error!(error = %e, "Cannot record the session: not connecting it");
                        if let Some(end) = life.wait_first_attach(&mut cmd_rx).await {
                            return life.end(end).await;
                        }
                        return life.fail(CloseCode::RecordingUnavailable, e.to_string()).await;
                    }
                }
            }
            match target.protocol {
                Protocol::Ssh => crate::terminal::run(life, target, cmd_rx).await,
                Protocol::Vnc => crate::vnc::run(life, target, cmd_rx).await,
                Protocol::Rdp => crate::rdp::run(life, target, cmd_rx).await,
            }
        };
        tokio::select! {
            () = actor => {}
            (code, reason) = session.overdue(END_LIMIT) => {
                // The actor is dropped here: its browser channel closes (the browser hears this end from
                // the WebSocket task), and so does its connection to the target.
                tracing::warn!(
                    session_id = %id,
                    code = code.as_str(),
                    limit_secs = END_LIMIT.as_secs(),
                    "Session did not end in time after the order to end; cancelled"
                );
                let req = session.end_request(code, &reason, started.elapsed());
                if let Err(e) = control.end_session(&id, &req).await {
                    tracing::debug!(session_id = %id, error = %e, "Could not report the cancelled session");
                }
            }
        }
        registry.remove(&id, grace);
    });
    live
}

/// Open the recording of a session whose connection's policy records it.
async fn start_recording(
    life: &Lifecycle,
    target: &Target,
    dir: Option<&std::path::Path>,
) -> Result<Recorder, RecorderError> {
    let dir = dir.ok_or(RecorderError::NoStorage)?;
    let meta = Meta {
        session_id: life.claims.sid.clone(),
        connection_id: target.connection_id.clone(),
        protocol: if target.workspace_pending {
            "workspace".into()
        } else {
            life.claims.proto.as_str().into()
        },
        user: life.claims.sub.clone(),
        started_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        input: target.settings.recording.input(),
    };
    let m = &life.live.metrics;
    let r = Recorder::start(dir, &meta, m.recorded.clone(), m.recording_dropped.clone()).await?;
    tracing::info!(input = meta.input, "Recording the session");
    Ok(r)
}

/// How long an actor may take to begin ending after the order to end (a DELETE, a drain's deadline, the
/// bridge's shutdown) before it is cancelled: an actor stuck on a target or on an encoder must not keep a
/// browser connected to a session the user ended.
const END_LIMIT: Duration = Duration::from_secs(5);

/// One live session in the gauge of its protocol, for as long as this lives.
struct LiveGauge(portico_proto::metrics::Gauge);

impl LiveGauge {
    fn up(g: portico_proto::metrics::Gauge) -> Self {
        g.inc();
        LiveGauge(g)
    }
}

impl Drop for LiveGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}
