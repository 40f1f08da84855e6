//! What every protocol's session actor shares, below the protocols: the commands an actor receives, the
//! registry's entry of a live session, and [`Lifecycle`]: attach and reattach (rotating resume token), the
//! grace period of a dropped browser, idle and maximum durations, and the end of a session. It depends on
//! the control plane and metrics only, never on a protocol or on the dispatch above it (`session.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use portico_proto::codes::CloseCode;
use portico_proto::control::{ControlError, EndRequest, SyncRequest, ViewerLeft};
use portico_proto::limits::MaxDesktop;
use portico_proto::token::{SessionClaims, ShareMode, ViewerClaim};
use portico_proto::wire::{ClientMsg, Credentials, Hello, ServerMsg, ShareInfo, ViewerInfo};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::control::ControlPlane;
use crate::metrics::SessionMetrics;
use crate::recorder::Recorder;

/// Messages queued towards one browser before the actor switches to repaint mode.
pub const CLIENT_QUEUE: usize = 64;
/// How long a session waits for the user to type credentials.
pub const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(180);

/// Messages queued towards one viewer of a shared session. More than an owner's: nothing waits for a
/// viewer (a slow one must not slow the session), so a frame's messages are queued at once; its own flow
/// control bounds what is in flight in bytes, and a viewer whose queue fills is resynchronised.
pub const VIEWER_QUEUE: usize = 512;

pub type ClientTx = mpsc::Sender<ServerMsg>;

pub enum Cmd {
    Attach {
        client: ClientTx,
        reply: oneshot::Sender<u64>,
    },
    Client {
        generation: u64,
        msg: ClientMsg,
    },
    Detach {
        generation: u64,
    },
    End {
        code: CloseCode,
        reason: String,
        from_control: bool,
    },
    /// A viewer joins (its token claimed for this session; `mode` is its share's current mode).
    AttachViewer {
        viewer: ViewerClaim,
        client: ClientTx,
        reply: oneshot::Sender<u64>,
    },
    /// A message from viewer `key`.
    ViewerMsg {
        key: u64,
        msg: ClientMsg,
    },
    /// Viewer `key`'s WebSocket closed.
    DetachViewer {
        key: u64,
    },
    /// The control plane says viewer `id`'s share is now `mode`.
    ViewerMode {
        id: String,
        mode: ShareMode,
    },
    /// The control plane revoked viewer `id` (its share was revoked or expired).
    ViewerRevoked {
        id: String,
        reason: String,
    },
}

/// What the registry knows of a live session.
pub struct LiveSession {
    pub id: String,
    pub cmd: mpsc::Sender<Cmd>,
    resume_hash: Mutex<[u8; 32]>,
    /// How the session ended (set by [`Lifecycle::finish`]), for a browser that comes back too late.
    end: Mutex<Option<(CloseCode, String)>>,
    /// The first order to end ([`LiveSession::order_end`]), and its signal to the watchdog that cancels an
    /// actor that does not obey in time ([`LiveSession::overdue`]).
    ordered: Mutex<Option<(CloseCode, String)>>,
    order: tokio::sync::Notify,
    /// Viewers whose revocation was passed on (every heartbeat repeats it until the viewer is gone).
    revoking: Mutex<std::collections::HashSet<String>>,
    /// WebSocket message bytes sent to and received from the browsers of the session (reported at its end).
    pub bytes_to_browser: std::sync::atomic::AtomicU64,
    pub bytes_from_browser: std::sync::atomic::AtomicU64,
    /// The bridge's metrics of the session's protocol.
    pub metrics: SessionMetrics,
    /// The ids of the viewers attached now (reported in the heartbeat).
    viewer_ids: Mutex<Vec<String>>,
}

impl LiveSession {
    pub fn new(id: String, cmd: mpsc::Sender<Cmd>, metrics: SessionMetrics) -> Self {
        LiveSession {
            id,
            cmd,
            resume_hash: Mutex::new([0; 32]),
            end: Mutex::new(None),
            ordered: Mutex::new(None),
            order: tokio::sync::Notify::new(),
            revoking: Mutex::new(std::collections::HashSet::new()),
            bytes_to_browser: Default::default(),
            bytes_from_browser: Default::default(),
            metrics,
            viewer_ids: Mutex::default(),
        }
    }

