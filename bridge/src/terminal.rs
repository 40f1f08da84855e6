//! The SSH session actor: owns the russh channel and a vt100 model of the screen.
//!
//! Flow control: output goes to the browser through the bounded client queue. When it is full the actor
//! stops queueing and marks the screen dirty (`lagging`); once the browser catches up it gets one repaint
//! from the terminal state instead of the backlog, so memory per session stays bounded. The same repaint
//! serves a browser that reattaches.

use std::time::Duration;

use portico_proto::codes::CloseCode;
use portico_proto::control::{HostKeyReport, Target};
use portico_proto::files::{FileEvent, FileOp, FilePolicy, FileReply, FileRequest};
use portico_proto::wire::{ClientMsg, ServerMsg, Status};
use tokio::sync::mpsc;

use crate::files::{FileCmd, Files, FilesContext};
use crate::lifecycle::{CLIENT_QUEUE, Cmd, Common, End, Lifecycle, VIEWER_QUEUE, sleep_until};
use crate::ssh::{self, Output};

/// Initial terminal size until the browser sends its own.
const DEFAULT_COLS: u16 = 80;
const DEFAULT_ROWS: u16 = 24;
const REPAINT_POLL: Duration = Duration::from_millis(40);

struct Terminal {
    parser: vt100::Parser,
}

impl Terminal {
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

    /// A keyframe for the recording when it wants one: the size, and the screen drawn on a reset terminal.
    fn record_keyframe(&self, life: &mut Lifecycle) {
        let Some(r) = life.recorder.as_mut() else { return };
        if !r.wants_keyframe() {
            return;
        }
        let (rows, cols) = self.parser.screen().size();
        let size = ClientMsg::Resize {
            cols,
            rows,
            width_px: 0,
            height_px: 0,
        };
        let mut repaint = b"\x1bc".to_vec();
        repaint.extend_from_slice(&self.repaint_bytes());
        r.keyframe(Some(&size), &[ServerMsg::TermOutput(repaint)]);
    }

    /// Output to the owner and to every viewer that is not behind (a viewer behind gets a repaint once its
    /// queue has room, like the owner: a slow viewer never holds the session up).
    fn forward(&self, life: &mut Lifecycle, data: Vec<u8>) {
        let keys: Vec<u64> = life.viewers().iter().filter(|v| !v.lagging).map(|v| v.key).collect();
        for key in keys {
            life.send_viewer(key, ServerMsg::TermOutput(data.clone()));
        }
        if !life.lagging {
            life.send(ServerMsg::TermOutput(data));
        }
    }

    /// Whether the owner or a viewer waits for a repaint.
    fn behind(life: &Lifecycle) -> bool {
        life.lagging || life.viewers().iter().any(|v| v.lagging)
    }

    fn try_repaint(&self, life: &mut Lifecycle) {
        let room = life.client().map(|c| c.capacity());
        match room {
            None => life.lagging = false,
            Some(room) if room >= CLIENT_QUEUE / 2 && life.lagging => {
                life.lagging = false;
                life.send(ServerMsg::TermOutput(self.repaint_bytes()));
            }
            Some(_) => {}
        }
        let behind: Vec<u64> = life.viewers().iter().filter(|v| v.lagging).map(|v| v.key).collect();
        for key in behind {
            if life.viewer_room(key) >= VIEWER_QUEUE / 2 {
                if let Some(v) = life.viewers_mut().iter_mut().find(|v| v.key == key) {
                    v.lagging = false;
                }
                // From a reset terminal: a viewer that just joined has drawn nothing, one behind missed some.
                let mut repaint = b"\x1bc".to_vec();
                repaint.extend_from_slice(&self.repaint_bytes());
                life.send_viewer(key, ServerMsg::TermOutput(repaint));
            }
        }
    }
}

