//! Live sessions: one actor task per session owns the upstream SSH channel and the server-side terminal
//! state (vt100), and at most one attached browser. A browser that drops is given a grace period to
//! reattach (with a rotating resume token) and then gets the current screen and the same shell.
//!
//! Flow control: output goes to the attached browser through a bounded queue. When the queue is full the
//! actor stops queueing and marks the screen dirty; once the browser catches up it gets one repaint from
//! the terminal state instead of the backlog, so memory per session stays bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portico_proto::control::{ControlError, EndRequest, HostKeyReport, Target};
use portico_proto::token::SessionClaims;
use portico_proto::wire::{ClientMsg, Hello, ServerMsg};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::control::ControlPlane;
use crate::ssh::{self, Output};

/// Messages queued towards one browser before the actor switches to repaint mode.
pub const CLIENT_QUEUE: usize = 64;
/// Initial terminal size until the browser sends its own.
const DEFAULT_COLS: u16 = 80;
const DEFAULT_ROWS: u16 = 24;
const REPAINT_POLL: Duration = Duration::from_millis(40);

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
        code: &'static str,
        reason: String,
        from_control: bool,
    },
}

/// What the registry knows of a live session.
pub struct LiveSession {
    pub id: String,
    pub cmd: mpsc::Sender<Cmd>,
    resume_hash: Mutex<[u8; 32]>,
}

impl LiveSession {
    pub fn resume_matches(&self, token: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.resume_hash.lock().is_ok_and(|cur| bool::from(cur.ct_eq(&h)))
    }

    fn set_resume(&self, token: &str) {
        if let Ok(mut cur) = self.resume_hash.lock() {
            *cur = Sha256::digest(token.as_bytes()).into();
        }
    }
}

/// All sessions live on this bridge (memory only: the bridge keeps no durable state).
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Arc<LiveSession>>>,
}

impl Registry {
    pub fn get(&self, id: &str) -> Option<Arc<LiveSession>> {
        self.sessions.lock().ok()?.get(id).cloned()
    }