    /// The ids of the viewers attached now.
    pub fn viewer_ids(&self) -> Vec<String> {
        self.viewer_ids.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Whether viewer `id` is attached to this session.
    pub fn has_viewer(&self, id: &str) -> bool {
        self.viewer_ids.lock().is_ok_and(|v| v.iter().any(|v| v == id))
    }

    /// Pass an order about a viewer without waiting, like [`LiveSession::order_end`]: a revocation always
    /// gets through, once (the heartbeats that repeat it meanwhile add nothing); a mode, which every
    /// heartbeat repeats, is dropped while the actor's queue is full.
    pub fn order_viewer(&self, cmd: Cmd) {
        if let Cmd::ViewerRevoked { id, .. } = &cmd
            && !self.revoking.lock().is_ok_and(|mut r| r.insert(id.clone()))
        {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(cmd)) = self.cmd.try_send(cmd)
            && matches!(cmd, Cmd::ViewerRevoked { .. })
        {
            let tx = self.cmd.clone();
            tokio::spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }

    /// How the session ended (if it did) and the hash of its last resume token.
    pub fn ended_state(&self) -> (Option<(CloseCode, String)>, [u8; 32]) {
        let end = self.end.lock().ok().and_then(|e| e.clone());
        let resume_hash = self.resume_hash.lock().map(|h| *h).unwrap_or([0; 32]);
        (end, resume_hash)
    }

    /// Order the session to end without waiting on it: the order is queued at once when the session's
    /// command queue has room, and by a task of its own otherwise, so that one busy session never holds up
    /// the caller (the heartbeat, which ends every session the control plane ended).
    pub fn order_end(&self, code: CloseCode, reason: String, from_control: bool) {
        if let Ok(mut o) = self.ordered.lock()
            && o.is_none()
        {
            *o = Some((code, reason.clone()));
            self.order.notify_one();
        }
        let cmd = Cmd::End {
            code,
            reason,
            from_control,
        };
        match self.cmd.try_send(cmd) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(cmd)) => {
                let tx = self.cmd.clone();
                tokio::spawn(async move {
                    let _ = tx.send(cmd).await;
                });
            }
        }
    }

    /// The session was ordered to end (its actor may not have seen the order yet).
    pub fn end_ordered(&self) -> bool {
        self.ordered.lock().is_ok_and(|o| o.is_some())
    }

    /// `n` bytes of WebSocket messages went to the browser.
    pub fn sent_to_browser(&self, n: usize) {
        self.bytes_to_browser
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        self.metrics.to_browser.add(n as u64);
    }

    /// `n` bytes of WebSocket messages came from the browser.
    pub fn received_from_browser(&self, n: usize) {
        self.bytes_from_browser
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        self.metrics.from_browser.add(n as u64);
    }

    pub fn resume_matches(&self, token: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.resume_hash.lock().is_ok_and(|cur| bool::from(cur.ct_eq(&h)))
    }

    /// Returns `limit` after the first order to end, with that order, if the session has not begun to
    /// end by then (its actor is stuck, or busy elsewhere); never returns otherwise. The end is recorded
    /// as the actor would have recorded it before this returns, so that the WebSocket task, which sees the
    /// actor go when the caller drops it, tells the browser why.
    pub async fn overdue(&self, limit: Duration) -> (CloseCode, String) {
        self.order.notified().await;
        tokio::time::sleep(limit).await;
        if self.end.lock().is_ok_and(|e| e.is_none())
            && let Some((code, reason)) = self.ordered.lock().ok().and_then(|o| o.clone())
        {
            self.metrics.ended(code);
            self.set_end(code, &reason);
            return (code, reason);
        }
        std::future::pending().await
    }