#[tracing::instrument(name = "session", skip_all, fields(session_id = %life.claims.sid, protocol = "ssh"))]
pub async fn run(mut life: Lifecycle, target: Target, mut cmd_rx: mpsc::Receiver<Cmd>) {
    tracing::info!(host = %target.host, port = target.port, "Session started");
    if let Some(end) = life.wait_first_attach(&mut cmd_rx).await {
        return life.end(end).await;
    }
    let mut term = Terminal {
        parser: vt100::Parser::new(DEFAULT_ROWS, DEFAULT_COLS, 0),
    };
    life.term_size = Some((DEFAULT_COLS, DEFAULT_ROWS));
    life.send(ServerMsg::status(
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
                cmd = cmd_rx.recv() => match cmd.map(|c| life.common(c)) {
                    None => return,
                    Some(Common::End(end)) => return life.end(end).await,
                    Some(Common::Input(ClientMsg::Resize { cols, rows, .. })) if cols > 0 => {
                        term.parser.screen_mut().set_size(rows, cols);
                        life.term_size = Some((cols, rows));
                    }
                    Some(_) => {}
                },
            }
        }
    };
    let shell = match shell {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, code = e.code().as_str(), "Upstream connection failed");
            life.send(ServerMsg::error(e.code(), e.to_string()));
            return life.finish(e.code(), e.to_string(), false).await;
        }
    };
    if target.host_key_fingerprint.is_none() && !shell.host_key.is_empty() {
        let report = HostKeyReport {
            fingerprint: shell.host_key.clone(),
        };
        if let Err(e) = life.control.record_host_key(&life.claims.sid, &report).await {
            tracing::warn!(error = %e, "Could not record the host key");
        }
    }
    let ssh::SshShell {
        handle, mut channel, ..
    } = shell;
    let (rows, cols) = term.parser.screen().size();
    if (cols, rows) != (DEFAULT_COLS, DEFAULT_ROWS) {
        let _ = channel.window_change(cols.into(), rows.into(), 0, 0).await;
    }
    let policy = target.settings.files;
    let files_max_bytes = u64::from(target.settings.files_max_mb) << 20;
    life.send(ServerMsg::Status(Status {
        state: "connected".into(),
        message: format!("connected to {}@{}", target.username, target.host),
        graphics: None,
        files: (policy != FilePolicy::None).then_some(policy),
        audio: None,
    }));
    // Connections that allow files get a second channel now (one round trip, before the terminal runs);
    // the SFTP server behind it starts at the first file request.
    let files: Result<Files, String> = if policy == FilePolicy::None {
        Err("file transfer is off for this connection".into())
    } else {
        start_files(&handle, &life, policy, files_max_bytes).await
    };
    tracing::info!("Upstream connected");
    term.record_keyframe(&mut life);
    // INVARIANT: the credentials are not needed any more; do not keep them for the session's lifetime.
    drop(target);
    let mut exit_status = None;
    let mut repaint_tick = tokio::time::interval(REPAINT_POLL);
    let end = loop {
        let deadline = life.deadline();
        tokio::select! {
            msg = channel.wait() => match ssh::classify(msg) {
                Output::Data(d) => {
                    term.parser.process(&d);
                    if life.recorder.is_some() {
                        life.record_output(&ServerMsg::TermOutput(d.clone()));
                    }
                    term.forward(&mut life, d);
                    term.record_keyframe(&mut life);
                }
                Output::Exited(s) => exit_status = s,
                Output::Closed => {
                    let reason = match exit_status {
                        Some(s) => format!("the remote shell exited with status {s}"),
                        None => "the remote side closed the session".into(),
                    };
                    break End { code: CloseCode::RemoteClosed, reason, from_control: false };
                }
                Output::Other => {}
            },
            cmd = cmd_rx.recv() => match cmd.map(|c| life.common(c)) {
                None => break End { code: CloseCode::Ended, reason: "bridge shutting down".into(), from_control: false },
                Some(Common::End(end)) => break end,
                Some(Common::Handled) => {}
                Some(Common::Attached(_)) => {
                    life.send(ServerMsg::TermOutput(term.repaint_bytes()));
                    if let Ok(f) = &files {
                        f.hand(FileCmd::Client(life.client_tx()));
                    }
                }
                Some(Common::ViewerJoined(_)) => term.try_repaint(&mut life),
                Some(Common::ViewerAck { .. }) => {}
                Some(Common::Input(msg)) => match msg {
                    ClientMsg::TermInput(bytes) => {
                        life.last_input = tokio::time::Instant::now();
                        if let Err(e) = channel.data_bytes(bytes).await {
                            tracing::debug!(error = %e, "Write to the channel failed");
                        }
                    }
                    ClientMsg::Resize { cols, rows, width_px, height_px } if cols > 0 => {
                        term.parser.screen_mut().set_size(rows, cols);
                        if life.term_size != Some((cols, rows)) {
                            // Viewers' terminals take the owner's size, then its screen.
                            life.term_size = Some((cols, rows));
                            life.announce_viewers();
                            for v in life.viewers_mut() {
                                v.lagging = true;
                            }
                        }
                        let _ = channel.window_change(cols.into(), rows.into(), width_px.into(), height_px.into()).await;
                    }
                    ClientMsg::FileRequest(r) => {
                        let id = r.id;
                        let quiet = matches!(r.op, FileOp::Ack { .. } | FileOp::Cancel);
                        match (&files, policy.check(&r.op)) {
                            (_, Err(why)) => {
                                life.send(file_failed(id, why));
                            }
                            (Err(why), Ok(())) if !quiet => {
                                life.send(file_failed(id, why));
                            }
                            (Err(_), Ok(())) => {}
                            (Ok(f), Ok(())) => {
                                if !f.send(FileCmd::Request(r)) {
                                    life.send(file_failed(id, "too many file messages in flight"));
                                    f.hand(FileCmd::Request(FileRequest { id, op: FileOp::Cancel }));
                                }
                            }
                        }
                    }
                    ClientMsg::FileChunk { id, data } => match &files {
                        Err(_) => {
                            life.send(file_failed(id, "no upload under way with this id"));
                        }
                        Ok(f) => {
                            if !f.send(FileCmd::Chunk { id, data }) {
                                // Beyond the window: the upload cannot be whole any more.
                                life.send(file_failed(id, "too many file messages in flight"));
                                f.hand(FileCmd::Request(FileRequest { id, op: FileOp::Cancel }));
                            }
                        }
                    },
                    // Display and clipboard messages mean nothing to a terminal.
                    _ => {}
                },
            },
            () = sleep_until(deadline) => {
                if let Some(end) = life.expired() {
                    break end;
                }
            }
            _ = repaint_tick.tick(), if Terminal::behind(&life) => term.try_repaint(&mut life),
        }
    };
    // A transfer under way is abandoned (a partial upload removed) while the connection is still up.
    if let Ok(f) = files {
        f.shutdown().await;
    }
    let _ = channel.close().await;
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "session ended", "en")
        .await;
    life.end(end).await;
}