    pub fn ids(&self) -> Vec<String> {
        self.sessions
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
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

    fn remove(&self, id: &str) {
        if let Ok(mut m) = self.sessions.lock() {
            m.remove(id);
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

/// Start the actor of a freshly claimed session; the browser attaches with [`Cmd::Attach`].
pub fn spawn(
    registry: Arc<Registry>,
    control: Arc<dyn ControlPlane>,
    claims: SessionClaims,
    target: Target,
) -> Arc<LiveSession> {
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let live = Arc::new(LiveSession {
        id: claims.sid.clone(),
        cmd: cmd_tx,
        resume_hash: Mutex::new([0; 32]),
    });
    registry.insert(live.clone());
    let actor = Actor {
        live: live.clone(),
        control,
        claims,
        client: None,
        generation: 0,
        needs_repaint: false,
        parser: vt100::Parser::new(DEFAULT_ROWS, DEFAULT_COLS, 0),
        started: Instant::now(),
        last_input: Instant::now(),
        detached_at: Some(Instant::now()),
    };
    tokio::spawn(async move {
        let id = actor.live.id.clone();
        actor.run(target, cmd_rx).await;
        registry.remove(&id);
    });
    live
}

struct Actor {
    live: Arc<LiveSession>,
    control: Arc<dyn ControlPlane>,
    claims: SessionClaims,
    client: Option<ClientTx>,
    generation: u64,
    needs_repaint: bool,
    parser: vt100::Parser,
    started: Instant,
    last_input: Instant,
    detached_at: Option<Instant>,
}

enum Flow {
    Continue,
    End {
        code: &'static str,
        reason: String,
        from_control: bool,
    },
}

impl Actor {
    #[tracing::instrument(name = "session", skip_all, fields(session_id = %self.claims.sid, protocol = "ssh"))]
    async fn run(mut self, target: Target, mut cmd_rx: mpsc::Receiver<Cmd>) {
        tracing::info!(host = %target.host, port = target.port, "Session started");
        // Wait for the first browser (normally immediate) so that it sees the connection progress.
        let first = tokio::time::timeout(Duration::from_secs(self.claims.grace.max(1).into()), cmd_rx.recv()).await;
        match first {
            Ok(Some(Cmd::Attach { client, reply })) => self.attach(client, reply),
            Ok(Some(Cmd::End {
                code,
                reason,
                from_control,
            })) => return self.finish(code, reason, from_control).await,
            _ => {
                return self.finish("grace_expired", "no browser attached".into(), false).await;
            }
        }
        self.send(ServerMsg::status(
            "connecting",
            format!("connecting to {}:{}", target.host, target.port),
        ));
        let shell = {
            let connecting = ssh::connect(&target, DEFAULT_COLS, DEFAULT_ROWS);
            tokio::pin!(connecting);
            // Keep serving commands (end, resize, detach) while the connection is being set up.
            loop {
                tokio::select! {
                    res = &mut connecting => break res,
                    cmd = cmd_rx.recv() => match cmd {
                        Some(Cmd::End { code, reason, from_control }) => return self.finish(code, reason, from_control).await,
                        Some(Cmd::Attach { client, reply }) => self.attach(client, reply),
                        Some(Cmd::Detach { generation }) if generation == self.generation => self.detach(),
                        Some(Cmd::Client { generation, msg: ClientMsg::Resize { cols, rows, .. } }) if generation == self.generation => {
                            self.parser.screen_mut().set_size(rows, cols);
                        }
                        Some(_) => {}
                        None => return,
                    },
                }
            }
        };
        let shell = match shell {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, code = e.code(), "Upstream connection failed");
                self.send(ServerMsg::error(e.code(), e.to_string(), true));
                return self.finish(e.code(), e.to_string(), false).await;
            }
        };
        if target.host_key_fingerprint.is_none() && !shell.host_key.is_empty() {
            let report = HostKeyReport {
                fingerprint: shell.host_key.clone(),
            };
            if let Err(e) = self.control.record_host_key(&self.claims.sid, &report).await {
                tracing::warn!(error = %e, "Could not record the host key");
            }
        }
        let ssh::SshShell {
            handle, mut channel, ..
        } = shell;
        let (rows, cols) = self.parser.screen().size();
        if (cols, rows) != (DEFAULT_COLS, DEFAULT_ROWS) {
            let _ = channel.window_change(cols.into(), rows.into(), 0, 0).await;
        }
        self.send(ServerMsg::status(
            "connected",
            format!("connected to {}@{}", target.username, target.host),
        ));
        tracing::info!("Upstream connected");
        // INVARIANT: the credentials are not needed any more; do not keep them for the session's lifetime.
        drop(target);
        let mut exit_status = None;
        let mut repaint_tick = tokio::time::interval(REPAINT_POLL);
        let end = loop {
            let deadline = self.deadline();
            let flow = tokio::select! {
                msg = channel.wait() => match ssh::classify(msg) {
                    Output::Data(d) => {
                        self.parser.process(&d);
                        self.forward(d);
                        Flow::Continue
                    }
                    Output::Exited(s) => {
                        exit_status = s;
                        Flow::Continue
                    }
                    Output::Closed => Flow::End {
                        code: "remote_closed",
                        reason: match exit_status {
                            Some(s) => format!("the remote shell exited with status {s}"),
                            None => "the remote side closed the session".into(),
                        },
                        from_control: false,
                    },
                    Output::Other => Flow::Continue,
                },
                cmd = cmd_rx.recv() => match cmd {
                    None => break ("ended", "bridge shutting down".to_owned(), false),
                    Some(cmd) => self.command(cmd, &channel).await,
                },
                () = sleep_until(deadline) => self.expired(),
                _ = repaint_tick.tick(), if self.needs_repaint => {
                    self.try_repaint();
                    Flow::Continue
                }
            };
            if let Flow::End {
                code,
                reason,
                from_control,
            } = flow
            {
                break (code, reason, from_control);
            }
        };
        let _ = channel.close().await;
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, "session ended", "en")
            .await;
        self.finish(end.0, end.1, end.2).await;
    }

    fn deadline(&self) -> Option<Instant> {
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

    fn expired(&self) -> Flow {
        let now = Instant::now();
        let c = &self.claims;
        let end = |code, reason: String| Flow::End {
            code,
            reason,
            from_control: false,
        };
        if c.max_duration > 0 && now >= self.started + Duration::from_secs(c.max_duration.into()) {
            return end(
                "max_duration",
                format!("maximum session duration of {} s reached", c.max_duration),
            );
        }
        if c.idle_timeout > 0 && now >= self.last_input + Duration::from_secs(c.idle_timeout.into()) {
            return end("idle_timeout", format!("no input for {} s", c.idle_timeout));
        }
        if let Some(at) = self.detached_at
            && now >= at + Duration::from_secs(c.grace.into())
        {
            return end("grace_expired", "no browser reattached within the grace period".into());
        }
        Flow::Continue
    }

    async fn command(&mut self, cmd: Cmd, channel: &russh::Channel<russh::client::Msg>) -> Flow {
        match cmd {
            Cmd::Attach { client, reply } => {
                self.attach(client, reply);
                self.send(ServerMsg::TermOutput(self.repaint_bytes()));
            }
            Cmd::Detach { generation } if generation == self.generation => self.detach(),
            Cmd::Client { generation, msg } if generation == self.generation => match msg {
                ClientMsg::TermInput(bytes) => {
                    self.last_input = Instant::now();
                    if let Err(e) = channel.data_bytes(bytes).await {
                        tracing::debug!(error = %e, "Write to the channel failed");
                    }
                }
                ClientMsg::Resize {
                    cols,
                    rows,
                    width_px,
                    height_px,
                } => {
                    self.parser.screen_mut().set_size(rows, cols);
                    let _ = channel
                        .window_change(cols.into(), rows.into(), width_px.into(), height_px.into())
                        .await;
                }
                ClientMsg::Ping(p) => self.send(ServerMsg::Pong(p)),
                ClientMsg::Disconnect => {
                    return Flow::End {
                        code: "ended",
                        reason: "closed by the user".into(),
                        from_control: false,
                    };
                }
                ClientMsg::FrameAck { .. } | ClientMsg::Clipboard(_) => {}
            },
            Cmd::End {
                code,
                reason,
                from_control,
            } => {
                return Flow::End {
                    code,
                    reason,
                    from_control,
                };
            }
            Cmd::Client { .. } | Cmd::Detach { .. } => {} // From a replaced browser.
        }
        Flow::Continue
    }

    fn attach(&mut self, client: ClientTx, reply: oneshot::Sender<u64>) {
        let reattached = self.generation > 0;
        if let Some(old) = self.client.take() {
            let _ = old.try_send(ServerMsg::closed(
                "replaced",
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
        }));
        self.client = Some(client);
        self.detached_at = None;
        self.needs_repaint = false;
        let _ = reply.send(self.generation);
        tracing::info!(generation = self.generation, reattached, "Browser attached");
    }

    fn detach(&mut self) {
        self.client = None;
        self.detached_at = Some(Instant::now());
        tracing::info!(grace_s = self.claims.grace, "Browser detached; waiting for a reattach");
    }

    /// Bytes that redraw the current screen on a reset terminal.
    fn repaint_bytes(&self) -> Vec<u8> {
        let screen = self.parser.screen();
        let mut out = Vec::new();
        if screen.alternate_screen() {
            out.extend_from_slice(b"\x1b[?1049h");
        }
        out.extend_from_slice(&screen.state_formatted());
        out
    }

    fn forward(&mut self, data: Vec<u8>) {
        if self.needs_repaint {
            return;
        }
        if let Some(c) = &self.client {
            match c.try_send(ServerMsg::TermOutput(data)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => self.needs_repaint = true,
                Err(mpsc::error::TrySendError::Closed(_)) => self.detach(),
            }
        }
    }

    fn try_repaint(&mut self) {
        let Some(c) = &self.client else {
            self.needs_repaint = false;
            return;
        };
        if c.capacity() >= CLIENT_QUEUE / 2 {
            let bytes = self.repaint_bytes();
            if c.try_send(ServerMsg::TermOutput(bytes)).is_ok() {
                self.needs_repaint = false;
            }
        }
    }

    fn send(&mut self, msg: ServerMsg) {
        if let Some(c) = &self.client
            && c.try_send(msg).is_err()
        {
            self.needs_repaint = true;
        }
    }

    async fn finish(mut self, code: &'static str, reason: String, from_control: bool) {
        tracing::info!(code, %reason, "Session ended");
        if let Some(c) = self.client.take() {
            // The close message must get through even when the queue is full.
            let _ = tokio::time::timeout(Duration::from_secs(1), c.send(ServerMsg::closed(code, reason.clone()))).await;
        }
        if !from_control {
            let req = EndRequest {
                reason: format!("{code}: {reason}"),
            };
            match self.control.end_session(&self.claims.sid, &req).await {
                Ok(()) | Err(ControlError::NotFound) => {}
                Err(e) => tracing::warn!(error = %e, "Could not report the session end"),
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