    /// The report of the session's end to the control plane, with its traffic and `duration`.
    pub fn end_request(&self, code: CloseCode, reason: &str, duration: Duration) -> EndRequest {
        use std::sync::atomic::Ordering;
        EndRequest {
            reason: format!("{code}: {reason}"),
            code: Some(code),
            bytes_to_browser: self.bytes_to_browser.load(Ordering::Relaxed),
            bytes_from_browser: self.bytes_from_browser.load(Ordering::Relaxed),
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn set_end(&self, code: CloseCode, reason: &str) {
        if let Ok(mut e) = self.end.lock() {
            *e = Some((code, reason.to_owned()));
        }
    }

    fn set_resume(&self, token: &str) {
        if let Ok(mut cur) = self.resume_hash.lock() {
            *cur = Sha256::digest(token.as_bytes()).into();
        }
    }
}

fn random_token() -> String {
    use base64::Engine as _;
    let mut b = [0u8; 32];
    // INVARIANT: the OS RNG is available; without it no token can be issued safely.
    getrandom::fill(&mut b).expect("os random number generator");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A session in its protocol's gauge of sessions without a browser, while it has none.
struct Waiting {
    gauge: portico_proto::metrics::Gauge,
    on: bool,
}

impl Waiting {
    /// A new session has no browser yet.
    fn new(gauge: portico_proto::metrics::Gauge) -> Self {
        gauge.inc();
        Waiting { gauge, on: true }
    }

    fn set(&mut self, on: bool) {
        if on != self.on {
            self.gauge.add(if on { 1.0 } else { -1.0 });
            self.on = on;
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// A viewer of a shared session (docs/security.md, "Sharing"): its own queue, and its mode, which the bridge
/// enforces: a view-only viewer's input is dropped here.
pub struct Viewer {
    /// This session's handle of the viewer (commands from its WebSocket carry it).
    pub key: u64,
    pub id: String,
    pub name: String,
    pub mode: ShareMode,
    pub shadow: bool,
    client: ClientTx,
    /// A message to it was dropped (or it just joined): the protocol resynchronises it.
    pub lagging: bool,
}

/// How a session ends.
pub struct End {
    pub code: CloseCode,
    pub reason: String,
    /// Already ended in the control plane (do not report it back).
    pub from_control: bool,
}

/// The protocol-independent state of a live session.
pub struct Lifecycle {
    pub live: Arc<LiveSession>,
    pub control: Arc<dyn ControlPlane>,
    pub claims: SessionClaims,
    client: Option<ClientTx>,
    pub generation: u64,
    /// A message to the browser was dropped (queue full): the protocol must resynchronise the display.
    pub lagging: bool,
    started: Instant,
    pub last_input: Instant,
    detached_at: Option<Instant>,
    /// Counted among the sessions waiting for a browser while `detached_at` is set.
    waiting: Waiting,
    /// The largest desktop a graphical session accepts from its server ([`crate::BridgeConfig::max_desktop`]).
    pub max_desktop: MaxDesktop,
    /// What the attached browser said it can do (`CAPS`, e.g. [`portico_proto::wire::CAPS_H264`]); `None`
    /// until it says (older clients never do).
    pub caps: Option<u32>,
    /// The session's recording, when its connection's policy records it: every message sent to the
    /// browser goes in (terminal output as the server produced it: [`Lifecycle::record_output`]), and the
    /// browser's messages that the policy keeps.
    pub recorder: Option<Recorder>,
    /// Viewers of the shared session, in the order they joined.
    viewers: Vec<Viewer>,
    next_viewer: u64,
    /// Terminal sessions: the size viewers' terminals take (the owner's).
    pub term_size: Option<(u16, u16)>,
}

impl Lifecycle {
    pub fn new(
        live: Arc<LiveSession>,
        control: Arc<dyn ControlPlane>,
        claims: SessionClaims,
        max_desktop: MaxDesktop,
    ) -> Self {
        let waiting = Waiting::new(live.metrics.detached.clone());
        Lifecycle {
            live,
            control,
            claims,
            client: None,
            generation: 0,
            lagging: false,
            started: Instant::now(),
            last_input: Instant::now(),
            detached_at: Some(Instant::now()),
            waiting,
            max_desktop,
            caps: None,
            recorder: None,
            viewers: Vec::new(),
            next_viewer: 0,
            term_size: None,
        }
    }

    /// Wait for the first browser (normally immediate); `Some` if the session ended instead.
    pub async fn wait_first_attach(&mut self, cmd_rx: &mut mpsc::Receiver<Cmd>) -> Option<End> {
        let grace = Duration::from_secs(self.claims.grace.max(1).into());
        let deadline = Instant::now() + grace;
        loop {
            match tokio::time::timeout_at(deadline, cmd_rx.recv()).await {
                Ok(Some(Cmd::Attach { client, reply })) => {
                    self.attach(client, reply);
                    return None;
                }
                Ok(Some(Cmd::End {
                    code,
                    reason,
                    from_control,
                })) => {
                    return Some(End {
                        code,
                        reason,
                        from_control,
                    });
                }
                // Viewers (and their orders) may come first; they watch the connection start.
                Ok(Some(
                    cmd @ (Cmd::AttachViewer { .. }
                    | Cmd::ViewerMsg { .. }
                    | Cmd::DetachViewer { .. }
                    | Cmd::ViewerMode { .. }
                    | Cmd::ViewerRevoked { .. }),
                )) => {
                    if let Common::End(end) = self.common(cmd) {
                        return Some(end);
                    }
                }
                Ok(Some(Cmd::Client { .. } | Cmd::Detach { .. })) => {}
                Ok(None) | Err(_) => {
                    return Some(End {
                        code: CloseCode::GraceExpired,
                        reason: "no browser attached".into(),
                        from_control: false,
                    });
                }
            }
        }
    }

    pub fn client(&self) -> Option<&ClientTx> {
        self.client.as_ref()
    }

    /// Attach a browser (replacing any other); returns true when this is a reattach.
    pub fn attach(&mut self, client: ClientTx, reply: oneshot::Sender<u64>) -> bool {
        let reattached = self.generation > 0;
        if let Some(old) = self.client.take() {
            let _ = old.try_send(ServerMsg::closed(
                CloseCode::Replaced,
                "the session was opened in another window",
            ));
        }
        self.generation += 1;
        let resume = random_token();
        self.live.set_resume(&resume);
        let _ = client.try_send(ServerMsg::Hello(Hello {
            session_id: self.claims.sid.clone(),
            protocol: self.claims.proto.as_str().into(),
            resume_token: resume,
            grace_seconds: self.claims.grace,
            reattached,
            recording: self.recorder.is_some(),
        }));
        self.client = Some(client);
        self.caps = None;
        self.detached_at = None;
        self.waiting.set(false);
        self.lagging = false;
        let _ = reply.send(self.generation);
        tracing::info!(generation = self.generation, reattached, "Browser attached");
        reattached
    }

    pub fn detach(&mut self) {
        self.client = None;
        self.detached_at = Some(Instant::now());
        self.waiting.set(true);
        tracing::info!(grace_s = self.claims.grace, "Browser detached; waiting for a reattach");
    }

    /// Queue a message for the browser without waiting; a full queue marks the session as lagging.
    /// The browser's queue, for a task that answers it directly (file transfers).
    pub fn client_tx(&self) -> Option<ClientTx> {
        self.client.clone()
    }

    pub fn send(&mut self, msg: ServerMsg) -> bool {
        let Some(c) = &self.client else { return false };
        record_sent(&mut self.recorder, &msg);
        match c.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagging = true;
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.detach();
                false
            }
        }
    }

    /// Send and wait for room (bounded by the protocol's own flow control); a browser that takes longer
    /// than 5 s is treated as gone. An order to end stops the wait at once: the actor must see it before
    /// the watchdog's limit (as long as this wait), not after.
    pub async fn send_wait(&mut self, msg: ServerMsg) -> bool {
        let Some(c) = &self.client else { return false };
        record_sent(&mut self.recorder, &msg);
        let live = self.live.clone();
        let ordered = async move {
            while !live.end_ordered() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            sent = tokio::time::timeout(Duration::from_secs(5), c.send(msg)) => match sent {
                Ok(Ok(())) => true,
                _ => {
                    self.detach();
                    false
                }
            },
            () = ordered => false,
        }
    }

    /// Ask the browser for credentials (connections set to ask at every connection) and wait for them, at
    /// most [`CREDENTIALS_TIMEOUT`]; what the user types is used for this attempt only.
    pub async fn ask_credentials(
        &mut self,
        cmd_rx: &mut mpsc::Receiver<Cmd>,
        prompt: &str,
    ) -> Result<Credentials, End> {
        self.send(ServerMsg::status("credentials", prompt));
        let deadline = Instant::now() + CREDENTIALS_TIMEOUT;
        loop {
            let cmd = tokio::select! {
                cmd = cmd_rx.recv() => cmd,
                () = tokio::time::sleep_until(deadline) => {
                    return Err(End { code: CloseCode::AuthFailed, reason: "no credentials entered in time".into(), from_control: false });
                }
            };
            match cmd.map(|c| self.common(c)) {
                None => {
                    return Err(End {
                        code: CloseCode::Ended,
                        reason: "bridge shutting down".into(),
                        from_control: false,
                    });
                }
                Some(Common::End(end)) => return Err(end),
                // A reattached browser has not seen the prompt.
                Some(Common::Attached(_)) => {
                    self.send(ServerMsg::status("credentials", prompt));
                }
                Some(Common::Input(ClientMsg::Credentials(c))) => {
                    self.last_input = Instant::now();
                    return Ok(c);
                }
                Some(Common::Input(_) | Common::Handled | Common::ViewerJoined(_) | Common::ViewerAck { .. }) => {}
            }
        }
    }

    /// The next time limit (idle, maximum, grace of a detached browser).
    pub fn deadline(&self) -> Option<Instant> {
        let c = &self.claims;
        let mut d: Option<Instant> = None;
        let mut consider = |t: Instant| d = Some(d.map_or(t, |d| d.min(t)));
        if c.idle_timeout > 0 {
            consider(self.last_input + Duration::from_secs(c.idle_timeout.into()));
        }
        if c.max_duration > 0 {
            consider(self.started + Duration::from_secs(c.max_duration.into()));
        }
        if let Some(at) = self.detached_at {
            consider(at + Duration::from_secs(c.grace.into()));
        }
        d
    }

    /// Which limit, if any, has been reached.
    pub fn expired(&self) -> Option<End> {
        let now = Instant::now();
        let c = &self.claims;
        let end = |code, reason: String| {
            Some(End {
                code,
                reason,
                from_control: false,
            })
        };
        if c.max_duration > 0 && now >= self.started + Duration::from_secs(c.max_duration.into()) {
            return end(
                CloseCode::MaxDuration,
                format!("maximum session duration of {} s reached", c.max_duration),
            );
        }
        if c.idle_timeout > 0 && now >= self.last_input + Duration::from_secs(c.idle_timeout.into()) {
            return end(CloseCode::IdleTimeout, format!("no input for {} s", c.idle_timeout));
        }
        if let Some(at) = self.detached_at
            && now >= at + Duration::from_secs(c.grace.into())
        {
            return end(
                CloseCode::GraceExpired,
                "no browser reattached within the grace period".into(),
            );
        }
        None
    }

    /// The viewers attached now.
    pub fn viewers(&self) -> &[Viewer] {
        &self.viewers
    }

    pub fn viewers_mut(&mut self) -> &mut [Viewer] {
        &mut self.viewers
    }

    /// Whether the owner or any viewer watches.
    pub fn watched(&self) -> bool {
        self.client.is_some() || !self.viewers.is_empty()
    }

    /// Queue a message for viewer `key` without waiting; a full queue marks it lagging.
    pub fn send_viewer(&mut self, key: u64, msg: ServerMsg) -> bool {
        let Some(v) = self.viewers.iter_mut().find(|v| v.key == key) else {
            return false;
        };
        match v.client.try_send(msg) {
            Ok(()) => true,
            Err(_) => {
                v.lagging = true;
                false
            }
        }
    }

    /// Text copied on the remote side: to the owner, and to the viewers in control (the clipboard follows the
    /// share's mode: a view-only viewer gets none).
    pub fn send_clipboard(&mut self, text: String) {
        let keys: Vec<u64> = self
            .viewers
            .iter()
            .filter(|v| v.mode == ShareMode::Control)
            .map(|v| v.key)
            .collect();
        for key in keys {
            self.send_viewer(key, ServerMsg::RemoteClipboard(text.clone()));
        }
        self.send(ServerMsg::RemoteClipboard(text));
    }

    /// Room left in viewer `key`'s queue.
    pub fn viewer_room(&self, key: u64) -> usize {
        self.viewers
            .iter()
            .find(|v| v.key == key)
            .map_or(0, |v| v.client.capacity())
    }

    /// Who watches, as the owner and each viewer are told.
    fn share_info(&self, mode: Option<ShareMode>) -> ShareInfo {
        ShareInfo {
            mode,
            viewers: self
                .viewers
                .iter()
                .map(|v| ViewerInfo {
                    id: v.id.clone(),
                    name: v.name.clone(),
                    mode: v.mode,
                    shadow: v.shadow,
                })
                .collect(),
            cols: mode.and(self.term_size.map(|(c, _)| c)),
            rows: mode.and(self.term_size.map(|(_, r)| r)),
        }
    }

    /// Tell the owner and every viewer who watches (after a join, a leave, a mode change, a resize).
    pub fn announce_viewers(&mut self) {
        if let Ok(mut ids) = self.live.viewer_ids.lock() {
            *ids = self.viewers.iter().map(|v| v.id.clone()).collect();
        }
        let owner = self.share_info(None);
        if let Some(c) = &self.client {
            let _ = c.try_send(ServerMsg::Share(owner));
        }
        let infos: Vec<(u64, ShareInfo)> = self
            .viewers
            .iter()
            .map(|v| (v.key, self.share_info(Some(v.mode))))
            .collect();
        for (key, info) in infos {
            self.send_viewer(key, ServerMsg::Share(info));
        }
    }

    fn attach_viewer(&mut self, claim: ViewerClaim, client: ClientTx, reply: oneshot::Sender<u64>) -> u64 {
        self.next_viewer += 1;
        let key = self.next_viewer;
        let _ = client.try_send(ServerMsg::Hello(Hello {
            session_id: self.claims.sid.clone(),
            protocol: self.claims.proto.as_str().into(),
            // A viewer does not reattach: it joins again through the control plane.
            resume_token: String::new(),
            grace_seconds: 0,
            reattached: false,
            recording: self.recorder.is_some(),
        }));
        tracing::info!(viewer_id = %claim.id, viewer = %claim.name, mode = claim.mode.as_str(), shadow = claim.shadow, "Viewer attached");
        self.viewers.push(Viewer {
            key,
            id: claim.id,
            name: claim.name,
            mode: claim.mode,
            shadow: claim.shadow,
            client,
            lagging: true,
        });
        self.live.metrics.viewers.inc();
        let _ = reply.send(key);
        self.announce_viewers();
        key
    }

    /// Let viewer `key` go: told why (`close`) when the bridge disconnects it, and reported to the control
    /// plane.
    fn drop_viewer(&mut self, key: u64, close: Option<(CloseCode, String)>, why: &str) {
        let Some(i) = self.viewers.iter().position(|v| v.key == key) else {
            return;
        };
        let v = self.viewers.remove(i);
        self.live.metrics.viewers.dec();
        tracing::info!(viewer_id = %v.id, reason = why, "Viewer detached");
        if let Some((code, reason)) = close {
            let c = v.client.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), c.send(ServerMsg::closed(code, reason))).await;
            });
        }
        let control = self.control.clone();
        let (sid, vid, req) = (self.claims.sid.clone(), v.id, ViewerLeft { reason: why.to_owned() });
        tokio::spawn(async move {
            if let Err(e) = control.viewer_left(&sid, &vid, &req).await {
                tracing::debug!(error = %e, viewer_id = %vid, "Could not report a viewer's departure");
            }
        });
        self.announce_viewers();
    }