fn file_failed(id: u32, why: &str) -> ServerMsg {
    ServerMsg::FileReply(FileReply {
        id,
        event: FileEvent::Failed { message: why.into() },
    })
}

/// Open a second channel of the session's SSH connection for its file task (the task asks for SFTP on it
/// at the first file request); why not, when the server refuses the channel.
async fn start_files(
    handle: &russh::client::Handle<ssh::KeyCheck>,
    life: &Lifecycle,
    policy: FilePolicy,
    max_bytes: u64,
) -> Result<Files, String> {
    let ctx = FilesContext {
        policy,
        max_bytes,
        control: life.control.clone(),
        session_id: life.claims.sid.clone(),
    };
    match tokio::time::timeout(FILES_CHANNEL_LIMIT, handle.channel_open_session()).await {
        Ok(Ok(channel)) => Ok(Files::start(channel, life.client_tx(), ctx)),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "No channel for file transfer");
            Err(format!(
                "the server refused a channel for sftp: {}",
                e.to_string().to_lowercase()
            ))
        }
        Err(_) => Err(format!(
            "the server did not open a channel for sftp within {} s",
            FILES_CHANNEL_LIMIT.as_secs()
        )),
    }
}

/// How long the session waits for the server to open the file task's channel.
const FILES_CHANNEL_LIMIT: Duration = Duration::from_secs(5);