    /// A message from a viewer: view-only viewers' input is dropped here (the bridge, not the page, enforces
    /// the mode); a viewer in control types and points like the owner (never resizes the owner's desktop).
    fn viewer_msg(&mut self, key: u64, msg: ClientMsg) -> Common {
        let Some(mode) = self.viewers.iter().find(|v| v.key == key).map(|v| v.mode) else {
            return Common::Handled;
        };
        match msg {
            ClientMsg::Ping(p) => {
                self.send_viewer(key, ServerMsg::Pong(p));
                Common::Handled
            }
            ClientMsg::FrameAck { frame_id } => Common::ViewerAck { key, frame_id },
            ClientMsg::Disconnect => {
                self.drop_viewer(key, None, "closed by the viewer");
                Common::Handled
            }
            msg @ (ClientMsg::Key { .. }
            | ClientMsg::Pointer { .. }
            | ClientMsg::TermInput(_)
            | ClientMsg::Clipboard(_))
                if mode == ShareMode::Control =>
            {
                if let Some(r) = self.recorder.as_mut() {
                    r.input(&msg);
                }
                Common::Input(msg)
            }
            ClientMsg::Key { .. } | ClientMsg::Pointer { .. } | ClientMsg::TermInput(_) | ClientMsg::Clipboard(_) => {
                self.live.metrics.viewer_input_dropped.inc();
                Common::Handled
            }
            // A viewer never resizes the owner's screen, has no credentials to give, and moves no files.
            _ => Common::Handled,
        }
    }

    /// The connection to the target failed: tell the browser why (fatal) and end the session.
    pub async fn fail(mut self, code: CloseCode, why: String) {
        tracing::warn!(code = code.as_str(), error = %why, "Upstream connection failed");
        self.send(ServerMsg::error(code, why.clone()));
        self.finish(code, why, false).await;
    }

    pub async fn end(self, end: End) {
        self.finish(end.code, end.reason, end.from_control).await
    }

    /// A workspace's VNC server went away: usually because the session was ended (the agent removes the
    /// container at once, before the bridge's next sync). Ask the control plane, so the browser hears the
    /// real reason rather than "the vnc server closed the connection".
    pub async fn explain_workspace_end(&self, end: End) -> End {
        let req = SyncRequest {
            bridge_id: String::new(),
            sessions: vec![self.claims.sid.clone()],
            ..Default::default()
        };
        match self.control.sync(&req).await.map(|res| res.end_of(&self.claims.sid)) {
            Ok(Some((code, reason))) => End {
                code,
                reason,
                from_control: true,
            },
            _ => end,
        }
    }

    /// Tell the browser (if any) and the control plane that the session is over. The control plane hears it
    /// even when it ended the session itself (`from_control`): the report carries the session's traffic.
    pub async fn finish(mut self, code: CloseCode, reason: String, from_control: bool) {
        tracing::info!(code = code.as_str(), %reason, "Session ended");
        if let Some(r) = self.recorder.take() {
            r.finish().await;
        }
        self.live.metrics.ended(code);
        self.live.set_end(code, &reason);
        for v in std::mem::take(&mut self.viewers) {
            self.live.metrics.viewers.dec();
            let (c, reason) = (v.client, reason.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), c.send(ServerMsg::closed(code, reason))).await;
            });
        }
        if let Some(c) = self.client.take() {
            // The close message must get through even when the queue is full.
            let _ = tokio::time::timeout(Duration::from_secs(1), c.send(ServerMsg::closed(code, reason.clone()))).await;
        }
        let req = self.live.end_request(code, &reason, self.started.elapsed());
        match self.control.end_session(&self.claims.sid, &req).await {
            Ok(()) | Err(ControlError::NotFound) => {}
            // A session ended by the control plane, whose bridge was revoked meanwhile.
            Err(ControlError::Unauthorized) if from_control => {}
            Err(e) => tracing::warn!(error = %e, "Could not report the session end"),
        }
    }

    /// Handle the commands every protocol treats alike; returns the protocol-specific ones.
    pub fn common(&mut self, cmd: Cmd) -> Common {
        match cmd {
            Cmd::Attach { client, reply } => Common::Attached(self.attach(client, reply)),
            Cmd::Detach { generation } if generation == self.generation => {
                self.detach();
                Common::Handled
            }
            Cmd::Client { generation, msg } if generation == self.generation => {
                if let Some(r) = self.recorder.as_mut() {
                    r.input(&msg);
                }
                self.client_msg(msg)
            }
            Cmd::End {
                code,
                reason,
                from_control,
            } => Common::End(End {
                code,
                reason,
                from_control,
            }),
            // From a replaced browser.
            Cmd::Client { .. } | Cmd::Detach { .. } => Common::Handled,
            Cmd::AttachViewer { viewer, client, reply } => {
                Common::ViewerJoined(self.attach_viewer(viewer, client, reply))
            }
            Cmd::ViewerMsg { key, msg } => self.viewer_msg(key, msg),
            Cmd::DetachViewer { key } => {
                self.drop_viewer(key, None, "the viewer's browser went");
                Common::Handled
            }
            Cmd::ViewerMode { id, mode } => {
                if let Some(v) = self.viewers.iter_mut().find(|v| v.id == id && v.mode != mode) {
                    tracing::info!(viewer_id = %id, mode = mode.as_str(), "Viewer's mode changed");
                    v.mode = mode;
                    self.announce_viewers();
                }
                Common::Handled
            }
            Cmd::ViewerRevoked { id, reason } => {
                if let Some(key) = self.viewers.iter().find(|v| v.id == id).map(|v| v.key) {
                    self.drop_viewer(key, Some((CloseCode::ShareRevoked, reason.clone())), &reason);
                }
                Common::Handled
            }
        }
    }

    /// Terminal output as the server produced it, for the recording (the browser may get it later as a
    /// repaint, or not at all while detached).
    pub fn record_output(&mut self, msg: &ServerMsg) {
        if let Some(r) = self.recorder.as_mut() {
            r.output(msg);
        }
    }

    fn client_msg(&mut self, msg: ClientMsg) -> Common {
        match msg {
            ClientMsg::Ping(p) => {
                self.send(ServerMsg::Pong(p));
                Common::Handled
            }
            ClientMsg::Caps { flags } => {
                self.caps = Some(flags);
                Common::Handled
            }
            ClientMsg::Disconnect => Common::End(End {
                code: CloseCode::Ended,
                reason: "closed by the user".into(),
                from_control: false,
            }),
            msg => Common::Input(msg),
        }
    }
}

/// A message on its way to the browser, for the recording: all but terminal output (recorded as the server
/// produced it, so a repaint for a browser that was behind is not recorded twice) and pongs.
fn record_sent(recorder: &mut Option<Recorder>, msg: &ServerMsg) {
    if let Some(r) = recorder
        && !matches!(
            msg,
            ServerMsg::TermOutput(_) | ServerMsg::Pong(_) | ServerMsg::FileReply(_) | ServerMsg::FileData { .. }
        )
    {
        r.output(msg);
    }
}

/// The result of [`Lifecycle::common`].
pub enum Common {
    Handled,
    /// A browser attached; `true` when it is a reattach (the protocol sends the current screen).
    Attached(bool),
    /// Input for the protocol (the owner's, or a viewer's in control).
    Input(ClientMsg),
    End(End),
    /// A viewer joined (its key): the protocol sends it the current picture (or it is resynchronised as
    /// lagging, which it starts as).
    ViewerJoined(u64),
    /// A viewer drew one of its frames.
    ViewerAck {
        key: u64,
        frame_id: u32,
    },
}

pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_is_passed_on_once_however_often_the_heartbeat_repeats_it() {
        let (tx, mut rx) = mpsc::channel(8);
        let live = LiveSession::new("s".into(), tx, SessionMetrics::default());
        let revoke = |id: &str| Cmd::ViewerRevoked {
            id: id.into(),
            reason: "revoked".into(),
        };
        for _ in 0..3 {
            live.order_viewer(revoke("v"));
        }
        live.order_viewer(revoke("w"));
        let mut got = Vec::new();
        while let Ok(cmd) = rx.try_recv() {
            if let Cmd::ViewerRevoked { id, .. } = cmd {
                got.push(id);
            }
        }
        assert_eq!(got, ["v", "w"]);
        assert!(!live.end_ordered());
        live.order_end(CloseCode::Ended, "bye".into(), false);
        assert!(live.end_ordered());
    }
}
